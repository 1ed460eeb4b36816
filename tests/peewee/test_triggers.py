"""Trigger mode on PostgreSQL: ``create_triggers()`` and the plugin stepping aside for the
tables the database bumps itself (reality_core/triggers.py).

Real PostgreSQL only. The bump the plugin writes goes to the DB-API connection directly,
not through peewee, so the tests watch both: the SQL peewee sends (its ``peewee`` debug
log) and ``run_bump`` calls (a pass-through spy: the database still does everything).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import peewee
import pytest

import reality_peewee
from reality_core.errors import ConfigurationError, UnsupportedStatementError, WritePathError
from reality_core.store import LOG_TABLE
from reality_peewee import _tracker
from reality_peewee._api import tracker_of
from tests.peewee.conftest import R, T, Watch, open_plain, prepared
from tests.peewee.models import Message, Post, PostTag, Room, Seat, Tag

pytestmark = pytest.mark.postgres

TRACKED = {"room", "message", "tag", "post", str(PostTag._meta.table_name), "comment", "seat"}
M = T("message")


@pytest.fixture
def db(pg_url: str) -> Iterator[peewee.Database]:
    """Overrides the conftest's (every dialect): PostgreSQL only."""
    with prepared(open_plain(pg_url)) as database:
        yield database
        if database.in_transaction():
            database.rollback()
        # The functions outlive the tables prepared() drops; the next test starts bare.
        reality_peewee.drop_triggers(database, tables=sorted(TRACKED))


