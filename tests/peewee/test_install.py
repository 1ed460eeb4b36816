"""install()/uninstall() on a Database object, pools, proxies, and what is refused."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import peewee
import pytest
from playhouse.pool import PooledSqliteDatabase

import reality_peewee
from reality_core.errors import ConfigurationError
from reality_core.keys import row_key
from tests.peewee.conftest import R, T, Watch
from tests.peewee.models import MODELS, Message, Room

Start = Callable[..., Watch]
WRAPPED = {"execute", "execute_sql", "begin", "commit", "rollback", "connect", "close"}


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[peewee.SqliteDatabase]:
    db = peewee.SqliteDatabase(str(tmp_path / "install.db"))
    try:
        yield db
    finally:
        reality_peewee.uninstall(db)
        db.close()


def test_install_is_idempotent_and_uninstall_restores_exactly(
        sqlite_db: peewee.SqliteDatabase) -> None:
    before = dict(sqlite_db.__dict__)
    reality_peewee.install(sqlite_db)
    assert set(sqlite_db.__dict__) >= WRAPPED
    wrappers = {name: sqlite_db.__dict__[name] for name in WRAPPED}
    reality_peewee.install(sqlite_db)  # no-op
    assert {name: sqlite_db.__dict__[name] for name in WRAPPED} == wrappers
    assert reality_peewee.installed() == [sqlite_db]
    reality_peewee.uninstall(sqlite_db)
    assert sqlite_db.__dict__.keys() == before.keys()
    assert sqlite_db.commit.__func__ is peewee.SqliteDatabase.commit  # type: ignore[attr-defined]
    assert reality_peewee.installed() == []
    reality_peewee.uninstall(sqlite_db)  # no-op


def test_uninstall_keeps_what_the_instance_had(sqlite_db: peewee.SqliteDatabase) -> None:
    def own_commit() -> None:
        peewee.SqliteDatabase.commit(sqlite_db)

    sqlite_db.commit = own_commit  # type: ignore[method-assign]
    reality_peewee.install(sqlite_db)
    reality_peewee.uninstall(sqlite_db)
    assert sqlite_db.__dict__["commit"] is own_commit


def test_uninstall_refuses_when_wrapped_again(sqlite_db: peewee.SqliteDatabase) -> None:
    reality_peewee.install(sqlite_db)
    ours = sqlite_db.__dict__["commit"]
    sqlite_db.commit = lambda: ours()  # type: ignore[method-assign]
    with pytest.raises(ConfigurationError, match="replaced after"):
        reality_peewee.uninstall(sqlite_db)
    sqlite_db.commit = ours  # type: ignore[method-assign]


def test_other_settings_need_an_uninstall(sqlite_db: peewee.SqliteDatabase) -> None:
    reality_peewee.install(sqlite_db)
    with pytest.raises(ConfigurationError, match="uninstall first"):
        reality_peewee.install(sqlite_db, raw_sql="strict")
    with pytest.raises(ConfigurationError, match="raw_sql"):
        reality_peewee.install(peewee.SqliteDatabase(":memory:"),
                               raw_sql="lenient")  # type: ignore[arg-type]


def test_refuses_what_it_cannot_track() -> None:
    with pytest.raises(ConfigurationError, match="DatabaseProxy is not initialized"):
        reality_peewee.install(peewee.DatabaseProxy())
    with pytest.raises(ConfigurationError, match="takes a peewee Database"):
        reality_peewee.install("sqlite:///x.db")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="supports"):
        reality_peewee.install(peewee.Database("x"))


if hasattr(peewee, "__version__") and int(peewee.__version__.split(".")[0]) >= 4:

    def test_asyncio_databases_are_refused(tmp_path: Path) -> None:
        from playhouse.pwasyncio import AsyncSqliteDatabase

        db = AsyncSqliteDatabase(str(tmp_path / "async.db"))
        with pytest.raises(ConfigurationError, match="pwasyncio"):
            reality_peewee.install(db)
        assert "commit" not in db.__dict__


def test_after_uninstall_nothing_is_bumped(db: peewee.Database, watch: Start) -> None:
    Room.create(id=1)
    w = watch(T("message"), "room:1")
    reality_peewee.uninstall(db)
    try:
        Message.create(id=1, room=1)
        assert w.moved() == set()
    finally:
        reality_peewee.install(db)
    Message.create(id=2, room=1)
    assert w.moved() == {T("message"), "room:1"}


def test_proxy(tmp_path: Path) -> None:
    proxy = peewee.DatabaseProxy()
    db = peewee.SqliteDatabase(str(tmp_path / "proxy.db"))
    proxy.initialize(db)
    proxy.bind(MODELS)
    from tests.peewee.models import declare

    declare()
    reality_peewee.install(proxy)
    try:
        assert reality_peewee.installed() == [db]
        db.create_tables(MODELS)
        reality_peewee.create_tables(proxy)
        reader = reality_peewee.version_reader(proxy)
        with proxy.atomic():
            Room.create(id=3)
        assert reader.read([row_key("room", [3])]).version(row_key("room", [3])) == 1
        reader.close()
    finally:
        reality_peewee.uninstall(proxy)
        db.close()


def test_pool_check_in_of_a_dirty_connection(tmp_path: Path) -> None:
    db = PooledSqliteDatabase(str(tmp_path / "pool.db"), max_connections=2,
                              check_same_thread=False)
    db.bind(MODELS)
    from tests.peewee.models import declare

    declare()
    reality_peewee.install(db)
    reader = reality_peewee.version_reader(db)
    try:
        db.create_tables(MODELS)
        reality_peewee.create_tables(db)
        Room.create(id=1)
        keys = (T("message"), R("message", 1), R("message", 2), "room:1")
        before = reader.read(keys)

        def abandon() -> None:
            db.begin()
            Message.create(id=1, room=1)
            db.close()  # checked in mid-transaction

        worker = threading.Thread(target=abandon)
        worker.start()
        worker.join(30)
        Message.create(id=2, room=1)  # may reuse the very connection
        after = reader.read(keys)
        moved = {k for k in keys if after.version(k) != before.version(k)}
        assert moved == {T("message"), R("message", 2), "room:1"}
        assert [m.id for m in Message.select()] == [2]
    finally:
        reader.close()
        reality_peewee.uninstall(db)
        db.close_all()


def test_create_tables_is_idempotent(db: peewee.Database) -> None:
    epoch = db.execute_sql("SELECT value FROM reality_meta WHERE name = 'epoch'").fetchone()
    reality_peewee.create_tables(db)
    again = db.execute_sql("SELECT value FROM reality_meta WHERE name = 'epoch'").fetchone()
    assert epoch == again


def test_version_reader_reads_from_other_threads(db: peewee.Database) -> None:
    Room.create(id=1)
    reader = reality_peewee.version_reader(db, pool_size=1)
    try:
        found: list[int] = []
        for _ in range(2):  # the second thread reuses the first one's connection
            t = threading.Thread(
                target=lambda: found.append(reader.read([R("room", 1)]).version(R("room", 1))))
            t.start()
            t.join(30)
        assert found == [1, 1]
    finally:
        reader.close()



def test_max_keys_escalates_a_kind_past_the_limit(db: peewee.Database, watch: Start) -> None:
    for n in (1, 2, 3):
        Room.create(id=n)
    reality_peewee.uninstall(db)
    reality_peewee.install(db, max_keys=2)
    try:
        w = watch(T("message"), R("message", 1), R("message", 99), "room:1", "room:99")
        Message.insert_many([{"id": i, "room": i} for i in (1, 2, 3)]).execute()
        # three row keys and three room keys: past 2, each kind escalates to its marker
        assert w.moved() == {T("message"), R("message", 1), R("message", 99), "room:1",
                             "room:99"}
        w = watch(T("message"), R("message", 4), R("message", 99), "room:1", "room:99")
        Message.insert_many([{"id": 4, "room": 1}]).execute()
        assert w.moved() == {T("message"), R("message", 4), "room:1"}
        with pytest.raises(ConfigurationError, match="uninstall first"):
            reality_peewee.install(db, max_keys=5)
    finally:
        reality_peewee.uninstall(db)
        reality_peewee.install(db)
    with pytest.raises(ConfigurationError, match="max_keys"):
        reality_peewee.install(peewee.SqliteDatabase(":memory:"), max_keys=0)
