"""Transaction forms: in_transaction(), @atomic(), nested blocks and explicit nested clients,
manual commit/rollback, bump(), and a bump that fails."""

from __future__ import annotations

import contextlib

import pytest
from tortoise.transactions import atomic, in_transaction

import reality_tortoise
from reality_core.errors import ConfigurationError, InvalidKeyError, WritePathError
from tests.contract.tortoise_harness import Order, TortoiseHarness, db
from tests.tortoise.conftest import watch
from tests.tortoise.test_write_paths import T, room, row, seed


class Boom(Exception):
    pass


async def test_atomic_decorator_commits_once_and_rolls_back_on_error(
        h: TortoiseHarness) -> None:
    @atomic()
    async def create(id_: int, fail: bool) -> None:
        await Order.create(id=id_, room_id=id_)
        await Order.create(id=id_ + 100, room_id=id_)
        if fail:
            raise Boom

    v = await watch(h, T, row(1), row(101), room(1), row(2), room(2))
    await create(1, False)
    with pytest.raises(Boom):
        await create(2, True)
    assert await v.delta() == {T: 1, row(1): 1, row(101): 1, room(1): 1, row(2): 0, room(2): 0}


async def test_nested_client_used_explicitly_and_bumps_in_savepoints(h: TortoiseHarness) -> None:
    v = await watch(h, T, row(1), row(2), row(3), "feed:a", "feed:b")
    async with in_transaction() as outer:
        await Order.create(id=1, room_id=1, using_db=outer)
        with contextlib.suppress(Boom):
            async with in_transaction() as inner:
                await Order.create(id=2, room_id=2, using_db=inner)
                reality_tortoise.bump("feed:a", using_db=inner)
                raise Boom
        async with in_transaction() as inner:
            await Order.create(id=3, room_id=3, using_db=inner)
            reality_tortoise.bump("feed:b")
        assert await v.moved() == set()
    assert await v.delta() == {T: 1, row(1): 1, row(2): 0, row(3): 1, "feed:a": 0, "feed:b": 1}


async def test_manual_commit_and_rollback_inside_the_block(h: TortoiseHarness) -> None:
    v = await watch(h, T, row(1), row(2))
    async with in_transaction() as conn:
        await Order.create(id=1, room_id=1)
        await conn.commit()
    assert await v.delta() == {T: 1, row(1): 1, row(2): 0}
    async with in_transaction() as conn:
        await Order.create(id=2, room_id=2)
        await conn.rollback()
    assert await v.delta() == {T: 1, row(1): 1, row(2): 0}
    assert await h.count_orders() == 1


async def test_bump_needs_a_transaction_and_good_keys(h: TortoiseHarness) -> None:
    with pytest.raises(ConfigurationError, match="inside a transaction"):
        reality_tortoise.bump("feed:x")
    async with in_transaction():
        with pytest.raises(InvalidKeyError):
            reality_tortoise.bump("$table:orders")
        with pytest.raises(InvalidKeyError):
            reality_tortoise.bump("")
    v = await watch(h, "feed:x")
    async with in_transaction() as conn:
        reality_tortoise.bump("feed:x", "feed:x", using_db=conn)
    assert await v.delta() == {"feed:x": 1}


async def test_bump_refuses_a_connection_without_a_reality_engine(h: TortoiseHarness) -> None:
    from tortoise.backends.sqlite.client import SqliteClient

    plain = SqliteClient(file_path=":memory:", connection_name="plain")
    with pytest.raises(ConfigurationError, match="install"):
        reality_tortoise.bump("feed:x", using_db=plain)


async def test_a_failing_bump_fails_the_transaction_and_keeps_nothing(
        h: TortoiseHarness) -> None:
    await seed((1, 1, 0))
    await db().execute_script("DROP TABLE reality_log")
    with pytest.raises(WritePathError, match="create_tables"):
        async with in_transaction():
            await Order.create(id=2, room_id=2)
    # alone, the write and its bump share a transaction: neither lands
    with pytest.raises(WritePathError):
        await Order.create(id=3, room_id=3)
    with pytest.raises(WritePathError):
        await db().execute_query("UPDATE orders SET total = 1")
    assert await h.count_orders() == 1
    assert (await Order.get(id=1)).total == 0
    await reality_tortoise.create_tables()
    v = await watch(h, T, row(4))
    await Order.create(id=4, room_id=4)
    assert await v.delta() == {T: 1, row(4): 1}