class Bumps:
    """Every ``run_bump`` the plugin makes, passed on to the real one."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[list[str]] = []
        real = _tracker.run_bump

        def spy(conn: Any, dialect: Any, keys: Any, *args: Any, **kwargs: Any) -> Any:
            self.calls.append(list(keys))
            return real(conn, dialect, keys, *args, **kwargs)

        monkeypatch.setattr(_tracker, "run_bump", spy)


@pytest.fixture
def bumps(monkeypatch: pytest.MonkeyPatch) -> Bumps:
    return Bumps(monkeypatch)


@pytest.fixture
def sent(caplog: pytest.LogCaptureFixture) -> Iterator[list[str]]:
    """The SQL text of every statement peewee sends from here on (its debug log)."""
    out: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            msg = record.msg
            if isinstance(msg, tuple) and msg and isinstance(msg[0], str):
                out.append(msg[0])

    logger = logging.getLogger("peewee")
    handler, level = Grab(level=logging.DEBUG), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield out
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def covered(db: peewee.Database) -> frozenset[str]:
    tracker = tracker_of(db)
    assert tracker is not None
    return tracker.covered()


def log_rows(db: peewee.Database, key: str) -> int:
    cursor = db.execute_sql(f"SELECT count(*) FROM {LOG_TABLE} WHERE key_name = %s", (key,))
    count: int = cursor.fetchone()[0]
    return count


def test_create_triggers_covers_every_tracked_table(db: peewee.Database) -> None:
    assert covered(db) == frozenset()
    done = reality_peewee.create_triggers(db)
    assert set(done) == TRACKED
    assert covered(db) == TRACKED
    names = {r[0] for r in db.execute_sql(
        "SELECT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "WHERE starts_with(t.tgname, 'reality_bump_') AND NOT t.tgisinternal").fetchall()}
    assert names == TRACKED


def test_a_covered_commit_sends_no_bump_and_no_old_value_read(
        db: peewee.Database, watch: Any, bumps: Bumps, sent: list[str]) -> None:
    reality_peewee.create_triggers(db)
    Room.create(id=7)
    Room.create(id=8)
    post, tag = Post.create(id=1), Tag.create(id=1, name="a")
    keys = (M, R("message", 1), R("message", 2), R("message", 3), "room:7", "room:8",
            "room:9", T("post"), R("post", 1), R("tag", 1), T(PostTag._meta.table_name))
    w: Watch = watch(*keys)
    bumps.calls.clear()
    sent.clear()
    with db.atomic():
        m = Message.create(id=1, room=7, body="a")
        m.room = 8
        m.save()  # would read room_id FOR UPDATE on the Python path
        Message.insert_many([{"id": 2, "room": 7}, {"id": 3, "room": 8}]).execute()
        Message.update(score=5).where(Message.score == 0).execute()
        Message.get_by_id(3).delete_instance()
        post.tags.add(tag)
        db.execute_sql("UPDATE message SET body = 'raw' WHERE id = 2")
    assert bumps.calls == []
    assert not [q for q in sent if "FOR UPDATE" in q.upper()]
    assert not [q for q in sent if LOG_TABLE in q]
    assert w.delta() == {M: 1, R("message", 1): 1, R("message", 2): 1, R("message", 3): 1,
                         "room:7": 1, "room:8": 1, "room:9": 0, T("post"): 0, R("post", 1): 1,
                         R("tag", 1): 1, T(PostTag._meta.table_name): 1}
    # Autocommitted writes on a covered table need no BEGIN/COMMIT of the plugin's own.
    sent.clear()
    Message.create(id=4, room=7)
    assert [q for q in sent if q.upper().startswith(("BEGIN", "COMMIT"))] == []
    assert bumps.calls == []


def test_uncovered_tables_and_bump_keep_the_python_path(
        db: peewee.Database, watch: Any, bumps: Bumps) -> None:
    reality_peewee.create_triggers(db, tables=["message"])
    assert covered(db) == {"message"}
    Room.create(id=7)
    w: Watch = watch(M, R("message", 1), "room:7", T("room"), R("room", 7), "manual")
    bumps.calls.clear()
    with db.atomic():
        Message.create(id=1, room=7)
        Room.update(name="x").where(Room.id == 7).execute()
        reality_peewee.bump(db, "manual")
    assert [sorted(c) for c in bumps.calls] == [sorted([T("room"), R("room", 7), "manual"])]
    assert w.delta() == {M: 1, R("message", 1): 1, "room:7": 1, T("room"): 1,
                         R("room", 7): 1, "manual": 1}
    # A transaction that left nothing for Python sends no bump at all.
    bumps.calls.clear()
    with db.atomic():
        Message.create(id=2, room=7)
    assert bumps.calls == []


def test_a_write_outside_peewee_bumps(db: peewee.Database, watch: Any) -> None:
    reality_peewee.create_triggers(db)
    Room.create(id=7)
    Room.create(id=8)
    Message.create(id=1, room=7)
    w: Watch = watch(M, R("message", 1), R("message", 2), "room:7", "room:8")
    raw: Any = db._connect()  # type: ignore[attr-defined]  # a bare driver connection
    try:
        cursor = raw.cursor()
        cursor.execute("UPDATE message SET room_id = 8 WHERE id = 1")
        cursor.close()
        if not raw.autocommit:
            raw.commit()
    finally:
        raw.close()
    assert w.delta() == {M: 1, R("message", 1): 1, R("message", 2): 0, "room:7": 1,
                         "room:8": 1}


def test_many_statements_on_one_row_bump_each_key_once(
        db: peewee.Database, watch: Any) -> None:
    reality_peewee.create_triggers(db)
    Room.create(id=7)
    Room.create(id=8)
    w: Watch = watch(M, R("message", 1), "room:7", "room:8")
    with db.atomic():
        m = Message.create(id=1, room=7)
        m.body = "b"
        m.save()
        m.room = 8
        m.save()
        reality_peewee.bump(db, "room:7")  # the Python path too, same transaction
        m.delete_instance()
    assert w.delta() == {M: 1, R("message", 1): 1, "room:7": 1, "room:8": 1}
    assert log_rows(db, R("message", 1)) > 1  # several statements, read once (txid)


def test_a_stale_trigger_is_logged_and_python_takes_over(
        db: peewee.Database, watch: Any, bumps: Bumps,
        caplog: pytest.LogCaptureFixture) -> None:
    reality_peewee.create_triggers(db, max_keys=5)  # the plugin was installed with 1000
    Room.create(id=7)
    with caplog.at_level(logging.WARNING, logger="reality.triggers"):
        assert covered(db) == frozenset()
    assert "made from another declaration" in caplog.text
    w: Watch = watch(M, R("message", 1), "room:7")
    bumps.calls.clear()
    with db.atomic():
        Message.create(id=1, room=7)
    assert [sorted(c) for c in bumps.calls] == [sorted([M, R("message", 1), "room:7"])]
    assert w.delta() == {M: 1, R("message", 1): 1, "room:7": 1}  # trigger and Python: once


def test_drop_triggers_brings_the_python_path_back(
        db: peewee.Database, watch: Any, bumps: Bumps) -> None:
    reality_peewee.create_triggers(db)
    assert covered(db) == TRACKED
    assert set(reality_peewee.drop_triggers(db)) == TRACKED
    assert covered(db) == frozenset()  # the cached answer was dropped with them
    Room.create(id=7)
    w: Watch = watch(M, R("message", 1), "room:7")
    bumps.calls.clear()
    with db.atomic():
        Message.create(id=1, room=7)
    assert [sorted(c) for c in bumps.calls] == [sorted([M, R("message", 1), "room:7"])]
    assert w.delta() == {M: 1, R("message", 1): 1, "room:7": 1}


def test_coverage_is_read_once_per_connection(
        db: peewee.Database, monkeypatch: pytest.MonkeyPatch) -> None:
    lookups: list[Any] = []
    real = _tracker.covered_tables

    def spy(conn: Any, specs: Any) -> frozenset[str]:
        lookups.append(conn)
        return real(conn, specs)

    monkeypatch.setattr(_tracker, "covered_tables", spy)
    reality_peewee.create_triggers(db)
    Room.create(id=7)
    for i in range(3):
        with db.atomic():
            Message.create(id=i, room=7)
    assert len(lookups) == 1
    db.close()  # a new physical connection asks again
    Message.create(id=10, room=7)
    assert len(lookups) == 2
    assert lookups[0] is not lookups[1]
    reality_peewee.create_triggers(db, tables=["message"])  # a new epoch: ask again
    Message.create(id=11, room=7)
    assert len(lookups) == 3


def test_a_failed_coverage_lookup_fails_the_transaction(db: peewee.Database,
                                                       pg_url: str) -> None:
    reality_peewee.create_triggers(db)
    Room.create(id=7)
    db.close()  # the next write's connection has not looked yet
    locker: Any = open_plain(pg_url)
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        with locker.atomic():
            locker.execute_sql("LOCK TABLE pg_catalog.pg_trigger IN ACCESS EXCLUSIVE MODE")
            locked.set()
            release.wait(10)
        locker.close()

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert locked.wait(10)
        with (pytest.raises(WritePathError, match="could not look up its triggers"),
              db.atomic()):
            db.execute_sql("SET LOCAL lock_timeout = '200ms'")
            Message.create(id=1, room=7)
    finally:
        release.set()
        thread.join()
    assert not Message.select().where(Message.id == 1).exists()


def test_create_triggers_refuses_other_databases() -> None:
    with pytest.raises(ConfigurationError, match="needs PostgreSQL, not sqlite"):
        reality_peewee.create_triggers(peewee.SqliteDatabase(":memory:"))
    with pytest.raises(ConfigurationError, match="needs PostgreSQL, not mysql"):
        reality_peewee.drop_triggers(peewee.MySQLDatabase("nowhere"))


class Flag(peewee.Model):
    on = peewee.BooleanField(default=False)


def test_an_unsupported_key_column_is_refused_and_nothing_created(
        db: peewee.Database) -> None:
    Flag.bind(db)
    reality_peewee.track(Flag, keys=["flag:{on}"])
    db.create_tables([Flag])
    try:
        with pytest.raises(ConfigurationError, match=r"flag\.on is bool"):
            reality_peewee.create_triggers(db)
        # Triggers die with their tables, functions do not: look for this test's only.
        made = db.execute_sql(
            "SELECT (SELECT count(*) FROM pg_trigger WHERE starts_with(tgname, 'reality_bump_'))"
            " + (SELECT count(*) FROM pg_proc WHERE proname = ANY(%s))",
            ([f"reality_bump_{t}" for t in sorted(TRACKED | {"flag"})],),
        ).fetchone()[0]
        assert made == 0
        assert covered(db) == frozenset()
        # The other tables alone are fine.
        reality_peewee.create_triggers(db, tables=sorted(TRACKED))
        assert covered(db) == TRACKED
    finally:
        db.drop_tables([Flag])


def test_more_rows_than_max_keys_escalate(
        pg_url: str, watch: Any, db: peewee.Database) -> None:
    reality_peewee.uninstall(db)
    reality_peewee.install(db, max_keys=3)
    reality_peewee.create_triggers(db)  # with the installed max_keys
    assert covered(db) == TRACKED
    w: Watch = watch(R("seat", "a", 1), R("seat", "z", 99), T("seat"))
    Seat.insert_many([{"hall": "a", "number": n} for n in (1, 2)]).execute()
    assert w.delta() == {R("seat", "a", 1): 1, R("seat", "z", 99): 0, T("seat"): 1}
    w = watch(R("seat", "a", 1), R("seat", "z", 99), T("seat"))
    Seat.insert_many([{"hall": "b", "number": n} for n in range(10)]).execute()
    moved = w.moved()
    assert R("seat", "z", 99) in moved  # a row nobody wrote: escalated
    assert T("seat") in moved
    # The trigger counts a transaction's rows, as the Python path counts its keys.
    w = watch(R("seat", "z", 99))
    with db.atomic():
        for n in range(5):
            Seat.create(hall="c", number=n)
    assert w.moved() == {R("seat", "z", 99)}


class _Logged:
    """A DB-API cursor that notes the SQL it is given; everything else is the cursor's."""

    def __init__(self, cursor: Any, out: list[str]) -> None:
        self._cursor, self._out = cursor, out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)

    def __iter__(self) -> Any:
        return iter(self._cursor)

    def execute(self, sql: Any, *args: Any, **kwargs: Any) -> Any:
        self._out.append(str(sql))
        return self._cursor.execute(sql, *args, **kwargs)


