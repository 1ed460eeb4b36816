"""``bump()`` and ``version_reader()``."""

from __future__ import annotations

from tortoise.backends.base.client import BaseDBAsyncClient

from reality_core.errors import ConfigurationError
from reality_core.keys import validate_key
from reality_core.reader import DBAPIReader
from reality_core.urls import DatabaseURL

from ._schema import dialect_of, resolve
from ._tracking import RealityClient, RealityTransaction


def bump(*keys: str, using_db: BaseDBAsyncClient | None = None,
         connection_name: str | None = None) -> None:
    """Bump ``keys`` when the current transaction commits (and never if it rolls back).

    Example::

        async with in_transaction():
            await Comment.create(...)
            reality_tortoise.bump("feed:global")

    Inside a nested block the keys belong to its savepoint: rolled back with it, kept when
    it is released. ``using_db`` is the transaction client (``async with in_transaction()
    as conn``) when you pass one around; else the current one of ``connection_name`` (the
    only connection when ``None``). Keys follow the key rules (1-256 characters, no control
    characters, not starting with ``$``); a bad key raises
    :class:`~reality_core.errors.InvalidKeyError` at once.
    """
    checked = [validate_key(k) for k in keys]
    db = using_db or resolve(connection_name)
    if not isinstance(db, (RealityClient, RealityTransaction)):
        raise ConfigurationError(
            f"connection {db.connection_name!r} does not use a Reality engine: pass your "
            "Tortoise config through reality_tortoise.install(...)"
        )
    if not isinstance(db, RealityTransaction) or db._reality_root._reality_done:
        raise ConfigurationError(
            "bump() must run inside a transaction (async with in_transaction(): ...); "
            "outside one there is no commit for the bump to ride on"
        )
    db._reality_add(checked)


def version_reader(connection_name: str | None = None, *, pool_size: int = 4) -> DBAPIReader:
    """A reader of versions for :class:`reality_core.SyncService`, for the same database
    as a Tortoise connection.

    The sync endpoint reads from worker threads, so the reader keeps a small pool of
    synchronous connections of its own (psycopg for PostgreSQL: ``pip install
    'reality-sync[postgres]'``; sqlite3 for SQLite).
    """
    client = resolve(connection_name)
    while isinstance(getattr(client, "_parent", None), BaseDBAsyncClient):
        client = client._parent  # a transaction's wrapper: read the connection's settings
    dialect, _ = dialect_of(client)
    if dialect == "sqlite":
        path = getattr(client, "filename", None)
        if not path or path == ":memory:":
            raise ConfigurationError("an in-memory SQLite database cannot be read elsewhere")
        url = DatabaseURL("sqlite", database=str(path))
    else:
        password = getattr(client, "password", None)
        if callable(password):
            raise ConfigurationError(
                "version_reader() needs a password string; build the reader with "
                "DBAPIReader.from_url(...) when the password comes from a callable"
            )
        url = DatabaseURL(
            dialect, username=getattr(client, "user", None), password=password,
            host=getattr(client, "host", None), port=getattr(client, "port", None),
            database=getattr(client, "database", None),
        )
    return DBAPIReader.from_url(url, pool_size=pool_size)
