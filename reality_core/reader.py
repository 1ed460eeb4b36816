"""Reading versions: the :class:`VersionReader` protocol and a DB-API implementation.

The sync endpoint only ever *reads* the store, through a reader. :class:`DBAPIReader` keeps a
few autocommit connections and answers each read with one statement (one snapshot).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection
from typing import Any, Protocol

from .errors import StoreError, StoreUnavailable
from .store import Snapshot, read_statement, snapshot_from_rows
from .urls import DatabaseURL

log = logging.getLogger("reality.reader")

Connect = Callable[[], Any]

_MISSING_TABLE_HINTS = ("no such table", "does not exist", "doesn't exist", "undefined table")


class VersionReader(Protocol):
    def read(self, keys: Collection[str]) -> Snapshot: ...

    def ping(self) -> None: ...

    def close(self) -> None: ...


class DBAPIReader:
    """A thread-safe reader over plain DB-API connections.

    Example::

        reader = DBAPIReader.from_url("postgresql://app@db/app")
        reader.read({"room:7"}).version("room:7")
    """

    def __init__(
        self, connect: Connect, *, paramstyle: str, pool_size: int = 4, description: str = ""
    ) -> None:
        if pool_size < 1:
            from .errors import ConfigurationError

            raise ConfigurationError(f"pool_size must be at least 1, not {pool_size}")
        self._connect = connect
        self._pool: list[Any] = []
        self.paramstyle = paramstyle
        self._pool_size = pool_size
        self._lock = threading.Lock()
        self.description = description

    def __repr__(self) -> str:
        return f"DBAPIReader({self.description or self._connect!r})"

    @classmethod
    def from_url(cls, url: str | DatabaseURL, *, pool_size: int = 4) -> DBAPIReader:
        parsed = url if isinstance(url, DatabaseURL) else DatabaseURL.parse(url)
        return cls(parsed.dbapi_connect, paramstyle=parsed.paramstyle, pool_size=pool_size,
                   description=parsed.render(hide_password=True))

    def _checkout(self) -> Any:
        with self._lock:
            if self._pool:
                return self._pool.pop()
        try:
            return self._connect()
        except Exception as exc:
            raise StoreUnavailable(f"cannot connect to the version store: {exc}") from exc

    def _checkin(self, conn: Any) -> None:
        with self._lock:
            if len(self._pool) < self._pool_size:
                self._pool.append(conn)
                return
        _close_quietly(conn)

    def _run(self, sql: str, params: Any) -> list[Any]:
        conn = self._checkout()
        try:
            cur = conn.cursor()
            try:
                cur.execute(sql, params)
                rows = list(cur.fetchall())
            finally:
                cur.close()
            # End the read's transaction on drivers not in autocommit (pooled connections
            # lent by an ORM), so no snapshot stays open between requests.
            conn.rollback()
        except Exception as exc:
            # A connection that failed once is not trusted again (it may be cut off).
            _close_quietly(conn)
            text = str(exc).lower()
            if any(h in text for h in _MISSING_TABLE_HINTS):
                raise StoreError(
                    "the Reality tables are missing: run \"reality migrate --database-url ...\""
                    f" or create_tables() ({exc})"
                ) from exc
            raise StoreUnavailable(f"version store query failed: {exc}") from exc
        self._checkin(conn)
        return rows

    def read(self, keys: Collection[str]) -> Snapshot:
        sql, params = read_statement(keys, self.paramstyle)
        return snapshot_from_rows(keys, self._run(sql, params))

    def ping(self) -> None:
        self.read(())

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, []
        for conn in pool:
            _close_quietly(conn)


def _close_quietly(conn: Any) -> None:
    try:
        conn.close()
    except Exception:  # already broken; nothing useful to report
        log.debug("closing a broken connection failed", exc_info=True)
