#!/usr/bin/env python3
"""Write-path benchmark: what Reality's bump costs an application's own transactions.

The same ORM transaction (``session.add(Order(room_id=...))`` then ``commit()``) runs with and
without the plugin, side by side in one run (DESIGN.md §10). A fresh database
``reality_bench_<hex>`` is created on the server and dropped at the end. Two identical tables
are used: the *baseline* model is not tracked and runs with the plugin **uninstalled** (no
listener at all, i.e. an application without Reality); the *plugin* model is declared with
``track(keys=["room:{room_id}"])`` and runs with the plugin installed on the sessionmaker, so
each commit also bumps ``$table:<table>``, ``$row:<table>:<id>`` and ``room:<room_id>``.
Rounds alternate the order of the two variants (AB BA AB ...) to cancel machine drift; the
figures are medians across rounds. After the plugin rounds the version table is checked
against the commits counted: a benchmark of a plugin that silently bumps nothing is worthless.

    python bench/write_path.py --quick            # well under 2 minutes
    python bench/write_path.py                    # full form (defaults below)
    python bench/write_path.py --writers 1,8,32 --rounds 7 --duration 10
    python bench/write_path.py --orms sqlalchemy,tortoise,tortoise-psycopg,tortoise-autocommit

Tortoise ORM (``tortoise`` on asyncpg, ``tortoise-psycopg``): each writer thread's transaction
(``in_transaction()`` + ``Model.create()``) runs as an asyncio task on one event loop; the
baseline model sits on a connection with Tortoise's own engine, the tracked one on a Reality
engine. ``tortoise-autocommit`` writes each row with a bare ``Model.create()``, as many apps do
(the plugin then adds a transaction of its own around the row and its bump).

Extending: add a row to ``SCENARIOS`` (its own ``key_prefix``) or an entry to ``ORMS``
(a class following the ``Target`` protocol). The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import secrets
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Protocol

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # run from a source checkout without installing
    sys.path.insert(0, str(_ROOT))

import sqlalchemy as sa  # noqa: E402
from sqlalchemy.engine import URL, Engine, make_url  # noqa: E402
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker  # noqa: E402

import reality_sqlalchemy as reality  # noqa: E402
from reality_core.keys import ESCALATION_PREFIX, ROW_PREFIX, TABLE_PREFIX  # noqa: E402
from reality_core.reader import DBAPIReader  # noqa: E402
from reality_core.store import VERSIONS_TABLE  # noqa: E402

DEFAULT_URL: Final = "postgresql://postgres@127.0.0.1:5432/postgres"
URL_ENV: Final = "REALITY_BENCH_DATABASE_URL"
Variant = Literal["baseline", "plugin"]
VARIANTS: Final[tuple[Variant, Variant]] = ("baseline", "plugin")


# --- scenarios ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """One shape of write transaction. ``key_prefix`` must be unique per scenario: the
    sanity check matches each ``<key_prefix>:<room_id>`` version to that scenario's rows."""

    name: str
    description: str
    rooms: int                      # distinct room ids (hence room keys) rows spread over
    rows_per_commit: int = 1        # > 1: add_all() of that many rows in one transaction
    key_prefix: str = "room"
    table_key: bool = True          # track(table=...): bump $table:<table> on every write
    row_keys: bool = True           # track(rows=...): bump $row:<table>:<id> per row

    @property
    def slug(self) -> str:
        return self.name.replace("-", "_")

    def pick_room(self, rng: random.Random) -> int:
        return rng.randrange(1, self.rooms + 1)


SCENARIOS: Final[dict[str, Scenario]] = {
    s.name: s
    for s in (
        Scenario(
            name="spread",
            description="1 row per commit, room keys spread over 1,000 rooms",
            rooms=1000,
        ),
        # Opt-in (--scenarios): the same writes without the $table:<table> key, which every
        # commit of "spread" bumps, i.e. one hot row all writers queue on through COMMIT.
        Scenario(
            name="spread-no-table-key",
            description="as spread, tracked with table=False (no hot $table key)",
            rooms=1000,
            key_prefix="room-nt",
            table_key=False,
        ),
    )
}
assert len({s.key_prefix for s in SCENARIOS.values()}) == len(SCENARIOS), "key_prefix clash"


# --- measurement ----------------------------------------------------------------------------

