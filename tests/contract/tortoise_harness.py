"""The contract harness for reality_tortoise: one Tortoise context per test, on asyncpg,
psycopg or SQLite (``dialect`` ``postgresql+asyncpg``, ``postgresql+psycopg``, ``sqlite``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from tortoise import fields
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.connection import get_connections
from tortoise.context import TortoiseContext
from tortoise.models import Model
from tortoise.transactions import in_transaction

import reality_tortoise
from reality_core.catalog import RawSQLPolicy
from reality_core.urls import DatabaseURL
from tests.contract.harness import IndependentReads as Reads  # reads are ORM-free


class Order(Model):
    id = fields.IntField(primary_key=True, generated=False)
    room_id = fields.IntField(null=True)
    total = fields.IntField(default=0)

    class Meta:
        table = "orders"
        reality = reality_tortoise.Track(keys=["room:{room_id}"])


class Post(Model):
    id = fields.IntField(primary_key=True, generated=False)
    title = fields.CharField(max_length=100, default="")
    tags: fields.ManyToManyRelation[Tag] = fields.ManyToManyField(
        "models.Tag", related_name="posts", through="post_tags", forward_key="tag_id",
        backward_key="post_id",
    )

    class Meta:
        table = "posts"
        reality = reality_tortoise.Track()


class Tag(Model):
    id = fields.IntField(primary_key=True, generated=False)
    name = fields.CharField(max_length=100, default="")
    posts: fields.ManyToManyRelation[Post]

    class Meta:
        table = "tags"
        reality = reality_tortoise.Track()


MODELS = (__name__,)
OWN_TABLES = ("reality_log", "reality_versions", "reality_meta")
NOTES_DDL = ("CREATE TABLE order_notes (id INTEGER PRIMARY KEY, order_id INTEGER NOT NULL "
             "REFERENCES orders(id) DEFERRABLE INITIALLY DEFERRED)")


def tortoise_config(dialect: str, url: str, *, models: Sequence[str] = MODELS,
                    raw_sql: RawSQLPolicy = "conservative") -> dict[str, Any]:
    """A Tortoise config, with Reality's engine, for the fixtures' SQLAlchemy-style URL.

    The connection is named after its driver: Tortoise caches each model's SQL per
    connection name, process-wide, and asyncpg's ``$1`` is no placeholder for psycopg.
    """
    parsed = DatabaseURL.parse(url)
    driver = dialect.partition("+")[2] or None
    connection = reality_tortoise.connection_config(parsed.with_driver(driver), raw_sql=raw_sql)
    alias = driver or parsed.dialect
    return {"connections": {alias: connection},
            "apps": {"models": {"models": list(models), "default_connection": alias}}}


def db() -> BaseDBAsyncClient:
    """The current client of the only connection (the transaction's, inside one)."""
    handler = get_connections()
    (alias,) = handler.db_config
    return handler.get(alias)


class TortoiseHarness(Reads):
    plugin = "tortoise"

    def __init__(self, dialect: str, url: str) -> None:
        super().__init__(url)
        self.dialect = dialect

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        async with in_transaction():
            yield

    @contextlib.asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        async with in_transaction():
            yield

    async def insert_order(self, id: int, room_id: int | None, total: int = 0) -> None:
        await Order.create(id=id, room_id=room_id, total=total)

    async def update_order(self, id: int, **values: Any) -> None:
        order = await Order.get(id=id)
        await order.update_from_dict(values).save()

    async def delete_order(self, id: int) -> None:
        await (await Order.get(id=id)).delete()

    async def bulk_update_orders(self, min_total: int, **values: Any) -> None:
        await Order.filter(total__gte=min_total).update(**values)

    async def bulk_delete_orders(self, min_total: int) -> None:
        await Order.filter(total__gte=min_total).delete()

    async def bulk_insert_orders(self, rows: Sequence[tuple[int, int | None, int]]) -> None:
        await Order.bulk_create([Order(id=i, room_id=r, total=t) for i, r, t in rows])

    async def upsert_orders(self, rows: Sequence[tuple[int, int | None, int]]) -> None:
        await Order.bulk_create([Order(id=i, room_id=r, total=t) for i, r, t in rows],
                                on_conflict=["id"], update_fields=["room_id", "total"])

    async def raw_execute(self, sql: str) -> None:
        await db().execute_query(sql)

    async def insert_post(self, id: int) -> None:
        await Post.create(id=id, title=f"post {id}")

    async def insert_tag(self, id: int) -> None:
        await Tag.create(id=id, name=f"tag {id}")

    async def add_tag(self, post_id: int, tag_id: int) -> None:
        post = await Post.get(id=post_id)
        await post.tags.add(await Tag.get(id=tag_id))

    async def remove_tag(self, post_id: int, tag_id: int) -> None:
        post = await Post.get(id=post_id)
        await post.tags.remove(await Tag.get(id=tag_id))

    async def clear_tags(self, post_id: int) -> None:
        await (await Post.get(id=post_id)).tags.clear()

    async def delete_post(self, post_id: int) -> None:
        await (await Post.get(id=post_id)).delete()

    async def insert_note(self, id: int, order_id: int) -> None:
        await db().execute_query(
            f"INSERT INTO order_notes (id, order_id) VALUES ({int(id)}, {int(order_id)})")

    async def bump(self, key: str) -> None:
        reality_tortoise.bump(key)

    async def close_without_commit(self, id: int, room_id: int) -> None:
        """The request handler holding the transaction is cancelled (a client went away):
        Tortoise's own way out of a block without COMMIT."""
        inserted = asyncio.Event()

        async def handler() -> None:
            async with in_transaction():
                await Order.create(id=id, room_id=room_id)
                inserted.set()
                await asyncio.Event().wait()

        task = asyncio.create_task(handler())
        await inserted.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def dirty_checkin(self, id: int, room_id: int) -> None:
        """The connection goes back to the pool (SQLite: the lock is let go) in the middle
        of a written transaction, with neither COMMIT nor ROLLBACK from the transaction."""
        context: Any = in_transaction()
        tx = await context.__aenter__()
        await Order.create(id=id, room_id=room_id)
        get_connections().reset(context.token)
        if self.dialect == "sqlite":
            context._trxlock.release()
        else:
            await tx._parent._pool.release(tx._connection)


async def drop_tables(ctx: TortoiseContext, dialect: str) -> None:
    """Drop every table of the context's models, and Reality's (PostgreSQL: the database
    lives for the whole session; SQLite: each test has a new file)."""
    if not dialect.startswith("postgresql"):
        return
    assert ctx.apps is not None
    tables = {"order_notes", *OWN_TABLES}
    for model in ctx.apps.get_models_iterable():
        tables.add(model._meta.db_table)
        for name in model._meta.m2m_fields:
            tables.add(model._meta.fields_map[name].through)  # type: ignore[attr-defined]
    for table in sorted(tables):
        await db().execute_script(f'DROP TABLE IF EXISTS "{table}" CASCADE')


@contextlib.asynccontextmanager
async def tortoise_context(dialect: str, url: str, *, models: Sequence[str] = MODELS,
                           raw_sql: RawSQLPolicy = "conservative",
                           ) -> AsyncIterator[TortoiseContext]:
    """Tortoise set up for one test (its own context, closed afterwards), on a fresh schema
    made by ``generate_schemas()`` (which creates Reality's tables too)."""
    async with TortoiseContext() as ctx:
        await ctx.init(config=tortoise_config(dialect, url, models=models, raw_sql=raw_sql))
        await drop_tables(ctx, dialect)
        await ctx.generate_schemas()
        try:
            yield ctx
        finally:
            await drop_tables(ctx, dialect)


@contextlib.asynccontextmanager
async def tortoise_harness(dialect: str, url: str, *, triggers: bool = False,
                           models: Sequence[str] = MODELS,
                           raw_sql: RawSQLPolicy = "conservative",
                           ) -> AsyncIterator[TortoiseHarness]:
    """The harness on a fresh schema; ``triggers``: in trigger mode (``create_triggers``
    ran once the schema existed)."""
    async with tortoise_context(dialect, url, models=models, raw_sql=raw_sql):
        await db().execute_script(NOTES_DDL)
        if triggers:
            await reality_tortoise.create_triggers()
        h = TortoiseHarness(dialect, url)
        try:
            yield h
        finally:
            h.reader.close()
