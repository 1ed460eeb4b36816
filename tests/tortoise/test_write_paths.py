"""Every Tortoise write path bumps the keys it should, exactly where rows are knowable and by
escalation where they are not (I4, I5), in and outside a transaction, on every backend."""

from __future__ import annotations

import sqlite3

import pytest
from tortoise.expressions import F
from tortoise.transactions import in_transaction

from reality_core.catalog import RawSQLPolicy
from reality_core.errors import UnsupportedStatementError
from reality_core.keys import row_key, table_key
from tests.contract.tortoise_harness import (
    Order,
    Post,
    Tag,
    TortoiseHarness,
    db,
    tortoise_harness,
)
from tests.tortoise.conftest import watch
from tests.tortoise.models import Book, Message, Plain, Room, Shelf

T = table_key("orders")
LINK = table_key("post_tags")
ROOMS, MESSAGES = table_key("t_rooms"), table_key("t_messages")


def row(n: int) -> str:
    return row_key("orders", [n])


def room(n: int) -> str:
    return f"room:{n}"


def post(n: int) -> str:
    return row_key("posts", [n])


def tag(n: int) -> str:
    return row_key("tags", [n])


async def seed(*orders: tuple[int, int | None, int]) -> None:
    async with in_transaction():
        for id_, room_id, total in orders:
            await Order.create(id=id_, room_id=room_id, total=total)


@pytest.mark.parametrize("in_tx", [False, True], ids=["alone", "in_transaction"])
async def test_create_save_delete_bump_exact_keys(h: TortoiseHarness, in_tx: bool) -> None:
    v = await watch(h, T, row(1), row(2), room(7), room(8))

    async def act() -> None:
        order = await Order.create(id=1, room_id=7)
        order.room_id = 8
        await order.save()
        await (await Order.get(id=1)).delete()

    if in_tx:
        async with in_transaction():
            await act()
        assert await v.delta() == {T: 1, row(1): 1, row(2): 0, room(7): 1, room(8): 1}
    else:  # three transactions of their own
        await act()
        assert await v.delta() == {T: 3, row(1): 3, row(2): 0, room(7): 2, room(8): 2}


async def test_save_moving_a_row_bumps_the_old_and_the_new_template_key(
        h: TortoiseHarness) -> None:
    await seed((1, 7, 0))
    order = await Order.get(id=1)
    v = await watch(h, T, row(1), room(7), room(8), room(9))
    order.room_id = 8
    await order.save(update_fields=["room_id"])
    assert await v.moved() == {T, row(1), room(7), room(8)}


async def test_old_values_come_from_the_database_not_a_stale_instance(
        h: TortoiseHarness) -> None:
    await seed((1, 7, 0))
    stale = await Order.get(id=1)
    await Order.filter(id=1).update(room_id=9)  # another writer moved it meanwhile
    v = await watch(h, row(1), room(7), room(9))
    stale.total = 5
    await stale.save(update_fields=["total"])  # the row is in room 9, whatever it says
    assert await v.moved() == {row(1), room(9)}
    v = await watch(h, row(1), room(7), room(9))
    await stale.delete()
    assert await v.moved() == {row(1), room(9)}


async def test_computed_values_escalate_the_templates_they_feed(h: TortoiseHarness) -> None:
    await seed((1, 7, 0), (2, 3, 0))
    order = await Order.get(id=1)
    v = await watch(h, row(1), row(2), room(7), room(8), room(123))
    order.total = F("total") + 1  # type: ignore[assignment]
    await order.save(update_fields=["total"])
    assert await v.moved() == {row(1), room(7)}
    v = await watch(h, row(1), row(2), room(7), room(8), room(123))
    order.room_id = F("room_id") + 1  # type: ignore[assignment]
    await order.save(update_fields=["room_id"])
    assert await v.moved() == {row(1), room(7), room(8), room(123)}


async def test_queryset_update_and_delete(h: TortoiseHarness) -> None:
    await seed((1, 1, 10), (2, 2, 20), (3, 3, 0))
    v = await watch(h, T, row(1), row(2), row(3), room(1), room(3))
    await Order.filter(id=3).update(total=1)  # by primary key: that row, rooms escalate
    assert await v.moved() == {T, row(3), room(1), room(3)}
    v = await watch(h, T, row(1), row(2), row(3), room(1), table_key("posts"))
    await Order.filter(total__gte=10).update(total=0)  # rows unknowable: escalate
    assert await v.moved() == {T, row(1), row(2), row(3), room(1)}
    v = await watch(h, T, row(1), row(3), room(1), table_key("posts"))
    await Order.filter(room_id=1).delete()  # pins the room, not the rows
    assert await v.moved() == {T, row(1), row(3), room(1)}
    v = await watch(h, T, row(2), room(2), room(3))
    await Order.filter(id__in=[2]).delete()
    assert await v.moved() == {T, row(2), room(2), room(3)}