def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (``q`` in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(slots=True)
class RoundResult:
    variant: Variant
    commits: int
    rows: int
    elapsed: float
    latencies: list[float]  # seconds, one per commit, sorted

    @property
    def tps(self) -> float:
        return self.commits / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies, 50) * 1000

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies, 99) * 1000


@dataclass(slots=True)
class Totals:
    """Every commit made per variant, warm-up included (what the sanity check expects)."""

    commits: dict[Variant, int] = field(default_factory=lambda: dict.fromkeys(VARIANTS, 0))
    rows: dict[Variant, int] = field(default_factory=lambda: dict.fromkeys(VARIANTS, 0))

    def add(self, result: RoundResult) -> None:
        self.commits[result.variant] += result.commits
        self.rows[result.variant] += result.rows


class SanityError(AssertionError):
    pass


class Writer(Protocol):
    def transaction(self) -> int:
        """Run one whole write transaction; return the rows it wrote."""

    def close(self) -> None: ...


class Target(Protocol):
    """One ORM under test. ``activate`` switches the plugin on or off for a variant."""

    orm: str

    def activate(self, variant: Variant) -> None: ...

    def writer(self, scenario: Scenario, variant: Variant, rng: random.Random) -> Writer: ...

    def check(self, scenario: Scenario, totals: Totals) -> list[str]: ...

    def close(self) -> None: ...


def run_round(target: Target, scenario: Scenario, variant: Variant, writers: int,
              duration: float, seed: int) -> RoundResult:
    """``writers`` threads, each with its own session, committing until ``duration`` is up."""
    target.activate(variant)
    start_box: list[float] = []

    def set_start() -> None:
        start_box.append(time.perf_counter())

    barrier = threading.Barrier(writers + 1, action=set_start)
    stop = threading.Event()
    latencies: list[list[float]] = [[] for _ in range(writers)]
    rows = [0] * writers
    finished = [0.0] * writers
    errors: list[BaseException] = []

    def work(idx: int) -> None:
        lat = latencies[idx]
        writer: Writer | None = None
        try:
            writer = target.writer(scenario, variant, random.Random(seed * 1009 + idx))
            barrier.wait()
            deadline = start_box[0] + duration
            written = 0
            clock = time.perf_counter
            while not stop.is_set():
                t0 = clock()
                if t0 >= deadline:
                    break
                written += writer.transaction()
                lat.append(clock() - t0)
            rows[idx] = written
        except threading.BrokenBarrierError:
            pass
        except BaseException as exc:
            errors.append(exc)
            stop.set()
            barrier.abort()
        finally:
            finished[idx] = time.perf_counter()
            if writer is not None:
                writer.close()

    threads = [threading.Thread(target=work, args=(i,), name=f"writer-{i}", daemon=True)
               for i in range(writers)]
    for t in threads:
        t.start()
    try:
        barrier.wait()
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    except threading.BrokenBarrierError:
        for t in threads:
            t.join()
    except BaseException:
        stop.set()
        barrier.abort()
        for t in threads:
            t.join()
        raise
    if errors:
        raise RuntimeError(f"a {variant} writer failed: {errors[0]!r}") from errors[0]
    merged = sorted(x for lat in latencies for x in lat)
    return RoundResult(variant=variant, commits=len(merged), rows=sum(rows),
                       elapsed=max(finished) - start_box[0], latencies=merged)


# --- SQLAlchemy -----------------------------------------------------------------------------

class _Base(DeclarativeBase):
    pass


class _OrderColumns:
    """The columns both the tracked and the baseline table have, identically."""

    id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    room_id: Mapped[int] = mapped_column(index=True)
    customer_id: Mapped[int]
    amount_cents: Mapped[int]
    note: Mapped[str] = mapped_column(sa.String(64))


class _SqlAlchemyWriter:
    def __init__(self, session: Session, model: type[Any], scenario: Scenario,
                 rng: random.Random) -> None:
        self.session = session
        self.model = model
        self.scenario = scenario
        self.rng = rng

    def transaction(self) -> int:
        rng, scenario, session = self.rng, self.scenario, self.session
        n = scenario.rows_per_commit
        for _ in range(n):
            session.add(self.model(
                room_id=scenario.pick_room(rng), customer_id=rng.randrange(1, 100_000),
                amount_cents=rng.randrange(100, 100_000), note="bench order",
            ))
        session.commit()
        return n

    def close(self) -> None:
        self.session.close()


