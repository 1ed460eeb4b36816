"""``install()``: where the plugin meets a peewee ``Database``, and the key buffer.

Why the plugin wraps methods of the ``Database`` *instance*
-------------------------------------------------------------
peewee's signals fire for ``save()``/``delete_instance()`` only, and its one commit hook
(``after_commit``) runs after COMMIT, too late to write in the same transaction. Every
statement, transaction and savepoint does pass through a handful of ``Database`` methods
that peewee always calls through the instance: ``execute()`` (query objects),
``execute_sql()`` (SQL text, including the ``SAVEPOINT``/``RELEASE``/``ROLLBACK TO`` that
``atomic()`` issues), ``begin()``, ``commit()``, ``rollback()``, ``connect()`` and
``close()``. These are the methods peewee's documentation tells users to override in a
``Database`` subclass. :func:`install` sets wrappers for them as attributes of the one
database object it is given (an instance attribute shadows the class's method, so the
class, its other instances and playhouse's pool logic stay untouched), and
:func:`uninstall` deletes exactly those attributes again. A subclass would force users to
change the class they instantiate, and every playhouse variant (pools, extensions) would
need a twin; wrapping the object they already have keeps ``install(db)`` one line.

Where the keys live
-------------------
One :class:`~reality_core.buffer.KeyBuffer` per connection, kept beside peewee's own
per-thread connection state (thread-local unless the database was opened with
``thread_safe=False``), and bound to the DB-API connection it was filled on. ``begin()``,
``commit()``, ``rollback()``, ``connect()`` and ``close()`` (which a pool turns into a
check-in: a dirty connection is rolled back there) all reset it, and a buffer found on
another connection than the current one is dropped, so no key outlives its transaction (I2).

The bump is written by the ``commit()`` wrapper on the raw DB-API connection, right
before COMMIT, as one sorted statement (I6). A write outside any transaction (peewee's
default autocommit mode) runs inside a transaction of its own, ``BEGIN; <statement>;
<bump>; COMMIT``: bumping after an autocommitted statement would leave the data committed
without its bump whenever the bump failed (I1, I7).

Trigger mode (PostgreSQL)
-------------------------
Tables with current Reality triggers (``create_triggers()``) are bumped by the database
from inside each statement. :data:`coverage` learns which tables those are once per
physical DB-API connection (one catalog query, at the first write to a tracked table; again
after a declaration, the ``max_keys`` setting or the triggers change) and the wrappers
then do no key work at all for them: no plan, no ``SELECT ... FOR UPDATE`` of old values,
no keys from raw SQL, and no transaction of its own around an autocommitted statement (the
trigger commits with it). The cache is keyed by the DB-API connection object itself
(weakly), not by peewee's per-thread state: a pool hands one connection to many threads,
and the answer belongs to the connection's database, not to the thread.

What a covered write costs in Python
------------------------------------
G1 wants the plugin's share of a small transaction near zero when the database does the
bump, so the hot path is kept short and measured (``BEGIN; INSERT; COMMIT``, the same three
statements as without the plugin). ``execute()`` first asks :meth:`Tracker.passthrough`:
a SELECT, or an INSERT/UPDATE/DELETE on a model that is untracked or covered on this
connection (and has no CTE), runs as is, with no plan and its SQL text unread; everything
else takes the full path. The covered set is remembered in the thread's state for its
connection, under the catalog generation and the coverage epoch, so a statement pays a
few attribute reads for it, not a lookup in :data:`coverage`. Raw SQL (``execute_sql``)
remembers, per SQL string, the keys it yields (before and after removing the covered
tables): a repeated statement is parsed once per catalog generation.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import types
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Final

import peewee

from reality_core.buffer import KeyBuffer
from reality_core.catalog import RawSQLPolicy
from reality_core.errors import (
    ConfigurationError,
    RealityError,
    UnsupportedStatementError,
    WritePathError,
)
from reality_core.rawsql import TransactionControl, transaction_control
from reality_core.store import Dialect, run_bump
from reality_core.triggers import covered_tables

from ._declarations import registry
from ._queries import plan_for

WRAPPED: Final = ("execute", "execute_sql", "begin", "commit", "rollback", "connect", "close")
_ABSENT: Final = object()
_NONE: Final[frozenset[str]] = frozenset()
_WRITES: Final = (peewee.Insert, peewee.Update, peewee.Delete)
#: Raw SQL strings whose keys a tracker remembers (then it starts over), and the longest.
RAW_CACHE_SIZE: Final = 512
RAW_CACHE_MAX_CHARS: Final = 10_000


def driver_in_transaction(conn: Any) -> bool | None:
    """Whether the DB-API connection has a transaction open, as its driver knows it without
    a round trip (``None`` when the driver does not tell)."""
    flag = getattr(conn, "in_transaction", None)  # sqlite3, mysql-connector
    if isinstance(flag, bool):
        return flag
    info = getattr(conn, "info", None)  # psycopg 3: pq.TransactionStatus, IDLE == 0
    status = getattr(info, "transaction_status", None)
    if status is not None:
        return int(status) != 0
    get_status = getattr(conn, "get_transaction_status", None)  # psycopg2, IDLE == 0
    if callable(get_status):
        return int(get_status()) != 0
    server_status = getattr(conn, "server_status", None)  # PyMySQL: SERVER_STATUS_IN_TRANS
    if isinstance(server_status, int):
        return bool(server_status & 1)
    return None


_Stamp = tuple[int, int | None, int]


class Coverage:
    """The tracked tables each physical PostgreSQL connection finds covered by current
    Reality triggers, with the (catalog generation, ``max_keys``, :attr:`epoch`) it was
    read under: a change of any of them reads it again."""

    def __init__(self) -> None:
        #: Bumped by create_triggers()/drop_triggers(): every connection looks again.
        self.epoch = 0
        # Weak keys: a connection closed and collected (a pool recycling it) leaves no
        # entry behind, and a new connection at the same address is never mistaken for it.
        self._by_conn: weakref.WeakKeyDictionary[Any, tuple[_Stamp, frozenset[str]]] = (
            weakref.WeakKeyDictionary())

    def invalidate(self) -> None:
        self.epoch += 1

    def tables(self, conn: Any, max_keys: int | None) -> frozenset[str]:
        catalog = registry.catalog
        if not len(catalog):
            return frozenset()
        stamp = (catalog.generation, max_keys, self.epoch)
        try:
            cached = self._by_conn.get(conn)
        except TypeError:  # a driver whose connections take no weak reference: ask always
            cached = None
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            covered = covered_tables(conn, catalog.trigger_specs(max_keys))
        except Exception as exc:  # I7: the transaction fails rather than guess
            raise WritePathError(f"Reality could not look up its triggers: {exc}") from exc
        with contextlib.suppress(TypeError):
            self._by_conn[conn] = (stamp, covered)
        return covered


coverage = Coverage()


class _TxState:
    """One thread's (one connection's) tracking state."""

    __slots__ = ("buffer", "conn", "cov_conn", "cov_epoch", "cov_gen", "cov_tables", "nested",
                 "open", "rolled_back")

    def __init__(self) -> None:
        self.buffer = KeyBuffer()
        self.conn: Any = None
        #: >0 while the plugin runs a statement itself: execute_sql lets it through as is.
        self.nested = 0
        #: a BEGIN was seen (for drivers that do not report their transaction status)
        self.open = False
        #: the bump failed and rolled the transaction back: peewee's rollback() may no-op
        self.rolled_back = False
        #: coverage.tables() for cov_conn, read under (catalog generation, coverage epoch)
        self.cov_conn: Any = None
        self.cov_gen = -1
        self.cov_epoch = -1
        self.cov_tables: frozenset[str] = _NONE

    def reset(self, conn: Any) -> None:
        self.buffer.clear()
        self.conn = conn
        self.open = False
        self.rolled_back = False


class Tracker:
    """The plugin installed on one ``Database``."""

    def __init__(self, database: peewee.Database, *, raw_sql: RawSQLPolicy,
                 max_keys: int | None, dialect: Dialect, paramstyle: str) -> None:
        self.db: Any = database  # (peewee 4's stubs leave most Database methods untyped)
        self.raw_sql = raw_sql
        self.max_keys = max_keys
        self.dialect = dialect
        self.paramstyle = paramstyle
        # Mirror peewee's choice: per-thread connection state unless thread_safe=False.
        self._local: Any = (threading.local() if database.thread_safe
                            else types.SimpleNamespace())
        self._saved: dict[str, Any] = {}
        self._wrappers: dict[str, Callable[..., Any]] = {}
        self._originals: dict[str, Callable[..., Any]] = {}
        #: sql -> (catalog generation, keys without coverage (None: unattributable, strict),
        #: the covered set last applied, the keys left with it)
        self._raw: dict[str, tuple[int, frozenset[str] | None, frozenset[str] | None,
                                   frozenset[str]]] = {}

    # --- install / uninstall ---------------------------------------------------------------

    def wrap(self) -> None:
        db = self.db
        originals = {name: getattr(db, name) for name in WRAPPED}
        self._originals = originals
        wrappers: dict[str, Callable[..., Any]] = {
            "execute": self._execute_wrapper(originals["execute"]),
            "execute_sql": self._execute_sql_wrapper(originals["execute_sql"]),
            "begin": self._begin_wrapper(originals["begin"]),
            "commit": self._commit_wrapper(originals["commit"]),
            "rollback": self._rollback_wrapper(originals["rollback"]),
            "connect": self._connect_wrapper(originals["connect"]),
            "close": self._close_wrapper(originals["close"]),
        }
        for name, fn in wrappers.items():
            self._saved[name] = db.__dict__.get(name, _ABSENT)
            setattr(db, name, fn)
        self._wrappers = wrappers

    def unwrap(self) -> None:
        db = self.db
        foreign = [n for n, fn in self._wrappers.items() if db.__dict__.get(n) is not fn]
        if foreign:
            raise ConfigurationError(
                f"{', '.join(foreign)} of this database were replaced after "
                "reality_peewee.install(); undo that first, so uninstall() can restore "
                "exactly what it found"
            )
        for name, previous in self._saved.items():
            if previous is _ABSENT:
                del db.__dict__[name]
            else:
                setattr(db, name, previous)
        self._saved.clear()
        self._wrappers.clear()

    # --- state -------------------------------------------------------------------------------

    def state(self) -> _TxState:
        st: _TxState | None = getattr(self._local, "state", None)
        if st is None:
            st = _TxState()
            self._local.state = st
        return st

    def current_conn(self) -> Any:
        return None if self.db.is_closed() else self.db.connection()

    def bound(self) -> tuple[_TxState, Any]:
        """The state for the current connection (opening it, as the statement would)."""
        st = self.state()
        conn = self.db.connection()
        if st.conn is not conn:
            st.reset(conn)
        return st, conn

    def in_transaction(self, st: _TxState, conn: Any) -> bool:
        status = driver_in_transaction(conn)
        return st.open if status is None else status

    @contextlib.contextmanager
    def own_statements(self) -> Iterator[None]:
        st = self.state()
        st.nested += 1
        try:
            yield
        finally:
            st.nested -= 1

    # --- the write path ------------------------------------------------------------------

    def write(self, run: Callable[[], Any], before: Callable[[], None] | None,
              keys_of: Callable[[Any], set[str]]) -> Any:
        """Run one tracked statement and buffer its keys, in a transaction of its own when
        none is open."""
        if self.db.is_closed() and not self.db.autoconnect:
            return run()  # peewee refuses it: "database connection not opened"
        st, conn = self.bound()
        if self.in_transaction(st, conn):
            return self._run_and_buffer(run, before, keys_of)
        self.db.begin()
        try:
            result = self._run_and_buffer(run, before, keys_of)
            if self.dialect == "sqlite" and getattr(result, "description", None) is not None:
                # SQLite cannot COMMIT while a statement still has rows to give (INSERT ...
                # RETURNING with returning_clause=True): read them before, hand them on after.
                result = ReadAhead(result)
        except BaseException:
            # The statement's own error is the one to report.
            with contextlib.suppress(Exception):
                self.db.rollback()
            raise
        self.db.commit()
        return result

    def _run_and_buffer(self, run: Callable[[], Any], before: Callable[[], None] | None,
                        keys_of: Callable[[Any], set[str]]) -> Any:
        if before is not None:
            _keys_or_fail(before)
        result = run()
        keys = _keys_or_fail(lambda: keys_of(result))
        if keys:
            st, _ = self.bound()
            st.buffer.add(keys)
        return result

    def covered(self, st: _TxState | None = None) -> frozenset[str]:
        """The tracked tables the current connection's database triggers bump (trigger
        mode, PostgreSQL only), opening the connection as the statement would."""
        if self.dialect != "postgresql":
            return _NONE
        db = self.db
        if db.is_closed() and not db.autoconnect:
            return _NONE  # the statement fails anyway: "connection not opened"
        conn = db.connection()
        if st is None:
            st = self.state()
        catalog = registry.catalog
        # Read the stamp first: a change while coverage.tables() runs only asks once more.
        gen, epoch = catalog.generation, coverage.epoch
        if st.cov_conn is conn and st.cov_gen == gen and st.cov_epoch == epoch:
            return st.cov_tables  # (remembered only for a catalog with declarations)
        if not len(catalog):
            return _NONE
        tables = coverage.tables(conn, self.max_keys)
        st.cov_conn, st.cov_gen, st.cov_epoch, st.cov_tables = conn, gen, epoch, tables
        return tables

    def passthrough(self, query: Any, st: _TxState) -> bool:
        """Whether ``query`` needs neither keys nor its SQL text read: a SELECT, or a write
        to a model that is untracked or covered by triggers on this connection, without a
        CTE (which may write elsewhere). The same answers :func:`plan_for` and
        :func:`_sql_may_write` give, without building anything."""
        if getattr(query, "_cte_list", None):
            return False
        if isinstance(query, _WRITES):
            table = query.table
            if not (isinstance(table, type) and issubclass(table, peewee.Model)):
                return False  # a peewee.Table (escalates) or an alias: the full path
            tracked = registry.for_model(table)
            return tracked is None or tracked.declaration.table in self.covered(st)
        return isinstance(query, peewee.SelectBase)

    def raw_keys(self, sql: str) -> set[str]:
        """The keys of a raw SQL string (remembered per string and catalog generation)."""
        registry.resolve_pending()
        catalog = registry.catalog
        gen = catalog.generation  # read first: a change meanwhile only misses next time
        entry = self._raw.get(sql)
        if entry is None or entry[0] != gen:
            try:
                base: frozenset[str] | None = frozenset(
                    catalog.raw_sql_keys(sql, self.raw_sql, self.dialect))
            except UnsupportedStatementError:
                if self.dialect != "postgresql":
                    raise
                base = None  # strict, unattributable: fine after all if every table is covered
            entry = (gen, base, None, _NONE)
            self._remember(sql, entry)
        base = entry[1]
        if base is not None and (not base or self.dialect != "postgresql"):
            return set(base)
        # Coverage only removes keys: a statement with none (a SELECT) never asks for it.
        covered = self.covered()
        if base is not None and not covered:
            return set(base)
        if entry[2] is not None and entry[2] == covered:
            return set(entry[3])
        keys = catalog.raw_sql_keys(sql, self.raw_sql, self.dialect, covered)
        self._remember(sql, (gen, base, covered, frozenset(keys)))
        return keys

    def _remember(self, sql: str, entry: tuple[int, frozenset[str] | None,
                                             frozenset[str] | None, frozenset[str]]) -> None:
        if len(sql) > RAW_CACHE_MAX_CHARS:
            return
        cache = self._raw
        if len(cache) >= RAW_CACHE_SIZE and sql not in cache:
            cache.clear()  # (tuples replaced whole: another thread never sees half of one)
        cache[sql] = entry

    def run_select(self, query: peewee.Query) -> list[tuple[Any, ...]]:
        with self.own_statements():
            return list(query.execute(self.db))

    def control(self, control: TransactionControl, run: Callable[[], Any]) -> Any:
        verb, name = control
        if verb == "commit":
            self.before_commit()
            return run()
        if verb == "rollback":
            st = self.state()
            st.reset(st.conn)
            return run()
        result = run()
        st, _ = self.bound()
        if verb == "begin":
            st.reset(st.conn)
            st.open = True
        elif verb == "savepoint":
            st.buffer.savepoint(name)
        elif verb == "release":
            st.buffer.release(name)
        else:
            st.buffer.rollback_savepoint(name)
        return result

    def before_commit(self) -> None:
        """Write the bump on the connection about to COMMIT."""
        try:
            st: _TxState = self._local.state
        except AttributeError:
            st = self.state()
        db = self.db
        conn = None if db.is_closed() else db.connection()
        if st.buffer and conn is not None and st.conn is conn:
            keys = registry.catalog.compact(st.buffer.drain(), self.max_keys)
            try:
                run_bump(conn, self.dialect, keys, self.paramstyle)
            except BaseException:
                if driver_in_transaction(conn):
                    # run_bump's DB-API rollback() is a no-op on an autocommit psycopg2
                    # connection: end the transaction the way peewee does, in SQL.
                    with contextlib.suppress(Exception):
                        self._originals["rollback"]()
                st.reset(conn)
                st.rolled_back = True
                raise
        st.reset(conn)

    # --- the wrappers ----------------------------------------------------------------------

    def _execute_wrapper(self, original: Callable[..., Any]) -> Callable[..., Any]:
        local, state, passthrough = self._local, self.state, self.passthrough

        def execute(query: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                st: _TxState = local.state
            except AttributeError:
                st = state()
            try:
                skip = st.nested or passthrough(query, st)
            except RealityError:
                raise  # I7: e.g. the coverage lookup failed
            except Exception as exc:
                raise WritePathError(
                    f"Reality could not compute the keys of a write: {exc}") from exc
            if skip:
                # The hot path (a covered or untracked write, a SELECT): its execute_sql
                # lets the SQL through unread.
                st.nested += 1
                try:
                    return original(query, *args, **kwargs)
                finally:
                    st.nested -= 1
            plan = _keys_or_fail(lambda: plan_for(
                query, registry, dialect=self.dialect, for_update=bool(self.db.for_update),
                covered=self.covered))
            if plan is None:
                if _sql_may_write(query):
                    return original(query, *args, **kwargs)  # execute_sql reads the SQL
                with self.own_statements():
                    return original(query, *args, **kwargs)

            def run() -> Any:
                with self.own_statements():
                    return original(query, *args, **kwargs)

            return self.write(run, lambda: plan.before(self.run_select), plan.keys)

        return execute

    def _execute_sql_wrapper(self, original: Callable[..., Any]) -> Callable[..., Any]:
        local, state = self._local, self.state

        def execute_sql(sql: Any, params: Any = None, *args: Any, **kwargs: Any) -> Any:
            try:
                st: _TxState = local.state
            except AttributeError:
                st = state()
            if st.nested or not isinstance(sql, str):
                return original(sql, params, *args, **kwargs)
            control = transaction_control(sql)
            if control is not None:
                return self.control(control, lambda: original(sql, params, *args, **kwargs))
            keys = self.raw_keys(sql)
            if not keys:
                return original(sql, params, *args, **kwargs)

            def run() -> Any:
                with self.own_statements():
                    return original(sql, params, *args, **kwargs)

            return self.write(run, None, lambda _cursor: keys)

        return execute_sql

    def _begin_wrapper(self, original: Callable[..., Any]) -> Callable[..., Any]:
        local, state = self._local, self.state

        def begin(*args: Any, **kwargs: Any) -> Any:
            try:
                st: _TxState = local.state
            except AttributeError:
                st = state()
            st.nested += 1  # peewee 3's SQLite begin() runs execute_sql
            try:
                result = original(*args, **kwargs)
            finally:
                st.nested -= 1
            db = self.db
            st.reset(None if db.is_closed() else db.connection())
            st.open = True
            return result

        return begin

    def _commit_wrapper(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def commit(*args: Any, **kwargs: Any) -> Any:
            self.before_commit()
            return original(*args, **kwargs)

        return commit

    def _rollback_wrapper(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def rollback(*args: Any, **kwargs: Any) -> Any:
            st = self.state()
            conn = self.current_conn()
            # After a failed bump the transaction is already rolled back; SQLite would
            # refuse a second ROLLBACK and hide the bump's error behind its own.
            skip = st.rolled_back and driver_in_transaction(conn) is False
            st.reset(conn)
            if skip:
                return None
            return original(*args, **kwargs)

        return rollback

    def _connect_wrapper(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def connect(*args: Any, **kwargs: Any) -> Any:
            opened = original(*args, **kwargs)
            if opened:
                self.state().reset(self.current_conn())
            return opened

        return connect

    def _close_wrapper(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def close(*args: Any, **kwargs: Any) -> Any:
            conn = self.current_conn()
            if (conn is not None and not self.db.in_transaction()
                    and driver_in_transaction(conn)):
                # A connection closed (or checked into a pool) inside a transaction begun
                # by hand: end it here. peewee 4's pools do the same at check-in; peewee 3's
                # psycopg2 and SQLite pools hand it on dirty, so the next user would commit
                # the abandoned writes, without their bump.
                self.db.rollback()
            result = original(*args, **kwargs)  # refuses inside atomic(): keys stay
            st = self.state()
            st.reset(None)
            st.cov_conn = None  # (holds no closed connection alive; the next one looks)
            return result

        return close


class ReadAhead:
    """A DB-API cursor whose remaining rows were fetched ahead; everything else (description,
    rowcount, lastrowid, close) is the cursor's own."""

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor
        self._rows = collections.deque(cursor.fetchall())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)

    def __iter__(self) -> Iterator[Any]:
        while self._rows:
            yield self._rows.popleft()

    def fetchone(self) -> Any:
        return self._rows.popleft() if self._rows else None

    def fetchmany(self, size: int | None = None) -> list[Any]:
        count = size if size is not None else getattr(self._cursor, "arraysize", 1)
        return [self._rows.popleft() for _ in range(min(count, len(self._rows)))]

    def fetchall(self) -> list[Any]:
        rows = list(self._rows)
        self._rows.clear()
        return rows


def _keys_or_fail(fn: Callable[[], Any]) -> Any:
    """Run a key computation; any failure fails the user's statement (I7)."""
    try:
        return fn()
    except RealityError:
        raise
    except Exception as exc:
        raise WritePathError(f"Reality could not compute the keys of a write: {exc}") from exc


def _sql_may_write(query: Any) -> bool:
    """Whether a query the plans do not cover must have its SQL text read: raw queries,
    statements with CTEs (``WITH x AS (UPDATE ...)``), writes to a target that is neither
    a model nor a ``Table`` (an alias...). A plain SELECT, or a write to an untracked
    model, is let through unread."""
    if getattr(query, "_cte_list", None):
        return True
    if isinstance(query, peewee.SelectBase):
        return False
    if isinstance(query, (peewee.Insert, peewee.Update, peewee.Delete)):
        table = query.table
        named = isinstance(table, peewee.Table) or (
            isinstance(table, type) and issubclass(table, peewee.Model))
        return not named
    return True


