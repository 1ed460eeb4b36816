"""Trigger mode on Tortoise (PostgreSQL, both drivers): ``create_triggers()`` makes the
database bump tracked tables; the plugin notices and does no key work for them."""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from tortoise import fields
from tortoise.models import Model
from tortoise.transactions import in_transaction

import reality_tortoise
from reality_core.errors import ConfigurationError, WritePathError
from reality_core.keys import row_key, table_key
from reality_core.triggers import FOUND_STATEMENT
from reality_tortoise import _tracking
from reality_tortoise._tracking import RealityClient, RealityTransaction
from tests.contract import tortoise_harness as th
from tests.tortoise import models as m
from tests.tortoise.conftest import PLUGIN_MODELS, database_url, watch

ORDERS = table_key("orders")


def row(n: int) -> str:
    return row_key("orders", [n])


class Flagged(Model):
    """A template on a boolean column: ``True``/``t`` differ, so no trigger may make it."""

    id = fields.IntField(primary_key=True)
    done = fields.BooleanField(default=False)

    class Meta:
        table = "t_flagged"
        reality = reality_tortoise.Track(keys=["flag:{done}"])


@pytest.fixture
async def tm(request: pytest.FixtureRequest, pg_dialect: str) -> AsyncIterator[th.TortoiseHarness]:
    """The harness with this package's models, in trigger mode."""
    async with th.tortoise_harness(pg_dialect, database_url(request, pg_dialect),
                                   models=PLUGIN_MODELS, triggers=True) as harness:
        yield harness


@pytest.fixture
async def plain(request: pytest.FixtureRequest,
                pg_dialect: str) -> AsyncIterator[th.TortoiseHarness]:
    """The same, without triggers."""
    async with th.tortoise_harness(pg_dialect, database_url(request, pg_dialect),
                                   models=PLUGIN_MODELS) as harness:
        yield harness