def check_versions(engine: Engine, scenario: Scenario, totals: Totals, tracked: str,
                   baseline: str, key_prefix: str) -> list[str]:
    """What the plugin's commits must have left in the version table (any ORM)."""
    # Writers only append to the log; fold it so the counts below sit in one table.
    folder = DBAPIReader.from_url(engine.url.render_as_string(hide_password=False),
                                  fold_threshold=None)
    try:
        folder.fold()
    finally:
        folder.close()
    commits, rows = totals.commits["plugin"], totals.rows["plugin"]
    prefix = f"{key_prefix}:"
    row_prefix = f"{ROW_PREFIX}{tracked}:"
    q = sa.text
    lines: list[str] = []
    failures: list[str] = []

    def expect(ok: bool, text: str) -> None:
        lines.append(f"{'ok  ' if ok else 'FAIL'} {text}")
        if not ok:
            failures.append(text)

    with engine.connect() as conn:
        def one(sql: str, **params: Any) -> Any:
            return conn.execute(q(sql), params).one()

        (n_tracked,) = one(f"SELECT count(*) FROM {tracked}")
        expect(n_tracked == rows,
               f"{tracked}: {n_tracked} rows, {rows} written in {commits} plugin commits")
        table_version = conn.execute(
            q(f"SELECT version FROM {VERSIONS_TABLE} WHERE key_name = :k"),
            {"k": f"{TABLE_PREFIX}{tracked}"},
        ).scalar()
        if scenario.table_key:
            expect(table_version == commits,
                   f"{TABLE_PREFIX}{tracked} version {table_version} (expected {commits}, "
                   "one per plugin commit)")
        else:
            expect(table_version is None, f"{TABLE_PREFIX}{tracked} never bumped "
                   f"(table=False), found version {table_version}")
        n_row_keys, max_row_version = one(
            f"SELECT count(*), max(version) FROM {VERSIONS_TABLE} "
            "WHERE starts_with(key_name, :p)", p=row_prefix)
        if scenario.row_keys:
            expect(n_row_keys == rows and (rows == 0 or max_row_version == 1),
                   f"{n_row_keys} {row_prefix}<id> keys, each at version "
                   f"{max_row_version} (expected {rows}, each at 1)")
        else:
            expect(n_row_keys == 0, f"{n_row_keys} {row_prefix}<id> keys (rows=False)")
        n_room_keys, room_sum = one(
            f"SELECT count(*), coalesce(sum(version), 0) FROM {VERSIONS_TABLE} "
            "WHERE starts_with(key_name, :p)", p=prefix)
        (room_mismatch,) = one(
            f"SELECT count(*) FROM (SELECT room_id, count(*) AS n FROM {tracked} "
            "GROUP BY room_id) o FULL JOIN (SELECT substr(key_name, :n)::bigint AS room_id, "
            f"version FROM {VERSIONS_TABLE} WHERE starts_with(key_name, :p)) v "
            "ON o.room_id = v.room_id WHERE o.n IS DISTINCT FROM v.version",
            n=len(prefix) + 1, p=prefix)
        expect(room_sum == rows and room_mismatch == 0,
               f"{n_room_keys} {prefix}<room> keys, versions sum to {room_sum}; "
               f"rooms whose version != their row count: {room_mismatch}")
        (n_base,) = one(f"SELECT count(*) FROM {baseline}")
        (base_keys,) = one(
            f"SELECT count(*) FROM {VERSIONS_TABLE} WHERE strpos(key_name, :t) > 0",
            t=baseline)
        expect(n_base == totals.rows["baseline"] and base_keys == 0,
               f"{baseline}: {n_base} rows from {totals.commits['baseline']} baseline "
               f"commits, {base_keys} keys bumped for it (expected 0)")
        (n_esc,) = one(f"SELECT count(*) FROM {VERSIONS_TABLE} "
                       "WHERE starts_with(key_name, :p)", p=ESCALATION_PREFIX)
        expect(n_esc == 0, f"{n_esc} escalation markers (plain inserts must not escalate)")
    if failures:
        raise SanityError("\n".join(lines))
    return lines


