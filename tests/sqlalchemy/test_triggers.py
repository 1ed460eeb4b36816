"""Trigger mode with SQLAlchemy on PostgreSQL: the database bumps tracked tables itself.

The contract suite runs again in trigger mode (ids ending in ``-triggers``); these tests
cover what only trigger mode has: that the Python path really stands aside, that writers
outside the ORM are seen, stale and missing triggers, refused column types, escalation per
statement, and the one-bump-per-transaction rule across statements and paths.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import reality_sqlalchemy
from reality_core.errors import ConfigurationError
from reality_core.keys import ESCALATION_PREFIX, row_key, table_key
from reality_core.reader import DBAPIReader
from reality_core.store import LOG_TABLE
from reality_core.urls import DatabaseURL
from tests.contract.sqlalchemy_harness import Order, Post, Tag, post_tags
from tests.sqlalchemy.test_plugin import open_db, versions

T = table_key("orders")

pytestmark = pytest.mark.postgres


def row(n: int) -> str:
    return row_key("orders", [n])


@pytest.fixture
def trig(pg_url: str) -> Iterator[tuple[str, sa.Engine, DBAPIReader, sessionmaker[Session]]]:
    with open_db("postgresql", pg_url) as (url, engine, reader):
        maker = sessionmaker(engine)
        reality_sqlalchemy.install(maker)
        done = reality_sqlalchemy.create_triggers(engine)
        assert sorted(done) == ["orders", "post_tags", "posts", "tags"]
        try:
            yield url, engine, reader, maker
        finally:
            reality_sqlalchemy.uninstall(maker)


class _LogInserts:
    """Counts ``INSERT INTO reality_log`` sent by the plugin on the DB-API connection."""

    def __init__(self, engine: sa.Engine) -> None:
        self.count = 0
        self.engine = engine

    def __enter__(self) -> _LogInserts:
        sa.event.listen(self.engine, "checkout", self._wrap)
        return self

    def __exit__(self, *exc: Any) -> None:
        sa.event.remove(self.engine, "checkout", self._wrap)
        self.engine.dispose()  # no wrapped connection outlives the count

    def _wrap(self, dbapi_conn: Any, record: Any, proxy: Any) -> None:
        record.info["reality.test.counter"] = self
        if "reality.test.wrapped" in record.info:
            return
        record.info["reality.test.wrapped"] = True
        original = dbapi_conn.cursor

        class Cursor:
            def __init__(self, inner: Any) -> None:
                self._inner = inner

            def execute(self, sql: Any, *args: Any, **kw: Any) -> Any:
                counter = record.info.get("reality.test.counter")
                if counter is not None and isinstance(sql, str) \
                        and sql.startswith(f"INSERT INTO {LOG_TABLE}"):
                    counter.count += 1
                return self._inner.execute(sql, *args, **kw)

            def __getattr__(self, name: str) -> Any:
                return getattr(self._inner, name)

        def cursor(*a: Any, **kw: Any) -> Any:
            return Cursor(original(*a, **kw))

        dbapi_conn.cursor = cursor


def reality_triggers(engine: sa.Engine, where: str = "true") -> int:
    """How many Reality triggers the database holds (``where``: more pg_trigger filters)."""
    with engine.connect() as conn:
        n: int = conn.exec_driver_sql(
            "SELECT count(*) FROM pg_trigger "
            f"WHERE starts_with(tgname::text, 'reality_bump') AND {where}").scalar_one()
    return n


def log_rows(url: str) -> list[tuple[str, int]]:
    with psycopg.connect(DatabaseURL.parse(url).libpq()) as conn:
        return [(k, int(t)) for k, t in conn.execute(
            f"SELECT key_name, txid FROM {LOG_TABLE} ORDER BY id").fetchall()]


def test_every_tracked_table_is_covered_and_python_sends_no_bump(trig: Any) -> None:
    url, engine, reader, maker = trig
    with maker() as session:
        session.add(Order(id=1, room_id=7))
        session.commit()
    with engine.connect() as conn:  # the pool's one connection, the session's
        state_covered = conn.connection.info.get("reality.covered")
    assert state_covered is not None
    assert set(state_covered[1]) == {"orders", "posts", "tags", "post_tags"}
    rows = log_rows(url)
    # Every row came from the trigger: one txid, exactly the three keys.
    assert sorted(k for k, _ in rows) == sorted([T, row(1), "room:7"])
    assert len({t for _, t in rows}) == 1
    assert versions(reader, T, row(1), "room:7") == {T: 1, row(1): 1, "room:7": 1}


def test_writes_from_outside_the_orm_bump(trig: Any) -> None:
    url, _engine, reader, _maker = trig
    with psycopg.connect(DatabaseURL.parse(url).libpq()) as conn:
        conn.execute("INSERT INTO orders (id, room_id, total) VALUES (5, 3, 0)")
        conn.execute("UPDATE orders SET room_id = 4 WHERE id = 5")
    assert versions(reader, T, row(5), "room:3", "room:4") == {
        T: 1, row(5): 1, "room:3": 1, "room:4": 1}


def test_several_statements_on_one_row_bump_each_key_once(trig: Any) -> None:
    _url, _engine, reader, maker = trig
    with maker() as session:
        session.add(Order(id=1, room_id=7))
        session.flush()
        order = session.get(Order, 1)
        assert order is not None
        order.room_id = 8
        session.flush()
        session.execute(sa.text("UPDATE orders SET total = total + 1 WHERE id = 1"))
        reality_sqlalchemy.bump(session, "room:8")  # the Python path, same key, same txn
        session.commit()
    assert versions(reader, T, row(1), "room:7", "room:8") == {
        T: 1, row(1): 1, "room:7": 1, "room:8": 1}


def test_a_rolled_back_savepoint_takes_its_trigger_rows_with_it(trig: Any) -> None:
    _url, _engine, reader, maker = trig
    with maker() as session:
        session.add(Order(id=1, room_id=7))
        session.flush()
        try:
            with session.begin_nested():
                session.add(Order(id=2, room_id=9))
                session.flush()
                raise RuntimeError("inner fails")
        except RuntimeError:
            pass
        session.commit()
    assert versions(reader, T, row(1), row(2), "room:7", "room:9") == {
        T: 1, row(1): 1, row(2): 0, "room:7": 1, "room:9": 0}


def test_many_to_many_link_rows_bump_both_sides(trig: Any) -> None:
    _url, _engine, reader, maker = trig
    with maker() as session:
        post, tag = Post(id=1), Tag(id=2)
        post.tags.append(tag)
        session.add_all([post, tag])
        session.commit()
    got = versions(reader, table_key("post_tags"), row_key("posts", [1]), row_key("tags", [2]))
    assert got == {table_key("post_tags"): 1, row_key("posts", [1]): 1,
                   row_key("tags", [2]): 1}
    assert post_tags.name == "post_tags"


def test_a_statement_past_max_keys_escalates(pg_url: str) -> None:
    with open_db("postgresql", pg_url) as (url, engine, reader):
        maker = sessionmaker(engine)
        reality_sqlalchemy.install(maker, max_keys=3)
        try:
            reality_sqlalchemy.create_triggers(engine)
            with maker() as session:  # two rows, then eight more in the same transaction
                session.execute(sa.insert(Order), [{"id": i, "room_id": i} for i in range(2)])
                session.execute(sa.insert(Order), [{"id": i, "room_id": i}
                                                   for i in range(2, 10)])
                session.commit()
            rows = log_rows(url)
            # The first three rows' own keys were taken back when the fourth escalated: only
            # the table key and the two markers remain, so each key moved by one.
            assert {k for k, _ in rows} == {T, f"{ESCALATION_PREFIX}$row:orders:",
                                            f"{ESCALATION_PREFIX}room:"}
            assert versions(reader, row(4), "room:4", row(99)) == {
                row(4): 1, "room:4": 1, row(99): 1}
            with maker() as session:  # one statement past the limit
                session.execute(sa.update(Order).values(total=Order.total + 1))
                session.commit()
            last = log_rows(url)[-1][1]
            rows = [r for r in log_rows(url) if r[1] == last]
            assert len(rows) == 3  # table key and two markers, not 21 keys
            assert {k for k, _ in rows} == {T, f"{ESCALATION_PREFIX}$row:orders:",
                                            f"{ESCALATION_PREFIX}room:"}
            assert versions(reader, row(4), "room:4", row(99)) == {
                row(4): 2, "room:4": 2, row(99): 2}
        finally:
            reality_sqlalchemy.uninstall(maker)


def test_a_stale_trigger_is_logged_and_python_bumps(pg_url: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    with open_db("postgresql", pg_url) as (_url, engine, reader):
        reality_sqlalchemy.create_triggers(engine, max_keys=50)
        maker = sessionmaker(engine)
        reality_sqlalchemy.install(maker)  # max_keys=1000: the triggers are stale
        try:
            with caplog.at_level(logging.WARNING, "reality.triggers"), \
                    _LogInserts(engine) as inserts, maker() as session:
                session.add(Order(id=1, room_id=7))
                session.commit()
            assert "made from another declaration" in caplog.text
            assert inserts.count == 1  # the Python path bumped
            # Trigger and Python both wrote the keys; each still counts once.
            assert versions(reader, T, row(1), "room:7") == {T: 1, row(1): 1, "room:7": 1}
        finally:
            reality_sqlalchemy.uninstall(maker)


def test_python_sends_no_bump_when_covered(trig: Any) -> None:
    _url, engine, reader, maker = trig
    engine.dispose()  # new connections: the counting cursor wraps them
    with _LogInserts(engine) as inserts:
        with maker() as session:
            session.add(Order(id=1, room_id=7))
            session.commit()
        assert inserts.count == 0
    assert versions(reader, row(1)) == {row(1): 1}


def test_drop_triggers_hands_tables_back_to_python(trig: Any) -> None:
    _url, engine, reader, maker = trig
    assert sorted(reality_sqlalchemy.drop_triggers(engine, tables=["orders"])) == ["orders"]
    engine.dispose()
    with _LogInserts(engine) as inserts, maker() as session:
        session.add(Order(id=1, room_id=7))
        session.commit()
    assert inserts.count == 1
    assert versions(reader, T, row(1), "room:7") == {T: 1, row(1): 1, "room:7": 1}


def test_create_triggers_refuses_other_databases_and_bad_arguments(
        sqlite_url: str, pg_url: str) -> None:
    engine = sa.create_engine(DatabaseURL.parse(sqlite_url).sqlalchemy())
    try:
        with pytest.raises(ConfigurationError, match="needs PostgreSQL"):
            reality_sqlalchemy.create_triggers(engine)
    finally:
        engine.dispose()
    with pytest.raises(ConfigurationError, match="takes an Engine"):
        reality_sqlalchemy.create_triggers("postgresql://x")  # type: ignore[arg-type]
    with open_db("postgresql", pg_url) as (_url, pg, _reader):
        with pytest.raises(ConfigurationError, match="not a tracked table"):
            reality_sqlalchemy.create_triggers(pg, tables=["nope"])
        with pytest.raises(ConfigurationError, match="list of table names"):
            reality_sqlalchemy.create_triggers(pg, tables="orders")


class _Flags(DeclarativeBase):
    pass


class Flag(_Flags):
    __tablename__ = "flags"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    on: Mapped[bool]


def test_an_unsupported_key_column_type_is_refused_and_nothing_is_created(pg_url: str) -> None:
    with open_db("postgresql", pg_url) as (_url, engine, _reader):
        reality_sqlalchemy.track(Flag, keys=["flag:{on}"])
        _Flags.metadata.create_all(engine)
        try:
            with pytest.raises(ConfigurationError, match=r"flags\.on is bool"):
                reality_sqlalchemy.create_triggers(engine)
            n = reality_triggers(engine)
            assert n == 0  # orders came first in the plan, but nothing ran
            # The other tables can still go to trigger mode, this one stays on Python.
            done = reality_sqlalchemy.create_triggers(engine, tables=["orders"])
            assert done == ["orders"]
        finally:
            _Flags.metadata.drop_all(engine)


def test_a_control_character_in_a_text_key_column_fails_the_transaction(pg_url: str) -> None:
    with open_db("postgresql", pg_url) as (url, engine, reader):
        reality_sqlalchemy.track(Tag, keys=["tag:{name}"])
        reality_sqlalchemy.create_triggers(engine, tables=["tags"])
        with psycopg.connect(DatabaseURL.parse(url).libpq()) as conn:
            with pytest.raises(psycopg.Error, match="control character"):
                conn.execute("INSERT INTO tags (id, name) VALUES (1, E'a\\nb')")
            conn.rollback()
            conn.execute("INSERT INTO tags (id, name) VALUES (2, 'a:b%c')")
            conn.commit()
        assert versions(reader, "tag:a:b%c", row_key("tags", [2])) == {
            "tag:a:b%c": 1, row_key("tags", [2]): 1}


def test_create_triggers_refuses_a_database_without_reality_tables(pg_url: str) -> None:
    """Triggers writing to a log that does not exist would fail every write to the table."""
    with open_db("postgresql", pg_url) as (_, engine, _reader):
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE reality_log")
        with pytest.raises(ConfigurationError, match="create_tables"):
            reality_sqlalchemy.create_triggers(engine)
        assert reality_triggers(engine) == 0


class Note(_Flags):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    text: Mapped[str] = mapped_column(sa.Text)


def test_a_key_too_long_fails_the_write_clearly(pg_url: str) -> None:
    with open_db("postgresql", pg_url) as (url, engine, _reader):
        reality_sqlalchemy.track(Note, keys=["note:{text}"])
        Note.__table__.create(engine)  # type: ignore[attr-defined]
        try:
            reality_sqlalchemy.create_triggers(engine, tables=["notes"])
            with psycopg.connect(DatabaseURL.parse(url).libpq()) as conn:
                conn.execute("INSERT INTO notes (id, text) VALUES (1, %s)", ("x" * 90,))
                with pytest.raises(psycopg.Error, match="longer than 256 characters"):
                    conn.execute("UPDATE notes SET text = %s WHERE id = 1", ("y" * 300,))
        finally:
            Note.__table__.drop(engine)  # type: ignore[attr-defined]


class Reading(_Flags):
    """Columns named like words a trigger function might use for its own variables."""

    __tablename__ = "readings"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    ms: Mapped[int] = mapped_column(sa.BigInteger)
    n: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    k: Mapped[int] = mapped_column(sa.Integer)
    x: Mapped[int] = mapped_column(sa.Integer)
    key: Mapped[str] = mapped_column(sa.Text)
    txid: Mapped[int] = mapped_column(sa.BigInteger)


def test_columns_named_like_trigger_variables_still_bump(pg_url: str) -> None:
    """PL/pgSQL refuses a statement in which a variable and a column share a name: the
    trigger's variables must not take names a table may well have (``ms``, ``x``...)."""
    with open_db("postgresql", pg_url) as (url, engine, reader):
        reality_sqlalchemy.track(Reading, keys=["sensor:{x}:{n}", "k:{k}", "key:{key}"])
        Reading.__table__.create(engine)  # type: ignore[attr-defined]
        try:
            reality_sqlalchemy.create_triggers(engine, tables=["readings"])
            with psycopg.connect(DatabaseURL.parse(url).libpq()) as conn:
                conn.execute("INSERT INTO readings (id, ms, n, k, x, key, txid) "
                             "VALUES (1, 5, 2, 3, 4, 'a', 6), (2, 5, NULL, 3, 4, 'b', 6)")
                conn.execute("UPDATE readings SET k = 7 WHERE id = 1")
                conn.execute("DELETE FROM readings WHERE id = 2")
                conn.commit()
            got = versions(reader, table_key("readings"), row_key("readings", [1]),
                           row_key("readings", [2]), "sensor:4:2", "k:3", "k:7", "key:a",
                           "key:b")
            # One transaction: every key it touched moved by exactly one.
            assert got == dict.fromkeys(got, 1)
        finally:
            Reading.__table__.drop(engine)  # type: ignore[attr-defined]


