"""The public verbs: ``install``, ``uninstall``, ``installed``, ``bump``; and what a
``Database`` is to Reality (its dialect, its paramstyle, what is refused)."""

from __future__ import annotations

import threading
from typing import Any, Final

import peewee

from reality_core.catalog import RawSQLPolicy, check_max_keys, check_raw_sql_policy
from reality_core.errors import ConfigurationError
from reality_core.keys import validate_key
from reality_core.store import Dialect

from ._declarations import registry
from ._tracker import Tracker


def dialect_of(database: peewee.Database) -> Dialect:
    if isinstance(database, peewee.PostgresqlDatabase):
        return "postgresql"
    if isinstance(database, peewee.SqliteDatabase):
        return "sqlite"
    if isinstance(database, peewee.MySQLDatabase):
        return "mysql"
    raise ConfigurationError(
        "Reality supports peewee's PostgresqlDatabase, SqliteDatabase and MySQLDatabase "
        f"(and their playhouse subclasses, pools included), not {type(database).__name__}"
    )


def paramstyle_of(database: peewee.Database) -> str:
    return "qmark" if database.param == "?" else "format"


def resolve(database: Any, verb: str = "install") -> peewee.Database:
    """The database behind a ``DatabaseProxy``, refusing what the plugin cannot track;
    ``verb`` names the public function in the messages."""
    if isinstance(database, peewee.Proxy):
        target = database.obj
        if target is None:
            raise ConfigurationError(
                "this DatabaseProxy is not initialized yet: call proxy.initialize(db) "
                f"before reality_peewee.{verb}(proxy)"
            )
        database = target
    if not isinstance(database, peewee.Database):
        raise ConfigurationError(
            f"{verb}() takes a peewee Database (or an initialized DatabaseProxy), not "
            f"{type(database).__name__}"
        )
    if any(c.__module__ == "playhouse.pwasyncio" for c in type(database).__mro__):
        raise ConfigurationError(
            f"{type(database).__name__} (playhouse.pwasyncio) is not supported: its queries "
            "run on asyncio drivers that this plugin does not see, so writes would go "
            "unbumped. Use a synchronous peewee Database (in a thread for async code), or "
            "bump keys by hand"
        )
    return database


#: install()'s max_keys; create_triggers() uses it for a database not installed on.
DEFAULT_MAX_KEYS: Final = 1000

_lock = threading.RLock()
_trackers: dict[int, Tracker] = {}


def install(database: peewee.Database | peewee.DatabaseProxy, *,
            raw_sql: RawSQLPolicy = "conservative",
            max_keys: int | None = DEFAULT_MAX_KEYS) -> None:
    """Bump versions for every write made through ``database``.

    Example::

        db = PostgresqlDatabase("app", user="app")
        reality_peewee.install(db)
        reality_peewee.create_tables(db)          # or: reality migrate

    ``database`` is a peewee ``PostgresqlDatabase``, ``SqliteDatabase`` or ``MySQLDatabase``
    (or a playhouse subclass: ``PooledPostgresqlDatabase``...), or an initialized
    ``DatabaseProxy``. ``raw_sql`` says what to do with raw SQL that changes data in a way
    the parser cannot attribute to tables (``DO`` blocks, ``CALL``...): ``"conservative"``
    bumps every tracked table's keys, ``"strict"`` raises
    :class:`~reality_core.errors.UnsupportedStatementError`, failing the statement. Neither
    skips silently. ``max_keys``: past this many keys of one kind in one transaction (row
    keys of a table, keys of a template), the kind escalates to its marker instead, so a
    bulk write stays one short bump (``None``: never).

    Installing twice with the same settings is a no-op; :func:`uninstall` removes exactly
    what this added. peewee's asyncio databases (``playhouse.pwasyncio``) are refused.
    """
    policy = check_raw_sql_policy(raw_sql)
    limit = check_max_keys(max_keys)
    db = resolve(database)
    with _lock:
        existing = _trackers.get(id(db))
        if existing is not None:
            if (existing.raw_sql, existing.max_keys) != (policy, limit):
                raise ConfigurationError(
                    f"already installed on this database with raw_sql={existing.raw_sql!r}, "
                    f"max_keys={existing.max_keys!r}; uninstall first to change settings"
                )
            return
        tracker = Tracker(db, raw_sql=policy, max_keys=limit, dialect=dialect_of(db),
                          paramstyle=paramstyle_of(db))
        tracker.wrap()
        _trackers[id(db)] = tracker
    registry.resolve_pending()


def uninstall(database: peewee.Database | peewee.DatabaseProxy) -> None:
    """Remove what :func:`install` added to ``database`` (a no-op if it was not installed).
    Keys pending in an open transaction are dropped with the wrappers."""
    db = database.obj if isinstance(database, peewee.Proxy) else database
    with _lock:
        tracker = _trackers.get(id(db))
        if tracker is None:
            return
        tracker.unwrap()
        del _trackers[id(db)]


def installed() -> list[peewee.Database]:
    """The databases currently installed (for diagnostics and tests)."""
    return [t.db for t in _trackers.values()]


def tracker_of(database: peewee.Database | peewee.DatabaseProxy) -> Tracker | None:
    db = database.obj if isinstance(database, peewee.Proxy) else database
    return _trackers.get(id(db))


def bump(database: peewee.Database | peewee.DatabaseProxy, *keys: str) -> None:
    """Bump ``keys`` when the current transaction commits (and never if it rolls back).

    Example::

        with db.atomic():
            Comment.create(post=post, body=body)
            reality_peewee.bump(db, "feed:global")

    Keys follow the key rules (1-256 characters, no control characters, not starting with
    ``$``); a bad key raises :class:`~reality_core.errors.InvalidKeyError` at once. Outside
    a transaction there is no commit for the bump to ride on:
    :class:`~reality_core.errors.ConfigurationError`.
    """
    checked = [validate_key(k) for k in keys]
    tracker = tracker_of(database)
    if tracker is None:
        raise ConfigurationError("bump() needs reality_peewee.install(database) first")
    st, conn = tracker.bound()
    if not tracker.in_transaction(st, conn):
        raise ConfigurationError(
            "bump() must run inside a transaction (with db.atomic(): ...); outside one "
            "there is no commit for the bump to ride on"
        )
    st.buffer.add(checked)
