"""The client, transaction-wrapper and executor mixins that turn Tortoise writes into bumps.

Tortoise has no commit hook, and its signals fire only for ``save()``/``delete()`` (DESIGN
§5). Everything a Tortoise app writes does pass through its *client* (the class a
connection's ``engine`` names in the config) and through the client's *executor* (the
client's documented ``executor_class``), so the plugin is a set of subclasses there:

* :class:`RealityClient` (the connection's client) and :class:`RealityTransaction` (the
  wrapper ``in_transaction()`` hands out) see every SQL string: ``execute_query``,
  ``execute_insert``, ``execute_many``, ``execute_script`` and ``execute_query_dict``.
  :class:`~reality_tortoise._declarations.TortoiseCatalog` turns each into keys.
* :class:`RealityExecutor` sees ``save()``/``create()``/``delete()`` with the model instance,
  so those writes get exact keys, with the row's old values read under ``SELECT ... FOR
  UPDATE`` in the same transaction (I5) when templates depend on them.
* :class:`RealityTransaction` sees BEGIN, SAVEPOINT, RELEASE, ROLLBACK TO, ROLLBACK and
  COMMIT, and keeps one :class:`~reality_core.buffer.KeyBuffer` per database transaction
  (on the outermost wrapper). Nested ``in_transaction()`` blocks hand statements the
  *outer* wrapper (Tortoise does not re-point the context for them), so frames are kept
  per connection, not per wrapper: a statement lands in the frame of the innermost open
  savepoint of its connection, which is exactly what the database rolls back with it.

Where the plugin overrides a private method (``_in_transaction``, so that Tortoise builds
*our* wrapper class; ``acquire_connection`` of a wrapper, to notice a transaction that ended
while a statement waited for it), there is no public hook that does the job; each such
override calls the original and adds only the tracking.

Trigger mode (PostgreSQL, :mod:`reality_core.triggers`): the tables whose database
triggers are current are *covered*; the plugin learns them once per physical connection
(again when the declarations, ``max_keys`` or the triggers made by this process change) and
computes no keys for them: no statement parsing, no old-value ``SELECT``, no bump at COMMIT
when nothing else is left. Keys of uncovered tables and :func:`bump` work as before. What a
statement is judged by (the catalog, the settings, the coverage: a :class:`_View` and a
:class:`_Seen`) is kept on the transaction and checked by identity, so a write to a covered
table costs a few attribute reads; when every tracked table is covered, no statement is read
at all, and a COMMIT with nothing buffered goes straight to Tortoise's. Once a connection
has read that every tracked table is covered, the client remembers it and hands out
:class:`IdleTransaction` wrappers, which skip the statement and executor layers entirely.

A write outside any transaction runs in a transaction of its own with its bump (the data
and its bump commit together, or neither does); a write that only touches covered tables
runs as it is, the trigger bumping inside the statement (coverage for such writes is read
once per client, on whichever pooled connection). A task spawned inside
``in_transaction()`` inherits the transaction through its context; its statements belong to
that transaction while it is open, and once it has ended they run as writes outside any
transaction: they are never attributed to it, nor to whatever transaction the pooled
connection serves next (except in an :class:`IdleTransaction`, see there).
"""

from __future__ import annotations

import contextlib
import contextvars
import weakref
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, cast

from tortoise import Tortoise
from tortoise.backends.base.client import (
    BaseDBAsyncClient,
    ConnectionWrapper,
    NestedTransactionContext,
    TransactionalDBClient,
    TransactionContext,
)
from tortoise.backends.base.executor import BaseExecutor
from tortoise.queryset import QuerySet

from reality_core.buffer import KeyBuffer
from reality_core.catalog import Settings
from reality_core.errors import WritePathError
from reality_core.store import Dialect, bump_failed, bump_statements
from reality_core.triggers import FOUND_STATEMENT, TriggerSpec, covered_from_rows