@pytest.fixture
def bumps(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The keys of every bump statement the plugin sends (the real one still runs)."""
    sent: list[list[str]] = []
    original = RealityTransaction._reality_bump

    async def spy(self: RealityTransaction, keys: list[str]) -> None:
        sent.append(list(keys))
        await original(self, keys)

    monkeypatch.setattr(RealityTransaction, "_reality_bump", spy)
    return sent


def client() -> RealityClient:
    db = th.db()
    assert isinstance(db, RealityClient)
    return db


async def covered_now() -> frozenset[str]:
    async with in_transaction() as tx:
        assert isinstance(tx, RealityTransaction)
        return await tx._reality_covered()


def sql(h: th.TortoiseHarness, statement: str) -> list[tuple[Any, ...]]:
    """``statement`` on a raw psycopg connection of its own, committed."""
    conn = h._url.dbapi_connect()
    try:
        cur = conn.cursor()
        cur.execute(statement)
        rows = list(cur.fetchall()) if cur.description else []
        conn.commit()
        return rows
    finally:
        conn.close()


def log_rows(h: th.TortoiseHarness, keys: Sequence[str]) -> dict[str, tuple[int, int]]:
    """key -> (rows in reality_log, distinct transactions among them)."""
    listed = ", ".join("'" + k.replace("'", "''") + "'" for k in keys)
    rows = sql(h, "SELECT key_name, count(*), count(DISTINCT txid) FROM reality_log "
                  f"WHERE key_name IN ({listed}) GROUP BY key_name")
    return {str(k): (int(n), int(t)) for k, n, t in rows}


async def test_every_tracked_table_is_covered(tm: th.TortoiseHarness) -> None:
    tables = set(client()._reality_catalog().tables)
    assert {"orders", "posts", "tags", "post_tags", "t_rooms", "t_messages",
            "t_books"} <= tables
    assert await covered_now() == tables
    assert await client()._reality_covered() == tables  # writes outside a transaction


async def test_a_commit_sends_no_bump_and_the_trigger_bumps_once(
        tm: th.TortoiseHarness, bumps: list[list[str]]) -> None:
    v = await watch(tm, ORDERS, row(1), "room:7")
    async with in_transaction():
        await th.Order.create(id=1, room_id=7)
    assert bumps == []
    assert await v.delta() == {ORDERS: 1, row(1): 1, "room:7": 1}
    assert log_rows(tm, [ORDERS, row(1), "room:7"]) == {
        ORDERS: (1, 1), row(1): (1, 1), "room:7": (1, 1)}


async def test_every_write_path_skips_python(tm: th.TortoiseHarness,
                                             bumps: list[list[str]]) -> None:
    room = await m.Room.create(title="a")  # outside a transaction: no wrapper, no bump
    v = await watch(tm, ORDERS, row(1), row(2), "room:1", "room:2", "room:3",
                    table_key("post_tags"), row_key("posts", [1]), f"chat:{room.id}")
    async with in_transaction():
        await th.Order.bulk_create([th.Order(id=1, room_id=1), th.Order(id=2, room_id=2)])
        order = await th.Order.get(id=1)
        order.room_id = 3
        await order.save()
        await th.Order.filter(id=2).update(total=5)
        await th.Order.bulk_update([order], fields=["total"])
        await th.db().execute_query("UPDATE orders SET total = total + 1 WHERE id = 2")
        post, tag = await th.Post.create(id=1), await th.Tag.create(id=1)
        await post.tags.add(tag)
        await post.tags.remove(tag)
        await post.tags.add(tag)
        await post.tags.clear()
        await m.Message.create(room=room, text="hi")
        await th.Order.filter(id=2).delete()
    await (await th.Order.get(id=1)).delete()
    assert bumps == []
    delta = await v.delta()
    # Each key once per transaction; the two transactions that touched row 1 count twice.
    assert delta == {ORDERS: 2, row(1): 2, row(2): 1, "room:1": 1, "room:2": 1,
                     "room:3": 2, table_key("post_tags"): 1, row_key("posts", [1]): 1,
                     f"chat:{room.id}": 1}


async def test_several_statements_on_one_row_bump_each_key_once(
        tm: th.TortoiseHarness) -> None:
    await th.Order.create(id=1, room_id=7)
    v = await watch(tm, ORDERS, row(1), "room:7")
    async with in_transaction():
        for total in range(1, 6):
            await th.Order.filter(id=1).update(total=total)
        order = await th.Order.get(id=1)
        order.total = 99
        await order.save()
        await th.db().execute_query("UPDATE orders SET total = 0 WHERE id = 1")
    assert await v.delta() == {ORDERS: 1, row(1): 1, "room:7": 1}
    rows, transactions = log_rows(tm, [row(1)])[row(1)]
    assert rows > 2
    assert transactions == 2


async def test_a_write_from_outside_tortoise_bumps(tm: th.TortoiseHarness) -> None:
    v = await watch(tm, ORDERS, row(5), "room:9", table_key("t_messages"))
    sql(tm, "INSERT INTO orders (id, room_id, total) VALUES (5, 9, 0)")
    assert await v.delta() == {ORDERS: 1, row(5): 1, "room:9": 1, table_key("t_messages"): 0}


async def test_source_field_columns_make_the_python_keys(tm: th.TortoiseHarness) -> None:
    """``Message.text`` is the column ``body``, ``room`` is ``room_id``: the trigger reads
    the database columns and makes the keys Python makes from field names."""
    room = await m.Room.create(title="a")
    v = await watch(tm, f"chat:{room.id}", row_key("t_messages", [1]))
    sql(tm, f"INSERT INTO t_messages (id, room_id, body) VALUES (1, {room.id}, 'x')")
    assert await v.delta() == {f"chat:{room.id}": 1, row_key("t_messages", [1]): 1}


async def test_uncovered_tables_and_manual_bumps_keep_the_python_path(
        plain: th.TortoiseHarness, bumps: list[list[str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert await reality_tortoise.create_triggers(tables=["orders"]) == ["orders"]
    assert await covered_now() == {"orders"}
    v = await watch(plain, ORDERS, row(1), row_key("posts", [1]), "feed")
    async with in_transaction():
        await th.Order.create(id=1, room_id=None)
        await th.Post.create(id=1)
        reality_tortoise.bump("feed")
    assert bumps == [sorted([table_key("posts"), row_key("posts", [1]), "feed"])]
    assert await v.delta() == {ORDERS: 1, row(1): 1, row_key("posts", [1]): 1, "feed": 1}
    # Outside a transaction, a covered table runs alone (no transaction of the plugin's
    # around it); an uncovered one gets one, with its bump.
    opened: list[object] = []
    cls = type(client())
    original = cls._in_transaction

    def spy(self: Any) -> Any:
        opened.append(self)
        return original(self)

    monkeypatch.setattr(cls, "_in_transaction", spy)
    await th.Order.create(id=2, room_id=None)
    await th.Order.filter(id=2).update(total=1)
    await th.db().execute_query("DELETE FROM orders WHERE id = 2")
    assert (len(opened), len(bumps)) == (0, 1)
    await th.Post.create(id=2)
    assert (len(opened), len(bumps)) == (1, 2)


async def test_a_stale_trigger_is_logged_and_python_bumps(
        plain: th.TortoiseHarness, bumps: list[list[str]],
        caplog: pytest.LogCaptureFixture) -> None:
    await reality_tortoise.create_triggers(tables=["orders"], max_keys=5)  # not the plugin's
    with caplog.at_level(logging.WARNING, logger="reality.triggers"):
        assert await covered_now() == frozenset()
    assert "orders" in caplog.text
    assert "another declaration" in caplog.text
    v = await watch(plain, ORDERS, row(1), "room:7")
    async with in_transaction():
        await th.Order.create(id=1, room_id=7)
    assert bumps == [sorted([ORDERS, row(1), "room:7"])]
    # Trigger and Python both wrote, in one transaction: still one step.
    assert await v.delta() == {ORDERS: 1, row(1): 1, "room:7": 1}
    assert log_rows(plain, [row(1)])[row(1)] == (2, 1)


async def test_drop_triggers_gives_the_python_path_back(
        tm: th.TortoiseHarness, bumps: list[list[str]]) -> None:
    await th.Order.create(id=1, room_id=7)
    assert bumps == []
    assert "orders" in await reality_tortoise.drop_triggers()
    assert await covered_now() == frozenset()
    assert sql(tm, FOUND_STATEMENT) == []
    v = await watch(tm, ORDERS, row(1), "room:7")
    async with in_transaction():
        await th.Order.filter(id=1).update(total=3)
    assert bumps
    assert ORDERS in bumps[0]
    assert await v.delta() == {ORDERS: 1, row(1): 1, "room:7": 1}


async def test_writes_past_max_keys_escalate(tm: th.TortoiseHarness) -> None:
    limit = client().reality_settings.max_keys
    assert limit is not None
    v = await watch(tm, row(10**6), "room:999999", ORDERS)
    await th.Order.bulk_create([th.Order(id=i, room_id=i) for i in range(1, limit + 2)])
    # Past the limit every key of the table reads as changed, even of rows never written.
    assert await v.delta() == {row(10**6): 1, "room:999999": 1, ORDERS: 1}
    # Counted per transaction: many small statements past the limit escalate too.
    v = await watch(tm, row(10**6), ORDERS)
    async with in_transaction():
        await th.Order.bulk_create([th.Order(id=i, room_id=i) for i in
                                    range(10**5, 10**5 + limit + 1)], batch_size=100)
    assert await v.delta() == {row(10**6): 1, ORDERS: 1}


async def test_an_unsupported_key_column_creates_nothing(
        request: pytest.FixtureRequest, pg_dialect: str) -> None:
    async with th.tortoise_harness(pg_dialect, database_url(request, pg_dialect),
                                   models=(*th.MODELS, __name__)) as h:
        with pytest.raises(ConfigurationError, match=r"t_flagged\.done is bool"):
            await reality_tortoise.create_triggers()
        assert sql(h, FOUND_STATEMENT) == []
        # Leaving the table out works.
        done = await reality_tortoise.create_triggers(tables=["orders"])
        assert done == ["orders"]


async def test_trigger_mode_needs_postgresql(request: pytest.FixtureRequest) -> None:
    async with th.tortoise_harness("sqlite", database_url(request, "sqlite")):
        with pytest.raises(ConfigurationError, match="PostgreSQL"):
            await reality_tortoise.create_triggers()
        with pytest.raises(ConfigurationError, match="PostgreSQL"):
            await reality_tortoise.drop_triggers()
        assert await client()._reality_covered() == frozenset()


async def test_an_untracked_table_is_refused(tm: th.TortoiseHarness) -> None:
    with pytest.raises(ConfigurationError, match="not a tracked table"):
        await reality_tortoise.create_triggers(tables=["t_plain"])


async def test_a_failed_coverage_lookup_fails_the_write(tm: th.TortoiseHarness) -> None:
    """The lookup runs inside the user's transaction: when it fails, so does the write
    (never a guess that would skip or double the keys)."""
    with pytest.raises(WritePathError, match="could not look up its triggers"):
        async with in_transaction():
            with contextlib.suppress(Exception):  # leaves the transaction aborted
                await th.db().execute_query("SELECT 1/0")
            _tracking.trigger_epoch[0] += 1  # as after create_triggers(): look again
            await th.Order.create(id=1, room_id=7)
    assert await tm.count_orders() == 0


@pytest.fixture
async def tm_strict(request: pytest.FixtureRequest,
                    pg_dialect: str) -> AsyncIterator[th.TortoiseHarness]:
    """Trigger mode under the ``strict`` raw SQL policy."""
    async with th.tortoise_harness(pg_dialect, database_url(request, pg_dialect),
                                   models=PLUGIN_MODELS, triggers=True,
                                   raw_sql="strict") as harness:
        yield harness


async def test_with_every_table_covered_no_statement_is_read(
        tm_strict: th.TortoiseHarness, bumps: list[list[str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing is left for Python: no statement is parsed (not even unreadable raw SQL,
    which strict would refuse were a tracked table uncovered), no bump is sent."""

    def unread(*args: Any, **kwargs: Any) -> set[str]:
        raise AssertionError("a statement was read for keys")

    monkeypatch.setattr(_tracking.TortoiseCatalog, "statement_keys", unread)
    v = await watch(tm_strict, ORDERS, row(1), row(2), "room:1", "room:3",
                    table_key("post_tags"))
    async with in_transaction():
        await th.Order.bulk_create([th.Order(id=1, room_id=1), th.Order(id=2, room_id=2)])
        await th.Order.filter(id=1).update(room_id=3)
        assert await th.Order.filter(room_id=3).count() == 1
        post, tag = await th.Post.create(id=1), await th.Tag.create(id=1)
        await post.tags.add(tag)
        await th.db().execute_script("DO $$ BEGIN UPDATE orders SET total = 1; END $$")
    await th.Order.filter(id=2).delete()  # outside a transaction
    assert bumps == []
    assert await v.delta() == {ORDERS: 2, row(1): 1, row(2): 2, "room:1": 1, "room:3": 1,
                               table_key("post_tags"): 1}


async def test_coverage_is_read_once_per_connection(
        tm: th.TortoiseHarness, bumps: list[list[str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A covered write's transaction sends what Tortoise's own would: BEGIN, the write,
    COMMIT; the coverage lookup runs once per physical connection, not per transaction."""
    lookups: list[object] = []
    original = _tracking._look_up

    async def spy(db: Any, specs: Any) -> frozenset[str]:
        lookups.append(db)
        return await original(db, specs)

    monkeypatch.setattr(_tracking, "_look_up", spy)
    _tracking.trigger_epoch[0] += 1  # every connection reads coverage again
    physical: set[int] = set()
    for i in range(1, 21):
        async with in_transaction() as tx:
            assert isinstance(tx, RealityTransaction)
            physical.add(id(tx._reality_physical(tx._connection)))
            await th.Order.create(id=i, room_id=i)
    assert 1 <= len(lookups) <= len(physical)
    assert bumps == []
    assert await tm.count_orders() == 20


async def transactions_left_for_the_collector() -> list[str]:
    """Transactions (committed with a released savepoint, rolled back) that only the garbage
    collector could free, by type name."""
    await th.Order.create(id=1, room_id=1)  # warm: pool, prepared statements, caches
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for i in range(2, 12):
            async with in_transaction():
                await th.Order.create(id=i, room_id=i)
                async with in_transaction():  # a savepoint, released
                    await th.Order.filter(id=i).update(total=i)
        with contextlib.suppress(RuntimeError):
            async with in_transaction():
                await th.Order.create(id=99, room_id=9)
                raise RuntimeError("roll back")
        gc.collect()
        return [type(o).__name__ for o in gc.garbage if isinstance(o, RealityTransaction)]
    finally:
        gc.garbage.clear()
        gc.set_debug(0)
        gc.enable()


async def test_a_finished_transaction_leaves_no_cycle_for_the_collector(
        tm: th.TortoiseHarness) -> None:
    """A wrapper that referred to itself kept every transaction, its connection proxy and
    its buffer alive until the garbage collector ran: at thousands of commits a second,
    dozens of collections a second that Tortoise alone never needs."""
    assert await transactions_left_for_the_collector() == []


async def test_a_finished_transaction_leaves_no_cycle_on_the_python_path(
        plain: th.TortoiseHarness) -> None:
    assert await transactions_left_for_the_collector() == []


async def test_with_every_table_covered_transactions_skip_the_plugin_layers(
        tm: th.TortoiseHarness, bumps: list[list[str]]) -> None:
    """Trigger mode's usual state: once a connection has read that every tracked table is
    covered, transactions are IdleTransactions (Tortoise's own executor and statements);
    the triggers still bump every write, and bump() and savepoints behave as ever."""
    await th.Order.create(id=1, room_id=1)
    async with in_transaction():  # reads coverage on its connection
        await th.Order.filter(id=1).update(total=1)
    v = await watch(tm, ORDERS, row(2), "room:7", "feed:a", "feed:b")
    async with in_transaction() as tx:
        assert isinstance(tx, _tracking.IdleTransaction)
        assert type(tx).executor_class.__name__ in ("AsyncpgExecutor", "PsycopgExecutor")
        await th.Order.create(id=2, room_id=7)
        reality_tortoise.bump("feed:a")
        with contextlib.suppress(RuntimeError):
            async with in_transaction() as inner:
                assert isinstance(inner, _tracking.IdleTransaction)
                reality_tortoise.bump("feed:b")
                await th.Order.filter(id=2).update(total=9)
                raise RuntimeError("roll the savepoint back")
    assert await v.delta() == {ORDERS: 1, row(2): 1, "room:7": 1, "feed:a": 1, "feed:b": 0}
    assert bumps == [["feed:a"]]  # the manual key only: the trigger did the rest


async def test_triggers_dropped_while_an_idle_transaction_is_open_hand_it_to_python(
        tm: th.TortoiseHarness, bumps: list[list[str]]) -> None:
    """drop_triggers() from this process while an IdleTransaction is open: its statements
    after that take the full path, so nothing it writes goes unbumped."""
    await th.Order.create(id=1, room_id=1)
    async with in_transaction():
        await th.Order.filter(id=1).update(total=1)
    v = await watch(tm, ORDERS, row(3), "room:8")
    async with in_transaction() as tx:
        assert isinstance(tx, _tracking.IdleTransaction)
        await tx.execute_query("SELECT 1")  # open, holding no lock on orders
        assert "orders" in await reality_tortoise.drop_triggers()  # its own transaction
        await th.Order.create(id=3, room_id=8)
    assert await v.delta() == {ORDERS: 1, row(3): 1, "room:8": 1}
    assert bumps
    assert {ORDERS, row(3), "room:8"} <= set(bumps[0])
    async with in_transaction() as tx:  # coverage read again: no trigger, no idle path
        assert not isinstance(tx, _tracking.IdleTransaction)
        await th.Order.filter(id=3).update(total=2)
    async with in_transaction() as tx:
        assert not isinstance(tx, _tracking.IdleTransaction)


async def test_the_python_path_never_takes_the_idle_path(plain: th.TortoiseHarness) -> None:
    await th.Order.create(id=1, room_id=1)
    for _ in range(2):
        async with in_transaction() as tx:
            assert not isinstance(tx, _tracking.IdleTransaction)
            await th.Order.filter(id=1).update(total=1)
