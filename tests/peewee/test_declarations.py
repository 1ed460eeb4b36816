"""track(): what a peewee model declares, and what it refuses at declaration time."""

from __future__ import annotations

from collections.abc import Iterator

import peewee
import pytest

import reality_peewee
from reality_core.errors import DeclarationError
from reality_core.keys import row_key, table_key


@pytest.fixture(autouse=True)
def fresh_registry() -> Iterator[None]:
    reality_peewee.registry.clear()
    yield
    reality_peewee.registry.clear()


def _models() -> tuple[type[peewee.Model], type[peewee.Model]]:
    class Room(peewee.Model):
        class Meta:
            table_name = "rooms"
            schema = "chat"

    class Message(peewee.Model):
        room = peewee.ForeignKeyField(Room, on_delete="CASCADE")
        body = peewee.TextField()

    return Room, Message


def test_decorator_and_function_forms() -> None:
    room_model, message_model = _models()
    assert reality_peewee.track(room_model) is room_model
    decorated = reality_peewee.track(keys=["room:{room}"])(message_model)
    assert decorated is message_model
    decl = reality_peewee.registry.get("message")
    assert decl is not None
    rooms = reality_peewee.registry.get("chat.rooms")
    assert rooms is not None
    assert rooms.declaration.primary_key == ("id",)
    # The database's ON DELETE CASCADE from rooms is known: deletes there escalate messages.
    assert reality_peewee.registry.catalog.cascade_keys("chat.rooms") == (
        decl.declaration.escalation_keys())


@pytest.mark.parametrize("placeholder", ["room", "room_id"])
def test_placeholders_name_a_field_or_its_column(placeholder: str) -> None:
    _, message_model = _models()
    reality_peewee.track(message_model, keys=[f"room:{{{placeholder}}}"])
    tracked = reality_peewee.registry.get("message")
    assert tracked is not None
    image = tracked.image({message_model.room: 7, message_model.id: 1})
    assert tracked.declaration.keys_for_row(image) == {
        table_key("message"), row_key("message", [1]), "room:7"}


def test_refusals() -> None:
    room_model, message_model = _models()
    with pytest.raises(DeclarationError, match="names column 'room_no'"):
        reality_peewee.track(message_model, keys=["room:{room_no}"])
    with pytest.raises(DeclarationError, match="peewee Model class"):
        reality_peewee.track(object)  # type: ignore[type-var]

    class Versions(peewee.Model):
        class Meta:
            table_name = "reality_versions"

    with pytest.raises(DeclarationError, match="never tracked"):
        reality_peewee.track(Versions)
    with pytest.raises(DeclarationError, match="no key at all"):
        reality_peewee.track(room_model, table=False, rows=False)


def test_link_models_and_deferred_through_models() -> None:
    deferred = peewee.DeferredThroughModel()

    class Student(peewee.Model):
        pass

    class Course(peewee.Model):
        students = peewee.ManyToManyField(Student, backref="courses", through_model=deferred)

    reality_peewee.track(Course)  # its through model does not exist yet
    assert reality_peewee.registry.get("enrolment") is None

    class Enrolment(peewee.Model):
        course = peewee.ForeignKeyField(Course)
        student = peewee.ForeignKeyField(Student)

        class Meta:
            primary_key = peewee.CompositeKey("course", "student")

    deferred.set_model(Enrolment)
    assert reality_peewee.registry.for_model(Enrolment) is not None  # resolved on first use
    link = reality_peewee.registry.get("enrolment")
    assert link is not None
    assert not link.declaration.row_keys
    assert set(link.declaration.links) == {("course_id", "course", "id"),
                                           ("student_id", "student", "id")}


def test_explicit_link_model_and_models_without_primary_key() -> None:
    class A(peewee.Model):
        pass

    class Pair(peewee.Model):
        a = peewee.ForeignKeyField(A)
        note = peewee.TextField()

        class Meta:
            primary_key = False

    reality_peewee.track(Pair)  # no key of its own: a link table by default
    pair = reality_peewee.registry.get("pair")
    assert pair is not None
    assert pair.declaration.links == (("a_id", "a", "id"),)
    assert not pair.declaration.row_keys

    class Solo(peewee.Model):
        a = peewee.ForeignKeyField(A)

    reality_peewee.track(Solo, links=True)
    solo = reality_peewee.registry.get("solo")
    assert solo is not None
    assert solo.declaration.links == (("a_id", "a", "id"),)
