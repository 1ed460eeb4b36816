"""Engine helpers: SQLite's BEGIN recipe and a version reader for the sync endpoint."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from reality_core.errors import ConfigurationError
from reality_core.reader import DBAPIReader
from reality_core.store import normalize_dialect
from reality_core.urls import DatabaseURL


def enable_sqlite_savepoints(engine: sa.Engine | AsyncEngine) -> None:
    """Apply SQLAlchemy's documented recipe so SQLite transactions and savepoints are real.

    pysqlite (and aiosqlite) begin transactions lazily and commit around some statements on
    their own, which makes ``SAVEPOINT``/``ROLLBACK TO`` lie. The recipe turns that off and
    emits ``BEGIN`` itself. The plugin refuses savepoints on SQLite engines without it.
    """
    sync = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    if sync.dialect.name != "sqlite":
        raise ConfigurationError(
            f"enable_sqlite_savepoints() is for SQLite engines, not {sync.dialect.name}"
        )
    if event.contains(sync, "connect", _sqlite_connect):
        return
    event.listen(sync, "connect", _sqlite_connect)
    event.listen(sync, "begin", _sqlite_begin)


def _sqlite_connect(dbapi_connection: Any, connection_record: Any) -> None:
    dbapi_connection.isolation_level = None


def _sqlite_begin(conn: sa.Connection) -> None:
    conn.exec_driver_sql("BEGIN")


def version_reader(engine: sa.Engine | AsyncEngine, *, pool_size: int = 4) -> DBAPIReader:
    """A reader of versions for :class:`reality_core.SyncService`, from your engine.

    A synchronous engine lends connections from its own pool; an ``AsyncEngine`` gets a small
    synchronous pool of its own (psycopg / sqlite3 / PyMySQL), because the endpoint reads from
    worker threads.
    """
    if not isinstance(engine, sa.Engine | AsyncEngine):
        raise ConfigurationError(
            f"version_reader() takes an Engine or AsyncEngine, not {type(engine).__name__}; "
            "for a URL use reality_core.DBAPIReader.from_url(url)"
        )
    if isinstance(engine, AsyncEngine):
        url = DatabaseURL.parse(engine.url.render_as_string(hide_password=False))
        return DBAPIReader.from_url(url.with_driver(None), pool_size=pool_size)
    dialect = normalize_dialect(engine.dialect.name)
    return DBAPIReader(engine.raw_connection, paramstyle=engine.dialect.paramstyle,
                       dialect=dialect,
                       pool_size=pool_size, description=f"{dialect} via {engine.url!r}")
