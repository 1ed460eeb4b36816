"""``create_tables()`` and ``version_reader()``: Reality's own tables through peewee."""

from __future__ import annotations

from typing import Any

import peewee

from reality_core.reader import DBAPIReader
from reality_core.store import create_table_statements, insert_epoch_statement

from ._api import dialect_of, paramstyle_of, resolve


def create_tables(database: peewee.Database | peewee.DatabaseProxy) -> None:
    """Create Reality's tables (and the epoch) if missing. For apps without alembic.

    Example::

        db = PostgresqlDatabase("app")
        reality_peewee.create_tables(db)

    The tables are the very ones ``reality migrate`` (alembic) creates: same columns, types,
    collation and constraint names. Safe to run on every start.
    """
    db: Any = resolve(database)
    dialect = dialect_of(db)
    with db.atomic():
        for statement in create_table_statements(dialect):
            db.execute_sql(statement)
        sql, params = insert_epoch_statement(dialect, paramstyle_of(db))
        db.execute_sql(sql, params)


def version_reader(database: peewee.Database | peewee.DatabaseProxy, *,
                   pool_size: int = 4) -> DBAPIReader:
    """A reader of versions for :class:`reality_core.SyncService`, on connections of its own
    opened with ``database``'s settings (never one of the application's, nor the pool's:
    the sync endpoint reads from worker threads, outside any application transaction).

    Example::

        service = SyncService(reality_peewee.version_reader(db))
    """
    db = resolve(database)
    dialect = dialect_of(db)
    return DBAPIReader(lambda: _connect(db), paramstyle=paramstyle_of(db), pool_size=pool_size,
                       description=f"{dialect} via peewee {type(db).__name__}({db.database!r})")


def _connect(db: Any) -> Any:
    if isinstance(db, peewee.SqliteDatabase):
        import sqlite3

        # peewee opens SQLite connections bound to the thread that opened them; the
        # reader's are handed between worker threads.
        return sqlite3.connect(db.database, isolation_level=None, check_same_thread=False,
                               timeout=float(getattr(db, "_timeout", 5)))
    from playhouse.pool import PooledDatabase

    # A connection of the reader's own, never one checked out of the application's pool.
    unpooled: Any = super(PooledDatabase, db) if isinstance(db, PooledDatabase) else db
    pw: Any = peewee  # (_connect and the driver module are not in peewee 4's stubs)
    if getattr(unpooled._connect, "__func__", None) is pw.MySQLDatabase._connect:
        # What peewee 4 does; peewee 3 still passes db=, which PyMySQL 1.1+ deprecates.
        return pw.mysql.connect(database=db.database, autocommit=True, **db.connect_params)
    return unpooled._connect()
