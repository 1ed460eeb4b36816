"""Reading versions: the :class:`VersionReader` protocol and a DB-API implementation.

The sync endpoint only ever *reads* the store, through a reader. :class:`DBAPIReader` keeps a
few autocommit connections and answers each read with one statement (one snapshot).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from typing import Any, Protocol

from .errors import ConfigurationError, StoreError, StoreUnavailable
from .store import (
    FOLD_BATCH,
    LOG_TABLE,
    VERSIONS_TABLE,
    Dialect,
    Snapshot,
    fold,
    read_statement,
    snapshot_from_rows,
)
from .urls import DatabaseURL

log = logging.getLogger("reality.reader")

Connect = Callable[[], Any]
READ_TIMEOUT_MS = 3000
#: Seconds between VACUUMs after folding (see DBAPIReader.vacuum_if_due): one statement per
#: five seconds keeps a server process within 20 statements a second with its refreshes.
VACUUM_INTERVAL = 1.0
#: Seconds between looks at the fold_seq index's size (see _reindex_if_bloated).
REINDEX_CHECK_INTERVAL = 5.0
#: Once a REINDEX failed (not the table's owner, say), seconds before trying again.
REINDEX_RETRY = 3600.0
FOLD_SEQ_INDEX = f"ix_{VERSIONS_TABLE}_fold_seq"

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
        self,
        connect: Connect,
        *,
        paramstyle: str,
        dialect: Dialect | None = None,
        pool_size: int = 4,
        description: str = "",
        fold_threshold: int | None = 1000,
    ) -> None:
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ConfigurationError(f"pool_size must be at least 1, not {pool_size}")
        self._connect = connect
        self._pool: list[Any] = []
        self.paramstyle = paramstyle
        self.dialect = dialect
        self.fold_threshold = fold_threshold
        self._folding = threading.Lock()
        self._vacuuming = threading.Lock()
        self._closed = False
        self._vacuumed = float("-inf")
        self._reindex_checked = float("-inf")
        self.reindexed = 0  # REINDEXes of the fold_seq index (tests, benchmarks)
        self._pool_size = pool_size
        self._lock = threading.Lock()
        self.description = description

    def __repr__(self) -> str:
        return f"DBAPIReader({self.description or self._connect!r})"

    @classmethod
    def from_url(
        cls, url: str | DatabaseURL, *, pool_size: int = 4, fold_threshold: int | None = 1000
    ) -> DBAPIReader:
        parsed = url if isinstance(url, DatabaseURL) else DatabaseURL.parse(url)
        # Reads must answer quickly or fail: a lock on the version table gives a 503 after
        # READ_TIMEOUT_MS, not a request held open.
        return cls(lambda: parsed.dbapi_connect(timeout_ms=READ_TIMEOUT_MS),
                   paramstyle=parsed.paramstyle, dialect=parsed.dialect,
                   pool_size=pool_size, description=parsed.render(hide_password=True),
                   fold_threshold=fold_threshold)

    def connect(self) -> Any:
        """A new DB-API connection of the reader's own kind (autocommit, read timeouts),
        outside its pool: the caller owns and closes it (a cache's LISTEN connection)."""
        return self._open()

    def _checkout(self) -> tuple[Any, bool]:
        """A connection, and whether it came from the pool (it may have gone stale there)."""
        with self._lock:
            if self._pool:
                return self._pool.pop(), True
        return self._open(), False

    def _open(self) -> Any:
        try:
            return self._connect()
        except Exception as exc:
            raise StoreUnavailable(f"cannot connect to the version store: {exc}") from exc

    def _checkin(self, conn: Any) -> None:
        with self._lock:
            # After close() a background fold or VACUUM still hands its connection back.
            if not self._closed and len(self._pool) < self._pool_size:
                self._pool.append(conn)
                return
        _close_quietly(conn)

    def query(self, sql: str, params: Any) -> list[Any]:
        """Run one read-only statement on a pooled connection (reconnecting once if the
        pooled connection was cut); raises :class:`StoreError`."""
        conn, pooled = self._checkout()
        try:
            rows = _query(conn, sql, params)
        except Exception as exc:
            # A connection that failed once is not trusted again (it may be cut off).
            _discard(conn)
            if not pooled or _tables_missing(exc) or _timed_out(exc):
                # A timeout is the database being slow or locked, not a cut connection:
                # trying again would only double the wait.
                raise _store_error(exc) from exc
            # An idle pooled connection may have been cut (server restart, idle timeout,
            # pg_terminate_backend): one more try on a fresh connection, so a restart costs
            # the caller nothing instead of one 503 per pooled connection.
            log.info("version store: pooled connection failed (%s); reconnecting", exc)
            conn = self._open()
            try:
                rows = _query(conn, sql, params)
            except Exception as retry_exc:
                _discard(conn)
                raise _store_error(retry_exc) from retry_exc
        self._checkin(conn)
        return rows

    def read(self, keys: Collection[str]) -> Snapshot:
        sql, params = read_statement(keys, self.paramstyle)
        snapshot = snapshot_from_rows(keys, self.query(sql, params))
        if (self.fold_threshold is not None and self.dialect is not None
                and snapshot.pending >= self.fold_threshold):
            self.fold_soon()
        return snapshot

    def fold_soon(self) -> None:
        """Fold in a one-shot background thread, unless one is already folding: a read
        that counted many log rows means the log is due for folding, and the reader pays
        nothing for it."""
        self._in_background(self._folding, self.fold_and_vacuum, "fold")

    def _in_background(self, busy: threading.Lock, work: Callable[[], object],
                       what: str) -> bool:
        """Run ``work`` in a one-shot daemon thread unless ``busy`` is held (one at a time);
        a store error is logged, not raised. Returns whether a thread was started."""
        if not busy.acquire(blocking=False):
            return False

        def run() -> None:
            try:
                work()
            except StoreError as exc:
                log.warning("the background %s of the version log failed: %s", what,
                            exc.message)
            finally:
                busy.release()

        threading.Thread(target=run, name=f"reality-{what}", daemon=True).start()
        return True

    def ping(self) -> None:
        self.read(())

    def fold(self, batch: int = FOLD_BATCH) -> int:
        """Fold log rows into the version counts until fewer than ``batch`` remain; returns
        how many were folded. See :func:`reality_core.store.fold`."""
        if self.dialect is None:
            raise ConfigurationError("this reader does not know its dialect; pass dialect=")
        total = 0
        while True:
            conn, _ = self._checkout()
            try:
                moved = fold(conn, self.dialect, self.paramstyle, batch)
            except Exception as exc:
                _discard(conn)
                raise _store_error(exc) from exc
            self._checkin(conn)
            total += moved
            if moved < batch:
                return total

    def fold_and_vacuum(self) -> int:
        """:meth:`fold`, then :meth:`vacuum_soon` when rows moved: what every background
        folder runs. Returns the rows folded."""
        moved = self.fold()
        if moved:
            self.vacuum_soon()
        return moved

    def vacuum_soon(self) -> bool:
        """:meth:`vacuum_if_due` in a one-shot background thread, unless one is running or
        it is not due: a VACUUM that truncates the emptied log may wait seconds for its lock
        while writers append, and the folder (or a cache's refresh thread) must not wait
        with it. Returns whether a thread was started."""
        if self.dialect != "postgresql" or \
                time.monotonic() - self._vacuumed < VACUUM_INTERVAL:
            return False
        return self._in_background(self._vacuuming, self.vacuum_if_due, "vacuum")

    def vacuum_if_due(self, min_interval: float = VACUUM_INTERVAL) -> bool:
        """After folding, on PostgreSQL: ``VACUUM`` the log and the counts, at most every
        ``min_interval`` seconds. Folding deletes log rows and rewrites count rows; until a
        VACUUM their space is not reused, and autovacuum visits a database only about once a
        minute, so a busy log would grow by a minute of commits between visits. ``SKIP_LOCKED``:
        another process vacuuming is enough. Returns whether it ran."""
        now = time.monotonic()
        if self.dialect != "postgresql" or now - self._vacuumed < min_interval:
            return False
        self._vacuumed = now
        conn, _ = self._checkout()
        try:
            if not getattr(conn, "autocommit", False):
                return False  # VACUUM cannot run in a transaction (an ORM's pooled connection)
            cur = conn.cursor()
            try:
                # Not the reads' 3 s limit: truncating the emptied log may wait up to 5 s
                # for its lock (VACUUM gives up by itself rather than block writers).
                cur.execute("SET statement_timeout = '60s'")
                cur.execute(f"VACUUM (SKIP_LOCKED) {LOG_TABLE}, {VERSIONS_TABLE}")
                if now - self._reindex_checked >= REINDEX_CHECK_INTERVAL:
                    self._reindex_checked = now
                    self._reindex_if_bloated(cur, now)
                cur.execute("RESET statement_timeout")
            finally:
                cur.close()
        except Exception as exc:
            _discard(conn)
            raise _store_error(exc) from exc
        self._checkin(conn)
        return True

    def _reindex_if_bloated(self, cur: Any, now: float) -> None:
        """Every fold gives each key it folds a new ``fold_seq``, so that index gets its
        entries anew at its right edge while VACUUM frees them at the left; btree pages come
        back to use slowly (seen here at 90x its packed size: 1,000 keys, 300 folds). When
        it outgrows the table itself (packed it is about a quarter of it), ``REINDEX
        CONCURRENTLY`` rebuilds it, holding no lock that blocks folds or reads (app writers
        never touch this table). It runs in the VACUUM thread, never a caller's. A REINDEX
        cut short leaves an invalid copy behind: those are dropped first. A failure (not
        the owner, say) is logged and not retried for an hour."""
        cur.execute(f"SELECT pg_relation_size('{FOLD_SEQ_INDEX}'), "
                    f"pg_relation_size('{VERSIONS_TABLE}')")
        index_bytes, table_bytes = cur.fetchone()
        if int(index_bytes) <= max(65536, int(table_bytes)):
            return
        try:
            cur.execute("SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                        f"WHERE i.indrelid = '{VERSIONS_TABLE}'::regclass AND NOT i.indisvalid")
            for (leftover,) in cur.fetchall():
                cur.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{leftover}"')
            cur.execute(f"REINDEX INDEX CONCURRENTLY {FOLD_SEQ_INDEX}")
            self.reindexed += 1
        except Exception as exc:
            self._reindex_checked = now + REINDEX_RETRY
            log.warning("rebuilding %s failed (retrying in an hour): %s", FOLD_SEQ_INDEX, exc)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, []
        for conn in pool:
            _close_quietly(conn)


def _query(conn: Any, sql: str, params: Any) -> list[Any]:
    cur = conn.cursor()
    try:
        cur.execute(sql, params)
        rows = list(cur.fetchall())
    finally:
        cur.close()
    # End the read's transaction on drivers not in autocommit (pooled connections lent by an
    # ORM), so no snapshot stays open between requests.
    conn.rollback()
    return rows


def _timed_out(exc: Exception) -> bool:
    # 57014 query_canceled (statement_timeout), 55P03 lock_not_available (lock_timeout);
    # PyMySQL's read timeout says "timed out".
    if getattr(exc, "sqlstate", None) in ("57014", "55P03"):
        return True
    return "timed out" in str(exc).lower() or "timeout" in str(exc).lower()


def _tables_missing(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(h in text for h in _MISSING_TABLE_HINTS)


def _store_error(exc: Exception) -> StoreError:
    if _tables_missing(exc):
        what = ("out of date (a column is missing: a store made by an older release)"
                if "column" in str(exc).lower() else "missing")
        return StoreError(
            f"the Reality tables are {what}: run \"reality migrate --database-url ...\""
            f" or create_tables() ({exc})"
        )
    return StoreUnavailable(f"version store query failed: {exc}")


def _discard(conn: Any) -> None:
    """Close a connection that failed. A connection lent by a pool (SQLAlchemy's
    ``engine.raw_connection``) would go back to that pool on ``close()``, to fail the next
    reader too, so it is invalidated instead."""
    invalidate = getattr(conn, "invalidate", None)
    if callable(invalidate):
        try:
            invalidate()
        except Exception:  # already broken; nothing useful to report
            log.debug("invalidating a broken connection failed", exc_info=True)
        else:
            return
    _close_quietly(conn)


def _close_quietly(conn: Any) -> None:
    try:
        conn.close()
    except Exception:  # already broken; nothing useful to report
        log.debug("closing a broken connection failed", exc_info=True)
