"""Many asyncio tasks writing at once never mix their keys; a task spawned inside a
transaction belongs to it while it is open, and never once it has ended."""

from __future__ import annotations

import asyncio

from tortoise.transactions import in_transaction

from reality_core.keys import table_key
from tests.contract.tortoise_harness import Order, TortoiseHarness
from tests.tortoise.conftest import watch
from tests.tortoise.test_write_paths import T, room, row

TASKS = 24


class Boom(Exception):
    pass


async def test_concurrent_tasks_never_mix_their_keys(h: TortoiseHarness) -> None:
    """Task i writes order i (room i): a third commit in a transaction, a third roll back
    after a nested savepoint, a third write outside any transaction. Each key moves by
    exactly what its own task committed."""
    gate = asyncio.Event()

    async def writer(i: int) -> None:
        await gate.wait()
        kind = i % 3
        if kind == 2:
            await Order.create(id=i, room_id=i)
            return
        try:
            async with in_transaction():
                await Order.create(id=i, room_id=i)
                await asyncio.sleep(0)
                async with in_transaction():
                    await Order.create(id=1000 + i, room_id=i)
                    await asyncio.sleep(0)
                if kind == 1:
                    raise Boom
        except Boom:
            pass

    keys = [T, *(row(i) for i in range(TASKS)), *(row(1000 + i) for i in range(TASKS)),
            *(room(i) for i in range(TASKS))]
    v = await watch(h, *keys)
    tasks = [asyncio.create_task(writer(i)) for i in range(TASKS)]
    gate.set()
    await asyncio.gather(*tasks)
    delta = await v.delta()
    committed = [i for i in range(TASKS) if i % 3 != 1]
    assert delta[T] == len(committed)
    for i in range(TASKS):
        kept = i % 3 != 1
        assert delta[row(i)] == int(kept), i
        assert delta[row(1000 + i)] == int(i % 3 == 0), i
        assert delta[room(i)] == int(kept), i
    assert await h.count_orders() == len(committed) + len([i for i in committed if i % 3 == 0])


async def test_a_task_spawned_inside_a_transaction_is_part_of_it_while_open(
        h: TortoiseHarness) -> None:
    v = await watch(h, T, row(1), row(2))
    async with in_transaction():
        await Order.create(id=1, room_id=1)
        await asyncio.create_task(Order.create(id=2, room_id=2))  # same connection, same tx
        assert await v.moved() == set()
    assert await v.delta() == {T: 1, row(1): 1, row(2): 1}

    v = await watch(h, T, row(3))
    try:
        async with in_transaction():
            await asyncio.create_task(Order.create(id=3, room_id=3))
            raise Boom
    except Boom:
        pass
    assert await v.moved() == set()
    assert await h.count_orders() == 2


async def test_a_task_that_outlives_its_transaction_is_not_attributed_to_it(
        h: TortoiseHarness) -> None:
    go = asyncio.Event()

    async def late_writer() -> None:
        await go.wait()
        await Order.create(id=2, room_id=2)  # the transaction it was spawned in has ended
        await Order.filter(id=2).update(total=5)

    v = await watch(h, T, row(1), row(2), room(2), table_key("posts"))
    async with in_transaction():
        await Order.create(id=1, room_id=1)
        task = asyncio.create_task(late_writer())
    assert await v.delta() == {T: 1, row(1): 1, row(2): 0, room(2): 0, table_key("posts"): 0}
    go.set()
    await task
    # its two writes committed on their own, each with its own bump
    assert await v.delta() == {T: 3, row(1): 1, row(2): 2, room(2): 2, table_key("posts"): 0}
    assert (await Order.get(id=2)).total == 5

    # ... and the next transaction on the same pool carries none of its keys
    v = await watch(h, T, row(1), row(2), row(3))
    async with in_transaction():
        await Order.create(id=3, room_id=3)
    assert await v.delta() == {T: 1, row(1): 0, row(2): 0, row(3): 1}


async def test_a_writer_racing_the_commit_lands_in_it_or_after_it(h: TortoiseHarness) -> None:
    """A spawned task's statement in flight when the block commits: either it ran inside
    the transaction (its keys in that bump) or after it (its own bump); never lost."""
    started = asyncio.Event()

    async def racer() -> None:
        started.set()
        await Order.create(id=2, room_id=2)

    v = await watch(h, T, row(1), row(2))
    async with in_transaction():
        await Order.create(id=1, room_id=1)
        task = asyncio.create_task(racer())
        await started.wait()
    await task
    delta = await v.delta()
    assert delta[row(1)] == 1
    assert delta[row(2)] == 1
    assert delta[T] in (1, 2)
    assert await h.count_orders() == 2