def test_a_table_tracked_by_its_table_key_alone_gets_working_triggers(pg_url: str) -> None:
    """track(rows=False) without templates: the trigger appends the table key only (the
    bench's hot-key table; its generated SQL was once invalid)."""
    with open_db("postgresql", pg_url) as (url, engine, reader):
        reality_sqlalchemy.track(Reading, rows=False)
        Reading.__table__.create(engine)  # type: ignore[attr-defined]
        try:
            assert reality_sqlalchemy.create_triggers(engine, tables=["readings"]) == [
                "readings"]
            with psycopg.connect(DatabaseURL.parse(url).libpq()) as conn:
                conn.execute("INSERT INTO readings (id, ms, n, k, x, key, txid) "
                             "VALUES (1, 5, 2, 3, 4, 'a', 6), (2, 5, NULL, 3, 4, 'b', 6)")
                conn.commit()
                conn.execute("UPDATE readings SET k = 8")
                conn.commit()
            assert versions(reader, table_key("readings"), row_key("readings", [1])) == {
                table_key("readings"): 2, row_key("readings", [1]): 0}
        finally:
            Reading.__table__.drop(engine)  # type: ignore[attr-defined]


def test_drop_triggers_removes_those_of_a_table_no_longer_declared(trig: Any) -> None:
    _, engine, _reader, _maker = trig
    reality_sqlalchemy.registry.clear()  # the model's declaration is gone
    assert reality_sqlalchemy.drop_triggers(engine, tables=["orders"]) == ["orders"]
    assert reality_triggers(engine, "tgrelid = 'orders'::regclass") == 0
    with pytest.raises(ConfigurationError, match="table names"):
        reality_sqlalchemy.drop_triggers(engine, tables=[3])  # type: ignore[list-item]
