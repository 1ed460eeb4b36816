"""The shared behaviour suite: every case of ../shared/CASES.md that applies to all
plugins, run on every (plugin, database) pair in ``conftest.FACTORIES``.

Keys: ``T`` is the orders table key, ``row(n)`` an order's row key, ``room:n`` the
template key. Each test records versions before, acts, and compares: a key "moved" when
its version went up, and "stayed" when it did not.
"""

from __future__ import annotations

import contextlib

import pytest

from reality_core.keys import row_key, table_key
from reality_core.urls import DatabaseURL
from tests.contract.harness import Harness

T = table_key("orders")
POSTS = table_key("posts")
LINK = table_key("post_tags")


def row(n: int) -> str:
    return row_key("orders", [n])


def room(n: int) -> str:
    return f"room:{n}"


class Boom(Exception):
    """Raised inside a block to make it roll back."""


async def moved(h: Harness, before: dict[str, int]) -> set[str]:
    after = await h.versions(*before)
    for key, version in after.items():
        assert version >= before[key], f"{key} went backwards: {before[key]} -> {version}"
    return {k for k in before if after[k] > before[k]}


async def seed(h: Harness, *orders: tuple[int, int | None, int]) -> None:
    async with h.transaction():
        for id_, room_id, total in orders:
            await h.insert_order(id_, room_id, total)


async def test_c01_nothing_visible_before_commit(harness: Harness) -> None:
    h = harness
    await seed(h, (42, 1, 0))
    before = await h.versions(T, row(42), room(1))
    async with h.transaction():
        await h.update_order(42, total=5)
        assert await moved(h, before) == set(), "a bump is visible before COMMIT"
    after = await h.versions(*before)
    assert after == {k: v + 1 for k, v in before.items()}, "each key moves exactly once"


async def test_c02_released_savepoint_is_not_a_commit(harness: Harness) -> None:
    h = harness
    await seed(h, (42, 1, 0))
    before = await h.versions(T, row(42), room(1))
    with pytest.raises(Boom):
        async with h.transaction():
            async with h.savepoint():
                await h.update_order(42, total=7)
            assert await moved(h, before) == set(), "releasing a savepoint published keys"
            raise Boom
    assert await moved(h, before) == set(), "a rolled-back outer transaction left a bump"

    async with h.transaction():
        async with h.savepoint():
            await h.update_order(42, total=8)
        assert await moved(h, before) == set()
    after = await h.versions(*before)
    assert after == {k: v + 1 for k, v in before.items()}, "outer commit: exactly one bump"


async def test_c03_work_rolled_back_to_savepoint_is_forgotten(harness: Harness) -> None:
    h = harness
    await seed(h, (1, 1, 0), (2, 2, 0))
    before = await h.versions(T, row(1), row(2), room(1), room(2), room(7))
    async with h.transaction():
        await h.update_order(1, total=1)
        with contextlib.suppress(Boom):
            async with h.savepoint():
                await h.update_order(2, total=2, room_id=7)
                raise Boom
    assert await moved(h, before) == {T, row(1), room(1)}


async def test_c03_three_levels_middle_rolled_back(harness: Harness) -> None:
    h = harness
    await seed(h, (1, 1, 0), (2, 2, 0), (3, 3, 0), (4, 4, 0))
    before = await h.versions(T, *(row(n) for n in range(1, 5)), *(room(n) for n in range(1, 5)))
    async with h.transaction():
        await h.update_order(1, total=1)
        with contextlib.suppress(Boom):
            async with h.savepoint():
                await h.update_order(2, total=2)
                async with h.savepoint():
                    await h.update_order(3, total=3)
                raise Boom
        async with h.savepoint():
            await h.update_order(4, total=4)
    assert await moved(h, before) == {T, row(1), room(1), row(4), room(4)}


async def _exit_by_exception(h: Harness) -> None:
    with contextlib.suppress(Boom):
        async with h.transaction():
            await h.insert_order(5, 5)
            raise Boom


async def _exit_by_close(h: Harness) -> None:
    await h.close_without_commit(5, 5)


