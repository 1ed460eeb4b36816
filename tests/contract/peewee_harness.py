"""The contract harness for reality_peewee: pooled peewee databases (playhouse.pool) on
PostgreSQL (psycopg 3 on peewee 4, psycopg2 or psycopg 3 on peewee 3), SQLite and MySQL.

peewee is synchronous and keeps its connection per thread; the suite's coroutines run on
the event loop's one thread, so each method simply calls peewee.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import AsyncIterator, Sequence
from typing import Any

import peewee
from playhouse.pool import PooledMySQLDatabase, PooledPostgresqlDatabase, PooledSqliteDatabase

import reality_peewee
from reality_core.store import OWN_TABLES
from reality_core.urls import DatabaseURL
from tests.contract.harness import IndependentReads as Reads  # reads are ORM-free

PostTagThrough = peewee.DeferredThroughModel()


class Order(peewee.Model):
    id = peewee.IntegerField(primary_key=True)
    room_id = peewee.IntegerField(null=True)
    total = peewee.IntegerField(default=0)

    class Meta:
        table_name = "orders"


class Tag(peewee.Model):
    id = peewee.IntegerField(primary_key=True)
    name = peewee.CharField(max_length=100, default="")

    class Meta:
        table_name = "tags"


class Post(peewee.Model):
    id = peewee.IntegerField(primary_key=True)
    title = peewee.CharField(max_length=100, default="")
    tags = peewee.ManyToManyField(Tag, backref="posts", through_model=PostTagThrough)

    class Meta:
        table_name = "posts"


class PostTag(peewee.Model):
    post = peewee.ForeignKeyField(Post, on_delete="CASCADE")
    tag = peewee.ForeignKeyField(Tag, on_delete="CASCADE")

    class Meta:
        table_name = "post_tags"
        primary_key = peewee.CompositeKey("post", "tag")


PostTagThrough.set_model(PostTag)


class OrderNote(peewee.Model):
    """Not tracked; its foreign key is checked at COMMIT (not on MySQL, which cannot)."""

    id = peewee.IntegerField(primary_key=True)
    order = peewee.ForeignKeyField(Order, deferrable="INITIALLY DEFERRED")

    class Meta:
        table_name = "order_notes"


MODELS = [Order, Tag, Post, PostTag, OrderNote]


def declare_models() -> None:
    """Fresh declarations for this harness (other test modules may track other tables)."""
    reality_peewee.registry.clear()
    reality_peewee.track(Order, keys=["room:{room_id}"])
    reality_peewee.track(Post)  # and, through Post.tags, the post_tags link model
    reality_peewee.track(Tag)


class _PooledMySQL(PooledMySQLDatabase):
    def _connect(self) -> Any:
        with warnings.catch_warnings():
            # peewee 3 passes PyMySQL the old db= argument, which PyMySQL 1.1+ deprecates.
            warnings.filterwarnings("ignore", "'db' is deprecated", DeprecationWarning)
            return super()._connect()


def open_database(dialect: str, url: str) -> peewee.Database:
    """A pooled peewee database for a SQLAlchemy-style test URL."""
    parsed = DatabaseURL.parse(url)
    if parsed.dialect == "sqlite":
        return PooledSqliteDatabase(parsed.database, pragmas={"foreign_keys": 1},
                                    max_connections=8)
    params: dict[str, Any] = {"host": parsed.host or "127.0.0.1", "user": parsed.username}
    if parsed.port:
        params["port"] = parsed.port
    if parsed.password:
        params["password"] = parsed.password
    if parsed.dialect == "postgresql":
        return PooledPostgresqlDatabase(parsed.database, max_connections=8, **params)
    return _PooledMySQL(parsed.database, max_connections=8, charset="utf8mb4", **params)


def _upsert(dialect: str, rows: Sequence[tuple[int, int | None, int]]) -> peewee.Insert:
    query = Order.insert_many([{"id": i, "room_id": r, "total": t} for i, r, t in rows])
    if dialect == "mysql":  # ON DUPLICATE KEY UPDATE
        return query.on_conflict(preserve=[Order.room_id, Order.total])
    return query.on_conflict(conflict_target=[Order.id], preserve=[Order.room_id, Order.total])


class PeeweeHarness(Reads):
    plugin = "peewee"

    def __init__(self, dialect: str, url: str, db: peewee.Database) -> None:
        super().__init__(url)
        self.dialect = dialect
        self.db = db

    # --- transactions -------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        with self.db.atomic():
            yield

    @contextlib.asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        assert self.db.in_transaction(), "savepoint() belongs inside transaction()"
        with self.db.atomic():
            yield

    # --- writes -------------------------------------------------------------------------

    async def insert_order(self, id: int, room_id: int | None, total: int = 0) -> None:
        Order.create(id=id, room_id=room_id, total=total)

    async def update_order(self, id: int, **values: Any) -> None:
        order = Order.get_by_id(id)
        for name, value in values.items():
            setattr(order, name, value)
        order.save()

    async def delete_order(self, id: int) -> None:
        Order.get_by_id(id).delete_instance()

    async def bulk_update_orders(self, min_total: int, **values: Any) -> None:
        Order.update(**values).where(Order.total >= min_total).execute()

    async def bulk_delete_orders(self, min_total: int) -> None:
        Order.delete().where(Order.total >= min_total).execute()

    async def bulk_insert_orders(self, rows: Sequence[tuple[int, int | None, int]]) -> None:
        Order.insert_many([{"id": i, "room_id": r, "total": t} for i, r, t in rows]).execute()

    async def upsert_orders(self, rows: Sequence[tuple[int, int | None, int]]) -> None:
        _upsert(self.dialect, rows).execute()

    async def raw_execute(self, sql: str) -> None:
        self.db.execute_sql(sql)

    async def insert_post(self, id: int) -> None:
        Post.create(id=id, title=f"post {id}")

    async def insert_tag(self, id: int) -> None:
        Tag.create(id=id, name=f"tag {id}")

    async def add_tag(self, post_id: int, tag_id: int) -> None:
        post = Post.get_by_id(post_id)
        # Like appending to a SQLAlchemy collection that holds the tag already: no-op.
        # (peewee's add() would insert a duplicate link row and fail.)
        if not post.tags.where(Tag.id == tag_id).exists():
            post.tags.add(Tag.get_by_id(tag_id))

    async def remove_tag(self, post_id: int, tag_id: int) -> None:
        Post.get_by_id(post_id).tags.remove(Tag.get_by_id(tag_id))

    async def clear_tags(self, post_id: int) -> None:
        Post.get_by_id(post_id).tags.clear()

    async def delete_post(self, post_id: int) -> None:
        Post.get_by_id(post_id).delete_instance()  # post_tags rows: ON DELETE CASCADE

    async def insert_note(self, id: int, order_id: int) -> None:
        OrderNote.insert(id=id, order=order_id).execute()

    async def bump(self, key: str) -> None:
        reality_peewee.bump(self.db, key)

    # --- exit paths ---------------------------------------------------------------------

    async def close_without_commit(self, id: int, room_id: int) -> None:
        db = self.db
        with db.manual_commit():
            db.begin()
            Order.create(id=id, room_id=room_id)
        db.manual_close()  # the connection goes away, transaction and all

    async def dirty_checkin(self, id: int, room_id: int) -> None:
        db = self.db
        db.begin()
        Order.create(id=id, room_id=room_id)
        db.close()  # back to the pool mid-transaction: rolled back on the way in


def _drop_schema(db: peewee.Database) -> None:
    db.drop_tables(MODELS, safe=True)
    for table in sorted(OWN_TABLES):
        db.execute_sql(f"DROP TABLE IF EXISTS {table}")


@contextlib.asynccontextmanager
async def peewee_harness(dialect: str, url: str, *,
                         triggers: bool = False) -> AsyncIterator[PeeweeHarness]:
    db = open_database(dialect, url)
    db.bind(MODELS)
    declare_models()
    reality_peewee.install(db)
    _drop_schema(db)
    # MySQL checks foreign keys per statement and cannot defer them.
    OrderNote.order.deferrable = None if dialect == "mysql" else "INITIALLY DEFERRED"
    db.create_tables(MODELS)
    reality_peewee.create_tables(db)
    if triggers:
        reality_peewee.create_triggers(db)
    h = PeeweeHarness(dialect, url, db)
    try:
        yield h
    finally:
        h.reader.close()
        if not db.is_closed() and db.in_transaction():  # a failed test left one open
            db.rollback()
        if triggers:  # the functions would outlive the tables
            reality_peewee.drop_triggers(db)
        _drop_schema(db)
        reality_peewee.uninstall(db)
        db.close_all()