async def test_bulk_create_with_known_and_generated_keys(h: TortoiseHarness) -> None:
    v = await watch(h, T, row(1), row(2), row(3), room(1), room(2), room(3))
    await Order.bulk_create([Order(id=1, room_id=1), Order(id=2, room_id=2)])
    assert await v.moved() == {T, row(1), row(2), room(1), room(2)}

    await Room.create(title="a")
    some_room = row_key("t_rooms", [12345])
    v = await watch(h, ROOMS, some_room)
    await Room.bulk_create([Room(title="b"), Room(title="c")])  # ids the database picks
    assert await v.moved() == {ROOMS, some_room}  # unknown row keys escalate


async def test_bulk_create_on_conflict(h: TortoiseHarness) -> None:
    await seed((1, 1, 0))
    v = await watch(h, T, row(1), row(2), room(1), room(5), room(6), room(99))
    await Order.bulk_create([Order(id=1, room_id=5), Order(id=2, room_id=6)],
                            on_conflict=["id"], update_fields=["room_id", "total"])
    # row 1's old room is unknown to the statement: every room key escalates (I5)
    assert await v.moved() == {T, row(1), row(2), room(1), room(5), room(6), room(99)}
    assert (await Order.get(id=1)).room_id == 5

    v = await watch(h, T, row(1), row(3), room(5), room(7))
    await Order.bulk_create([Order(id=1, room_id=7), Order(id=3, room_id=7)],
                            ignore_conflicts=True)
    assert await v.moved() == {T, row(1), row(3), room(7)}
    assert (await Order.get(id=1)).room_id == 5


async def test_bulk_update_pins_rows_and_escalates_templates(h: TortoiseHarness) -> None:
    await seed((1, 1, 0), (2, 2, 0), (3, 3, 0))
    orders = await Order.filter(id__in=[1, 2]).order_by("id")
    for order in orders:
        order.total = 9
    v = await watch(h, T, row(1), row(2), row(3), room(3))
    await Order.bulk_update(orders, fields=["total"])
    assert await v.moved() == {T, row(1), row(2), room(3)}


async def test_update_or_create_and_get_or_create(h: TortoiseHarness) -> None:
    v = await watch(h, T, row(5), room(3), room(4))
    await Order.update_or_create(id=5, defaults={"room_id": 3})
    assert await v.delta() == {T: 1, row(5): 1, room(3): 1, room(4): 0}
    v = await watch(h, T, row(5), room(3), room(4))
    await Order.update_or_create(id=5, defaults={"room_id": 4})
    assert await v.delta() == {T: 1, row(5): 1, room(3): 1, room(4): 1}
    v = await watch(h, T, row(5), row(6))
    await Order.get_or_create(id=5, defaults={"room_id": 4})  # found: no write
    await Order.get_or_create(id=6, defaults={"room_id": 4})
    assert await v.delta() == {T: 1, row(5): 0, row(6): 1}


async def test_many_to_many_from_both_sides(h: TortoiseHarness) -> None:
    async with in_transaction():
        p1, p2 = await Post.create(id=1), await Post.create(id=2)
        t1, t2, t3 = await Tag.create(id=1), await Tag.create(id=2), await Tag.create(id=3)
    keys = (LINK, post(1), post(2), tag(1), tag(2), tag(3))
    v = await watch(h, *keys)
    await p1.tags.add(t1, t2)
    assert await v.moved() == {LINK, post(1), tag(1), tag(2)}
    v = await watch(h, *keys)
    await t3.posts.add(p2)
    assert await v.moved() == {LINK, post(2), tag(3)}
    v = await watch(h, *keys)
    await p1.tags.remove(t2)
    assert await v.moved() == {LINK, post(1), tag(2)}
    v = await watch(h, *keys)
    await p1.tags.clear()  # which tags it had is unknown to the statement: tags escalate
    assert await v.moved() == {LINK, post(1), tag(1), tag(2), tag(3)}
    v = await watch(h, *keys)
    await p1.tags.add(t1)  # already linked rows are skipped by Tortoise: still one bump
    await p1.tags.add(t1)
    assert await v.delta() == {LINK: 1, post(1): 1, post(2): 0, tag(1): 1, tag(2): 0,
                               tag(3): 0}


async def test_deleting_a_parent_escalates_the_rows_the_database_cascades_into(
        h: TortoiseHarness) -> None:
    r1, r2 = await Room.create(title="a"), await Room.create(title="b")
    m1 = await Message.create(room=r1, text="hi")
    await Message.create(room=r2, text="there")
    keys = (ROOMS, MESSAGES, row_key("t_rooms", [r1.id]), row_key("t_messages", [m1.id]),
            f"chat:{r1.id}", f"chat:{r2.id}")
    v = await watch(h, *keys)
    await r1.delete()
    assert await v.moved() == set(keys)
    assert await Message.filter(room_id=r1.id).count() == 0


