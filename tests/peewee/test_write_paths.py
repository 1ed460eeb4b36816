"""Every peewee write path bumps the right keys (I4, I5), on each database.

Each test watches *bystander* keys too (another row of the same table, another room): a
bystander that moves shows escalation, so a test can tell exact keys from over-invalidation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import peewee
import pytest

import reality_peewee
from reality_core.errors import UnsupportedStatementError
from tests.peewee.conftest import R, T, Watch, open_plain, prepared
from tests.peewee.models import Comment, Message, Plain, Post, PostTag, Room, Seat, Tag

Start = Callable[..., Watch]
M = T("message")
LINK = T(PostTag._meta.table_name)


def rooms(*numbers: int) -> list[Room]:
    return [Room.create(id=n, name=f"room {n}") for n in numbers]


def message(id: int, room: int | None, score: int = 0) -> Message:
    return Message.create(id=id, room=room, body=f"m{id}", score=score)


# --- save() / create() / delete_instance() -----------------------------------------------


@pytest.mark.parametrize("in_transaction", [True, False], ids=["atomic", "autocommit"])
def test_create_bumps_the_new_row_and_its_template(db: peewee.Database, watch: Start,
                                                    in_transaction: bool) -> None:
    rooms(7)
    w = watch(M, R("message", 1), R("message", 999), "room:7", "room:999")
    if in_transaction:
        with db.atomic():
            created = Message.create(room=7, body="hi")  # id from the database
    else:
        created = Message.create(room=7, body="hi")
    assert created.id == 1
    assert w.moved() == {M, R("message", 1), "room:7"}


def test_save_update_bumps_old_and_new_template_values(db: peewee.Database,
                                                        watch: Start) -> None:
    rooms(7, 8, 9)
    m = message(1, 7)
    w = watch(M, R("message", 1), R("message", 2), "room:7", "room:8", "room:9")
    with db.atomic():
        m.room = 8
        m.save()
    assert w.moved() == {M, R("message", 1), "room:7", "room:8"}


def test_save_of_other_fields_bumps_the_current_template(db: peewee.Database,
                                                          watch: Start) -> None:
    rooms(7)
    m = message(1, 7)
    w = watch(M, R("message", 1), "room:7", "room:8")
    m.score = 5
    m.save(only=[Message.score])  # the UPDATE does not mention room_id: read before it
    assert w.moved() == {M, R("message", 1), "room:7"}


def test_delete_instance_bumps_the_old_values(db: peewee.Database, watch: Start) -> None:
    rooms(7)
    m = message(1, 7)
    message(2, 7)
    w = watch(M, R("message", 1), R("message", 2), "room:7", "room:8")
    m.delete_instance()
    assert w.moved() == {M, R("message", 1), "room:7"}


def test_delete_instance_recursive_bumps_the_children(db: peewee.Database,
                                                      watch: Start) -> None:
    post = Post.create(id=1)
    Comment.create(id=1, post=post)
    Comment.create(id=2, post=post)
    other = Post.create(id=2)
    Comment.create(id=3, post=other)
    w = watch(T("comment"), R("comment", 1), R("comment", 2), R("comment", 3),
              "post:1:comments", "post:2:comments", R("post", 1), R("post", 2))
    post.delete_instance(recursive=True)
    assert w.moved() == {T("comment"), R("comment", 1), R("comment", 2), "post:1:comments",
                         R("post", 1)}


def test_database_cascade_escalates_the_child_table(db: peewee.Database,
                                                    watch: Start) -> None:
    room = rooms(7)[0]
    message(1, 7)
    w = watch(M, R("message", 1), R("message", 999), "room:7", "room:999")
    room.delete_instance()  # ON DELETE CASCADE removes message 1: rows unknowable here
    assert w.moved() == {M, R("message", 1), R("message", 999), "room:7", "room:999"}


def test_composite_primary_key(db: peewee.Database, watch: Start) -> None:
    seat = Seat.create(hall="a:1", number=7, room_id=1)
    Seat.create(hall="a:1", number=8, room_id=1)
    keys = (T("seat"), R("seat", "a:1", 7), R("seat", "a:1", 8), "seats:1", "seats:2")
    assert R("seat", "a:1", 7) == "$row:seat:a%3A1:7"  # the ':' inside a part is encoded
    w = watch(*keys)
    seat.room_id = 2
    seat.save()  # WHERE hall = 'a:1' AND number = 7: the row is known, its old room read
    assert w.moved() == {T("seat"), R("seat", "a:1", 7), "seats:1", "seats:2"}
    w = watch(*keys)
    seat.delete_instance()
    assert w.moved() == {T("seat"), R("seat", "a:1", 7), "seats:2"}


@pytest.mark.parametrize("dialect", ["sqlite"], indirect=True)
def test_sqlite_returning_clause(url: str) -> None:
    with prepared(open_plain(url, returning_clause=True)) as db:
        Room.create(id=7)
        keys = (M, R("message", 1), R("message", 9), "room:7")
        reader = reality_peewee.version_reader(db)
        try:
            w = Watch(reader, keys)
            created = Message.create(room=7)  # INSERT ... RETURNING id, and its own COMMIT
            assert created.id == 1
            assert w.moved() == {M, R("message", 1), "room:7"}
        finally:
            reader.close()


# --- update() / delete() with WHERE --------------------------------------------------------


def test_update_by_primary_keys_is_exact(db: peewee.Database, watch: Start) -> None:
    rooms(1, 2, 3)
    for i in (1, 2, 3):
        message(i, i)
    w = watch(M, *(R("message", i) for i in (1, 2, 3)), "room:1", "room:2", "room:3")
    with db.atomic():
        Message.update(score=Message.score + 1).where(Message.id.in_([1, 2])).execute()
    assert w.moved() == {M, R("message", 1), R("message", 2), "room:1", "room:2"}


def test_update_where_reads_the_rows_or_escalates_on_mysql(db: peewee.Database,
                                                           watch: Start, dialect: str) -> None:
    rooms(1, 2, 3)
    message(1, 1, score=5)
    message(2, 2, score=9)
    message(3, 3, score=0)
    w = watch(M, *(R("message", i) for i in (1, 2, 3)), "room:1", "room:2", "room:3")
    Message.update(body="bulk").where(Message.score >= 5).execute()
    if dialect == "mysql":  # MySQL counts changed rows, not matched ones: no pre-read
        assert w.moved() == {M, *(R("message", i) for i in (1, 2, 3)),
                             "room:1", "room:2", "room:3"}
    else:
        assert w.moved() == {M, R("message", 1), R("message", 2), "room:1", "room:2"}


def test_update_of_a_template_column_by_expression_escalates_it(db: peewee.Database,
                                                                watch: Start) -> None:
    rooms(1, 2, 3)
    message(1, 1)
    w = watch(M, R("message", 1), R("message", 2), "room:1", "room:3")
    Message.update(room=Message.room + 1).where(Message.id == 1).execute()
    # old room exact; new room computed by the database: every room:* reads as changed
    assert w.moved() == {M, R("message", 1), "room:1", "room:3"}


def test_update_matching_no_row_bumps_nothing(db: peewee.Database, watch: Start) -> None:
    rooms(1)
    message(1, 1)
    w = watch(M, R("message", 1), R("message", 42), "room:1")
    Message.update(score=3).where(Message.id == 42).execute()
    Message.delete().where(Message.score > 100).execute()
    assert w.moved() == set()


def test_delete_where_reads_the_rows_it_deletes(db: peewee.Database, watch: Start) -> None:
    rooms(1, 2)
    message(1, 1, score=5)
    message(2, 2, score=0)
    w = watch(M, R("message", 1), R("message", 2), "room:1", "room:2")
    Message.delete().where(Message.score >= 5).execute()
    assert w.moved() == {M, R("message", 1), "room:1"}


def test_update_pinned_by_a_template_column(db: peewee.Database, watch: Start,
                                          dialect: str) -> None:
    rooms(1, 2)
    message(1, 1)
    message(2, 2)
    w = watch(M, R("message", 1), R("message", 2), "room:1", "room:2")
    with db.atomic():
        Message.update(score=1).where(Message.room == Room.get_by_id(1)).execute()
    expected = {M, R("message", 1), "room:1"}
    if dialect == "mysql":  # the WHERE pins room 1, not the rows
        expected.add(R("message", 2))
    assert w.moved() == expected


def test_bulk_update_method(db: peewee.Database, watch: Start) -> None:
    rooms(1, 2, 3, 4)
    a, b = message(1, 1), message(2, 2)
    message(3, 3)
    w = watch(M, *(R("message", i) for i in (1, 2, 3)), "room:1", "room:2", "room:3")
    a.room, b.room = 4, 4
    Message.bulk_update([a, b], fields=[Message.room])  # SET room_id = CASE ... END
    # rows exact, old rooms exact; the new rooms come from a CASE: room:* escalates
    assert w.moved() == {M, R("message", 1), R("message", 2), "room:1", "room:2", "room:3"}


# --- inserts ------------------------------------------------------------------------------


def test_insert_and_insert_many_with_ids_are_exact(db: peewee.Database, watch: Start) -> None:
    rooms(1, 2, 3)
    w = watch(M, *(R("message", i) for i in (1, 2, 3, 9)), "room:1", "room:2", "room:3")
    with db.atomic():
        Message.insert(id=1, room=1).execute()
        Message.insert_many([(2, 2, "b", 0), (3, 3, "c", 0)],
                            fields=[Message.id, Message.room, Message.body,
                                    Message.score]).execute()
    assert w.moved() == {M, *(R("message", i) for i in (1, 2, 3)), "room:1", "room:2", "room:3"}


def test_insert_many_with_database_ids(db: peewee.Database, watch: Start, dialect: str) -> None:
    rooms(1, 2)
    w = watch(M, R("message", 1), R("message", 2), R("message", 9), "room:1", "room:2",
              "room:9")
    Message.insert_many([{"room": 1}, {"room": 2}]).execute()
    expected = {M, R("message", 1), R("message", 2), "room:1", "room:2"}
    if dialect != "postgresql":  # no RETURNING from peewee there: the ids are unknown
        expected.add(R("message", 9))
    assert w.moved() == expected


def test_bulk_create_from_objects(db: peewee.Database, watch: Start, dialect: str) -> None:
    rooms(1, 2)
    objs = [Message(room=1, body="a"), Message(room=2, body="b")]
    w = watch(M, R("message", 1), R("message", 2), R("message", 9), "room:1", "room:2",
              "room:9")
    Message.bulk_create(objs)  # peewee hands insert_many a generator
    assert Message.select().count() == 2
    expected = {M, R("message", 1), R("message", 2), "room:1", "room:2"}
    if dialect == "postgresql":
        assert [o.id for o in objs] == [1, 2]  # peewee still got the ids we read
    else:
        expected.add(R("message", 9))
    assert w.moved() == expected


def test_insert_from_escalates(db: peewee.Database, watch: Start) -> None:
    rooms(1)
    message(1, 1)
    w = watch(M, R("message", 1), R("message", 9), "room:1", "room:9")
    source = Message.select(Message.id + 100, Message.room, Message.body, Message.score)
    Message.insert_from(source, [Message.id, Message.room, Message.body, Message.score]).execute()
    assert w.moved() == {M, R("message", 1), R("message", 9), "room:1", "room:9"}


def test_on_conflict_ignore(db: peewee.Database, watch: Start) -> None:
    Tag.create(id=1, name="a")
    w = watch(T("tag"), R("tag", 1), R("tag", 2), R("tag", 9))
    Tag.insert(name="a").on_conflict_ignore().execute()  # nothing written
    assert w.moved() == set()
    Tag.insert(id=2, name="b").on_conflict_ignore().execute()
    assert w.moved() == {T("tag"), R("tag", 2)}


def _upsert_messages(dialect: str, rows: list[dict[str, Any]]) -> None:
    query = Message.insert_many(rows)
    if dialect == "mysql":
        query = query.on_conflict(preserve=[Message.room, Message.score])
    else:
        query = query.on_conflict(conflict_target=[Message.id],
                                  preserve=[Message.room, Message.score])
    query.execute()


def test_upsert_rows_and_template_escalation(db: peewee.Database, watch: Start,
                                             dialect: str) -> None:
    rooms(1, 2, 3, 9)
    message(1, 1)
    message(5, 9)
    w = watch(M, R("message", 1), R("message", 2), R("message", 5), "room:1", "room:2",
              "room:3", "room:9")
    _upsert_messages(dialect, [{"id": 1, "room": 2, "score": 1},
                               {"id": 2, "room": 3, "score": 1}])
    expected = {M, R("message", 1), R("message", 2), "room:1", "room:2", "room:3", "room:9"}
    if dialect == "mysql":  # ON DUPLICATE KEY may hit any unique key: rows escalate
        expected.add(R("message", 5))
    assert w.moved() == expected
    assert Message.get_by_id(1).room_id == 2


def test_upsert_on_another_unique_key(db: peewee.Database, watch: Start, dialect: str) -> None:
    Tag.create(id=1, name="a")
    Tag.create(id=5, name="e")
    w = watch(T("tag"), R("tag", 1), R("tag", 5))
    query = Tag.insert(name="a")
    if dialect == "mysql":
        query = query.on_conflict(update={Tag.name: "a2"})
    else:
        query = query.on_conflict(conflict_target=[Tag.name], update={Tag.name: "a2"})
    query.execute()
    expected = {T("tag"), R("tag", 1)}
    if dialect != "postgresql":  # only PostgreSQL's RETURNING names the updated row
        expected.add(R("tag", 5))
    assert w.moved() == expected


@pytest.mark.parametrize("dialect", ["sqlite", "mysql"], indirect=True)
def test_replace_escalates(db: peewee.Database, watch: Start) -> None:
    rooms(1, 2)
    message(1, 1)
    w = watch(M, R("message", 1), R("message", 9), "room:1", "room:2", "room:9")
    Message.replace(id=1, room=2, body="again").execute()
    assert w.moved() == {M, R("message", 1), R("message", 9), "room:1", "room:2", "room:9"}


# --- many-to-many -------------------------------------------------------------------------


def test_many_to_many_add_remove_clear_assign(db: peewee.Database, watch: Start) -> None:
    post = Post.create(id=1)
    t1, t2, t3 = (Tag.create(id=i, name=f"t{i}") for i in (1, 2, 3))
    keys = (LINK, R("post", 1), R("tag", 1), R("tag", 2), R("tag", 3))

    w = watch(*keys)
    post.tags.add([t1, t2])
    assert w.moved() == {LINK, R("post", 1), R("tag", 1), R("tag", 2)}

    w = watch(*keys)
    post.tags.remove(t1)
    assert w.moved() == {LINK, R("post", 1), R("tag", 1)}

    w = watch(*keys)
    post.tags.clear()  # DELETE ... WHERE post_id = 1: the link rows are read first
    assert w.moved() == {LINK, R("post", 1), R("tag", 2)}

    post.tags.add([t1])
    w = watch(*keys)
    with db.atomic():
        post.tags = [t3]  # clear() then add()
    assert w.moved() == {LINK, R("post", 1), R("tag", 1), R("tag", 3)}


def test_deleting_a_tag_escalates_its_links(db: peewee.Database, watch: Start) -> None:
    post = Post.create(id=1)
    tag = Tag.create(id=1, name="t")
    post.tags.add(tag)
    w = watch(LINK, R("post", 1), R("tag", 1))
    with db.atomic():
        Post.tags.get_through_model().delete().where(
            Post.tags.get_through_model().tag == tag).execute()
        tag.delete_instance()
    assert w.moved() == {LINK, R("post", 1), R("tag", 1)}


# --- raw SQL ------------------------------------------------------------------------------


def test_raw_sql_paths_escalate_the_tables_they_write(db: peewee.Database,
                                                       watch: Start) -> None:
    rooms(1)
    message(1, 1)
    everything = (M, R("message", 1), R("message", 9), "room:1", "room:9")
    w = watch(*everything, T("room"))
    db.execute_sql("UPDATE message SET score = score + 1")
    assert w.moved() == set(everything)

    w = watch(*everything)
    Message.raw("UPDATE message SET score = score + 1").execute()
    assert w.moved() == set(everything)

    w = watch(*everything)
    db.execute(peewee.SQL("DELETE FROM message WHERE score > 100"))
    assert w.moved() == set(everything)

    w = watch(*everything)
    Message.truncate_table()  # TRUNCATE (DELETE FROM on SQLite), through db.execute()
    assert w.moved() == set(everything)

    w = watch(*everything)
    db.execute_sql("SELECT id, score AS updated_at FROM message")
    list(Message.raw("SELECT * FROM message"))
    assert w.moved() == set()


def test_table_level_queries_escalate(db: peewee.Database, watch: Start) -> None:
    rooms(1)
    message(1, 1)
    table = peewee.Table("message").bind(db)
    w = watch(M, R("message", 1), "room:1", "room:9")
    table.update({table.c.score: 4}).where(table.c.id == 1).execute()
    assert w.moved() == {M, R("message", 1), "room:1", "room:9"}


@pytest.mark.parametrize("dialect", ["postgresql"], indirect=True)
def test_write_inside_a_cte_is_read_from_the_sql(db: peewee.Database, watch: Start) -> None:
    rooms(1)
    message(1, 1)
    w = watch(M, R("message", 1), "room:1")
    cte = Message.update(score=7).returning(Message.id).cte("changed")
    list(peewee.Select(columns=[cte.c.id]).from_(cte).with_cte(cte).bind(db))
    assert w.moved() == {M, R("message", 1), "room:1"}


@pytest.mark.parametrize("dialect", ["postgresql"], indirect=True)
def test_unreadable_raw_sql_by_policy(url: str, db: peewee.Database, watch: Start) -> None:
    rooms(1)
    w = watch(M, T("room"), R("room", 1), "room:1")
    block = "DO $$ BEGIN UPDATE room SET name = 'x'; END $$"
    db.execute_sql(block)  # conservative (the default): every tracked table escalates
    assert w.moved() == {M, T("room"), R("room", 1), "room:1"}

    reality_peewee.uninstall(db)
    reality_peewee.install(db, raw_sql="strict")
    w = watch(T("room"))
    with pytest.raises(UnsupportedStatementError):
        db.execute_sql(block)
    assert w.moved() == set()
    assert Room.get_by_id(1).name == "x"  # the refused statement did not run


def test_untracked_models_bump_nothing(db: peewee.Database, watch: Start) -> None:
    w = watch(T("plain"), M)
    Plain.create(name="x")
    Plain.update(name="y").execute()
    db.execute_sql("DELETE FROM plain")
    assert w.moved() == set()


def test_template_values_render_alike_from_ids_and_instances(db: peewee.Database,
                                                             watch: Start) -> None:
    room = rooms(7)[0]
    w = watch("room:7")
    Message.create(id=1, room=room)
    Message.create(id=2, room="7")  # a string id, as from a form: IntegerField makes it 7
    assert w.delta() == {"room:7": 2}