from ._declarations import TortoiseCatalog, TrackedTable, _generation
from ._sql import Paramstyle

if TYPE_CHECKING:
    from tortoise.apps import Apps
    from tortoise.models import Model

#: Set while a statement whose keys are already counted runs, so that the same statement
#: reaching another interception layer (psycopg's execute_insert calls execute_query) is
#: not counted twice, and so that save()/delete() statements keep their exact keys.
_COUNTED: contextvars.ContextVar[bool] = contextvars.ContextVar("reality_counted", default=False)


@contextlib.contextmanager
def _counted(value: bool = True) -> Iterator[None]:
    token = _COUNTED.set(value)
    try:
        yield
    finally:
        _COUNTED.reset(token)


#: Bumped whenever this process creates or drops triggers (and when such a transaction
#: ends), so that every connection's cached coverage is read again.
trigger_epoch = [0]
Rows = list[tuple[Any, ...]]


class _View:
    """What a client's statements are judged by: its catalog, and the stamp a coverage is
    read under (the catalog, its generation, ``max_keys``, :data:`trigger_epoch`). Never
    changed: when any part changes, a new view replaces it, so a view's identity is enough
    for the caches built on it (a transaction's coverage, its "nothing to do" verdict)."""

    __slots__ = ("apps", "catalog", "core_generation", "epoch", "generation", "looks_up",
                 "max_keys", "stamp", "tables")

    def __init__(self, apps: Apps | None, generation: int, catalog: TortoiseCatalog,
                 max_keys: int | None, dialect: Dialect) -> None:
        self.apps = apps
        self.generation = generation
        self.catalog = catalog
        self.core_generation = catalog.core.generation
        self.max_keys = max_keys
        self.epoch = trigger_epoch[0]
        self.stamp = (catalog, self.core_generation, max_keys, self.epoch)
        self.tables = frozenset(catalog.tables)
        #: Whether coverage needs reading at all (PostgreSQL, something tracked).
        self.looks_up = dialect == "postgresql" and bool(self.tables)

    def current(self, max_keys: int | None) -> bool:
        """Still right, apart from the Tortoise context (the client checks that)."""
        return (self.epoch == trigger_epoch[0] and self.generation == _generation[0]
                and self.max_keys == max_keys
                and self.core_generation == self.catalog.core.generation)

    def specs(self) -> list[TriggerSpec]:
        return self.catalog.core.trigger_specs(self.max_keys)


class _Seen:
    """A view and the tables covered under it on one connection (or client)."""

    __slots__ = ("covered", "idle", "view")

    def __init__(self, view: _View, covered: frozenset[str]) -> None:
        self.view = view
        self.covered = covered
        #: Every tracked table is covered (or none is tracked): no statement gives a key
        #: (unreadable raw SQL included: every tracked table bumps itself), so statements
        #: skip parsing altogether.
        self.idle = view.tables <= covered


#: What each physical connection's database covers, with the view it was read under.
_COVERAGE: weakref.WeakKeyDictionary[Any, _Seen] = weakref.WeakKeyDictionary()


class _TransactionEnded(Exception):
    """A wrapper's transaction ended while a statement waited for its connection."""


class _GuardedConnection(ConnectionWrapper[Any]):
    __slots__ = ()

    async def __aenter__(self) -> Any:
        connection = await super().__aenter__()
        client: RealityTransaction = self.client  # type: ignore[assignment]
        if client._reality_root._reality_done:
            self._lock.release()
            raise _TransactionEnded
        return connection