def test_a_covered_transaction_sends_what_peewee_alone_sends(
        db: peewee.Database, bumps: Bumps, monkeypatch: pytest.MonkeyPatch) -> None:
    """G1: with the triggers doing the bump, a transaction costs the plugin no statement,
    no plan, no coverage lookup (remembered per connection) and no bump."""
    reality_peewee.create_triggers(db)
    Room.create(id=7)
    Message.create(id=1, room=7)  # this connection has looked up its coverage

    def work(i: int) -> None:
        with db.atomic():
            Message.create(id=i, room=7)
            m = Message.get_by_id(i)
            m.body = "b"
            m.save()
            Message.update(score=1).where(Message.room == 7).execute()
            Message.delete().where(Message.id == i).execute()
            with db.atomic():  # a savepoint
                Message.create(id=i + 1, room=7)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("key work for a covered table")

    def run(i: int) -> list[str]:
        out: list[str] = []
        real = db.cursor
        db.cursor = lambda *a, **k: _Logged(real(*a, **k), out)  # type: ignore[method-assign]
        try:
            work(i)
        finally:
            del db.cursor
        # savepoint names are random: compare their shape
        return ["SAVEPOINT" if s.startswith(("SAVEPOINT", "RELEASE")) else s for s in out]

    with monkeypatch.context() as patch:
        patch.setattr(_tracker, "plan_for", refuse)
        patch.setattr(_tracker.Coverage, "tables", refuse)
        bumps.calls.clear()
        with_plugin = run(10)
    assert bumps.calls == []
    reality_peewee.uninstall(db)
    try:
        without = run(20)
    finally:
        reality_peewee.install(db)
    assert with_plugin == without
    assert with_plugin  # (the spy saw them)