class SqlAlchemyTarget:
    """The SQLAlchemy 2.x plugin: ``install``/``uninstall`` on one sessionmaker."""

    orm = "sqlalchemy"

    def __init__(self, url: URL, scenarios: Sequence[Scenario], pool_size: int) -> None:
        self.engine: Engine = sa.create_engine(url, pool_size=pool_size, max_overflow=0)
        self.sessions = sessionmaker(self.engine)
        self.models: dict[str, dict[Variant, type[Any]]] = {}
        for sc in scenarios:
            tracked = type(f"Order_{sc.slug}", (_OrderColumns, _Base),
                           {"__tablename__": f"bench_{sc.slug}_orders"})
            reality.track(tracked, table=sc.table_key, rows=sc.row_keys,
                          keys=[f"{sc.key_prefix}:{{room_id}}"])
            baseline = type(f"BaselineOrder_{sc.slug}", (_OrderColumns, _Base),
                            {"__tablename__": f"bench_{sc.slug}_baseline"})
            self.models[sc.name] = {"plugin": tracked, "baseline": baseline}
        _Base.metadata.create_all(self.engine)
        reality.create_tables(self.engine)

    def activate(self, variant: Variant) -> None:
        if variant == "plugin":
            reality.install(self.sessions)
        else:
            reality.uninstall(self.sessions)
            if reality.installed():
                raise SanityError(f"baseline needs no plugin, found {reality.installed()}")

    def writer(self, scenario: Scenario, variant: Variant, rng: random.Random) -> Writer:
        return _SqlAlchemyWriter(self.sessions(), self.models[scenario.name][variant],
                                 scenario, rng)

    def check(self, scenario: Scenario, totals: Totals) -> list[str]:
        models = self.models[scenario.name]
        return check_versions(self.engine, scenario, totals, models["plugin"].__tablename__,
                              models["baseline"].__tablename__, scenario.key_prefix)

    def close(self) -> None:
        reality.uninstall(self.sessions)
        self.engine.dispose()


# --- Tortoise ORM ---------------------------------------------------------------------------

class _TortoiseLoop:
    """Tortoise on an event loop of its own, in one thread. Each writer thread's transaction
    runs there as an asyncio task (all concurrently, as in an async web app; the context is
    global, as ``register_tortoise`` makes it for FastAPI). The hand-off from a writer thread
    to the loop costs both variants the same."""

    def __init__(self, config: dict[str, Any]) -> None:
        import asyncio

        self._asyncio = asyncio
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="tortoise-loop",
                                        daemon=True)
        self._thread.start()
        self.call(self._init(config))

    async def _init(self, config: dict[str, Any]) -> None:
        from tortoise import Tortoise

        self.context = await Tortoise.init(config=config, _enable_global_fallback=True)
        await self.context.generate_schemas()  # Reality's tables too, on its connection

    def call(self, coro: Any) -> Any:
        return self._asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.call(self.context.close_connections())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class _TortoiseWriter:
    def __init__(self, target: TortoiseTarget, model: Any, connection: str, scenario: Scenario,
                 rng: random.Random) -> None:
        self.target = target
        self.model = model
        self.connection = connection
        self.scenario = scenario
        self.rng = rng

    async def _write(self) -> int:
        from tortoise.transactions import in_transaction

        rng, scenario, n = self.rng, self.scenario, self.scenario.rows_per_commit
        rows = [{"room_id": scenario.pick_room(rng), "customer_id": rng.randrange(1, 100_000),
                 "amount_cents": rng.randrange(100, 100_000), "note": "bench order"}
                for _ in range(n)]
        if self.target.autocommit and n == 1:
            await self.model.create(**rows[0])  # no transaction of the app's own
            return n
        async with in_transaction(self.connection):
            for values in rows:
                await self.model.create(**values)
        return n

    def transaction(self) -> int:
        written: int = self.target.tortoise.call(self._write())
        return written

    def close(self) -> None:
        pass


