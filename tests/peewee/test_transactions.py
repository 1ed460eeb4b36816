"""Every peewee transaction form: the bump rides the outermost COMMIT, and nothing else
publishes or keeps keys (I1, I2, I3, I7)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import peewee
import pytest

import reality_peewee
from reality_core.errors import ConfigurationError, InvalidKeyError, WritePathError
from reality_core.store import LOG_TABLE
from tests.peewee.conftest import R, T, Watch
from tests.peewee.models import Message, Room

Start = Callable[..., Watch]
M = T("message")


@pytest.fixture
def room(db: peewee.Database) -> Room:
    return Room.create(id=1)


def keys_of(*ids: int) -> set[str]:
    return {M, *(R("message", i) for i in ids), "room:1"} if ids else set()


def all_keys(*ids: int) -> tuple[str, ...]:
    return (M, *(R("message", i) for i in ids), "room:1")


def test_transaction_object_commits_and_rolls_back_mid_block(db: peewee.Database,
                                                             watch: Start, room: Room) -> None:
    w = watch(*all_keys(1, 2))
    with db.atomic() as txn:
        Message.create(id=1, room=room)
        txn.commit()  # publishes message 1, opens a new transaction
        assert w.moved() == keys_of(1)
        Message.create(id=2, room=room)
        txn.rollback()
    assert w.delta()[R("message", 2)] == 0
    assert not Message.select().where(Message.id == 2).exists()

    w = watch(*all_keys(3))
    with db.transaction():
        Message.create(id=3, room=room)
        assert w.moved() == set()
    assert w.moved() == keys_of(3)


def test_savepoint_object(db: peewee.Database, watch: Start, room: Room) -> None:
    w = watch(*all_keys(1, 2, 3))
    with db.atomic():
        Message.create(id=1, room=room)
        with db.savepoint() as sp:
            Message.create(id=2, room=room)
            sp.rollback()  # ROLLBACK TO SAVEPOINT: message 2 is gone
        with db.savepoint():
            Message.create(id=3, room=room)
        assert w.moved() == set()
    assert w.moved() == {M, R("message", 1), R("message", 3), "room:1"}


def test_manual_commit_with_begin_commit_rollback(db: peewee.Database, watch: Start,
                                                  room: Room) -> None:
    w = watch(*all_keys(1, 2, 3))
    with db.manual_commit():
        db.begin()
        Message.create(id=1, room=room)
        db.rollback()
        db.begin()
        Message.create(id=2, room=room)
        assert w.moved() == set()
        db.commit()
        # No transaction now: a write here commits on its own, bump and all.
        Message.create(id=3, room=room)
    assert w.moved() == {M, R("message", 2), R("message", 3), "room:1"}


def test_database_as_context_manager(db: peewee.Database, watch: Start, room: Room) -> None:
    db.close()
    w = watch(*all_keys(1))
    with db:  # connect, atomic(), close
        Message.create(id=1, room=room)
    assert db.is_closed()
    assert w.moved() == keys_of(1)


def test_session_start_commit_rollback(db: peewee.Database, watch: Start, room: Room) -> None:
    w = watch(*all_keys(1, 2))
    db.session_start()
    Message.create(id=1, room=room)
    db.session_rollback()
    db.session_start()
    Message.create(id=2, room=room)
    db.session_commit()
    assert w.moved() == {M, R("message", 2), "room:1"}


def test_transaction_control_as_sql(db: peewee.Database, watch: Start, room: Room) -> None:
    w = watch(*all_keys(1, 2, 3))
    db.execute_sql("BEGIN")
    Message.create(id=1, room=room)
    db.execute_sql("SAVEPOINT a")
    Message.create(id=2, room=room)
    db.execute_sql("ROLLBACK TO SAVEPOINT a")
    Message.create(id=3, room=room)
    db.execute_sql("RELEASE SAVEPOINT a")
    assert w.moved() == set()
    db.execute_sql("COMMIT")
    assert w.moved() == {M, R("message", 1), R("message", 3), "room:1"}

    w = watch(*all_keys(4))
    db.execute_sql("BEGIN")
    Message.create(id=4, room=room)
    db.execute_sql("ROLLBACK")
    assert w.moved() == set()


def test_nested_atomic_as_decorator(db: peewee.Database, watch: Start, room: Room) -> None:
    @db.atomic()
    def inner(fail: bool) -> None:
        Message.create(id=2 if fail else 3, room=room)
        if fail:
            raise RuntimeError("inner fails")

    w = watch(*all_keys(1, 2, 3))
    with db.atomic():
        Message.create(id=1, room=room)
        with pytest.raises(RuntimeError):
            inner(True)
        inner(False)
    assert w.moved() == {M, R("message", 1), R("message", 3), "room:1"}


def test_a_statement_that_fails_in_autocommit_mode_leaves_nothing(db: peewee.Database,
                                                                  watch: Start,
                                                                  room: Room) -> None:
    Message.create(id=1, room=room)
    w = watch(*all_keys(1, 2))
    with pytest.raises(peewee.IntegrityError):
        Message.create(id=1, room=room)
    assert w.moved() == set()
    Message.create(id=2, room=room)
    assert w.moved() == keys_of(2)


def _break_the_store(db: peewee.Database) -> None:
    db.execute_sql(f"DROP TABLE {LOG_TABLE}")  # where every bump writes


def _repair_the_store(db: peewee.Database) -> None:
    reality_peewee.create_tables(db)


def test_a_failed_bump_fails_the_transaction(db: peewee.Database, room: Room,
                                            dialect: str, watch: Start) -> None:
    _break_the_store(db)
    with pytest.raises(WritePathError, match=r"reality_log|does not exist|no such table"):
        Message.create(id=1, room=room)  # autocommit: the write and its bump, or neither
    assert not Message.select().where(Message.id == 1).exists()

    with pytest.raises(WritePathError), db.atomic():
        Message.create(id=2, room=room)
    assert not Message.select().where(Message.id == 2).exists()

    _repair_the_store(db)
    w = watch(*all_keys(3))
    Message.create(id=3, room=room)  # and the plugin keeps working
    assert w.moved() == keys_of(3)


# SQLite has one writer at a time: the second thread would wait for the first.
@pytest.mark.parametrize(
    "dialect", [pytest.param("postgresql", marks=pytest.mark.postgres), "mysql"], indirect=True)
def test_keys_of_one_thread_never_reach_another(db: peewee.Database, watch: Start,
                                               room: Room) -> None:
    started, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with db.atomic():
                Message.create(id=1, room=room)
                started.set()
                assert release.wait(30)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            db.close()

    w = watch(*all_keys(1, 2))
    thread = threading.Thread(target=writer)
    thread.start()
    assert started.wait(30)
    Message.create(id=2, room=room)  # commits while the other transaction is open
    assert w.moved() == keys_of(2)
    assert w.delta()[R("message", 1)] == 0
    release.set()
    thread.join(30)
    assert not errors
    assert w.moved() == keys_of(1, 2)


def test_dirty_connection_of_another_thread(db: peewee.Database, watch: Start,
                                           room: Room) -> None:
    def abandon() -> None:
        db.begin()
        Message.create(id=1, room=room)
        db.close()  # closed mid-transaction, by hand

    w = watch(*all_keys(1, 2))
    thread = threading.Thread(target=abandon)
    thread.start()
    thread.join(30)
    Message.create(id=2, room=room)
    assert w.moved() == keys_of(2)
    assert [m.id for m in Message.select()] == [2]


def test_close_inside_atomic_is_refused_and_keeps_the_keys(db: peewee.Database,
                                                           watch: Start, room: Room) -> None:
    w = watch(*all_keys(1))
    with db.atomic():
        Message.create(id=1, room=room)
        with pytest.raises(peewee.OperationalError):
            db.close()
    assert w.moved() == keys_of(1)


def test_manual_bump(db: peewee.Database, watch: Start) -> None:
    w = watch("feed:global")
    with pytest.raises(RuntimeError), db.atomic():
        reality_peewee.bump(db, "feed:global")
        raise RuntimeError
    assert w.moved() == set()
    with db.atomic():
        reality_peewee.bump(db, "feed:global", "feed:global")
        with db.atomic():
            reality_peewee.bump(db, "feed:global")
    assert w.delta() == {"feed:global": 1}

    with pytest.raises(ConfigurationError, match="inside a transaction"):
        reality_peewee.bump(db, "feed:global")
    with pytest.raises(InvalidKeyError), db.atomic():
        reality_peewee.bump(db, "$table:message")
    other = peewee.SqliteDatabase(":memory:")
    with pytest.raises(ConfigurationError, match="install"):
        reality_peewee.bump(other, "feed:global")