def test_raw_sql_keys_follow_the_coverage(db: peewee.Database, watch: Any,
                                          bumps: Bumps) -> None:
    """A raw SQL string's remembered keys are those left after the covered tables."""
    Room.create(id=7)
    Message.create(id=1, room=7)
    sql = "UPDATE message SET score = score + 1"
    bumps.calls.clear()
    db.execute_sql(sql)
    assert len(bumps.calls) == 1  # the Python path escalates message
    reality_peewee.create_triggers(db)
    bumps.calls.clear()
    for _ in range(2):
        w: Watch = watch(M, R("message", 1), "room:7")
        db.execute_sql(sql)
        assert w.delta() == {M: 1, R("message", 1): 1, "room:7": 1}  # by the trigger
    assert bumps.calls == []
    reality_peewee.drop_triggers(db)
    db.execute_sql(sql)
    assert len(bumps.calls) == 1


def test_unreadable_raw_sql_under_strict_is_fine_when_every_table_is_covered(
        db: peewee.Database) -> None:
    reality_peewee.uninstall(db)
    reality_peewee.install(db, raw_sql="strict")
    block = "DO $$ BEGIN UPDATE room SET name = 'x'; END $$"
    reality_peewee.create_triggers(db)
    for _ in range(2):
        db.execute_sql(block)
    reality_peewee.drop_triggers(db, tables=["room"])
    with pytest.raises(UnsupportedStatementError):
        db.execute_sql(block)