class TortoiseTarget:
    """The Tortoise ORM plugin: the tracked model on a connection whose engine
    ``reality_tortoise.install`` chose, the baseline model on the same database through
    Tortoise's own engine (an application without Reality). ``driver`` is asyncpg or psycopg;
    ``autocommit`` writes each single row with a bare ``Model.create()`` (the plugin then wraps
    it in a transaction of its own, with its bump) instead of ``in_transaction()``."""

    def __init__(self, url: URL, scenarios: Sequence[Scenario], pool_size: int, *,
                 driver: str = "asyncpg", autocommit: bool = False) -> None:
        import types

        from tortoise import fields
        from tortoise.models import Model

        import reality_tortoise

        self.orm = "tortoise" + (f"-{driver}" if driver != "asyncpg" else "") + (
            "-autocommit" if autocommit else "")
        self.autocommit = autocommit
        self.tag = self.orm.replace("-", "_")
        self.engine: Engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        self.models: dict[str, dict[Variant, Any]] = {}
        # Tortoise finds models by module name: two modules made here for the purpose.
        modules = {v: types.ModuleType(f"_bench_{self.tag}_{v}") for v in VARIANTS}
        sys.modules.update({m.__name__: m for m in modules.values()})
        for sc in scenarios:
            for variant in VARIANTS:
                meta: dict[str, Any] = {"table": f"bench_{self.tag}_{sc.slug}_{variant}"}
                if variant == "plugin":
                    meta["reality"] = reality_tortoise.Track(
                        table=sc.table_key, rows=sc.row_keys,
                        keys=[f"{self.key_prefix(sc)}:{{room_id}}"])
                model = type(f"{variant.title()}Order_{sc.slug}", (Model,), {
                    "__module__": modules[variant].__name__,
                    "id": fields.BigIntField(primary_key=True),
                    "room_id": fields.IntField(db_index=True),
                    "customer_id": fields.IntField(),
                    "amount_cents": fields.IntField(),
                    "note": fields.CharField(max_length=64),
                    "Meta": type("Meta", (), meta),
                })
                setattr(modules[variant], model.__name__, model)
                self.models.setdefault(sc.name, {})[variant] = model
        plain = reality_tortoise.connection_config(
            str(url.set(drivername=f"postgresql+{driver}").render_as_string(hide_password=False)))
        plain["credentials"].update(minsize=1, maxsize=pool_size)
        config = {
            "connections": {"plain": reality_tortoise.uninstall(
                                {"connections": {"plain": plain}})["connections"]["plain"],
                            "reality": plain},
            "apps": {v: {"models": [modules[v].__name__],
                         "default_connection": "reality" if v == "plugin" else "plain"}
                     for v in VARIANTS},
        }
        self.connections: dict[Variant, str] = {"baseline": "plain", "plugin": "reality"}
        self.tortoise = _TortoiseLoop(config)

    def key_prefix(self, scenario: Scenario) -> str:
        return f"{scenario.key_prefix}-{self.tag}"

    def activate(self, variant: Variant) -> None:
        pass  # both variants are always there: two connections, one with the plugin

    def writer(self, scenario: Scenario, variant: Variant, rng: random.Random) -> Writer:
        return _TortoiseWriter(self, self.models[scenario.name][variant],
                               self.connections[variant], scenario, rng)

    def check(self, scenario: Scenario, totals: Totals) -> list[str]:
        models = self.models[scenario.name]
        return check_versions(self.engine, scenario, totals, models["plugin"]._meta.db_table,
                              models["baseline"]._meta.db_table, self.key_prefix(scenario))

    def close(self) -> None:
        self.tortoise.close()
        self.engine.dispose()


# --- peewee ---------------------------------------------------------------------------------

class _PeeweeWriter:
    def __init__(self, target: PeeweeTarget, model: Any, scenario: Scenario,
                 rng: random.Random) -> None:
        self.target = target
        self.model = model
        self.scenario = scenario
        self.rng = rng

    def transaction(self) -> int:
        rng, scenario, n = self.rng, self.scenario, self.scenario.rows_per_commit
        rows = [{"room_id": scenario.pick_room(rng), "customer_id": rng.randrange(1, 100_000),
                 "amount_cents": rng.randrange(100, 100_000), "note": "bench order"}
                for _ in range(n)]
        if self.target.autocommit and n == 1:
            self.model.create(**rows[0])  # no transaction of the app's own
            return n
        with self.target.db.atomic():
            for values in rows:
                self.model.create(**values)
        return n

    def close(self) -> None:
        self.target.db.close()  # this thread's connection back to the pool


