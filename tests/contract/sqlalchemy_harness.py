"""The contract harness for reality_sqlalchemy: a sync ``sessionmaker`` and an
``AsyncSession`` variant over the same models."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)

import reality_sqlalchemy
from reality_core.urls import DatabaseURL
from tests.contract.harness import IndependentReads


class Base(DeclarativeBase):
    pass


post_tags = sa.Table(
    "post_tags", Base.metadata,
    sa.Column("post_id", sa.ForeignKey("posts.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("tag_id", sa.ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True),
)


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    room_id: Mapped[int | None]
    total: Mapped[int] = mapped_column(default=0)


class Post(Base):
    __tablename__ = "posts"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(sa.String(100), default="")
    tags: Mapped[list[Tag]] = relationship(secondary=post_tags, passive_deletes=True)


class Tag(Base):
    __tablename__ = "tags"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(100), default="")


NOTES_DDL = {
    "postgresql": "CREATE TABLE order_notes (id INTEGER PRIMARY KEY, order_id INTEGER NOT NULL "
                  "REFERENCES orders(id) DEFERRABLE INITIALLY DEFERRED)",
    "sqlite": "CREATE TABLE order_notes (id INTEGER PRIMARY KEY, order_id INTEGER NOT NULL "
              "REFERENCES orders(id) DEFERRABLE INITIALLY DEFERRED)",
    "mysql": "CREATE TABLE order_notes (id INTEGER PRIMARY KEY, order_id INTEGER NOT NULL, "
             "FOREIGN KEY (order_id) REFERENCES orders(id)) ENGINE=InnoDB",
}


def declare_models() -> None:
    """Fresh declarations for this harness (other test modules may track other tables)."""
    reality_sqlalchemy.registry.clear()
    reality_sqlalchemy.track(Order, keys=["room:{room_id}"])
    reality_sqlalchemy.track(Post)
    reality_sqlalchemy.track(Tag)


def _sqlite_fk_on(dbapi_connection: Any, record: Any) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _upsert(dialect: str, rows: Sequence[tuple[int, int | None, int]]) -> Any:
    values = [{"id": i, "room_id": r, "total": t} for i, r, t in rows]
    if dialect == "mysql":
        stmt_m = mysql.insert(Order).values(values)
        return stmt_m.on_duplicate_key_update(room_id=stmt_m.inserted.room_id,
                                              total=stmt_m.inserted.total)
    ins = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = ins(Order).values(values)
    return stmt.on_conflict_do_update(
        index_elements=["id"], set_={"room_id": stmt.excluded.room_id,
                                     "total": stmt.excluded.total}
    )


def _add(s: Session, obj: Any) -> None:
    s.add(obj)


def _update(s: Session, id: int, values: dict[str, Any]) -> None:
    order = s.get_one(Order, id)
    for k, v in values.items():
        setattr(order, k, v)


def _delete(s: Session, model: type[Any], id: int) -> None:
    s.delete(s.get_one(model, id))


def _execute(s: Session, stmt: Any, params: Any = None) -> None:
    s.execute(stmt, params)


def _tag_op(s: Session, post_id: int, tag_id: int | None, op: str) -> None:
    post = s.get_one(Post, post_id)
    if op == "clear":
        post.tags.clear()
    elif op == "add":
        post.tags.append(s.get_one(Tag, tag_id))
    else:
        post.tags.remove(s.get_one(Tag, tag_id))


def _bump(s: Session, key: str) -> None:
    reality_sqlalchemy.bump(s, key)


class _Ops(IndependentReads):
    """Every write as a function of a sync ``Session``, run by ``_run`` in the current
    block (or in a transaction of its own when none is open)."""

    plugin = "sqlalchemy"
    dialect = ""

    async def _run(self, fn: Any, *args: Any) -> None:
        raise NotImplementedError

    async def insert_order(self, id: int, room_id: int | None, total: int = 0) -> None:
        await self._run(_add, Order(id=id, room_id=room_id, total=total))

    async def update_order(self, id: int, **values: Any) -> None:
        await self._run(_update, id, values)

    async def delete_order(self, id: int) -> None:
        await self._run(_delete, Order, id)

    async def bulk_update_orders(self, min_total: int, **values: Any) -> None:
        await self._run(_execute, sa.update(Order).where(Order.total >= min_total).values(**values))

    async def bulk_delete_orders(self, min_total: int) -> None:
        await self._run(_execute, sa.delete(Order).where(Order.total >= min_total))

    async def bulk_insert_orders(self, rows: Sequence[tuple[int, int | None, int]]) -> None:
        await self._run(_execute, sa.insert(Order),
                        [{"id": i, "room_id": r, "total": t} for i, r, t in rows])

    async def upsert_orders(self, rows: Sequence[tuple[int, int | None, int]]) -> None:
        await self._run(_execute, _upsert(self.dialect.partition("+")[0], rows))

    async def raw_execute(self, sql: str) -> None:
        await self._run(_execute, sa.text(sql))

    async def insert_post(self, id: int) -> None:
        await self._run(_add, Post(id=id, title=f"post {id}"))

    async def insert_tag(self, id: int) -> None:
        await self._run(_add, Tag(id=id, name=f"tag {id}"))

    async def add_tag(self, post_id: int, tag_id: int) -> None:
        await self._run(_tag_op, post_id, tag_id, "add")

    async def remove_tag(self, post_id: int, tag_id: int) -> None:
        await self._run(_tag_op, post_id, tag_id, "remove")

    async def clear_tags(self, post_id: int) -> None:
        await self._run(_tag_op, post_id, None, "clear")

    async def delete_post(self, post_id: int) -> None:
        await self._run(_delete, Post, post_id)

    async def insert_note(self, id: int, order_id: int) -> None:
        await self._run(_execute, sa.text("INSERT INTO order_notes (id, order_id) VALUES (:i, :o)"),
                        {"i": id, "o": order_id})

    async def bump(self, key: str) -> None:
        await self._run(_bump, key)


class SyncHarness(_Ops):
    def __init__(self, dialect: str, url: str, engine: sa.Engine) -> None:
        super().__init__(url)
        self.dialect = dialect
        self.engine = engine
        self.Session = sessionmaker(engine)
        self._stack: list[Session] = []

    async def _run(self, fn: Any, *args: Any) -> None:
        if self._stack:
            fn(self._stack[-1], *args)
            self._stack[-1].flush()
        else:
            with self.Session.begin() as session:
                fn(session, *args)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        with self.Session.begin() as session:
            self._stack.append(session)
            try:
                yield
            finally:
                self._stack.pop()

    @contextlib.asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        with self._stack[-1].begin_nested():
            yield

    async def close_without_commit(self, id: int, room_id: int) -> None:
        session = self.Session()
        session.add(Order(id=id, room_id=room_id))
        session.flush()
        session.close()

    async def dirty_checkin(self, id: int, room_id: int) -> None:
        session = self.Session()
        session.add(Order(id=id, room_id=room_id))
        session.flush()
        # The connection is dropped mid-transaction (as when a request handler crashes and
        # its connection is discarded): no COMMIT, no ROLLBACK event from the session.
        session.connection().invalidate()
        session.close()


class AsyncHarness(_Ops):
    plugin = "sqlalchemy_async"

    def __init__(self, dialect: str, url: str, engine: Any) -> None:
        super().__init__(url)
        self.dialect = dialect
        self.engine = engine
        self.Session = async_sessionmaker(engine, expire_on_commit=False)
        self._stack: list[AsyncSession] = []

    async def _run(self, fn: Any, *args: Any) -> None:
        if self._stack:
            await self._stack[-1].run_sync(fn, *args)
            await self._stack[-1].flush()
        else:
            async with self.Session.begin() as session:
                await session.run_sync(fn, *args)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        async with self.Session.begin() as session:
            self._stack.append(session)
            try:
                yield
            finally:
                self._stack.pop()

    @contextlib.asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        async with self._stack[-1].begin_nested():
            yield

    async def close_without_commit(self, id: int, room_id: int) -> None:
        session = self.Session()
        session.add(Order(id=id, room_id=room_id))
        await session.flush()
        await session.close()

    async def dirty_checkin(self, id: int, room_id: int) -> None:
        session = self.Session()
        session.add(Order(id=id, room_id=room_id))
        await session.flush()
        conn = await session.connection()
        await conn.invalidate()
        await session.close()


def _sync_url(dialect: str, url: str) -> str:
    return DatabaseURL.parse(url).sqlalchemy()


def _create_schema(conn: sa.Connection, dialect: str) -> None:
    conn.exec_driver_sql("DROP TABLE IF EXISTS order_notes")
    Base.metadata.drop_all(conn)
    conn.exec_driver_sql("DROP TABLE IF EXISTS reality_versions")
    conn.exec_driver_sql("DROP TABLE IF EXISTS reality_log")
    conn.exec_driver_sql("DROP TABLE IF EXISTS reality_meta")
    Base.metadata.create_all(conn)
    conn.exec_driver_sql(NOTES_DDL[dialect])
    reality_sqlalchemy.create_tables(conn)


def _drop_schema(conn: sa.Connection) -> None:
    conn.exec_driver_sql("DROP TABLE IF EXISTS order_notes")
    Base.metadata.drop_all(conn)
    reality_sqlalchemy.metadata.drop_all(conn)


@contextlib.asynccontextmanager
async def sqlalchemy_async_harness(dialect: str, url: str, *,
                                   triggers: bool = False) -> AsyncIterator[AsyncHarness]:
    engine = create_async_engine(DatabaseURL.parse(url).sqlalchemy(asynchronous=True))
    if dialect.startswith("sqlite"):
        event.listen(engine.sync_engine, "connect", _sqlite_fk_on)
        reality_sqlalchemy.enable_sqlite_savepoints(engine)
    declare_models()
    base = dialect.partition("+")[0]
    async with engine.begin() as conn:
        await conn.run_sync(_create_schema, base)
    h = AsyncHarness(dialect, url, engine)
    reality_sqlalchemy.install(h.Session)
    if triggers:
        async with engine.begin() as conn:
            await conn.run_sync(reality_sqlalchemy.create_triggers)
    try:
        yield h
    finally:
        reality_sqlalchemy.uninstall(h.Session)
        h.reader.close()
        async with engine.begin() as conn:
            await conn.run_sync(_drop_schema)
        await engine.dispose()


@contextlib.asynccontextmanager
async def sqlalchemy_harness(dialect: str, url: str, *,
                             triggers: bool = False) -> AsyncIterator[SyncHarness]:
    engine = sa.create_engine(_sync_url(dialect, url), pool_size=5)
    if dialect == "sqlite":
        event.listen(engine, "connect", _sqlite_fk_on)
        reality_sqlalchemy.enable_sqlite_savepoints(engine)
    declare_models()
    with engine.begin() as conn:
        _create_schema(conn, dialect)
    h = SyncHarness(dialect, url, engine)
    reality_sqlalchemy.install(h.Session)
    if triggers:
        reality_sqlalchemy.create_triggers(engine)
    try:
        yield h
    finally:
        reality_sqlalchemy.uninstall(h.Session)
        h.reader.close()
        with engine.begin() as conn:
            _drop_schema(conn)
        engine.dispose()
