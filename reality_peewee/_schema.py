"""``create_tables()`` and ``version_reader()``: Reality's own tables through peewee."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import peewee

from reality_core.catalog import check_max_keys
from reality_core.errors import ConfigurationError
from reality_core.reader import DBAPIReader
from reality_core.store import create_table_statements, insert_epoch_statement
from reality_core.triggers import TriggerSpec, create_plan, drop_plan, drop_targets, pick

from ._api import DEFAULT_MAX_KEYS, dialect_of, paramstyle_of, resolve, tracker_of
from ._declarations import registry
from ._tracker import coverage


def create_tables(database: peewee.Database | peewee.DatabaseProxy) -> None:
    """Create Reality's tables (and the epoch) if missing. For apps without alembic.

    Example::

        db = PostgresqlDatabase("app")
        reality_peewee.create_tables(db)

    The tables are the very ones ``reality migrate`` (alembic) creates: same columns, types,
    collation and constraint names. Safe to run on every start.
    """
    db: Any = resolve(database, "create_tables")
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
    db = resolve(database, "version_reader")
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


_INSTALLED: Any = object()  # max_keys default: the setting install() was given


def _postgres(database: peewee.Database | peewee.DatabaseProxy, verb: str) -> Any:
    db = resolve(database, verb)
    dialect = dialect_of(db)
    if dialect != "postgresql":
        raise ConfigurationError(
            f"{verb}(): trigger mode needs PostgreSQL, not {dialect}; on other databases "
            "the plugin bumps from Python (nothing to create)")
    return db


def _trigger_specs(db: Any, max_keys: Any) -> list[TriggerSpec]:
    registry.resolve_pending()  # through models of DeferredThroughModel fields
    if max_keys is _INSTALLED:
        tracker = tracker_of(db)
        # The triggers must escalate where the plugin would: its setting, else install()'s.
        max_keys = tracker.max_keys if tracker is not None else DEFAULT_MAX_KEYS
    return registry.catalog.trigger_specs(check_max_keys(max_keys))


def _run_ddl(db: Any, plan: Callable[[Callable[[str], Sequence[Any]]], list[str]]) -> None:
    """Run ``plan``'s statements in one transaction (a savepoint inside the caller's), on
    a raw cursor: they pass no parameters, so no driver reads ``%`` in them as one, and the
    plugin's own wrappers need not see DDL that mentions ``reality_log``."""
    was_closed = db.is_closed()
    try:
        with db.atomic():
            cursor = db.connection().cursor()
            try:
                def query(sql: str) -> Sequence[Any]:
                    cursor.execute(sql)
                    rows: Sequence[Any] = cursor.fetchall()
                    return rows

                for sql in plan(query):
                    cursor.execute(sql)
            finally:
                cursor.close()
    finally:
        if was_closed and not db.is_closed() and not db.in_transaction():
            db.close()  # opened here: hand it back (a pool's check-in)
        coverage.invalidate()  # this process's connections look again


def create_triggers(database: peewee.Database | peewee.DatabaseProxy, *,
                    tables: Iterable[str] | None = None,
                    max_keys: int | None = _INSTALLED) -> list[str]:
    """Trigger mode (PostgreSQL): let the database bump tracked tables' keys itself.

    Example::

        reality_peewee.install(db)
        reality_peewee.create_triggers(db)      # after your tables exist

    Creates (or replaces) one function and four statement-level triggers per tracked table
    (all, or the table names in ``tables``), in one transaction. Writes to those tables then
    cost no extra statement at COMMIT and no key work in Python (no ``SELECT ... FOR
    UPDATE`` of old values either), and writes from outside peewee bump too;
    :mod:`reality_core.triggers` describes the contract and limits. ``max_keys`` must be
    the plugin's (default: the setting ``install(db)`` was given, else its default). Run it
    again when a declaration changes; until then the plugin logs the trigger as stale and
    bumps that table from Python. Returns the tables done. A key column of a type the
    trigger cannot render like Python (``boolean``, ``timestamp``...) is refused with
    :class:`~reality_core.errors.ConfigurationError` before anything is created.
    """
    db = _postgres(database, "create_triggers")
    specs = _trigger_specs(db, max_keys)
    done = [s.table for s in pick(specs, tables)]
    _run_ddl(db, lambda query: create_plan(specs, tables, query))
    return done


def drop_triggers(database: peewee.Database | peewee.DatabaseProxy, *,
                  tables: Iterable[str] | None = None) -> list[str]:
    """Remove what :func:`create_triggers` made (all tracked tables, or ``tables``); the
    plugin bumps those tables from Python again.

    Example::

        reality_peewee.drop_triggers(db)

    Restart other processes of the app: they keep believing the triggers are there until
    their connections are replaced."""
    db = _postgres(database, "drop_triggers")
    specs = _trigger_specs(db, None)
    done = drop_targets(specs, tables)
    _run_ddl(db, lambda query: drop_plan(specs, done))
    return done