async def _exit_by_failed_flush(h: Harness) -> None:
    with pytest.raises(Exception) as info:
        async with h.transaction():
            await h.insert_order(5, 5)
            await h.insert_order(99, 99)  # exists already: unique violation
    assert not isinstance(info.value, Boom)


async def _exit_by_failed_commit(h: Harness) -> None:
    with pytest.raises(Exception):
        async with h.transaction():
            await h.insert_order(5, 5)
            await h.insert_note(1, order_id=123456)  # deferred FK: fails at COMMIT


async def _exit_by_dirty_checkin(h: Harness) -> None:
    await h.dirty_checkin(5, 5)


EXITS = {
    "exception": _exit_by_exception,
    "close": _exit_by_close,
    "failed_flush": _exit_by_failed_flush,
    "dirty_checkin": _exit_by_dirty_checkin,
}


@pytest.mark.parametrize("exit_path", list(EXITS))
async def test_c04_no_leftovers_after_failed_transaction(harness: Harness, exit_path: str) -> None:
    await _no_leftovers(harness, exit_path)


@pytest.mark.dialects("postgresql", "sqlite")  # MySQL has no deferred foreign keys
async def test_c04_no_leftovers_after_failed_commit(harness: Harness) -> None:
    await _no_leftovers(harness, "failed_commit")


async def _no_leftovers(h: Harness, exit_path: str) -> None:
    exits = {**EXITS, "failed_commit": _exit_by_failed_commit}
    await seed(h, (99, 99, 0))
    keys = (T, row(5), room(5), row(99), room(99))
    for attempt in range(2):  # and the plugin keeps working after the failure
        before = await h.versions(*keys)
        await exits[exit_path](h)
        assert await moved(h, before) == set(), f"{exit_path} left a bump behind"
        async with h.transaction():
            await h.update_order(99, total=attempt + 1)
        assert await moved(h, before) == {T, row(99), room(99)}, f"leftover after {exit_path}"
        assert await h.count_orders() == 1


async def test_c06_bulk_update_delete_insert(harness: Harness) -> None:
    h = harness
    await seed(h, (1, 1, 10), (2, 2, 20), (3, 3, 0))
    keys = (T, row(1), row(2), room(1), room(2), POSTS)
    before = await h.versions(*keys)
    async with h.transaction():
        await h.bulk_update_orders(10, total=0)
        assert await moved(h, before) == set()
    assert await moved(h, before) == {T, row(1), row(2), room(1), room(2)}

    await seed(h, (4, 4, 40))
    before = await h.versions(T, row(4), room(4), POSTS)
    await h.bulk_delete_orders(40)
    assert await moved(h, before) == {T, row(4), room(4)}

    before = await h.versions(T, row(10), row(11), room(10), room(11), POSTS)
    async with h.transaction():
        await h.bulk_insert_orders([(10, 10, 0), (11, 11, 0)])
    assert await moved(h, before) == {T, row(10), row(11), room(10), room(11)}

    before = await h.versions(T, row(12), room(12))
    with contextlib.suppress(Boom):
        async with h.transaction():
            await h.bulk_insert_orders([(12, 12, 0)])
            await h.bulk_update_orders(0, total=1)
            raise Boom
    assert await moved(h, before) == set(), "a rolled-back bulk statement bumped"


async def test_c07_upsert_bumps_table_and_both_rows(harness: Harness) -> None:
    h = harness
    await seed(h, (1, 1, 0))
    before = await h.versions(T, row(1), row(2), room(1), room(5), room(6))
    await h.upsert_orders([(1, 5, 50), (2, 6, 60)])
    # room 1 is the old room of order 1: moved through escalation, as I5 requires.
    assert await moved(h, before) == {T, row(1), row(2), room(1), room(5), room(6)}