class _Statements(BaseDBAsyncClient):
    """Intercepts every statement method; what happens to the keys is the subclass's."""

    #: set by each backend
    reality_dialect: ClassVar[Dialect]
    reality_paramstyle: ClassVar[Paramstyle]

    async def _reality_statement(self, name: str, sql: str, params: Any, many: bool,
                                 args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        raise NotImplementedError

    async def _reality_dispatch(self, name: str, sql: str, params: Any, many: bool,
                                args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if _COUNTED.get():
            return await getattr(super(), name)(*args, **kwargs)
        return await self._reality_statement(name, sql, params, many, args, kwargs)

    async def _reality_upper(self, name: str, args: tuple[Any, ...],
                             kwargs: dict[str, Any]) -> Any:
        return await getattr(super(), name)(*args, **kwargs)

    # The two methods every ORM write and read goes through check _COUNTED themselves
    # (what _reality_dispatch does), sparing already counted statements a call.

    async def execute_insert(self, query: str, values: list[Any]) -> Any:
        if _COUNTED.get():
            return await super().execute_insert(query, values)
        return await self._reality_statement("execute_insert", query, values, False,
                                             (query, values), {})

    async def execute_query(self, query: str, values: list[Any] | None = None,
                            *args: Any, **kwargs: Any) -> Any:
        if _COUNTED.get():
            return await super().execute_query(
                query, values, *args, **kwargs)
        return await self._reality_statement("execute_query", query, values, False,
                                             (query, values, *args), kwargs)

    async def execute_query_dict(self, query: str, values: list[Any] | None = None) -> Any:
        return await self._reality_dispatch("execute_query_dict", query, values, False,
                                            (query, values), {})

    async def execute_many(self, query: str, values: list[list[Any]]) -> None:
        await self._reality_dispatch("execute_many", query, values, True, (query, values), {})

    async def execute_script(self, query: str) -> None:
        await self._reality_dispatch("execute_script", query, None, False, (query,), {})

    def _reality_client(self) -> RealityClient:
        raise NotImplementedError

    def _reality_keys(self, sql: str, params: Any, many: bool, seen: _Seen) -> set[str]:
        if seen.idle:  # every tracked table bumps itself: nothing to read in the SQL
            return set()
        return seen.view.catalog.statement_keys(
            sql, params, many=many, dialect=self.reality_dialect,
            paramstyle=self.reality_paramstyle,
            policy=self._reality_client().reality_settings.raw_sql, covered=seen.covered)

    def _reality_view(self) -> _View:
        raise NotImplementedError

    async def _reality_seen(self, view: _View | None = None) -> _Seen:
        """What is covered for a write through this client, under ``view`` (default: the
        current one)."""
        raise NotImplementedError

    async def _reality_covered(self) -> frozenset[str]:
        """The covered tables for a write through this client (or wrapper)."""
        return (await self._reality_seen()).covered

    # --- Reality's own statements (trigger mode), on the driver connection -----------------

    @staticmethod
    async def _reality_fetch_on(connection: Any, sql: str) -> Rows:
        """Rows of ``sql`` on a driver connection (PostgreSQL backends only)."""
        raise NotImplementedError

    @staticmethod
    async def _reality_execute_on(connection: Any, sql: str) -> None:
        """Run parameterless ``sql`` (DDL) on a driver connection."""
        raise NotImplementedError

    @staticmethod
    def _reality_physical(connection: Any) -> Any:
        """The physical connection behind what the pool hands out (the coverage cache's key:
        a pool may hand the same connection out through a new proxy each time)."""
        return connection

    async def _reality_fetch(self, sql: str) -> Rows:
        async with self.acquire_connection() as connection:
            return await self._reality_fetch_on(connection, sql)

    async def _reality_execute(self, sql: str) -> None:
        async with self.acquire_connection() as connection:
            await self._reality_execute_on(connection, sql)


class RealityClient(_Statements):
    """Mixin for a connection's client class (the one its ``engine`` names). Each backend
    overrides ``_in_transaction`` so that Tortoise's transaction context holds *our*
    wrapper class (Tortoise names its own class there; there is no hook for it)."""

    reality_settings: Settings

    def __init__(self, *args: Any, reality: dict[str, Any] | None = None,
                 **kwargs: Any) -> None:
        self.reality_settings = Settings(**(reality or {}))
        self._reality_cache: tuple[Apps, int, TortoiseCatalog] | None = None
        self._reality_v: _View | None = None
        #: Coverage as last read on any of the pool's connections, for writes outside a
        #: transaction (which connection the pool hands them is unknown beforehand).
        self._reality_coverage: _Seen | None = None
        super().__init__(*args, **kwargs)

    def _reality_client(self) -> RealityClient:
        return self

    def _reality_catalog(self) -> TortoiseCatalog:
        apps, current = Tortoise.apps, _generation[0]
        cache = self._reality_cache
        if cache is not None and cache[0] is apps and cache[1] == current:
            return cache[2]
        catalog = TortoiseCatalog(apps.get_models_iterable() if apps is not None else ())
        if apps is not None:  # before Tortoise.init has loaded the apps: do not remember
            self._reality_cache = (apps, current, catalog)
        return catalog

    def _reality_view(self) -> _View:
        """The current view (checked in full: Tortoise context, declarations, settings,
        triggers made by this process)."""
        view = self._reality_v
        apps = Tortoise.apps
        max_keys = self.reality_settings.max_keys
        if view is not None and view.apps is apps and view.current(max_keys):
            return view
        catalog = self._reality_catalog()
        view = _View(apps, _generation[0], catalog, max_keys, self.reality_dialect)
        if apps is not None:  # before Tortoise.init has loaded the apps: do not remember
            self._reality_v = view
        return view

    async def _reality_seen(self, view: _View | None = None) -> _Seen:
        """Coverage for a write outside any transaction (read on whichever connection)."""
        if view is None:
            view = self._reality_view()
        seen = self._reality_coverage
        if seen is not None and seen.view is view:
            return seen
        if seen is not None and seen.view.stamp == view.stamp:
            covered = seen.covered
        elif view.looks_up:
            covered = await _look_up(self, view.specs())
        else:
            covered = frozenset()
        seen = _Seen(view, covered)
        self._reality_coverage = seen
        return seen

    def _reality_idle(self) -> bool:
        """Whether a transaction starting now can be an :class:`IdleTransaction`: PostgreSQL,
        every tracked table covered by its trigger, as last read on one of this client's
        connections under the current view."""
        seen = self._reality_coverage
        return (seen is not None and seen.idle and seen.view.looks_up
                and seen.view is self._reality_view())

    async def _reality_statement(self, name: str, sql: str, params: Any, many: bool,
                                 args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        keys = self._reality_keys(sql, params, many, await self._reality_seen())
        if not keys:  # nothing, or only covered tables: their triggers bump in the statement
            return await self._reality_upper(name, args, kwargs)
        # Outside any transaction: the statement and its bump get one of their own, so the
        # bump is never visible without the data, nor the data without the bump.
        async with self._in_transaction() as tx:
            wrapper = cast(RealityTransaction, tx)
            wrapper._reality_add(keys)
            with _counted():
                return await getattr(wrapper, name)(*args, **kwargs)


async def _look_up(db: _Statements, specs: list[TriggerSpec]) -> frozenset[str]:
    """:data:`~reality_core.triggers.FOUND_STATEMENT` on ``db``'s connection."""
    try:
        rows = await db._reality_fetch(FOUND_STATEMENT)
    except _TransactionEnded:
        raise
    except Exception as exc:  # I7: the write fails rather than guess what is covered
        raise WritePathError(f"Reality could not look up its triggers: {exc}") from exc
    return covered_from_rows(rows, specs)


class RealityTransaction(_Statements, TransactionalDBClient):
    """Mixin for the transaction wrapper: the key buffer, savepoints and the bump."""

    _lock: Any
    _connection: Any

    def __init__(self, connection: BaseDBAsyncClient) -> None:
        # Tortoise's wrapper classes take the client (or wrapper) they wrap.
        super().__init__(connection)  # type: ignore[arg-type]
        parent = connection
        # The outermost wrapper of a nested one (None: this is the outermost). Not a
        # reference to itself: that cycle kept every transaction, its connection proxy and
        # its buffer alive until the garbage collector ran (measured: ~60 collections a
        # second at 4,000 commits a second, where Tortoise alone needs none).
        self._reality_up: RealityTransaction | None = None
        if isinstance(parent, RealityTransaction):
            self._reality_up = parent._reality_root
        else:
            self._reality_buffer = KeyBuffer()
            self._reality_done = False
            self._reality_base: RealityClient = parent  # type: ignore[assignment]
            #: Set by create_triggers()/drop_triggers() run in this transaction: its end
            #: changes what is covered, so cached coverage is read again then.
            self._reality_ddl = False
            #: The view and coverage this transaction's statements were last judged by:
            #: checked per statement by view identity (one transaction never changes its
            #: Tortoise context), so a statement on a covered table costs a few lookups.
            self._reality_v: _View | None = None
            self._reality_s: _Seen | None = None

    @property
    def _reality_root(self) -> RealityTransaction:
        """The outermost wrapper: the one that holds the transaction's buffer and state."""
        up = self._reality_up
        return self if up is None else up

    def _reality_client(self) -> RealityClient:
        return self._reality_root._reality_base

    @property
    def _reality_nested(self) -> bool:
        return self._reality_up is not None

    def _reality_add(self, keys: set[str] | Sequence[str]) -> None:
        self._reality_root._reality_buffer.add(keys)

    def _in_transaction(self) -> TransactionContext:
        # Tortoise wraps a nested block in a new wrapper of its own class: make it ours.
        return NestedTransactionContext(type(self)(self))

    def acquire_connection(self) -> ConnectionWrapper[Any]:
        return _GuardedConnection(self._lock, self)

    def _reality_view(self) -> _View:
        root = self._reality_root
        view = root._reality_v
        base = root._reality_base
        if view is None or not view.current(base.reality_settings.max_keys):
            view = root._reality_v = base._reality_view()
        return view

    async def _reality_seen(self, view: _View | None = None) -> _Seen:
        """Coverage as this transaction's physical connection sees it (read once per
        connection, inside the transaction, so a failure fails it). Raises
        :class:`_TransactionEnded` once the transaction has ended (when it must read)."""
        root = self._reality_root
        if view is None:
            view = self._reality_view()
        seen = root._reality_s
        if seen is not None and seen.view is view:
            return seen
        if not view.looks_up:
            seen = _Seen(view, frozenset())
        else:
            physical = self._reality_physical(root._connection)
            try:
                seen = _COVERAGE.get(physical)
            except TypeError:  # a connection that takes no weak reference: read every time
                physical, seen = None, None
            if seen is None or seen.view is not view:
                if seen is not None and seen.view.stamp == view.stamp:
                    seen = _Seen(view, seen.covered)
                else:
                    seen = _Seen(view, await _look_up(root, view.specs()))
                    if not root._reality_ddl:
                        # What the database has committed (this transaction has changed no
                        # trigger): good for the client's next transactions too.
                        root._reality_base._reality_coverage = seen
                if physical is not None:
                    _COVERAGE[physical] = seen
        root._reality_s = seen
        return seen

    async def _reality_statement(self, name: str, sql: str, params: Any, many: bool,
                                 args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        root = self._reality_root
        if not root._reality_done:
            try:
                seen = await self._reality_seen()
                if not seen.idle:
                    # Counted before it runs: a statement cut short (cancelled mid-flight)
                    # may still have written; over-invalidating its keys is allowed, losing
                    # them not.
                    root._reality_buffer.add(self._reality_keys(sql, params, many, seen))
                token = _COUNTED.set(True)
                try:
                    return await self._reality_upper(name, args, kwargs)
                finally:
                    _COUNTED.reset(token)
            except _TransactionEnded:
                pass
        # The transaction has ended (a task spawned inside it outlived it): this statement
        # is a write outside any transaction, on the client, never in the ended one.
        with _counted(False):
            return await getattr(root._reality_base, name)(*args, **kwargs)

    # --- transaction boundaries ----------------------------------------------------

    async def _wrapped(self, name: str) -> None:
        """The same method of the Tortoise wrapper this mixin is combined with."""
        await getattr(super(), name)()

    async def savepoint(self) -> None:
        await self._wrapped("savepoint")
        self._reality_root._reality_buffer.savepoint()

    async def release_savepoint(self) -> None:
        try:
            await self._wrapped("release_savepoint")
        finally:
            # Even a failed RELEASE keeps the keys: over-invalidating is allowed.
            self._reality_root._reality_buffer.release()

    async def savepoint_rollback(self) -> None:
        buffer = self._reality_root._reality_buffer
        try:
            await self._wrapped("savepoint_rollback")
        except BaseException:
            buffer.release()  # unsure what was undone: keep the keys
            raise
        finally:
            self._reality_root._reality_ddl_ended()
        buffer.rollback_savepoint()

    def _reality_ddl_ended(self) -> None:
        if self._reality_root._reality_ddl:
            trigger_epoch[0] += 1

    async def commit(self) -> None:
        if self._reality_up is not None:  # a savepoint release (backends that map it so)
            await self._wrapped("commit")
            return
        # The statement lock: a statement in flight on this transaction (from a task it
        # spawned) finishes, and its keys are in the buffer, before the bump is written.
        lock = self._lock
        await lock.acquire()
        try:
            buffer = self._reality_buffer
            try:
                if buffer:  # trigger mode often leaves nothing: no key work, no bump
                    client = self._reality_base
                    keys = self._reality_view().catalog.core.compact(
                        buffer.drain(), client.reality_settings.max_keys)
                    if keys:
                        await self._reality_bump(keys)
                await super().commit()  # type: ignore[safe-super]  # Tortoise's wrapper
            except BaseException:
                await self._reality_after_failed_commit()
                raise
            finally:
                self._reality_done = True
                buffer.clear()
                if self._reality_ddl:
                    trigger_epoch[0] += 1
        finally:
            lock.release()

    async def rollback(self) -> None:
        if self._reality_up is not None:
            try:
                await self._wrapped("rollback")
            finally:
                self._reality_ddl_ended()
            return
        lock = self._lock
        await lock.acquire()
        try:
            await super().rollback()  # type: ignore[safe-super]  # Tortoise's wrapper
        finally:
            self._reality_done = True
            self._reality_buffer.clear()
            self._reality_ddl_ended()
            lock.release()

    async def _reality_bump(self, keys: list[str]) -> None:
        try:
            for sql, params in bump_statements(self.reality_dialect, keys,
                                               self.reality_paramstyle):
                await self._reality_run(sql, cast(Sequence[Any], params))
        except Exception as exc:
            with contextlib.suppress(Exception):
                await self._wrapped("rollback")
            raise bump_failed(exc, len(keys)) from exc

    async def _reality_run(self, sql: str, params: Sequence[Any]) -> None:
        """Run one statement on this transaction's own driver connection."""
        raise NotImplementedError

    async def _reality_after_failed_commit(self) -> None:
        """Leave no transaction open after a failed COMMIT (backends where one stays)."""


class IdleTransaction(RealityTransaction):
    """The transaction wrapper when every tracked table is covered by its trigger (trigger
    mode's usual state): the database bumps every write inside the statement, so statements
    go straight to Tortoise's methods, model writes use Tortoise's own executor (each backend
    names it), and connections are handed out as Tortoise does. Per statement the plugin
    checks only that the view the transaction began under is still current (triggers made by
    this process, declarations, ``max_keys``); if not, the statement takes the full path
    (coverage read again, keys from the SQL where a table lost its trigger). :func:`bump` and
    COMMIT work as in any Reality transaction.

    What it saves, measured on Tortoise's own write path: ~20-30 us of plugin Python per
    insert-and-commit (the layers every statement and model write went through). A task
    spawned inside the block that outlives it writes as Tortoise lets it (on the connection
    the block had); the trigger attributes its keys to whatever transaction that write lands
    in, so they move with the data."""

    def __init__(self, connection: BaseDBAsyncClient) -> None:
        super().__init__(connection)
        up = self._reality_up
        if isinstance(up, IdleTransaction):
            self._reality_since: _View = up._reality_since
        else:  # the client has just found its coverage current under this view
            seen = self._reality_base._reality_coverage
            assert seen is not None
            self._reality_since = seen.view

    def _reality_plain(self) -> bool:
        """Nothing a statement is judged by (triggers made by this process, declarations,
        max_keys) has changed since the transaction began."""
        return self._reality_since.current(self._reality_client().reality_settings.max_keys)

    def acquire_connection(self) -> ConnectionWrapper[Any]:
        return cast(ConnectionWrapper[Any], super(RealityTransaction, self).acquire_connection())

    # The two methods every ORM write goes through skip the dispatch as well.

    async def execute_insert(self, query: str, values: list[Any]) -> Any:
        if self._reality_plain():
            return await super(_Statements, self).execute_insert(query, values)
        return await super().execute_insert(query, values)

    async def execute_query(self, query: str, values: list[Any] | None = None,
                            *args: Any, **kwargs: Any) -> Any:
        if self._reality_plain():
            return await super(_Statements, self).execute_query(query, values, *args, **kwargs)
        return await super().execute_query(query, values, *args, **kwargs)

    async def _reality_dispatch(self, name: str, sql: str, params: Any, many: bool,
                                args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self._reality_plain():
            return await self._reality_upper(name, args, kwargs)
        return await super()._reality_dispatch(name, sql, params, many, args, kwargs)


# --- executors: save() / create() / delete() ----------------------------------------------


async def _tracked(executor: BaseExecutor) -> _Found | None:
    """A tracked model's write through ``executor.db``, with what trigger mode covers and
    the client it runs on: ``db``, or its connection's client once ``db``'s transaction has
    ended; ``None`` for an untracked model (no coverage read for it)."""
    db = executor.db
    if isinstance(db, RealityTransaction):
        if not db._reality_root._reality_done:
            view = db._reality_view()
            tracked = view.catalog.models.get(executor.model)
            if tracked is None:
                return None
            try:
                return _Found(tracked, await db._reality_seen(view), db)
            except _TransactionEnded:
                pass
        db = db._reality_client()
    elif not isinstance(db, RealityClient):
        return None
    view = db._reality_view()
    tracked = view.catalog.models.get(executor.model)
    if tracked is None:
        return None
    return _Found(tracked, await db._reality_seen(view), db)


class _Found:
    """A tracked model's write: its catalog entry and what trigger mode covers."""

    __slots__ = ("by_trigger", "catalog", "covered", "runs_on", "tracked")

    def __init__(self, tracked: TrackedTable, seen: _Seen, runs_on: _Statements) -> None:
        self.catalog = seen.view.catalog
        self.tracked = tracked
        self.covered = seen.covered
        self.runs_on = runs_on
        #: The table's trigger bumps it: no key work, no old-value read, no own transaction.
        self.by_trigger = tracked.declaration.table in seen.covered


@contextlib.asynccontextmanager
async def _transaction(db: BaseDBAsyncClient) -> AsyncIterator[RealityTransaction]:
    """The open transaction ``db`` writes in, or a new one of its own when it has none."""
    if isinstance(db, RealityTransaction) and not db._reality_root._reality_done:
        yield db
        return
    client = db._reality_client() if isinstance(db, _Statements) else None
    if client is None:  # pragma: no cover - our executors only run on our clients
        raise TypeError(f"not a Reality client: {db!r}")
    async with client._in_transaction() as tx:
        yield cast(RealityTransaction, tx)


async def _old_image(tx: RealityTransaction, tracked: TrackedTable,
                     instance: Model) -> dict[str, Any] | None:
    """The row as the database holds it now, locked until the transaction ends (so no
    other writer can move it between this read and the write)."""
    model = tracked.model
    assert model is not None
    pk = model._meta.pk_attr
    if not tracked.needs_old_values:
        return {pk: instance.pk}
    names = sorted(tracked.declaration.template_columns | {pk})
    # A plain QuerySet: a custom manager's default filters must not hide the row.
    query = QuerySet(model).using_db(tx).filter(pk=instance.pk).select_for_update()
    rows = await query.values(*names)
    if not rows:
        return None
    return tracked.from_values(rows[0])


class RealityExecutor(BaseExecutor):
    """Mixin for the backend's executor: exact keys for ``save()`` and ``delete()``."""

    def _on(self, tx: BaseDBAsyncClient) -> RealityExecutor:
        return self if tx is self.db else type(self)(model=self.model, db=tx)

    async def execute_insert(self, instance: Model) -> None:
        found = await _tracked(self)
        if found is None:
            await super().execute_insert(instance)
            return
        if found.by_trigger:
            token = _COUNTED.set(True)
            try:
                await super(RealityExecutor, self._on(found.runs_on)).execute_insert(instance)
            finally:
                _COUNTED.reset(token)
            return
        catalog, tracked = found.catalog, found.tracked
        async with _transaction(self.db) as tx:
            try:
                with _counted():
                    await super(RealityExecutor, self._on(tx)).execute_insert(instance)
            finally:
                # After the INSERT the generated primary key is known; if it failed, the
                # unknown key escalates (a failed statement wrote nothing, but a cancelled
                # one may have).
                tx._reality_add(catalog.row_keys(tracked, tracked.from_instance(instance), None))

    async def execute_update(self, instance: type[Model] | Model,
                             update_fields: Iterable[str] | None) -> int:
        found = await _tracked(self)
        if found is None:
            return await super().execute_update(instance, update_fields)
        if found.by_trigger:
            token = _COUNTED.set(True)
            try:
                return await super(RealityExecutor, self._on(found.runs_on)).execute_update(
                    instance, update_fields)
            finally:
                _COUNTED.reset(token)
        catalog, tracked = found.catalog, found.tracked
        model_instance = cast("Model", instance)
        async with _transaction(self.db) as tx:
            old = await _old_image(tx, tracked, model_instance)
            if update_fields is None:
                new = tracked.from_instance(model_instance)
            else:
                new = dict(old or {})
                new.update(tracked.from_instance(
                    model_instance, [*update_fields, tracked.model._meta.pk_attr]  # type: ignore[union-attr]
                ))
            tx._reality_add(catalog.row_keys(tracked, new, old))
            with _counted():
                return await super(RealityExecutor, self._on(tx)).execute_update(
                    instance, update_fields)

    async def execute_delete(self, instance: type[Model] | Model) -> int:
        found = await _tracked(self)
        if found is None:
            return await super().execute_delete(instance)
        if found.by_trigger:
            token = _COUNTED.set(True)
            try:
                return await super(RealityExecutor, self._on(found.runs_on)).execute_delete(
                    instance)
            finally:
                _COUNTED.reset(token)
        catalog, tracked = found.catalog, found.tracked
        model_instance = cast("Model", instance)
        async with _transaction(self.db) as tx:
            old = await _old_image(tx, tracked, model_instance)
            if old is None:
                old = {tracked.model._meta.pk_attr: model_instance.pk}  # type: ignore[union-attr]
            tx._reality_add(catalog.row_keys(tracked, None, old, delete=True,
                                             covered=found.covered))
            with _counted():
                return await super(RealityExecutor, self._on(tx)).execute_delete(instance)