class PeeweeTarget:
    """The peewee plugin: ``install``/``uninstall`` on one ``PooledPostgresqlDatabase`` (each
    writer thread has its connection, as peewee keeps them per thread). ``autocommit`` writes
    each single row with a bare ``Model.create()`` (the plugin then wraps it in a transaction
    of its own, with its bump) instead of ``db.atomic()``."""

    def __init__(self, url: URL, scenarios: Sequence[Scenario], pool_size: int, *,
                 autocommit: bool = False) -> None:
        import peewee
        from playhouse.pool import PooledPostgresqlDatabase

        import reality_peewee

        self.reality = reality_peewee
        self.orm = "peewee" + ("-autocommit" if autocommit else "")
        self.autocommit = autocommit
        self.tag = self.orm.replace("-", "_")
        self.engine: Engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        self.db = PooledPostgresqlDatabase(
            url.database, host=url.host, port=url.port, user=url.username,
            password=url.password, max_connections=pool_size)
        self.models: dict[str, dict[Variant, Any]] = {}
        for sc in scenarios:
            for variant in VARIANTS:
                meta = type("Meta", (), {"database": self.db,
                                         "table_name": f"bench_{self.tag}_{sc.slug}_{variant}"})
                model = type(f"{variant.title()}Order_{self.tag}_{sc.slug}", (peewee.Model,), {
                    "id": peewee.BigAutoField(),
                    "room_id": peewee.IntegerField(index=True),
                    "customer_id": peewee.IntegerField(),
                    "amount_cents": peewee.IntegerField(),
                    "note": peewee.CharField(max_length=64),
                    "Meta": meta,
                })
                if variant == "plugin":
                    reality_peewee.track(model, table=sc.table_key, rows=sc.row_keys,
                                         keys=[f"{self.key_prefix(sc)}:{{room_id}}"])
                self.models.setdefault(sc.name, {})[variant] = model
        with self.db.connection_context():
            self.db.create_tables([m for pair in self.models.values() for m in pair.values()])
        reality_peewee.create_tables(self.db)
        self.db.close()

    def key_prefix(self, scenario: Scenario) -> str:
        return f"{scenario.key_prefix}-{self.tag}"

    def activate(self, variant: Variant) -> None:
        if variant == "plugin":
            self.reality.install(self.db)
        else:
            self.reality.uninstall(self.db)
            if self.reality.installed():
                raise SanityError(f"baseline needs no plugin, found {self.reality.installed()}")

    def writer(self, scenario: Scenario, variant: Variant, rng: random.Random) -> Writer:
        return _PeeweeWriter(self, self.models[scenario.name][variant], scenario, rng)

    def check(self, scenario: Scenario, totals: Totals) -> list[str]:
        models = self.models[scenario.name]
        return check_versions(self.engine, scenario, totals,
                              models["plugin"]._meta.table_name,
                              models["baseline"]._meta.table_name, self.key_prefix(scenario))

    def close(self) -> None:
        self.reality.uninstall(self.db)
        self.db.close_all()
        self.engine.dispose()


ORMS: Final[dict[str, Callable[[URL, Sequence[Scenario], int], Target]]] = {
    "sqlalchemy": SqlAlchemyTarget,
    "tortoise": TortoiseTarget,
    "tortoise-psycopg": lambda url, sc, pool: TortoiseTarget(url, sc, pool, driver="psycopg"),
    "tortoise-autocommit": lambda url, sc, pool: TortoiseTarget(url, sc, pool, autocommit=True),
    "peewee": PeeweeTarget,
    "peewee-autocommit": lambda url, sc, pool: PeeweeTarget(url, sc, pool, autocommit=True),
}


# --- database lifecycle ---------------------------------------------------------------------

def server_url(raw: str) -> URL:
    url = make_url(raw)
    if url.get_backend_name() != "postgresql":
        raise SystemExit(f"write_path needs PostgreSQL, got {url.render_as_string()}")
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return url


def server_settings(url: URL) -> dict[str, str]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return {name: str(conn.exec_driver_sql(f"SHOW {name}").scalar())
                    for name in ("fsync", "synchronous_commit", "server_version",
                                 "max_connections")}
    finally:
        engine.dispose()


def create_database(url: URL) -> tuple[URL, Callable[[], None]]:
    name = f"reality_bench_{secrets.token_hex(4)}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with admin.connect() as conn:
            try:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except sa.exc.ProgrammingError:  # PostgreSQL < 13
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
        admin.dispose()

    return url.set(database=name), drop


# --- driver ---------------------------------------------------------------------------------