async def test_c08_many_to_many(harness: Harness) -> None:
    h = harness
    async with h.transaction():
        await h.insert_post(1)
        await h.insert_tag(1)
        await h.insert_tag(2)
    post, tag1, tag2 = row_key("posts", [1]), row_key("tags", [1]), row_key("tags", [2])
    for action in ("add", "remove", "clear", "delete_post"):
        if action in ("remove", "clear", "delete_post"):
            async with h.transaction():
                await h.add_tag(1, 1)
        before = await h.versions(LINK, post, tag1)
        if action == "add":
            await h.add_tag(1, 1)
        elif action == "remove":
            await h.remove_tag(1, 1)
        elif action == "clear":
            await h.clear_tags(1)
        else:
            await h.delete_post(1)
        assert {LINK, post, tag1} <= await moved(h, before), action
    before = await h.versions(tag2)
    await h.insert_post(2)
    assert await moved(h, before) == set(), "an unrelated tag moved"


async def test_c09_raw_sql(harness: Harness) -> None:
    h = harness
    await seed(h, (1, 1, 0))
    before = await h.versions(T, row(1), room(1), POSTS)
    await h.raw_execute("UPDATE orders SET total = total + 1")
    assert await moved(h, before) == {T, row(1), room(1)}

    before = await h.versions(T, row(1), room(1), POSTS)
    await h.raw_execute("SELECT 1 AS updated_at, 2 AS created_at FROM orders")
    await h.raw_execute("SELECT id FROM orders WHERE total > 0 /* update orders */")
    assert await moved(h, before) == set(), "a SELECT bumped"

    if h.dialect.startswith("postgresql"):
        before = await h.versions(T, row(1))
        await h.raw_execute(
            "WITH x AS (UPDATE orders SET total = 0 RETURNING *) SELECT count(*) FROM x"
        )
        assert await moved(h, before) == {T, row(1)}


async def test_c09_manual_bump_rides_the_transaction(harness: Harness) -> None:
    h = harness
    before = await h.versions("feed:global")
    with contextlib.suppress(Boom):
        async with h.transaction():
            await h.bump("feed:global")
            raise Boom
    assert await moved(h, before) == set()
    async with h.transaction():
        await h.bump("feed:global")
        await h.bump("feed:global")
    assert (await h.versions("feed:global"))["feed:global"] == before["feed:global"] + 1


async def test_c10_read_rule_never_pairs_old_data_with_new_version(harness: Harness) -> None:
    """A client that reads the version first, then the data, may store new data under an
    old version (harmless: the next sync refetches), never old data under the new one."""
    h = harness
    await seed(h, (1, 1, 0))
    # The rule: version first ...
    version = (await h.versions(room(1)))[room(1)]
    await h.update_order(1, total=5)  # a writer commits in between
    data_total = await _total(h, 1)  # ... then data
    assert data_total == 5
    server = (await h.versions(room(1)))[room(1)]
    assert server != version, "the next sync must report the key as changed"

    # The wrong order shows what the rule prevents: data first, then the version.
    stale_total = await _total(h, 1)
    await h.update_order(1, total=6)
    new_version = (await h.versions(room(1)))[room(1)]
    assert stale_total == 5
    assert (await h.versions(room(1)))[room(1)] == new_version, (
        "old data stored under the newest version would never be refetched"
    )


async def _total(h: Harness, order_id: int) -> int:
    """The order's total, read on a connection of its own (like a client's data fetch)."""
    url: DatabaseURL = h._url  # type: ignore[attr-defined]
    conn = url.dbapi_connect()
    try:
        cur = conn.cursor()
        cur.execute(f"SELECT total FROM orders WHERE id = {int(order_id)}")
        (total,) = cur.fetchone()
        return int(total)
    finally:
        conn.close()


async def test_c11_changed_since_never_skips_out_of_order_commits(harness: Harness) -> None:
    """The client's known versions are its cursor: per-key versions, so a transaction that
    commits after a later one is still reported on the next sync."""
    h = harness
    await seed(h, (1, 1, 0), (2, 2, 0))
    known = await h.versions(row(1), row(2))
    # T2 commits first (T1 has not started writing yet in this single-task form), the client
    # syncs, then T1 commits: the next sync from the same known map includes T1's key.
    await h.update_order(2, total=2)
    seen = await h.versions(*known)
    assert {k for k in known if seen[k] != known[k]} == {row(2)}
    known = seen
    await h.update_order(1, total=1)
    seen = await h.versions(*known)
    assert {k for k in known if seen[k] != known[k]} == {row(1)}
