"""Listeners that turn SQLAlchemy writes into bumps, and install/uninstall.

Where each kind of write is seen (DESIGN §5):

* unit-of-work inserts/updates/deletes: mapper ``after_insert/after_update/after_delete``,
  which hand us the connection and the object's history (old *and* new values, I5);
* everything else that runs on a connection — ORM bulk statements, legacy ``Query.update``,
  ``bulk_*_mappings``, Core constructs, many-to-many link rows, ``text()`` and
  ``exec_driver_sql``: the Core ``after_execute`` event. Unit-of-work statements on mapped
  tables are skipped there because the mapper events already covered them precisely;
* transaction boundaries: Core ``savepoint``/``release_savepoint``/``rollback_savepoint``,
  ``rollback`` and ``commit``. The key buffer lives on the *connection*, because that is
  where the database transaction is: a session joined to an outer transaction (C05) or a
  released savepoint (C02) never reaches the connection's ``commit`` event, so neither
  publishes anything. The bump is written from the ``commit`` event, just before COMMIT,
  as one statement with the keys in sorted order.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapper, Session, sessionmaker
from sqlalchemy.sql import dml, elements

from reality_core.buffer import KeyBuffer
from reality_core.catalog import RawSQLPolicy, Settings
from reality_core.errors import ConfigurationError, WritePathError
from reality_core.keys import MISSING, validate_key
from reality_core.store import normalize_dialect, run_bump
from reality_core.triggers import covered_tables

from ._declarations import Tracked, registry, table_name

log = logging.getLogger("reality.sqlalchemy")

_STATE_ATTR = "_reality_state"
_FLUSHING = "reality.flushing"


class _ConnState:
    """Per-connection tracking state: the key buffer and the session that owns it."""

    __slots__ = ("buffer", "covered", "current", "dialect", "session")

    def __init__(self, conn: Connection) -> None:
        self.buffer = KeyBuffer()
        self.dialect = normalize_dialect(conn.dialect.name)
        #: Tables whose database triggers bump them (trigger mode): no key work here.
        self.covered = _covered(conn, self.dialect)
        self.session: weakref.ref[Session] | None = None
        #: Template columns as the database holds them, read just before an UPDATE/DELETE
        #: of an object: (id(object), table) -> column values.
        self.current: dict[tuple[int, str], dict[str, Any]] = {}


_COVERED = "reality.covered"


def _covered(conn: Connection, dialect: str) -> frozenset[str]:
    """The tracked tables with current Reality triggers, read once per DB-API connection
    (the pool keeps the answer in the connection's ``info``) and again when declarations or
    settings change."""
    if dialect != "postgresql" or not len(registry.catalog):
        return frozenset()
    specs = registry.catalog.trigger_specs(_plugin.settings.max_keys)
    info = conn.connection.info
    stamp = (registry.catalog.generation, _plugin.settings.max_keys, _plugin.trigger_epoch)
    cached = info.get(_COVERED)
    if cached is not None and cached[0] == stamp:
        covered: frozenset[str] = cached[1]
        return covered
    dbapi_conn = conn.connection.dbapi_connection
    try:
        covered = covered_tables(dbapi_conn, specs)
    except Exception as exc:  # I7: the transaction fails rather than guess
        raise WritePathError(f"Reality could not look up its triggers: {exc}") from exc
    info[_COVERED] = (stamp, covered)
    return covered


def _state(conn: Connection) -> _ConnState | None:
    state: _ConnState | None = getattr(conn, _STATE_ATTR, None)
    return state


def _ensure_state(conn: Connection) -> _ConnState:
    state = _state(conn)
    if state is None:
        state = _ConnState(conn)
        setattr(conn, _STATE_ATTR, state)
    return state


# --- keys from ORM objects ------------------------------------------------------------

def _images(tracked: Tracked, target: Any, op: str) -> tuple[dict[str, Any] | None,
                                                              dict[str, Any] | None]:
    state = sa.inspect(target)
    new: dict[str, Any] = {}
    old: dict[str, Any] = {}
    for column, attr in tracked.attributes:
        hist = state.attrs[attr].history
        if hist.added:
            new[column] = hist.added[0]
            old[column] = hist.deleted[0] if hist.deleted else MISSING
        elif hist.unchanged:
            new[column] = old[column] = hist.unchanged[0]
        elif hist.deleted:
            new[column], old[column] = None, hist.deleted[0]
        else:
            new[column] = old[column] = MISSING
    if state.key is not None and op != "insert":
        # The identity key holds the primary key the row had when loaded.
        mapper: Mapper[Any] = state.mapper
        for col, value in zip(mapper.primary_key, state.key[1], strict=False):
            if col.table is tracked.table and col.key is not None:
                old[col.key] = value
    if op == "insert":
        return new, None
    if op == "delete":
        return None, old
    return new, old


def _tracked_tables(mapper: Mapper[Any]) -> Iterator[Tracked]:
    for m in mapper.iterate_to_root():
        local = m.local_table
        if isinstance(local, sa.Table):
            tracked = registry.get(table_name(local))
            if tracked is not None and tracked.mapped:
                yield tracked


def _read_current(mapper: Mapper[Any], connection: Connection, target: Any) -> None:
    """Before a unit-of-work UPDATE/DELETE, read the row's template columns as the database
    holds them, locking the row (``FOR UPDATE``; SQLite has one writer anyway).

    The loaded values can be stale: another transaction may have moved the row to another
    room since this session loaded it, and then that room's key must move too (I5). Only
    models with key templates pay this extra statement.
    """
    state = _state(connection)
    if state is None:
        return
    identity = sa.inspect(target).key
    if identity is None:
        return
    for tracked in _tracked_tables(mapper):
        decl = tracked.declaration
        if not decl.templates or decl.table in state.covered:
            continue
        table = tracked.table
        pk_values = dict(zip((c.key for c in mapper.primary_key), identity[1], strict=False))
        if not all(c.key in pk_values for c in table.primary_key.columns):
            continue
        columns = [table.c[name] for name in sorted(decl.template_columns)]
        query = sa.select(*columns).where(
            *(c == pk_values[c.key] for c in table.primary_key.columns)
        ).with_for_update()
        row = connection.execute(query).mappings().first()
        if row is not None:
            current = dict(row)
            current.update({c.key: pk_values[c.key] for c in table.primary_key.columns})
            state.current[(id(target), decl.table)] = current


def _mapper_listener(op: str) -> Any:
    def listener(mapper: Mapper[Any], connection: Connection, target: Any) -> None:
        state = _state(connection)
        if state is None:
            return
        keys: set[str] = set()
        for tracked in _tracked_tables(mapper):
            decl = tracked.declaration
            if decl.table in state.covered:
                continue  # its trigger bumped it inside the statement
            new, old = _images(tracked, target, op)
            keys |= decl.keys_for_row(new, old)
            current = state.current.pop((id(target), decl.table), None)
            if current is not None:
                keys |= decl.keys_for_row(None, current)
            if op == "delete":
                keys |= _cascade_keys(decl.table)
        state.buffer.add(keys)

    return listener


def _cascade_keys(name: str) -> set[str]:
    return registry.catalog.cascade_keys(name)


# --- keys from Core statements and raw SQL ----------------------------------------------

def _pk_binds(stmt: Any, table: sa.Table) -> dict[str, tuple[bool, Any]] | None:
    """If ``stmt`` filters on exactly ``pk = <bind>`` (the shape of by-primary-key bulk
    updates), map each pk column key to where its value is: ``(True, value)`` for a bound
    literal, ``(False, name)`` for a named parameter of an executemany; else ``None``."""
    crit = stmt.whereclause
    if crit is None:
        return None
    is_list = isinstance(crit, elements.BooleanClauseList)
    if is_list and crit.operator is not sa.sql.operators.and_:
        return None
    found: dict[str, tuple[bool, Any]] = {}
    for clause in list(crit.clauses) if is_list else [crit]:
        if not (isinstance(clause, elements.BinaryExpression)
                and clause.operator is sa.sql.operators.eq
                and isinstance(clause.left, sa.Column)
                and isinstance(clause.right, elements.BindParameter)):
            return None
        bind = clause.right
        if isinstance(bind.key, elements._anonymous_label) or bind.unique:
            found[clause.left.key] = (True, bind.effective_value)
        else:
            found[clause.left.key] = (False, bind.key)
    pk = {c.key for c in table.primary_key.columns}
    return found if set(found) == pk else None


def _dml_keys(stmt: Any, tracked: Tracked, result: Any) -> set[str]:
    decl = tracked.declaration
    context = getattr(result, "context", None)
    params: list[Mapping[str, Any]] = list(getattr(context, "compiled_parameters", None) or [])
    if isinstance(stmt, dml.Insert):
        upsert = getattr(stmt, "_post_values_clause", None) is not None
        if stmt.select is not None or bool(getattr(stmt, "_multi_values", ())) or not params:
            return decl.escalation_keys()
        pk_rows: list[Any] = []
        try:
            pk_rows = list(result.inserted_primary_key_rows)
        except Exception:  # not every driver reports keys for executemany
            pk_rows = []
        keys: set[str] = set()
        pk_cols = [c.key for c in tracked.table.primary_key.columns]
        for i, values in enumerate(params):
            row = {c: values.get(c, MISSING) for c in decl.columns}
            if i < len(pk_rows) and pk_rows[i] is not None:
                for col, value in zip(pk_cols, pk_rows[i], strict=False):
                    if value is not None:
                        row[col] = value
            if upsert:
                # An upsert may update an existing row whose old values we never saw.
                keys |= decl.keys_for_row(row, {c: row[c] for c in pk_cols})
                keys.update(t.escalation for t in decl.templates)
            else:
                keys |= decl.keys_for_row(row)
        return keys
    binds = _pk_binds(stmt, tracked.table) if params else None
    if binds is None:
        keys = decl.escalation_keys()
    else:
        keys = set()
        for values in params:
            pk = {col: value if literal else values.get(value, MISSING)
                  for col, (literal, value) in binds.items()}
            keys |= decl.keys_for_row(None, pk)
        keys.update(t.escalation for t in decl.templates)
        keys.update(decl.escalation_keys() - {decl.row_escalation} if decl.links else set())
    if isinstance(stmt, dml.Delete):
        keys |= _cascade_keys(decl.table)
    return keys


class _Plugin:
    """The installed listeners, counted per target so uninstall removes exactly them."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.targets: dict[int, tuple[Any, Any, Settings]] = {}
        self.engines: dict[int, Engine] = {}
        self.settings = Settings()
        #: Bumped by create_triggers/drop_triggers: cached trigger lookups are then stale.
        self.trigger_epoch = 0
        self.mapper_listeners = [
            ("before_update", _read_current),
            ("before_delete", _read_current),
            ("after_insert", _mapper_listener("insert")),
            ("after_update", _mapper_listener("update")),
            ("after_delete", _mapper_listener("delete")),
        ]
        self.session_listeners: list[tuple[str, Any]] = [
            ("after_begin", self.after_begin),
            ("before_flush", self.before_flush),
            ("after_flush_postexec", self.after_flush_postexec),
            ("after_transaction_end", self.after_transaction_end),
        ]
        self.engine_listeners: list[tuple[str, Any]] = [
            ("after_execute", self.after_execute),
            ("after_cursor_execute", self.after_cursor_execute),
            ("savepoint", self.on_savepoint),
            ("release_savepoint", self.on_release_savepoint),
            ("rollback_savepoint", self.on_rollback_savepoint),
            ("rollback", self.on_rollback),
            ("commit", self.on_commit),
            ("prepare_twophase", self.on_prepare_twophase),
        ]

    # session events ----------------------------------------------------------------

    def after_begin(self, session: Session, transaction: Any, connection: Connection) -> None:
        self.instrument_engine(connection.engine)
        _ensure_state(connection).session = weakref.ref(session)

    def before_flush(self, session: Session, flush_context: Any, instances: Any) -> None:
        session.info[_FLUSHING] = True

    def after_flush_postexec(self, session: Session, flush_context: Any) -> None:
        session.info.pop(_FLUSHING, None)

    def after_transaction_end(self, session: Session, transaction: Any) -> None:
        # A failed flush ends its transaction without after_flush_postexec.
        session.info.pop(_FLUSHING, None)

    # connection events ---------------------------------------------------------------

    def instrument_engine(self, engine: Engine) -> None:
        # Connections consult their engine's listeners live, so instrumenting the engine
        # the first time one of its connections joins a tracked session is early enough.
        if id(engine) in self.engines:
            return
        with self.lock:
            if id(engine) in self.engines:
                return
            for name, fn in self.engine_listeners:
                event.listen(engine, name, fn)
            self.engines[id(engine)] = engine

    def after_execute(self, conn: Connection, clauseelement: Any, multiparams: Any,
                      params: Any, execution_options: Any, result: Any) -> None:
        state = _state(conn)
        if state is None:
            return
        try:
            keys = self._statement_keys(state, clauseelement, result)
        except WritePathError:
            raise
        except Exception as exc:  # I7: never let a write go by unbumped
            raise WritePathError(f"Reality could not compute keys for a statement: {exc}") from exc
        if keys:
            state.buffer.add(keys)

    def after_cursor_execute(self, conn: Connection, cursor: Any, statement: str,
                             parameters: Any, context: Any, executemany: bool) -> None:
        # Only exec_driver_sql() lacks a compiled statement, and only it skips after_execute.
        if context is not None and context.compiled is None:
            self.after_execute(conn, statement, (), {}, {}, None)

    def _statement_keys(self, state: _ConnState, stmt: Any, result: Any) -> set[str]:
        if isinstance(stmt, (dml.Insert, dml.Update, dml.Delete)):
            table = stmt.table
            if not isinstance(table, sa.Table):
                return set()
            tracked = registry.get(table_name(table))
            if tracked is None or tracked.declaration.table in state.covered:
                return set()
            session = state.session() if state.session is not None else None
            if tracked.mapped and session is not None and session.info.get(_FLUSHING):
                return set()  # unit of work: the mapper events saw this row precisely
            return _dml_keys(stmt, tracked, result)
        if isinstance(stmt, str):
            sql = stmt
        elif isinstance(stmt, (elements.TextClause, sa.Select, sa.CompoundSelect)):
            sql = getattr(getattr(result, "context", None), "statement", None) or str(stmt)
        else:
            return set()
        return registry.catalog.raw_sql_keys(sql, self.settings.raw_sql, state.dialect,
                                             state.covered)

    def on_savepoint(self, conn: Connection, name: str | None) -> None:
        state = _state(conn)
        if state is None:
            return
        if state.dialect == "sqlite":
            _require_sqlite_begin_recipe(conn)
        state.buffer.savepoint()

    def on_release_savepoint(self, conn: Connection, name: str, context: Any) -> None:
        state = _state(conn)
        if state is not None:
            state.buffer.release()

    def on_rollback_savepoint(self, conn: Connection, name: str, context: Any) -> None:
        state = _state(conn)
        if state is not None:
            state.buffer.rollback_savepoint()

    def on_rollback(self, conn: Connection) -> None:
        state = _state(conn)
        if state is not None:
            state.buffer.clear()

    def on_prepare_twophase(self, conn: Connection, xid: Any) -> None:
        self.on_commit(conn)

    def on_commit(self, conn: Connection) -> None:
        state = _state(conn)
        if state is None or not state.buffer:
            return
        keys = registry.catalog.compact(state.buffer.drain(), self.settings.max_keys)
        write_bump(conn, keys, state.dialect)


def write_bump(conn: Connection, keys: list[str], dialect: Any) -> None:
    """Bump on the connection's own DB-API connection, inside the transaction about to
    commit; a failure rolls it back and raises, so nothing of it commits (I7)."""
    dbapi_conn = conn.connection.dbapi_connection
    if dbapi_conn is None:
        raise WritePathError("the connection was invalidated before COMMIT; nothing committed")
    try:
        run_bump(dbapi_conn, dialect, keys, conn.dialect.paramstyle)
    except WritePathError as exc:
        cause = exc.__cause__
        # The bump ran outside SQLAlchemy's error handling, so tell the pool ourselves when
        # the connection is dead; otherwise the next checkout would get a closed connection.
        dbapi_error = conn.dialect.loaded_dbapi.Error
        if isinstance(cause, dbapi_error) and conn.dialect.is_disconnect(cause, dbapi_conn, None):
            conn.invalidate(cause)
        raise


def _require_sqlite_begin_recipe(conn: Connection) -> None:
    dbapi_conn = conn.connection.dbapi_connection
    driver = getattr(dbapi_conn, "driver_connection", dbapi_conn)
    # aiosqlite wraps the sqlite3 connection one level deeper.
    inner = getattr(driver, "_conn", driver)
    if getattr(inner, "isolation_level", None) is not None:
        raise ConfigurationError(
            "SQLite savepoints are unreliable with pysqlite's default transaction handling: "
            "call reality_sqlalchemy.enable_sqlite_savepoints(engine) once after "
            "create_engine() (SQLAlchemy's documented BEGIN recipe)"
        )


_plugin = _Plugin()


def _session_target(target: Any) -> Any:
    if isinstance(target, async_sessionmaker):
        current = target.kw.get("sync_session_class", Session)
        if not getattr(current, "_reality_owned", False):
            # A dedicated subclass keeps the listeners on this maker's sessions only.
            sub = type(f"Reality{current.__name__}", (current,), {"_reality_owned": True})
            target.kw["sync_session_class"] = sub
            current = sub
        return current
    if isinstance(target, type) and issubclass(target, AsyncSession):
        return target.sync_session_class
    if isinstance(target, sessionmaker):
        return target
    if isinstance(target, type) and issubclass(target, Session):
        return target
    raise ConfigurationError(
        "install() takes a sessionmaker, an async_sessionmaker, a Session or AsyncSession "
        f"subclass, or an Engine/AsyncEngine; got {target!r}"
    )


def install(
    target: Any, *, raw_sql: RawSQLPolicy = "conservative", max_keys: int | None = 1000
) -> None:
    """Bump versions for every write made through ``target``.

    Example::

        SessionLocal = sessionmaker(engine)
        reality_sqlalchemy.install(SessionLocal)

    ``target`` is a ``sessionmaker``/``async_sessionmaker``, a ``Session``/``AsyncSession``
    class (every session of that class), or an ``Engine``/``AsyncEngine`` (every connection,
    for Core-only code). Installing twice is a no-op; :func:`uninstall` removes exactly what
    this added. ``raw_sql`` and ``max_keys`` are described in :class:`Settings`.
    """
    settings = Settings(raw_sql=raw_sql, max_keys=max_keys)
    with _plugin.lock:
        if id(target) in _plugin.targets:
            return
        if _plugin.targets and settings != _plugin.settings:
            raise ConfigurationError(
                f"already installed with {_plugin.settings}; uninstall first to change settings"
            )
        _plugin.settings = settings
        if not _plugin.targets:
            for name, fn in _plugin.mapper_listeners:
                event.listen(Mapper, name, fn)
        if isinstance(target, (Engine, AsyncEngine)):
            engine = target.sync_engine if isinstance(target, AsyncEngine) else target
            event.listen(engine, "begin", _engine_begin)
            _plugin.instrument_engine(engine)
            _plugin.targets[id(target)] = (target, engine, settings)
            return
        session_target = _session_target(target)
        for name, fn in _plugin.session_listeners:
            event.listen(session_target, name, fn)
        _plugin.targets[id(target)] = (target, session_target, settings)


def _engine_begin(conn: Connection) -> None:
    _ensure_state(conn)


def uninstall(target: Any) -> None:
    """Remove what :func:`install` added for ``target`` (a no-op if it was not installed)."""
    with _plugin.lock:
        entry = _plugin.targets.pop(id(target), None)
        if entry is None:
            return
        _, listened, _ = entry
        if isinstance(listened, Engine) and isinstance(target, (Engine, AsyncEngine)):
            event.remove(listened, "begin", _engine_begin)
        else:
            for name, fn in _plugin.session_listeners:
                if event.contains(listened, name, fn):
                    event.remove(listened, name, fn)
        if not _plugin.targets:
            for name, fn in _plugin.mapper_listeners:
                event.remove(Mapper, name, fn)
            for engine in _plugin.engines.values():
                for name, fn in _plugin.engine_listeners:
                    if event.contains(engine, name, fn):
                        event.remove(engine, name, fn)
            _plugin.engines.clear()


def installed() -> list[Any]:
    """The targets currently installed (for diagnostics and tests)."""
    return [t for t, _, _ in _plugin.targets.values()]


def _buffer_for(conn: Connection) -> KeyBuffer:
    if not conn.in_transaction():
        raise ConfigurationError(
            "bump() must run inside a transaction (session.begin() or connection.begin()); "
            "outside one there is no commit for the bump to ride on"
        )
    state = _state(conn)
    if state is None:
        # Only sessions (and engines) the plugin is installed on get their bumps written at
        # COMMIT; recording a key anywhere else would be a bump that silently never happens.
        raise ConfigurationError(
            "bump(): the plugin is not installed on this session's factory or engine; "
            "call reality_sqlalchemy.install(...) on it first"
        )
    return state.buffer


def bump(session_or_connection: Session | Connection, *keys: str) -> None:
    """Bump ``keys`` when the current transaction commits (and never if it rolls back).

    Example::

        with Session() as session, session.begin():
            session.add(Comment(...))
            reality_sqlalchemy.bump(session, "feed:global")

    Keys follow the key rules (1-256 characters, no control characters, not starting
    with ``$``); a bad key raises :class:`~reality_core.errors.InvalidKeyError` at once.
    For an ``AsyncSession`` use ``await abump(session, ...)``.
    """
    checked = [validate_key(k) for k in keys]
    if isinstance(session_or_connection, Session):
        conn = session_or_connection.connection()
    elif isinstance(session_or_connection, Connection):
        conn = session_or_connection
    else:
        raise ConfigurationError(
            f"bump() takes a Session or a Connection, not {type(session_or_connection).__name__}"
            + (" (use await abump() for an AsyncSession)"
               if isinstance(session_or_connection, AsyncSession) else "")
        )
    _buffer_for(conn).add(checked)


async def abump(session: AsyncSession, *keys: str) -> None:
    """:func:`bump` for an ``AsyncSession``."""
    checked = [validate_key(k) for k in keys]
    if not isinstance(session, AsyncSession):
        raise ConfigurationError(f"abump() takes an AsyncSession, not {type(session).__name__}")
    conn = await session.connection()
    _buffer_for(conn.sync_connection).add(checked)  # type: ignore[arg-type]