@dataclass(slots=True)
class CaseResult:
    orm: str
    scenario: str
    writers: int
    rounds: dict[Variant, list[RoundResult]] = field(
        default_factory=lambda: {v: [] for v in VARIANTS})

    def median(self, variant: Variant, attr: str) -> float:
        return float(statistics.median(getattr(r, attr) for r in self.rounds[variant]))

    def paired_ratios(self) -> list[float]:
        return [p.tps / b.tps for b, p in zip(self.rounds["baseline"], self.rounds["plugin"],
                                               strict=True) if b.tps > 0]

    def as_json(self) -> dict[str, Any]:
        base_tps, tps = self.median("baseline", "tps"), self.median("plugin", "tps")
        base_p99, p99 = self.median("baseline", "p99_ms"), self.median("plugin", "p99_ms")
        paired = self.paired_ratios()
        return {
            "orm": self.orm, "scenario": self.scenario, "writers": self.writers,
            "baseline_tps": round(base_tps, 1), "plugin_tps": round(tps, 1),
            "ratio": round(tps / base_tps, 3) if base_tps else None,
            "baseline_p99_ms": round(base_p99, 3), "p99_ms": round(p99, 3),
            "baseline_p50_ms": round(self.median("baseline", "p50_ms"), 3),
            "p50_ms": round(self.median("plugin", "p50_ms"), 3),
            "p99_ratio": round(p99 / base_p99, 3) if base_p99 else None,
            "round_ratio_min": round(min(paired), 3) if paired else None,
            "round_ratio_max": round(max(paired), 3) if paired else None,
            "rounds": len(self.rounds["plugin"]),
        }


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # not on every platform
        return None


