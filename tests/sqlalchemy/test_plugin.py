"""SQLAlchemy-specific behaviour: the write paths and transaction forms that exist only in
SQLAlchemy, plus install/uninstall and error handling. The shared cases live in
tests/contract."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

import reality_sqlalchemy
from reality_core.errors import (
    ConfigurationError,
    DeclarationError,
    InvalidKeyError,
    UnsupportedStatementError,
    WritePathError,
)
from reality_core.keys import row_key, table_key
from reality_core.reader import DBAPIReader
from reality_core.urls import DatabaseURL
from tests.contract.sqlalchemy_harness import (
    Base,
    Order,
    _create_schema,
    _drop_schema,
    _sqlite_fk_on,
    declare_models,
)

T = table_key("orders")


def row(n: int) -> str:
    return row_key("orders", [n])


@pytest.fixture(params=["postgresql", "sqlite"])
def db(request: pytest.FixtureRequest) -> Iterator[tuple[str, sa.Engine, DBAPIReader]]:
    dialect = request.param
    url = request.getfixturevalue("pg_url" if dialect == "postgresql" else "sqlite_url")
    with open_db(dialect, url) as opened:
        yield opened


@pytest.fixture
def pg_db(pg_url: str) -> Iterator[tuple[str, sa.Engine, DBAPIReader]]:
    with open_db("postgresql", pg_url) as opened:
        yield opened


@contextlib.contextmanager
def open_db(dialect: str, url: str) -> Iterator[tuple[str, sa.Engine, DBAPIReader]]:
    engine = sa.create_engine(DatabaseURL.parse(url).sqlalchemy())
    if dialect == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_fk_on)
        reality_sqlalchemy.enable_sqlite_savepoints(engine)
    declare_models()
    with engine.begin() as conn:
        _create_schema(conn, dialect)
    reader = DBAPIReader.from_url(DatabaseURL.parse(url).with_driver(None))
    try:
        yield url, engine, reader
    finally:
        for target in reality_sqlalchemy.installed():
            reality_sqlalchemy.uninstall(target)
        reader.close()
        with engine.begin() as conn:
            _drop_schema(conn)
        engine.dispose()


def versions(reader: DBAPIReader, *keys: str) -> dict[str, int]:
    snap = reader.read(keys)
    return {k: snap.version(k) for k in keys}


def seed(S: sessionmaker[Session], *ids: int) -> None:
    with S.begin() as s:
        for i in ids:
            s.add(Order(id=i, room_id=i, total=i))


def test_c05_outer_transaction_fixture_leaves_no_bump(db: Any) -> None:
    _, engine, reader = db
    S = sessionmaker(engine)
    reality_sqlalchemy.install(S)
    seed(S, 1)
    before = versions(reader, T, row(1), "room:1")
    # The classic test fixture: a connection-level transaction the session joins.
    with engine.connect() as conn:
        outer = conn.begin()
        session = S(bind=conn, join_transaction_mode="create_savepoint")
        session.get_one(Order, 1).total = 50
        session.commit()  # the app "commits"
        session.get_one(Order, 1).total = 60
        session.commit()
        session.close()
        outer.rollback()  # the fixture rolls everything back
    assert versions(reader, *before) == before
    with S() as s:
        assert s.get_one(Order, 1).total == 1


def test_c05_twin_with_real_commits_bumps_once(db: Any) -> None:
    _, engine, reader = db
    S = sessionmaker(engine)
    reality_sqlalchemy.install(S)
    seed(S, 1)
    before = versions(reader, T, row(1), "room:1")
    with engine.connect() as conn:
        outer = conn.begin()
        session = S(bind=conn, join_transaction_mode="create_savepoint")
        session.get_one(Order, 1).total = 50
        session.commit()
        session.get_one(Order, 1).total = 60
        session.commit()
        session.close()
        assert versions(reader, *before) == before, "visible before the real COMMIT"
        outer.commit()
    assert versions(reader, *before) == {k: v + 1 for k, v in before.items()}


def test_c04_reused_core_connection_after_rollback(db: Any) -> None:
    _, engine, reader = db
    reality_sqlalchemy.install(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(Order).values(id=99, room_id=99, total=0))
    before = versions(reader, T, row(5), row(99), "room:5")
    with engine.connect() as conn:
        conn.execute(sa.insert(Order).values(id=5, room_id=5, total=0))
        conn.rollback()
        # A Core UPDATE by primary key: the row is known, its room is not (escalated).
        conn.execute(sa.update(Order).where(Order.id == 99).values(total=1))
        conn.commit()
    after = versions(reader, *before)
    assert after[row(5)] == before[row(5)], "keys of the rolled-back insert leaked"
    assert after[T] == before[T] + 1
    assert after[row(99)] == before[row(99)] + 1


def test_c06_legacy_and_bulk_mappings(db: Any) -> None:
    _, engine, reader = db
    S = sessionmaker(engine)
    reality_sqlalchemy.install(S)
    seed(S, 1, 2, 3)
    paths: dict[str, Any] = {
        "query_update": lambda s: s.query(Order).filter(Order.total > 1).update({"total": 0}),
        "query_delete": lambda s: s.query(Order).filter(Order.id == 3).delete(),
        "bulk_update_mappings": lambda s: s.bulk_update_mappings(Order, [{"id": 1, "total": 7}]),
        "bulk_save_objects": lambda s: s.bulk_save_objects([Order(id=20, room_id=20, total=0)]),
        "bulk_insert_mappings": lambda s: s.bulk_insert_mappings(
            Order, [{"id": 21, "room_id": 21, "total": 0}]),
        "orm_bulk_update_by_pk": lambda s: s.execute(sa.update(Order), [{"id": 2, "total": 9}]),
    }
    expected = {
        "query_update": {T, row(2), "room:2"},
        "query_delete": {T, row(3), "room:3"},
        "bulk_update_mappings": {T, row(1), "room:1"},
        "bulk_save_objects": {T, row(20), "room:20"},
        "bulk_insert_mappings": {T, row(21), "room:21"},
        "orm_bulk_update_by_pk": {T, row(2), "room:2"},
    }
    for name, fn in paths.items():
        before = versions(reader, *expected[name])
        with S.begin() as s:
            fn(s)
            assert versions(reader, *before) == before
        after = versions(reader, *before)
        assert {k for k in before if after[k] > before[k]} == expected[name], name


def test_c09_exec_driver_sql_and_core_text(db: Any) -> None:
    _, engine, reader = db
    S = sessionmaker(engine)
    reality_sqlalchemy.install(S)
    seed(S, 1)
    for run in (
        lambda s: s.connection().exec_driver_sql("UPDATE orders SET total = 3"),
        lambda s: s.execute(sa.text("DELETE FROM orders WHERE id = 12345")),
        lambda s: s.execute(sa.text("INSERT INTO orders (id, room_id, total) VALUES (77, 7, 0)")),
    ):
        before = versions(reader, T, row(1), "room:1")
        with S.begin() as s:
            run(s)
        after = versions(reader, *before)
        assert all(after[k] == before[k] + 1 for k in before), after


def test_c09_unparseable_statement_conservative_or_strict(pg_db: Any) -> None:
    _, engine, reader = pg_db  # DO blocks are PostgreSQL syntax
    S = sessionmaker(engine)
    block = "DO $$ BEGIN UPDATE orders SET total = 1; END $$"
    reality_sqlalchemy.install(S)  # conservative: every tracked table escalates
    seed(S, 1)
    before = versions(reader, T, row(1), table_key("posts"))
    with S.begin() as s:
        s.execute(sa.text(block))
    after = versions(reader, *before)
    assert all(after[k] > before[k] for k in before)
    reality_sqlalchemy.uninstall(S)

    reality_sqlalchemy.install(S, raw_sql="strict")
    with pytest.raises(UnsupportedStatementError, match="cannot tell"), S.begin() as s:
        s.execute(sa.text(block))
    with S() as s:
        assert s.get_one(Order, 1).total == 1  # the failing transaction committed nothing


def test_i7_failed_bump_fails_the_transaction(db: Any) -> None:
    _, engine, reader = db
    S = sessionmaker(engine)
    reality_sqlalchemy.install(S)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE reality_log")
    with pytest.raises(WritePathError, match="reality migrate"), S.begin() as s:
        s.add(Order(id=1, room_id=1))
    with S() as s:
        assert s.get(Order, 1) is None, "data committed although its bump failed"
    reality_sqlalchemy.create_tables(engine)
    with S.begin() as s:  # and the session factory keeps working afterwards
        s.add(Order(id=1, room_id=1))
    assert versions(reader, row(1))[row(1)] == 1


def test_c13_sqlite_savepoint_without_begin_recipe_is_refused(sqlite_url: str) -> None:
    engine = sa.create_engine(DatabaseURL.parse(sqlite_url).sqlalchemy())
    declare_models()
    with engine.begin() as conn:
        _create_schema(conn, "sqlite")
    S = sessionmaker(engine)
    reality_sqlalchemy.install(S)
    try:
        with pytest.raises(ConfigurationError, match="enable_sqlite_savepoints"), S() as s:
            s.begin_nested()
            s.execute(sa.select(1))  # the savepoint is emitted when a connection is needed
    finally:
        reality_sqlalchemy.uninstall(S)
        engine.dispose()


def test_c12_writer_killed_mid_transaction_publishes_nothing(pg_url: str) -> None:
    engine = sa.create_engine(DatabaseURL.parse(pg_url).sqlalchemy())
    declare_models()
    with engine.begin() as conn:
        _create_schema(conn, "postgresql")
    S = sessionmaker(engine)
    reality_sqlalchemy.install(S)
    reader = DBAPIReader.from_url(DatabaseURL.parse(pg_url).with_driver(None))
    try:
        before = versions(reader, T, row(1), "room:1")
        session = S()
        session.add(Order(id=1, room_id=1))
        session.flush()
        pid = session.connection().exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        with engine.connect() as killer:
            killer.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")
        # The bump runs first on the dead connection and reports it; without keys the
        # COMMIT itself would fail. Either way nothing commits.
        with pytest.raises((WritePathError, sa.exc.DBAPIError)):
            session.commit()
        session.close()
        assert versions(reader, *before) == before
        with S.begin() as s:  # the pool recovers; tracking goes on
            s.add(Order(id=2, room_id=2))
        assert versions(reader, T)[T] == before[T] + 1
    finally:
        reality_sqlalchemy.uninstall(S)
        reader.close()
        with engine.begin() as conn:
            _drop_schema(conn)
        engine.dispose()


def test_concurrent_threads_never_mix_keys(db: Any) -> None:
    _, engine, reader = db
    if engine.dialect.name == "sqlite":
        engine.dispose()
    S = sessionmaker(engine)
    reality_sqlalchemy.install(S)
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def writer(n: int) -> None:
        try:
            barrier.wait()
            for i in range(10):
                oid = n * 100 + i
                try:
                    with S.begin() as s:
                        s.add(Order(id=oid, room_id=oid))
                        s.flush()
                        if n % 2:
                            raise RuntimeError("roll back")
                except RuntimeError:
                    pass
                except sa.exc.OperationalError:  # SQLite "database is locked": retried
                    continue
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with S() as s:
        committed = set(s.scalars(sa.select(Order.id)))
    keys = [row(n * 100 + i) for n in range(4) for i in range(10)]
    v = versions(reader, *keys)
    for n in range(4):
        for i in range(10):
            oid = n * 100 + i
            assert v[row(oid)] == (1 if oid in committed else 0), oid
    assert all(oid // 100 % 2 == 0 for oid in committed)


@pytest.fixture
async def async_db(pg_url: str) -> AsyncIterator[tuple[Any, DBAPIReader]]:
    engine = create_async_engine(DatabaseURL.parse(pg_url).sqlalchemy(asynchronous=True),
                                 pool_size=10)
    declare_models()
    async with engine.begin() as conn:
        await conn.run_sync(_create_schema, "postgresql")
    reader = DBAPIReader.from_url(DatabaseURL.parse(pg_url).with_driver(None))
    try:
        yield engine, reader
    finally:
        for target in reality_sqlalchemy.installed():
            reality_sqlalchemy.uninstall(target)
        reader.close()
        async with engine.begin() as conn:
            await conn.run_sync(_drop_schema)
        await engine.dispose()


async def test_concurrent_tasks_never_mix_keys(async_db: Any) -> None:
    engine, reader = async_db
    S = async_sessionmaker(engine)
    reality_sqlalchemy.install(S)

    async def task(n: int) -> None:
        for i in range(5):
            oid = n * 100 + i
            try:
                async with S.begin() as s:
                    s.add(Order(id=oid, room_id=oid))
                    await s.flush()
                    await reality_sqlalchemy.abump(s, f"task:{n}")
                    await asyncio.sleep(0)  # let the other tasks interleave
                    if n % 2:
                        raise RuntimeError("roll back")
            except RuntimeError:
                pass

    await asyncio.gather(*(task(n) for n in range(8)))
    keys = [row(n * 100 + i) for n in range(8) for i in range(5)] + [f"task:{n}" for n in range(8)]
    v = versions(reader, *keys)
    for n in range(8):
        assert v[f"task:{n}"] == (5 if n % 2 == 0 else 0)
        for i in range(5):
            assert v[row(n * 100 + i)] == (1 if n % 2 == 0 else 0)


def test_install_is_idempotent_and_uninstall_removes_everything(db: Any) -> None:
    _, engine, reader = db
    S = sessionmaker(engine)
    reality_sqlalchemy.install(S)
    reality_sqlalchemy.install(S)
    assert reality_sqlalchemy.installed() == [S]
    seed(S, 1)
    assert versions(reader, row(1))[row(1)] == 1  # bumped once, not twice
    reality_sqlalchemy.uninstall(S)
    reality_sqlalchemy.uninstall(S)
    assert reality_sqlalchemy.installed() == []
    for name in ("after_insert", "after_update", "after_delete"):
        assert not any(sa.event.contains(sa.orm.Mapper, name, fn)
                       for _, fn in reality_sqlalchemy._plugin._plugin.mapper_listeners)
    assert not sa.event.contains(S, "after_begin", reality_sqlalchemy._plugin._plugin.after_begin)
    seed(S, 2)
    assert versions(reader, row(2))[row(2)] == 0, "an uninstalled plugin still bumps"


def test_bad_input_is_refused_clearly(db: Any) -> None:
    _, engine, _ = db
    with pytest.raises(ConfigurationError, match="sessionmaker"):
        reality_sqlalchemy.install(object())
    with pytest.raises(ConfigurationError, match="raw_sql"):
        reality_sqlalchemy.install(sessionmaker(engine), raw_sql="maybe")  # type: ignore[arg-type]
    with pytest.raises(DeclarationError, match=r"Order.*'rooom_id'"):
        reality_sqlalchemy.track(Order, keys=["room:{rooom_id}"])
    with pytest.raises(DeclarationError, match="literal"):
        reality_sqlalchemy.track(Order, keys=["{room_id}"])
    with pytest.raises(DeclarationError, match="not mapped"):
        reality_sqlalchemy.track(dict)
    with pytest.raises(DeclarationError, match="never tracked"):
        reality_sqlalchemy.track_table(reality_sqlalchemy.schema.versions)
    S = sessionmaker(engine)
    reality_sqlalchemy.install(S)
    with S.begin() as s:
        with pytest.raises(InvalidKeyError, match="reserved"):
            reality_sqlalchemy.bump(s, "$table:orders")
        with pytest.raises(InvalidKeyError, match="256"):
            reality_sqlalchemy.bump(s, "x" * 300)


def test_i10_own_tables_are_never_tracked(db: Any) -> None:
    _, engine, reader = db
    reality_sqlalchemy.install(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE reality_meta SET value = value WHERE name = 'x'"))
    assert reality_sqlalchemy.registry.get("reality_versions") is None
    assert versions(reader, table_key("reality_meta"))[table_key("reality_meta")] == 0


def test_models_metadata_untouched() -> None:
    assert "reality_versions" not in Base.metadata.tables


def test_table_key_only_declaration_still_bumps(db: Any) -> None:
    _, engine, reader = db
    reality_sqlalchemy.registry.clear()
    reality_sqlalchemy.track(Order, rows=False)  # no row keys, no templates
    S = sessionmaker(engine)
    reality_sqlalchemy.install(S)
    seed(S, 1)
    with S.begin() as s:
        s.get_one(Order, 1).total = 3
    assert versions(reader, T, row(1)) == {T: 2, row(1): 0}


def test_large_transactions_escalate_past_max_keys(db: Any) -> None:
    url, engine, reader = db
    S = sessionmaker(engine)
    reality_sqlalchemy.install(S, max_keys=50)
    with S.begin() as s:
        s.add_all(Order(id=i, room_id=i % 10, total=0) for i in range(1, 201))
    # 200 row keys > 50: one row marker instead; 10 room keys <= 50: exact.
    reader_keys = [row(1), row(200), row(9999), "room:3", "room:11"]
    v = versions(reader, *reader_keys)
    assert v == {row(1): 1, row(200): 1, row(9999): 1, "room:3": 1, "room:11": 0}
    conn = DatabaseURL.parse(url).with_driver(None).dbapi_connect()
    try:
        cur = conn.cursor()
        cur.execute("SELECT COUNT(*) FROM reality_log")
        assert cur.fetchone()[0] == 1 + 1 + 10  # table key, row marker, ten rooms
    finally:
        conn.close()
    with pytest.raises(ConfigurationError, match="max_keys"):
        reality_sqlalchemy.Settings(max_keys=0)


def test_i5_a_row_moved_by_another_transaction_bumps_its_current_room(pg_db: Any) -> None:
    """The session loaded order 1 in room 1; another transaction moved it to room 2 and
    committed. Updating the stale object must bump room 2, where the row really is. (On
    SQLite the other writer cannot commit while the session's transaction is open.)"""
    _, engine, reader = pg_db
    S = sessionmaker(engine)
    reality_sqlalchemy.install(S)
    seed(S, 1)
    with S() as stale:
        order = stale.get_one(Order, 1)
        assert order.room_id == 1
        with engine.begin() as other:  # not through the plugin: a writer we cannot see
            other.execute(sa.update(Order).where(Order.id == 1).values(room_id=2))
        before = versions(reader, "room:1", "room:2")
        order.total = 42
        stale.commit()
    after = versions(reader, *before)
    assert after["room:2"] == before["room:2"] + 1, "the row's real room did not move"


def test_bump_refuses_sessions_the_plugin_does_not_cover(db: Any) -> None:
    _, engine, reader = db
    installed_maker, other_maker = sessionmaker(engine), sessionmaker(engine)
    reality_sqlalchemy.install(installed_maker)
    with other_maker.begin() as s, pytest.raises(ConfigurationError, match="not installed"):
        reality_sqlalchemy.bump(s, "feed:global")
    assert versions(reader, "feed:global")["feed:global"] == 0
    with pytest.raises(ConfigurationError, match="Engine"):
        reality_sqlalchemy.create_tables(None)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="from_url"):
        reality_sqlalchemy.version_reader("sqlite://")  # type: ignore[arg-type]