@pytest.mark.parametrize("how", ["instance", "queryset", "raw"])
async def test_deleting_an_untracked_parent_still_bumps_its_tracked_children(
        h: TortoiseHarness, how: str) -> None:
    shelf, other = await Shelf.create(), await Shelf.create()
    book = await Book.create(shelf=shelf)
    await Book.create(shelf=other)
    keys = (table_key("t_books"), row_key("t_books", [book.id]), f"shelf:{shelf.id}",
            f"shelf:{other.id}")
    v = await watch(h, *keys)
    if how == "instance":
        await shelf.delete()
    elif how == "queryset":
        await Shelf.filter(id=shelf.id).delete()
    else:
        await db().execute_query(f"DELETE FROM t_shelves WHERE id = {shelf.id}")
    assert await v.moved() == set(keys)  # which books went is unknown: all escalate
    v = await watch(h, *keys)
    await Shelf.filter(id=other.id).update(name="renamed")  # not a delete: no cascade
    assert await v.moved() == set()


async def test_source_field_columns_and_foreign_keys_render_templates(
        h: TortoiseHarness) -> None:
    r1, r2 = await Room.create(title="a"), await Room.create(title="b")
    v = await watch(h, MESSAGES, f"chat:{r1.id}", f"chat:{r2.id}")
    await Message.bulk_create([Message(room=r1, text="x"), Message(room_id=r1.id, text="y")])
    assert await v.moved() == {MESSAGES, f"chat:{r1.id}"}
    message = await Message.filter(text="x").get()
    v = await watch(h, f"chat:{r1.id}", f"chat:{r2.id}")
    message.room = r2
    await message.save()
    assert await v.moved() == {f"chat:{r1.id}", f"chat:{r2.id}"}


async def test_untracked_models_bump_nothing(h: TortoiseHarness) -> None:
    v = await watch(h, T, table_key("t_plain"))
    plain = await Plain.create(value=1)
    await Plain.filter(id=plain.id).update(value=2)
    await db().execute_query("UPDATE t_plain SET value = 3")
    await plain.delete()
    assert await v.moved() == set()


async def test_raw_sql_paths(h: TortoiseHarness) -> None:
    await seed((1, 1, 0), (2, 2, 0))
    v = await watch(h, T, row(1), row(2), room(1), room(2))
    await db().execute_query("UPDATE orders SET total = 5 WHERE id = 1")
    assert await v.moved() == {T, row(1), room(1), room(2)}
    v = await watch(h, T, row(3), room(3), room(4))
    await db().execute_query("INSERT INTO orders (id, room_id, total) VALUES (3, 3, 0)")
    assert await v.moved() == {T, row(3), room(3)}
    v = await watch(h, T, row(1), row(2), room(2))
    await db().execute_query_dict("DELETE FROM orders WHERE room_id = 2")
    assert await v.moved() == {T, row(1), row(2), room(2)}
    if sqlite3.sqlite_version_info >= (3, 35) or h.dialect.startswith("postgresql"):
        v = await watch(h, T, row(1), row(3))
        await Order.raw("UPDATE orders SET total = 7 WHERE id = 1 RETURNING *")
        assert (await Order.get(id=1)).total == 7
        assert await v.moved() == {T, row(1)}
    v = await watch(h, T, row(1), row(3), table_key("posts"))
    await db().execute_script("UPDATE orders SET total = 8; UPDATE t_plain SET value = 1")
    assert await v.moved() == {T, row(1), row(3)}


async def test_a_script_inside_a_transaction_stays_inside_it(h: TortoiseHarness) -> None:
    """Python's sqlite3 ``executescript`` would COMMIT the open transaction first."""
    await seed((1, 1, 0))
    v = await watch(h, T, row(1))
    with pytest.raises(RuntimeError):
        async with in_transaction() as conn:
            await conn.execute_script("UPDATE orders SET total = 9 WHERE id = 1")
            raise RuntimeError
    assert (await Order.get(id=1)).total == 0
    assert await v.moved() == set()


@pytest.mark.parametrize("policy", ["conservative", "strict"])
async def test_unreadable_raw_sql_escalates_or_fails(pg_dialect: str, pg_url: str,
                                                     policy: RawSQLPolicy) -> None:
    async with tortoise_harness(pg_dialect, pg_url, raw_sql=policy) as h:
        await seed((1, 1, 0))
        v = await watch(h, T, row(1), room(1), table_key("posts"))
        block = "DO $$ BEGIN UPDATE orders SET total = 1; END $$"
        if policy == "strict":
            with pytest.raises(UnsupportedStatementError):
                await db().execute_script(block)
            assert await v.moved() == set()
            assert (await Order.get(id=1)).total == 0
        else:
            await db().execute_script(block)
            assert await v.moved() == {T, row(1), room(1), table_key("posts")}