def source_revision() -> dict[str, Any] | None:
    """The checkout measured: HEAD and whether the working tree differs from it."""
    try:
        def git(*cmd: str) -> str:
            return subprocess.run(["git", *cmd], cwd=_ROOT, capture_output=True, text=True,
                                  check=True, timeout=10).stdout.strip()

        return {"commit": git("rev-parse", "HEAD"),
                "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return None


def say(text: str = "") -> None:
    print(text, flush=True)


def fmt_round(r: RoundResult) -> str:
    return (f"{r.variant:<8} {r.tps:9.1f} commits/s  p50 {r.p50_ms:7.2f} ms  "
            f"p99 {r.p99_ms:7.2f} ms  ({r.commits} commits)")


def summary_table(cases: Sequence[CaseResult]) -> str:
    def num(value: Any, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    head = ["orm", "scenario", "writers", "base tps", "plugin tps", "ratio", "round ratios",
            "base p50", "p50", "base p99", "p99", "p99 x"]
    rows = [head]
    for case in cases:
        j = case.as_json()
        rows.append([
            case.orm, case.scenario, str(case.writers), num(j["baseline_tps"], 1),
            num(j["plugin_tps"], 1), num(j["ratio"], 3),
            f"{num(j['round_ratio_min'], 2)}..{num(j['round_ratio_max'], 2)}",
            num(j["baseline_p50_ms"], 2), num(j["p50_ms"], 2), num(j["baseline_p99_ms"], 2),
            num(j["p99_ms"], 2), num(j["p99_ratio"], 2),
        ])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    out = [line(head), "-" * len(line(head))] + [line(r) for r in rows[1:]]
    out.append("tps: commits/s; p50/p99: latency of the whole transaction, ms; medians across "
               "rounds; ratio = plugin/baseline tps;\nround ratios: min..max of the per-round "
               "paired tps ratios; p99 x = plugin p99 / baseline p99")
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true",
                   help="short rounds (2 s x 3 rounds); well under 2 minutes in total")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds per measured round and variant (default 10, --quick 2)")
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds per case; each runs both variants (default 5, --quick 3)")
    p.add_argument("--writers", default="1,8",
                   help="comma-separated writer-thread counts (default 1,8)")
    p.add_argument("--scenarios", default="spread",
                   help=f"comma-separated, from: {', '.join(SCENARIOS)} (default spread)")
    p.add_argument("--orms", default="sqlalchemy",
                   help=f"comma-separated, from: {', '.join(ORMS)} (default sqlalchemy)")
    p.add_argument("--database-url", default=os.environ.get(URL_ENV, DEFAULT_URL),
                   help=f"a PostgreSQL server URL; a fresh database is created on it and "
                        f"dropped at the end (default ${URL_ENV} or {DEFAULT_URL})")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    args.duration = args.duration if args.duration is not None else (2.0 if args.quick else 10.0)
    args.rounds = args.rounds if args.rounds is not None else (3 if args.quick else 5)
    try:
        args.writer_counts = [int(w) for w in args.writers.split(",") if w.strip()]
    except ValueError:
        p.error(f"--writers takes integers like 1,8; got {args.writers!r}")
    if not args.writer_counts or min(args.writer_counts) < 1:
        p.error("--writers needs at least one count >= 1")
    if args.duration <= 0 or args.rounds < 1:
        p.error("--duration must be > 0 and --rounds >= 1")
    args.scenario_list = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    args.orm_list = [o.strip() for o in args.orms.split(",") if o.strip()]
    for s in args.scenario_list:
        if s not in SCENARIOS:
            p.error(f"unknown scenario {s!r}; known: {', '.join(SCENARIOS)}")
    for o in args.orm_list:
        if o not in ORMS:
            p.error(f"unknown ORM {o!r}; known: {', '.join(ORMS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    url = server_url(args.database_url)
    settings = server_settings(url)
    fsync, sync_commit = settings["fsync"], settings["synchronous_commit"]
    scenarios = [SCENARIOS[s] for s in args.scenario_list]
    warmup = min(1.0, args.duration / 2)

    say(f"write_path: PostgreSQL {settings['server_version']} at "
        f"{url.render_as_string(hide_password=True)}; fsync={fsync}, "
        f"synchronous_commit={sync_commit}")
    say(f"python {platform.python_version()}, SQLAlchemy {sa.__version__}, "
        f"{os.cpu_count()} CPUs; writers {args.writer_counts}, {args.rounds} rounds x "
        f"{args.duration:g} s per variant, warm-up {warmup:g} s")
    load_start = load_average()
    say(f"load average at start: {load_start} (other processes on this machine add noise)")
    warnings: list[str] = []
    if fsync != "on":
        warnings.append(f"fsync is {fsync!r} on this server: commits do not reach the disk, "
                        "the figures below are NOT representative of a production database")
    if sync_commit != "on":
        warnings.append(f"synchronous_commit is {sync_commit!r}: commits do not wait for the "
                        "WAL flush, figures are not representative")
    for w in warnings:
        banner = "!" * 100
        say(banner)
        say(f"!!! WARNING: {w}")
        say(banner)
        print(f"WARNING: {w}", file=sys.stderr, flush=True)

    db_url, drop = create_database(url)
    say(f"database {db_url.database} created (dropped at the end)")
    cases: list[CaseResult] = []
    sanity_ok = True
    started = time.perf_counter()
    try:
        for orm in args.orm_list:
            target = ORMS[orm](db_url, scenarios, max(args.writer_counts))
            try:
                for scenario in scenarios:
                    totals = Totals()
                    for writers in args.writer_counts:
                        case = CaseResult(orm, scenario.name, writers)
                        say(f"\n== {orm} / {scenario.name} ({scenario.description}) / "
                            f"{writers} writer(s)")
                        for variant in VARIANTS:  # warm-up: pool, prepared statements, caches
                            totals.add(run_round(target, scenario, variant, writers, warmup,
                                                 args.seed))
                        for rnd in range(args.rounds):
                            order = VARIANTS if rnd % 2 == 0 else VARIANTS[::-1]
                            for variant in order:
                                r = run_round(target, scenario, variant, writers,
                                              args.duration, args.seed + 7919 * (rnd + 1))
                                totals.add(r)
                                case.rounds[variant].append(r)
                                say(f"  round {rnd + 1}/{args.rounds} {fmt_round(r)}")
                        cases.append(case)
                        try:
                            lines = target.check(scenario, totals)
                        except SanityError as exc:
                            sanity_ok = False
                            lines = str(exc).splitlines()
                        say(f"  sanity after {writers} writer(s), cumulative:")
                        for line in lines:
                            say(f"    {line}")
            finally:
                target.close()
    finally:
        drop()

    load_end = load_average()
    say(f"\n== results ({time.perf_counter() - started:.0f} s; fsync={fsync}, "
        f"synchronous_commit={sync_commit}; load average {load_start} -> {load_end})")
    say(summary_table(cases))
    for w in warnings:
        say(f"!!! WARNING: {w}")
    if not sanity_ok:
        say("!!! SANITY CHECK FAILED: the plugin did not bump what was committed (see above)")
    out: dict[str, Any] = {
        "bench": "write_path",
        "fsync": fsync,
        "synchronous_commit": sync_commit,
        "server_version": settings["server_version"],
        "sqlalchemy": sa.__version__,
        "cpus": os.cpu_count(),
        "duration_s": args.duration,
        "rounds": args.rounds,
        "quick": args.quick,
        "source": source_revision(),
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "sanity": "ok" if sanity_ok else "FAILED",
        "warnings": warnings,
        "results": [c.as_json() for c in cases],
    }
    print(json.dumps(out, ensure_ascii=False), flush=True)
    return 0 if sanity_ok else 1


if __name__ == "__main__":
    sys.exit(main())
