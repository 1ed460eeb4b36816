"""The contract every plugin harness implements, so one behaviour suite runs against
SQLAlchemy, peewee and Tortoise on every database they support.

The suite is async-first (Tortoise routes queries through context variables, so its
transactions must stay inside one task); sync ORMs implement the coroutines by calling
their synchronous API directly.

Schema every harness creates (plain names, created fresh per test, dropped afterwards)::

    orders(id INTEGER PK, room_id INTEGER NULL, total INTEGER NOT NULL DEFAULT 0)
        tracked: table key, row keys, template "room:{room_id}"
    posts(id INTEGER PK, title VARCHAR(100))            tracked: table key, row keys
    tags(id INTEGER PK, name VARCHAR(100))              tracked: table key, row keys
    post_tags(post_id FK posts.id ON DELETE CASCADE, tag_id FK tags.id ON DELETE CASCADE,
              PK(post_id, tag_id))                      the many-to-many link table (tracked)
    order_notes(id INTEGER PK, order_id INTEGER NOT NULL
                FK orders.id DEFERRABLE INITIALLY DEFERRED   (PostgreSQL and SQLite only))
                                                        not tracked

plus Reality's own tables (created with the plugin's ``create_tables``).

Keys are the core defaults: ``reality_core.keys.table_key("orders")``,
``row_key("orders", [42])``, ``"room:7"``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from reality_core.reader import DBAPIReader
from reality_core.urls import DatabaseURL


class Harness(Protocol):
    #: "sqlalchemy" | "peewee" | "tortoise"
    plugin: str
    #: "postgresql" | "sqlite" | "mysql"
    dialect: str

    # --- transactions ---------------------------------------------------------------
    def transaction(self) -> AbstractAsyncContextManager[None]:
        """The outermost transaction: commits on normal exit, rolls back on exception
        (and re-raises). Writes below run inside the innermost open block."""

    def savepoint(self) -> AbstractAsyncContextManager[None]:
        """A nested block inside :meth:`transaction` (SQLAlchemy ``begin_nested``, peewee
        ``atomic`` inside ``atomic``, Tortoise nested ``in_transaction``): released on normal
        exit, rolled back to on exception (and re-raised)."""

    # --- writes: inside transaction(), or alone in autocommit/own-transaction mode -----
    async def insert_order(self, id: int, room_id: int | None, total: int = 0) -> None:
        """Through the ORM's unit of work / ``save()``/``create()``."""

    async def update_order(self, id: int, **values: Any) -> None:
        """Load the order by id and change ``values`` through the ORM object."""

    async def delete_order(self, id: int) -> None:
        """Load the order and delete it through the ORM object."""

    async def bulk_update_orders(self, min_total: int, **values: Any) -> None:
        """ORM bulk UPDATE orders SET values WHERE total >= min_total."""

    async def bulk_delete_orders(self, min_total: int) -> None:
        """ORM bulk DELETE FROM orders WHERE total >= min_total."""

    async def bulk_insert_orders(self, rows: Sequence[tuple[int, int | None, int]]) -> None:
        """ORM bulk insert of (id, room_id, total) rows."""

    async def upsert_orders(self, rows: Sequence[tuple[int, int | None, int]]) -> None:
        """Insert-or-update on conflict of id, setting room_id and total (PostgreSQL/SQLite
        ON CONFLICT DO UPDATE, MySQL ON DUPLICATE KEY UPDATE), through the ORM."""

    async def raw_execute(self, sql: str) -> None:
        """The ORM's raw SQL path (``text()``, ``execute_sql``, ``execute_query``)."""

    async def insert_post(self, id: int) -> None: ...

    async def insert_tag(self, id: int) -> None: ...

    async def add_tag(self, post_id: int, tag_id: int) -> None:
        """Many-to-many add through the ORM relationship/field."""

    async def remove_tag(self, post_id: int, tag_id: int) -> None: ...

    async def clear_tags(self, post_id: int) -> None: ...

    async def delete_post(self, post_id: int) -> None:
        """Delete a post through the ORM; its link rows go with it (ORM cascade or the
        database's ON DELETE CASCADE, whichever the ORM uses)."""

    async def insert_note(self, id: int, order_id: int) -> None:
        """Insert into order_notes (untracked; used to provoke a deferred FK failure)."""

    async def bump(self, key: str) -> None:
        """The plugin's manual bump, inside the current transaction."""

    # --- exit paths -------------------------------------------------------------------
    async def close_without_commit(self, id: int, room_id: int) -> None:
        """Begin, insert the order, then close/abandon the session or connection without
        COMMIT (the ORM's own "close" path)."""

    async def dirty_checkin(self, id: int, room_id: int) -> None:
        """Leave a pooled connection with an open, written transaction and give it back to
        the pool (or drop it) without commit or rollback by the plugin's user."""

    # --- reading, always from an independent connection ----------------------------
    async def versions(self, *keys: str) -> dict[str, int]:
        """Versions as the sync endpoint reports them (escalations applied)."""

    async def count_orders(self) -> int:
        """Rows in orders, read from an independent connection."""


HarnessFactory = AsyncIterator[Harness]


class IndependentReads:
    """Reads from connections of their own, never the harness's transaction."""

    def __init__(self, url: str) -> None:
        parsed = DatabaseURL.parse(url)
        self.reader = DBAPIReader.from_url(parsed.with_driver(None))
        self._url = parsed

    async def versions(self, *keys: str) -> dict[str, int]:
        snap = self.reader.read(keys)
        return {k: snap.version(k) for k in keys}

    async def count_orders(self) -> int:
        conn = self._url.dbapi_connect()
        try:
            cur = conn.cursor()
            cur.execute("SELECT count(*) FROM orders")
            (n,) = cur.fetchone()
            return int(n)
        finally:
            conn.close()

