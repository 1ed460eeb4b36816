#!/usr/bin/env python3
"""Write-path benchmark: what Reality's bump costs an application's own transactions.

Everything issue 5 asks, side by side in one run (DESIGN.md §10), on PostgreSQL with fsync on:

* **throughput** scenarios (``SCENARIOS``): the same ORM transaction (insert one row, commit)
  with and without the plugin, 1/8/32 concurrent writers. ``spread``: room keys over 1,000
  rooms (G1: >= 90 % of the baseline at 8 writers); ``hot``: a table tracked with only its
  table key, so every commit bumps the one hot key ``$table:<t>`` (G2: >= 85 % and p99 <=
  1.5x the baseline's at 32 writers, no deadlock, no serialization failure);
* **bulk**: a 100,000-row UPDATE through each ORM's bulk path (SQLAlchemy
  ``session.execute(update(M).where(...).values(...))``, peewee ``M.update().where()``,
  Tortoise ``M.filter().update()``) on a pre-filled table, and a 10,000-row insert
  (SQLAlchemy ``add_all`` + ``commit``: the unit of work; peewee ``insert_many``; Tortoise
  ``bulk_create``), timed with and without the plugin (goal: UPDATE <= 1.2x), with the number
  of log rows each plugin commit appended (max_keys escalation keeps it small);
* **storage**: the size of ``reality_log`` + ``reality_versions`` (tables and indexes) against
  the number of keys after the run, and, in the full form, 1,000,000 commits over 1,000 keys
  (raw bumps from ``bump_statements``) with a folder running, in a database of their own.

A fresh database ``reality_bench_<hex>`` is created on the server and dropped at the end.
*Baseline* tables are not tracked and run with the plugin **uninstalled** (no listener at all:
an application without Reality); *plugin* tables are tracked and run with the plugin
installed. During every plugin round a real folder runs, as a deployment would
(``Folder(DBAPIReader.from_url(url), interval=1.0)``, in a process of its own as in ``reality
serve``), so the cost measured includes folding; the folder's own CPU time is reported.
Rounds alternate the order of the two variants (AB BA AB ...) to cancel machine drift; the
figures are medians across rounds. Deadlocks (40P01) and serialization failures (40001) are
counted, not retried blindly: the transaction is rolled back and the writer goes on. After the
plugin rounds the versions are checked against the commits counted (after folding): a
benchmark of a plugin that silently bumps nothing is worthless.

    python bench/write_path.py --quick            # goal cases only, ~80 s (must stay < 2 min)
    python bench/write_path.py                    # 1/8/32 writers, bulk, storage (~10 min)
    python bench/write_path.py --scenarios spread --writers 8 --orms sqlalchemy
    python bench/write_path.py --quick --storage  # add the 1M-commit storage run

Writers: threads for the synchronous ORMs (each with its own session/connection), asyncio
tasks on one event loop for Tortoise (as in an async web app). Tortoise ORM (``tortoise`` on
asyncpg, ``tortoise-psycopg``): the baseline model sits on a connection with Tortoise's own
engine, the tracked one on a Reality engine. ``*-autocommit`` writes each row with a bare
``Model.create()``, as many apps do (the plugin then adds a transaction of its own).

Extending: add a row to ``SCENARIOS`` (its own ``key_prefix``) or an entry to ``ORMS`` (a
class following the ``Target`` protocol). The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
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
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Protocol, TypeVar

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # run from a source checkout without installing
    sys.path.insert(0, str(_ROOT))

import sqlalchemy as sa  # noqa: E402
from sqlalchemy.engine import URL, Engine, make_url  # noqa: E402
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker  # noqa: E402

import reality_sqlalchemy as reality  # noqa: E402
from reality_core.folding import Folder  # noqa: E402
from reality_core.keys import ESCALATION_PREFIX, ROW_PREFIX, TABLE_PREFIX  # noqa: E402
from reality_core.reader import DBAPIReader  # noqa: E402
from reality_core.store import (  # noqa: E402
    LOG_TABLE,
    VERSIONS_TABLE,
    bump_statements,
    create_table_statements,
    insert_epoch_statement,
)

DEFAULT_URL: Final = "postgresql://postgres@127.0.0.1:5432/postgres"
URL_ENV: Final = "REALITY_BENCH_DATABASE_URL"
Variant = Literal["baseline", "plugin"]
VARIANTS: Final[tuple[Variant, Variant]] = ("baseline", "plugin")
#: SQLSTATEs counted (and required to stay at zero) instead of failing the run.
CONFLICTS: Final[dict[str, str]] = {"40P01": "deadlocks", "40001": "serialization_failures"}
DEFAULT_ORMS: Final = "sqlalchemy,tortoise,peewee"
BULK: Final = "bulk"
STORAGE: Final = "storage"
#: The issue's "small multiple of what 1,000 keys need", as this bench reads it.
STORAGE_MULTIPLE: Final = 4.0
FOLD_INTERVAL: Final = 1.0
_T = TypeVar("_T")


# --- scenarios ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """One shape of write transaction. ``key_prefix`` must be unique per scenario: the
    sanity check matches each ``<key_prefix>:<room_id>`` version to that scenario's rows."""

    name: str
    description: str
    rooms: int                      # distinct room ids rows spread over
    rows_per_commit: int = 1        # > 1: that many rows in one transaction
    key_prefix: str = "room"
    table_key: bool = True          # track(table=...): bump $table:<table> on every write
    row_keys: bool = True           # track(rows=...): bump $row:<table>:<id> per row
    room_keys: bool = True          # the template <key_prefix>:{room_id}
    quick_writers: tuple[int, ...] = (8,)  # writer counts --quick runs (the goal's)

    @property
    def slug(self) -> str:
        return self.name.replace("-", "_")

    def pick_room(self, rng: random.Random) -> int:
        return rng.randrange(1, self.rooms + 1)

    def templates(self, prefix: str) -> list[str]:
        return [f"{prefix}:{{room_id}}"] if self.room_keys else []


SCENARIOS: Final[dict[str, Scenario]] = {
    s.name: s
    for s in (
        Scenario(
            name="spread",
            description="1 row per commit, row + room keys over 1,000 rooms, + table key",
            rooms=1000,
        ),
        Scenario(
            name="hot",
            description="1 row per commit into one table tracked with its table key only",
            rooms=1000,
            key_prefix="room-hot",
            row_keys=False,
            room_keys=False,
            quick_writers=(32,),
        ),
        # Opt-in (--scenarios): the spread writes without the $table:<table> key.
        Scenario(
            name="spread-no-table-key",
            description="as spread, tracked with table=False (no hot $table key)",
            rooms=1000,
            key_prefix="room-nt",
            table_key=False,
        ),
    )
}
#: The tables of the bulk part, declared like the spread one (table, row and room keys).
BULK_UPDATE: Final = Scenario(name="bulk-update", description="one UPDATE of every row",
                              rooms=1000, key_prefix="room-bu")
BULK_INSERT: Final = Scenario(name="bulk-insert", description="one insert of many rows",
                              rooms=1000, key_prefix="room-bi")
BULK_TABLES: Final = (BULK_UPDATE, BULK_INSERT)
_ALL_PREFIXES = [s.key_prefix for s in (*SCENARIOS.values(), *BULK_TABLES)]
assert len(set(_ALL_PREFIXES)) == len(_ALL_PREFIXES), "key_prefix clash"
DEFAULT_SCENARIOS: Final = ("spread", "hot", BULK, STORAGE)
QUICK_SCENARIOS: Final = ("spread", "hot", BULK)


@dataclass(frozen=True, slots=True)
class Goal:
    """A speed goal of issue 5, checked on the medians of one case."""

    name: str
    scenario: str
    writers: int | None          # None: any
    text: str
    min_ratio: float | None = None
    max_ratio: float | None = None
    max_p99_ratio: float | None = None
    no_conflicts: bool = False

    def check(self, ratio: float | None, p99_ratio: float | None, conflicts: int) -> bool:
        if ratio is None:
            return False
        ok = True
        if self.min_ratio is not None:
            ok &= ratio >= self.min_ratio
        if self.max_ratio is not None:
            ok &= ratio <= self.max_ratio
        if self.max_p99_ratio is not None:
            ok &= p99_ratio is not None and p99_ratio <= self.max_p99_ratio
        if self.no_conflicts:
            ok &= conflicts == 0
        return ok


GOALS: Final = (
    Goal("G1", "spread", 8, "plugin/baseline tps >= 0.90", min_ratio=0.90),
    Goal("G2", "hot", 32, "tps ratio >= 0.85, p99 <= 1.5x, no deadlock/serialization failure",
         min_ratio=0.85, max_p99_ratio=1.5, no_conflicts=True),
    Goal("bulk", "bulk-update", None, "plugin/baseline time <= 1.2", max_ratio=1.2),
)


def goal_for(scenario: str, writers: int) -> Goal | None:
    return next((g for g in GOALS if g.scenario == scenario
                 and g.writers in (None, writers)), None)


# --- measurement ----------------------------------------------------------------------------

def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (``q`` in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def conflict_kind(exc: BaseException) -> str | None:
    """``deadlocks`` / ``serialization_failures`` if a driver error with SQLSTATE 40P01 /
    40001 is anywhere in ``exc``'s chain (ORMs and the plugins wrap driver errors: SQLAlchemy
    in ``.orig``, peewee in ``args[0]``, Reality's WritePathError in ``__cause__``)."""
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        err = stack.pop()
        if not isinstance(err, BaseException) or id(err) in seen:
            continue
        seen.add(id(err))
        state = getattr(err, "sqlstate", None) or getattr(err, "pgcode", None)
        if isinstance(state, str) and state in CONFLICTS:
            return CONFLICTS[state]
        stack.extend((err.__cause__, err.__context__, getattr(err, "orig", None), *err.args))
    return None


@dataclass(slots=True)
class RoundResult:
    variant: Variant
    commits: int
    rows: int
    elapsed: float
    latencies: list[float]  # seconds, one per commit, sorted
    conflicts: Counter[str] = field(default_factory=Counter)
    #: CPU seconds the round took: this process (the ORM and its writers), the PostgreSQL
    #: server's processes (None unless it runs on this machine), the folder's process.
    client_cpu_s: float = 0.0
    server_cpu_s: float | None = None
    folder_cpu_s: float = 0.0

    def cpu_us(self, part: str) -> float | None:
        """CPU microseconds per commit of ``part`` (client, server, folder)."""
        value = getattr(self, f"{part}_cpu_s")
        return value / self.commits * 1e6 if value is not None and self.commits else None

    @property
    def tps(self) -> float:
        return self.commits / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies, 50) * 1000

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies, 99) * 1000


class RoundRecorder:
    """What the writers of one round collect; each writer only touches its own slots."""

    def __init__(self, writers: int) -> None:
        self.latencies: list[list[float]] = [[] for _ in range(writers)]
        self.rows = [0] * writers
        self.finished = [0.0] * writers
        self.conflicts: list[Counter[str]] = [Counter() for _ in range(writers)]
        self.start = 0.0

    def result(self, variant: Variant) -> RoundResult:
        merged = sorted(x for lat in self.latencies for x in lat)
        total: Counter[str] = Counter()
        for c in self.conflicts:
            total.update(c)
        end = max(self.finished) if self.finished else self.start
        return RoundResult(variant=variant, commits=len(merged), rows=sum(self.rows),
                           elapsed=end - self.start, latencies=merged, conflicts=total)


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

    def recover(self) -> None:
        """Clean up after a transaction that failed with a counted conflict."""

    def close(self) -> None: ...


class Target(Protocol):
    """One ORM under test. ``activate`` switches the plugin on or off for a variant."""

    orm: str
    engine: Engine  # untracked: raw SQL, VACUUM, sanity checks
    #: Log rows a bulk plugin commit may append at most (None: no bound is promised).
    bulk_bump_bound: dict[str, int] | None

    def activate(self, variant: Variant) -> None: ...

    def run_round(self, scenario: Scenario, variant: Variant, writers: int, duration: float,
                  seed: int) -> RoundResult: ...

    def check(self, scenario: Scenario, totals: Totals) -> list[str]: ...

    def table(self, scenario: Scenario, variant: Variant) -> str: ...

    def key_prefix(self, scenario: Scenario) -> str: ...

    def bulk_update(self, variant: Variant, rows: int) -> None: ...

    def bulk_insert(self, variant: Variant, rows: list[dict[str, Any]]) -> None: ...

    #: create_triggers() ran: raw SQL on plugin tables (the bulk prefill) bumps too.
    triggers: bool

    def create_triggers(self) -> None:
        """Trigger mode: the plugin tables get their database triggers."""

    def close(self) -> None: ...


def run_threaded_round(make_writer: Callable[[random.Random], Writer], variant: Variant,
                       writers: int, duration: float, seed: int) -> RoundResult:
    """``writers`` threads, each with its own writer, committing until ``duration`` is up."""
    rec = RoundRecorder(writers)

    def set_start() -> None:
        rec.start = time.perf_counter()

    barrier = threading.Barrier(writers + 1, action=set_start)
    stop = threading.Event()
    errors: list[BaseException] = []

    def work(idx: int) -> None:
        lat, conflicts = rec.latencies[idx], rec.conflicts[idx]
        writer: Writer | None = None
        try:
            writer = make_writer(random.Random(seed * 1009 + idx))
            barrier.wait()
            deadline = rec.start + duration
            written = 0
            clock = time.perf_counter
            while not stop.is_set():
                t0 = clock()
                if t0 >= deadline:
                    break
                try:
                    written += writer.transaction()
                except Exception as exc:
                    kind = conflict_kind(exc)
                    if kind is None:
                        raise
                    conflicts[kind] += 1
                    writer.recover()
                    continue
                lat.append(clock() - t0)
            rec.rows[idx] = written
        except threading.BrokenBarrierError:
            pass
        except BaseException as exc:
            errors.append(exc)
            stop.set()
            barrier.abort()
        finally:
            rec.finished[idx] = time.perf_counter()
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
    return rec.result(variant)


async def run_async_round(write: Callable[[random.Random], Awaitable[int]], variant: Variant,
                          writers: int, duration: float, seed: int) -> RoundResult:
    """``writers`` asyncio tasks on the running loop, committing until ``duration`` is up."""
    rec = RoundRecorder(writers)
    go = asyncio.Event()
    clock = time.perf_counter

    async def work(idx: int) -> None:
        lat, conflicts = rec.latencies[idx], rec.conflicts[idx]
        rng = random.Random(seed * 1009 + idx)
        await go.wait()
        deadline = rec.start + duration
        written = 0
        try:
            while True:
                t0 = clock()
                if t0 >= deadline:
                    break
                try:
                    written += await write(rng)
                except Exception as exc:
                    kind = conflict_kind(exc)
                    if kind is None:
                        raise
                    conflicts[kind] += 1
                    continue
                lat.append(clock() - t0)
        finally:
            rec.rows[idx] = written
            rec.finished[idx] = clock()

    tasks = [asyncio.create_task(work(i), name=f"writer-{i}") for i in range(writers)]
    await asyncio.sleep(0)  # every task is waiting on ``go`` now
    rec.start = clock()
    go.set()
    try:
        await asyncio.gather(*tasks)
    except BaseException as exc:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise RuntimeError(f"a {variant} writer failed: {exc!r}") from exc
    return rec.result(variant)


def order_values(rng: random.Random, scenario: Scenario) -> dict[str, Any]:
    return {"room_id": scenario.pick_room(rng), "customer_id": rng.randrange(1, 100_000),
            "amount_cents": rng.randrange(100, 100_000), "note": "bench order"}


# --- what every target shares ---------------------------------------------------------------

class _TargetBase:
    """Naming, raw SQL on an untracked connection, and the sanity check, for every ORM."""

    triggers = False

    orm: str = ""
    bulk_bump_bound: dict[str, int] | None = None

    def __init__(self, url: URL) -> None:
        self.url = url
        # Untracked: never instrumented by a plugin (pre-filling, VACUUM, sanity checks).
        self.engine: Engine = sa.create_engine(url, poolclass=sa.pool.NullPool)

    @property
    def tag(self) -> str:
        return self.orm.replace("-", "_")

    def table(self, scenario: Scenario, variant: Variant) -> str:
        return f"bench_{self.tag}_{scenario.slug}_{variant}"

    def key_prefix(self, scenario: Scenario) -> str:
        return f"{scenario.key_prefix}-{self.tag}"

    def check(self, scenario: Scenario, totals: Totals) -> list[str]:
        return check_versions(self.engine, scenario, totals, self.table(scenario, "plugin"),
                              self.table(scenario, "baseline"), self.key_prefix(scenario))


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
        if scenario.room_keys:
            (room_mismatch,) = one(
                f"SELECT count(*) FROM (SELECT room_id, count(*) AS n FROM {tracked} "
                "GROUP BY room_id) o FULL JOIN (SELECT substr(key_name, :n)::bigint AS room_id, "
                f"version FROM {VERSIONS_TABLE} WHERE starts_with(key_name, :p)) v "
                "ON o.room_id = v.room_id WHERE o.n IS DISTINCT FROM v.version",
                n=len(prefix) + 1, p=prefix)
            expect(room_sum == rows and room_mismatch == 0,
                   f"{n_room_keys} {prefix}<room> keys, versions sum to {room_sum}; "
                   f"rooms whose version != their row count: {room_mismatch}")
        else:
            expect(n_room_keys == 0, f"{n_room_keys} {prefix}<room> keys (no template)")
        (n_base,) = one(f"SELECT count(*) FROM {baseline}")
        (base_keys,) = one(
            f"SELECT count(*) FROM {VERSIONS_TABLE} WHERE strpos(key_name, :t) > 0",
            t=baseline)
        expect(n_base == totals.rows["baseline"] and base_keys == 0,
               f"{baseline}: {n_base} rows from {totals.commits['baseline']} baseline "
               f"commits, {base_keys} keys bumped for it (expected 0)")
        (n_esc,) = one(f"SELECT count(*) FROM {VERSIONS_TABLE} "
                       "WHERE starts_with(key_name, :p) AND strpos(key_name, :t) > 0",
                       p=ESCALATION_PREFIX, t=tracked)
        expect(n_esc == 0, f"{n_esc} escalation markers (plain inserts must not escalate)")
        (n_log,) = one(f"SELECT count(*) FROM {LOG_TABLE}")
        expect(n_log == 0, f"{n_log} log rows left after folding (expected 0)")
    if failures:
        raise SanityError("\n".join(lines))
    return lines


def max_keys_bound(max_keys: int) -> dict[str, int]:
    """Log rows one bulk commit may append when the plugin escalates past ``max_keys`` keys
    of one kind: the bulk tables have two kinds (row keys, room keys), each kept to at most
    ``max_keys`` (or replaced by its marker), plus the table key. A WHERE-based UPDATE
    escalates outright: the table key and one marker per kind."""
    return {BULK_UPDATE.name: 8, BULK_INSERT.name: 2 * max_keys + 8}


def trigger_bound(bound: dict[str, int], max_keys: int) -> dict[str, int]:
    """In trigger mode the log's id sequence also counts rows the trigger appends and takes
    back in the same statement: the bulk tables' key columns are NOT NULL, so the trigger
    keys up to ``max_keys + 1`` rows of each image (2 key expressions, old and new image)
    before it sees the UPDATE is past the limit, deletes them and appends the markers (an
    insert's statement that crosses the limit: one image). What the commit keeps is still
    the markers and the table key."""
    return {**bound, BULK_UPDATE.name: bound[BULK_UPDATE.name] + 4 * (max_keys + 1),
            BULK_INSERT.name: bound[BULK_INSERT.name] + 2 * (max_keys + 1)}


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
            session.add(self.model(**order_values(rng, scenario)))
        session.commit()
        return n

    def recover(self) -> None:
        self.session.rollback()

    def close(self) -> None:
        self.session.close()


class SqlAlchemyTarget(_TargetBase):
    """The SQLAlchemy 2.x plugin: ``install``/``uninstall`` on one sessionmaker."""

    orm = "sqlalchemy"
    MAX_KEYS: Final = 1000  # install()'s default, passed explicitly

    def __init__(self, url: URL, scenarios: Sequence[Scenario], pool_size: int) -> None:
        super().__init__(url)
        self.bulk_bump_bound = max_keys_bound(self.MAX_KEYS)
        self.pool = sa.create_engine(url, pool_size=pool_size, max_overflow=0)
        self.sessions = sessionmaker(self.pool)
        self.models: dict[str, dict[Variant, type[Any]]] = {}
        for sc in scenarios:
            for variant in VARIANTS:
                model = type(f"Order_{sc.slug}_{variant}", (_OrderColumns, _Base),
                             {"__tablename__": self.table(sc, variant)})
                if variant == "plugin":
                    reality.track(model, table=sc.table_key, rows=sc.row_keys,
                                  keys=sc.templates(self.key_prefix(sc)))
                self.models.setdefault(sc.name, {})[variant] = model
        _Base.metadata.create_all(self.pool)
        reality.create_tables(self.pool)

    def create_triggers(self) -> None:
        reality.create_triggers(self.pool, max_keys=self.MAX_KEYS)

    def activate(self, variant: Variant) -> None:
        if variant == "plugin":
            reality.install(self.sessions, max_keys=self.MAX_KEYS)
        else:
            reality.uninstall(self.sessions)
            if reality.installed():
                raise SanityError(f"baseline needs no plugin, found {reality.installed()}")

    def run_round(self, scenario: Scenario, variant: Variant, writers: int, duration: float,
                  seed: int) -> RoundResult:
        self.activate(variant)
        model = self.models[scenario.name][variant]
        return run_threaded_round(
            lambda rng: _SqlAlchemyWriter(self.sessions(), model, scenario, rng),
            variant, writers, duration, seed)

    def bulk_update(self, variant: Variant, rows: int) -> None:
        self.activate(variant)
        model = self.models[BULK_UPDATE.name][variant]
        with self.sessions() as session:
            session.execute(sa.update(model).where(model.id <= rows)
                            .values(amount_cents=model.amount_cents + 1))
            session.commit()

    def bulk_insert(self, variant: Variant, rows: list[dict[str, Any]]) -> None:
        self.activate(variant)
        model = self.models[BULK_INSERT.name][variant]
        with self.sessions() as session:  # the unit of work: one flush of every object
            session.add_all([model(**values) for values in rows])
            session.commit()

    def close(self) -> None:
        reality.uninstall(self.sessions)
        self.pool.dispose()
        self.engine.dispose()


# --- Tortoise ORM ---------------------------------------------------------------------------

class _TortoiseLoop:
    """Tortoise on an event loop of its own, in one thread (the context is global, as
    ``register_tortoise`` makes it for FastAPI); rounds run there as asyncio tasks."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="tortoise-loop",
                                        daemon=True)
        self._thread.start()
        self.call(self._init(config))

    async def _init(self, config: dict[str, Any]) -> None:
        from tortoise import Tortoise

        self.context = await Tortoise.init(config=config, _enable_global_fallback=True)
        await self.context.generate_schemas()  # Reality's tables too, on its connection

    def call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.call(self.context.close_connections())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class TortoiseTarget(_TargetBase):
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
        super().__init__(url)
        self.autocommit = autocommit
        self.models: dict[str, dict[Variant, Any]] = {}
        # Tortoise finds models by module name: two modules made here for the purpose.
        modules = {v: types.ModuleType(f"_bench_{self.tag}_{v}") for v in VARIANTS}
        sys.modules.update({m.__name__: m for m in modules.values()})
        for sc in scenarios:
            for variant in VARIANTS:
                meta: dict[str, Any] = {"table": self.table(sc, variant)}
                if variant == "plugin":
                    meta["reality"] = reality_tortoise.Track(
                        table=sc.table_key, rows=sc.row_keys,
                        keys=sc.templates(self.key_prefix(sc)))
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

    def activate(self, variant: Variant) -> None:
        pass  # both variants are always there: two connections, one with the plugin

    def create_triggers(self) -> None:
        import reality_tortoise

        self.tortoise.call(reality_tortoise.create_triggers(
            "reality", max_keys=SqlAlchemyTarget.MAX_KEYS))

    async def _write(self, model: Any, connection: str, scenario: Scenario,
                     rng: random.Random) -> int:
        from tortoise.transactions import in_transaction

        n = scenario.rows_per_commit
        rows = [order_values(rng, scenario) for _ in range(n)]
        if self.autocommit and n == 1:
            await model.create(**rows[0])  # no transaction of the app's own
            return n
        async with in_transaction(connection):
            for values in rows:
                await model.create(**values)
        return n

    def run_round(self, scenario: Scenario, variant: Variant, writers: int, duration: float,
                  seed: int) -> RoundResult:
        model, connection = self.models[scenario.name][variant], self.connections[variant]

        def write(rng: random.Random) -> Awaitable[int]:
            return self._write(model, connection, scenario, rng)

        return self.tortoise.call(run_async_round(write, variant, writers, duration, seed))

    async def _bulk_update(self, variant: Variant, rows: int) -> None:
        from tortoise.expressions import F
        from tortoise.transactions import in_transaction

        model = self.models[BULK_UPDATE.name][variant]
        async with in_transaction(self.connections[variant]):
            await model.filter(id__lte=rows).update(amount_cents=F("amount_cents") + 1)

    async def _bulk_insert(self, variant: Variant, rows: list[dict[str, Any]]) -> None:
        from tortoise.transactions import in_transaction

        model = self.models[BULK_INSERT.name][variant]
        async with in_transaction(self.connections[variant]):
            await model.bulk_create([model(**values) for values in rows])

    def bulk_update(self, variant: Variant, rows: int) -> None:
        self.tortoise.call(self._bulk_update(variant, rows))

    def bulk_insert(self, variant: Variant, rows: list[dict[str, Any]]) -> None:
        self.tortoise.call(self._bulk_insert(variant, rows))

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
        rows = [order_values(rng, scenario) for _ in range(n)]
        if self.target.autocommit and n == 1:
            self.model.create(**rows[0])  # no transaction of the app's own
            return n
        with self.target.db.atomic():
            for values in rows:
                self.model.create(**values)
        return n

    def recover(self) -> None:
        pass  # atomic() rolled the transaction back when the error left it

    def close(self) -> None:
        self.target.db.close()  # this thread's connection back to the pool


class PeeweeTarget(_TargetBase):
    """The peewee plugin: ``install``/``uninstall`` on one ``PooledPostgresqlDatabase`` (each
    writer thread has its connection, as peewee keeps them per thread). ``autocommit`` writes
    each single row with a bare ``Model.create()`` (the plugin then wraps it in a transaction
    of its own, with its bump) instead of ``db.atomic()``."""

    def __init__(self, url: URL, scenarios: Sequence[Scenario], pool_size: int, *,
                 autocommit: bool = False) -> None:
        import peewee
        from playhouse.pool import PooledPostgresqlDatabase

        import reality_peewee

        self.orm = "peewee" + ("-autocommit" if autocommit else "")
        super().__init__(url)
        self.reality = reality_peewee
        # max_keys escalation (as in SQLAlchemy's plugin), when this peewee plugin has it.
        self.install_options: dict[str, Any] = {}
        if "max_keys" in inspect.signature(reality_peewee.install).parameters:
            self.install_options["max_keys"] = SqlAlchemyTarget.MAX_KEYS
            self.bulk_bump_bound = max_keys_bound(SqlAlchemyTarget.MAX_KEYS)
        self.autocommit = autocommit
        self.db: Any = PooledPostgresqlDatabase(
            url.database, host=url.host, port=url.port, user=url.username,
            password=url.password, max_connections=pool_size)
        self.models: dict[str, dict[Variant, Any]] = {}
        for sc in scenarios:
            for variant in VARIANTS:
                meta = type("Meta", (), {"database": self.db,
                                         "table_name": self.table(sc, variant)})
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
                                         keys=sc.templates(self.key_prefix(sc)))
                self.models.setdefault(sc.name, {})[variant] = model
        with self.db.connection_context():
            self.db.create_tables([m for pair in self.models.values() for m in pair.values()])
        reality_peewee.create_tables(self.db)
        self.db.close()

    def create_triggers(self) -> None:
        with self.db.connection_context():
            self.reality.create_triggers(self.db, max_keys=SqlAlchemyTarget.MAX_KEYS)

    def activate(self, variant: Variant) -> None:
        if variant == "plugin":
            self.reality.install(self.db, **self.install_options)
        else:
            self.reality.uninstall(self.db)
            if self.reality.installed():
                raise SanityError(f"baseline needs no plugin, found {self.reality.installed()}")

    def run_round(self, scenario: Scenario, variant: Variant, writers: int, duration: float,
                  seed: int) -> RoundResult:
        self.activate(variant)
        model = self.models[scenario.name][variant]
        return run_threaded_round(lambda rng: _PeeweeWriter(self, model, scenario, rng),
                                  variant, writers, duration, seed)

    def bulk_update(self, variant: Variant, rows: int) -> None:
        self.activate(variant)
        model = self.models[BULK_UPDATE.name][variant]
        try:
            with self.db.atomic():
                model.update(amount_cents=model.amount_cents + 1).where(
                    model.id <= rows).execute()
        finally:
            self.db.close()

    def bulk_insert(self, variant: Variant, rows: list[dict[str, Any]]) -> None:
        self.activate(variant)
        model = self.models[BULK_INSERT.name][variant]
        try:
            with self.db.atomic():
                model.insert_many(rows).execute()
        finally:
            self.db.close()

    def close(self) -> None:
        self.reality.uninstall(self.db)
        self.db.close_all()
        self.engine.dispose()


TargetFactory = Callable[[URL, Sequence[Scenario], int], Target]
ORMS: Final[dict[str, TargetFactory]] = {
    "sqlalchemy": SqlAlchemyTarget,
    "tortoise": TortoiseTarget,
    "tortoise-psycopg": lambda url, sc, pool: TortoiseTarget(url, sc, pool, driver="psycopg"),
    "tortoise-autocommit": lambda url, sc, pool: TortoiseTarget(url, sc, pool, autocommit=True),
    "peewee": PeeweeTarget,
    "peewee-autocommit": lambda url, sc, pool: PeeweeTarget(url, sc, pool, autocommit=True),
}


# --- the folder a deployment runs -----------------------------------------------------------

def server_cpu_s(url: URL) -> float | None:
    """CPU seconds used so far by the PostgreSQL processes of this machine, or None when the
    server is elsewhere (or /proc is unreadable): all of them, so the folder's and
    autovacuum's work counts too."""
    if url.host not in (None, "", "localhost", "127.0.0.1", "::1"):
        return None
    total = 0
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            with open(f"/proc/{pid}/comm") as f:
                if not f.read().startswith("postgres"):
                    continue
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK") if total else None


class DeploymentFolder:
    """A folder running through every plugin round (started before its writers, stopped
    after them), as a deployment runs one: ``reality serve`` folds every second **in a
    process of its own**, so here too the folder lives in one child process for the whole
    run (``Folder(DBAPIReader.from_url(url), interval=1.0)``, see :func:`folder_process`),
    told over a pipe when to fold. In the benchmark's own process its threads would share
    the writers' GIL, which no deployment does (measured: about 4 points of the Tortoise
    ratio). Its database work lands on the same server either way, and its own CPU time is
    reported (``cpu_s``), so nothing it costs is hidden."""

    def __init__(self, url: URL, *, enabled: bool) -> None:
        self.folded = 0
        self.runs = 0
        self.cpu_s = 0.0
        self._child: subprocess.Popen[str] | None = None
        if enabled:
            self._child = subprocess.Popen(
                [sys.executable, __file__, "--folder-process",
                 url.render_as_string(hide_password=False)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def _ask(self, command: str) -> str:
        child = self._child
        assert child is not None
        assert child.stdin is not None
        assert child.stdout is not None
        child.stdin.write(command + "\n")
        child.stdin.flush()
        answer = child.stdout.readline().strip()
        if not answer:
            raise RuntimeError(f"the folder process died (exit code {child.wait()})")
        return answer

    @contextlib.contextmanager
    def around(self, variant: Variant) -> Iterator[None]:
        if variant != "plugin" or self._child is None:
            yield
            return
        self._ask("start")  # answers once the folder thread runs
        try:
            yield
        finally:
            folded, cpu = self._ask("stop").split()
            self.folded += int(folded)
            self.cpu_s += float(cpu)
            self.runs += 1

    def close(self) -> None:
        if self._child is not None:
            self._child.communicate("", timeout=60)
            self._child = None


def folder_process(url: str) -> int:
    """The child side of :class:`DeploymentFolder`. ``start``: fold every second from now;
    ``stop``: stop, answer the rows folded and this process's CPU seconds since ``start``;
    end of input: exit."""
    reader = DBAPIReader.from_url(url)
    folder: Folder | None = None
    cpu0 = 0.0
    try:
        for line in sys.stdin:
            if line.strip() == "start" and folder is None:
                cpu0 = time.process_time()
                folder = Folder(reader, interval=FOLD_INTERVAL)
                folder.start()
                print("started", flush=True)
            elif line.strip() == "stop" and folder is not None:
                folder.stop()
                print(folder.folded, round(time.process_time() - cpu0, 4), flush=True)
                folder = None
    finally:
        if folder is not None:
            folder.stop()
        reader.close()
    return 0


# --- database lifecycle ---------------------------------------------------------------------

def server_url(raw: str) -> URL:
    url = make_url(raw)
    if url.get_backend_name() != "postgresql":
        raise SystemExit(f"write_path needs PostgreSQL, got {url.render_as_string()}")
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return url


def libpq_url(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def server_settings(url: URL) -> dict[str, str]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            out = {name: str(conn.exec_driver_sql(f"SHOW {name}").scalar())
                   for name in ("fsync", "synchronous_commit", "server_version",
                                "max_connections", "autovacuum", "autovacuum_naptime")}
            out["connections_in_use"] = str(
                conn.exec_driver_sql("SELECT count(*) FROM pg_stat_activity").scalar())
            return out
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


def autocommit_sql(engine: Engine, *statements: str) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for sql in statements:
            conn.exec_driver_sql(sql)


def log_rows_appended(engine: Engine) -> int:
    """How many log rows were ever appended: the log id sequence's position. Folding deletes
    log rows but never moves the sequence, so the difference across one commit is exactly
    the number of keys that commit bumped."""
    with engine.connect() as conn:
        seq = conn.exec_driver_sql(
            f"SELECT pg_get_serial_sequence('{LOG_TABLE}', 'id')").scalar()
        last, called = conn.execute(sa.text(f"SELECT last_value, is_called FROM {seq}")).one()
        return int(last) if called else 0


# --- throughput driver ----------------------------------------------------------------------

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

    def conflicts(self, variant: Variant) -> Counter[str]:
        total: Counter[str] = Counter()
        for r in self.rounds[variant]:
            total.update(r.conflicts)
        return total

    def cpu_us(self, variant: Variant, part: str) -> float | None:
        """Median CPU microseconds per commit of ``part`` across the rounds."""
        values = [v for r in self.rounds[variant] if (v := r.cpu_us(part)) is not None]
        return round(float(statistics.median(values)), 1) if values else None

    def as_json(self) -> dict[str, Any]:
        base_tps, tps = self.median("baseline", "tps"), self.median("plugin", "tps")
        base_p99, p99 = self.median("baseline", "p99_ms"), self.median("plugin", "p99_ms")
        paired = self.paired_ratios()
        ratio = tps / base_tps if base_tps else None
        p99_ratio = p99 / base_p99 if base_p99 else None
        plugin_conflicts = self.conflicts("plugin")
        out: dict[str, Any] = {
            "orm": self.orm, "scenario": self.scenario, "writers": self.writers,
            "baseline_tps": round(base_tps, 1), "plugin_tps": round(tps, 1),
            "ratio": round(ratio, 3) if ratio is not None else None, "ratio_of": "tps",
            "baseline_p99_ms": round(base_p99, 3), "p99_ms": round(p99, 3),
            "baseline_p50_ms": round(self.median("baseline", "p50_ms"), 3),
            "p50_ms": round(self.median("plugin", "p50_ms"), 3),
            "p99_ratio": round(p99_ratio, 3) if p99_ratio is not None else None,
            "round_ratio_min": round(min(paired), 3) if paired else None,
            "round_ratio_max": round(max(paired), 3) if paired else None,
            "rounds": len(self.rounds["plugin"]),
            "deadlocks": plugin_conflicts["deadlocks"],
            "serialization_failures": plugin_conflicts["serialization_failures"],
            "baseline_deadlocks": self.conflicts("baseline")["deadlocks"],
            "baseline_serialization_failures":
                self.conflicts("baseline")["serialization_failures"],
            # Where the time went: CPU per commit, medians across rounds (see RoundResult).
            "cpu_us_per_commit": {
                v: {part: self.cpu_us(v, part) for part in ("client", "server", "folder")}
                for v in VARIANTS},
        }
        goal = goal_for(self.scenario, self.writers)
        if goal is not None:
            out["goal"] = goal.name
            out["goal_met"] = goal.check(ratio, p99_ratio, sum(plugin_conflicts.values()))
        return out


def run_throughput(target: Target, scenario: Scenario, writer_counts: Sequence[int],
                   args: argparse.Namespace, folder: DeploymentFolder) -> tuple[
                       list[CaseResult], bool]:
    totals = Totals()
    cases: list[CaseResult] = []
    sane = True
    warmup = args.warmup
    for writers in writer_counts:
        case = CaseResult(target.orm, scenario.name, writers)
        say(f"\n== {target.orm} / {scenario.name} ({scenario.description}) / "
            f"{writers} writer(s)")
        for variant in VARIANTS:  # warm-up: pool, prepared statements, caches
            with folder.around(variant):
                totals.add(target.run_round(scenario, variant, writers, warmup, args.seed))
        for rnd in range(args.rounds):
            order = VARIANTS if rnd % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                client0, server0 = time.process_time(), server_cpu_s(target.engine.url)
                folder0 = folder.cpu_s
                with folder.around(variant):
                    r = target.run_round(scenario, variant, writers, args.duration,
                                         args.seed + 7919 * (rnd + 1))
                server1 = server_cpu_s(target.engine.url)
                r.client_cpu_s = time.process_time() - client0
                r.server_cpu_s = (server1 - server0 if server0 is not None
                                  and server1 is not None else None)
                r.folder_cpu_s = folder.cpu_s - folder0
                totals.add(r)
                case.rounds[variant].append(r)
                say(f"  round {rnd + 1}/{args.rounds} {fmt_round(r)}")
        cases.append(case)
        try:
            lines = target.check(scenario, totals)
        except SanityError as exc:
            sane = False
            lines = str(exc).splitlines()
        say(f"  sanity after {writers} writer(s), cumulative:")
        for line in lines:
            say(f"    {line}")
    return cases, sane


# --- bulk -----------------------------------------------------------------------------------

@dataclass(slots=True)
class BulkResult:
    orm: str
    scenario: str
    rows: int
    api: str
    seconds: dict[Variant, list[float]] = field(
        default_factory=lambda: {v: [] for v in VARIANTS})
    log_rows: list[int] = field(default_factory=list)  # per measured plugin commit
    warmup_log_rows: list[int] = field(default_factory=list)
    bound: int | None = None

    def median(self, variant: Variant) -> float:
        return float(statistics.median(self.seconds[variant]))

    def as_json(self) -> dict[str, Any]:
        base, plug = self.median("baseline"), self.median("plugin")
        paired = [p / b for b, p in zip(self.seconds["baseline"], self.seconds["plugin"],
                                        strict=True) if b > 0]
        ratio = plug / base if base else None
        out: dict[str, Any] = {
            "orm": self.orm, "scenario": self.scenario, "writers": 1, "rows": self.rows,
            "api": self.api, "baseline_s": round(base, 4), "plugin_s": round(plug, 4),
            "ratio": round(ratio, 3) if ratio is not None else None, "ratio_of": "time",
            "round_ratio_min": round(min(paired), 3) if paired else None,
            "round_ratio_max": round(max(paired), 3) if paired else None,
            "rounds": len(self.seconds["plugin"]),
            "log_rows_per_commit": max(self.log_rows) if self.log_rows else None,
            "log_rows_bound": self.bound,
        }
        goal = goal_for(self.scenario, 1)
        if goal is not None:
            out["goal"] = goal.name
            out["goal_met"] = goal.check(ratio, None, 0)
        return out


BULK_APIS: Final[dict[str, dict[str, str]]] = {
    "sqlalchemy": {BULK_UPDATE.name: "session.execute(update(M).where(M.id <= n).values(...))",
                   BULK_INSERT.name: "session.add_all([...]) + commit() (unit of work)"},
    "tortoise": {BULK_UPDATE.name: "M.filter(id__lte=n).update(amount_cents=F(...) + 1)",
                 BULK_INSERT.name: "M.bulk_create([...])"},
    "peewee": {BULK_UPDATE.name: "M.update(amount_cents=M.amount_cents + 1).where(M.id <= n)",
               BULK_INSERT.name: "M.insert_many([...]).execute()"},
}


def prefill(engine: Engine, tables: Sequence[str], rows: int) -> None:
    """``rows`` rows in each table, written by raw SQL on an untracked connection."""
    with engine.begin() as conn:
        for table in tables:
            conn.exec_driver_sql(
                f"INSERT INTO {table} (room_id, customer_id, amount_cents, note) "
                f"SELECT 1 + mod(g, 1000), g, 100 + mod(g, 100000), 'bench order' "
                f"FROM generate_series(1, {int(rows)}) AS g")
    autocommit_sql(engine, *(f"VACUUM ANALYZE {t}" for t in tables))


def run_bulk(target: Target, engine: Engine, args: argparse.Namespace,
             folder: DeploymentFolder) -> tuple[list[BulkResult], bool]:
    upd = {v: target.table(BULK_UPDATE, v) for v in VARIANTS}
    ins = {v: target.table(BULK_INSERT, v) for v in VARIANTS}
    bound = target.bulk_bump_bound or {}
    apis = BULK_APIS.get(target.orm.split("-")[0], {})
    say(f"\n== {target.orm} / bulk: {args.bulk_rows:,}-row UPDATE, "
        f"{args.bulk_insert_rows:,}-row insert")
    t0 = time.perf_counter()
    prefill(engine, list(upd.values()), args.bulk_rows)
    say(f"  pre-filled {upd['baseline']} and {upd['plugin']} with {args.bulk_rows:,} rows "
        f"each ({time.perf_counter() - t0:.1f} s)")
    update = BulkResult(target.orm, BULK_UPDATE.name, args.bulk_rows,
                        apis.get(BULK_UPDATE.name, ""), bound=bound.get(BULK_UPDATE.name))
    insert = BulkResult(target.orm, BULK_INSERT.name, args.bulk_insert_rows,
                        apis.get(BULK_INSERT.name, ""), bound=bound.get(BULK_INSERT.name))
    commits = Counter[str]()
    inserted = Counter[Variant]()
    rng = random.Random(args.seed)

    def timed(result: BulkResult, variant: Variant, op: Callable[[], None],
              record: bool) -> None:
        before = log_rows_appended(engine)
        with folder.around(variant):
            start = time.perf_counter()
            op()
            elapsed = time.perf_counter() - start
        appended = log_rows_appended(engine) - before
        if variant == "plugin":
            commits[result.scenario] += 1
            (result.log_rows if record else result.warmup_log_rows).append(appended)
        elif appended:
            raise SanityError(f"a baseline {result.scenario} appended {appended} log rows")
        if record:
            result.seconds[variant].append(elapsed)

    def update_op(variant: Variant) -> Callable[[], None]:
        return lambda: target.bulk_update(variant, args.bulk_rows)

    def insert_op(variant: Variant, n: int) -> Callable[[], None]:
        rows = [order_values(rng, BULK_INSERT) for _ in range(n)]
        inserted[variant] += len(rows)
        return lambda: target.bulk_insert(variant, rows)

    for rnd in range(args.bulk_rounds + 1):  # round 0 warms up and is not recorded
        order = VARIANTS if rnd % 2 == 0 else VARIANTS[::-1]
        for variant in order:
            # Each UPDATE leaves 100,000 dead rows: vacuum first, outside the timing, so
            # every round starts from the same table.
            autocommit_sql(engine, f"VACUUM {upd[variant]}")
            timed(update, variant, update_op(variant), rnd > 0)
            # The warm-up insert only primes caches: a tenth of the rows will do.
            n = args.bulk_insert_rows if rnd else max(1, args.bulk_insert_rows // 10)
            timed(insert, variant, insert_op(variant, n), rnd > 0)
        if rnd:
            say(f"  round {rnd}/{args.bulk_rounds}  update: baseline "
                f"{update.seconds['baseline'][-1]:.3f} s, plugin "
                f"{update.seconds['plugin'][-1]:.3f} s ({update.log_rows[-1]} log rows)   "
                f"insert: baseline {insert.seconds['baseline'][-1]:.3f} s, plugin "
                f"{insert.seconds['plugin'][-1]:.3f} s ({insert.log_rows[-1]} log rows)")
    try:
        lines = check_bulk(engine, target, upd, ins, commits, inserted, update, insert)
        sane = True
    except SanityError as exc:
        sane = False
        lines = str(exc).splitlines()
    say("  sanity (bulk):")
    for line in lines:
        say(f"    {line}")
    return [update, insert], sane


def check_bulk(engine: Engine, target: Target, upd: dict[Variant, str],
               ins: dict[Variant, str], commits: Counter[str], inserted: Counter[Variant],
               update: BulkResult, insert: BulkResult) -> list[str]:
    """Versions after the bulk rounds: every plugin commit counted on its table key, every
    row the UPDATEs touched reading as changed that many times (I4: escalation), the
    inserted rows readable as changed, nothing for the baseline tables."""
    reader = DBAPIReader.from_url(engine.url.render_as_string(hide_password=False),
                                  fold_threshold=None)
    lines: list[str] = []
    failures: list[str] = []

    def expect(ok: bool, text: str) -> None:
        lines.append(f"{'ok  ' if ok else 'FAIL'} {text}")
        if not ok:
            failures.append(text)

    try:
        reader.fold()
        with engine.connect() as conn:
            room_1, max_id = conn.execute(sa.text(
                f"SELECT (SELECT room_id FROM {upd['plugin']} WHERE id = 1), "
                f"(SELECT max(id) FROM {ins['plugin']})")).one()
            (n_ins,) = conn.execute(sa.text(f"SELECT count(*) FROM {ins['plugin']}")).one()
            (base_keys,) = conn.execute(sa.text(
                f"SELECT count(*) FROM {VERSIONS_TABLE} WHERE strpos(key_name, :a) > 0 "
                "OR strpos(key_name, :b) > 0"), {"a": upd["baseline"], "b": ins["baseline"]}
            ).one()
        n_upd, n_insc = commits[BULK_UPDATE.name], commits[BULK_INSERT.name]
        # In trigger mode the database also saw the raw-SQL prefill: one more commit.
        n_upd += 1 if target.triggers else 0
        keys = {
            "table_upd": f"{TABLE_PREFIX}{upd['plugin']}",
            "row_1": f"{ROW_PREFIX}{upd['plugin']}:1",
            "room_1": f"{target.key_prefix(BULK_UPDATE)}:{room_1}",
            "table_ins": f"{TABLE_PREFIX}{ins['plugin']}",
            "row_last": f"{ROW_PREFIX}{ins['plugin']}:{max_id}",
        }
        snap = reader.read(set(keys.values()))
        v = {name: snap.version(key) for name, key in keys.items()}
        expect(v["table_upd"] == n_upd,
               f"{keys['table_upd']} version {v['table_upd']} (expected {n_upd}, one per "
               "plugin UPDATE" + (", and the prefill" if target.triggers else "") + ")")
        expect(v["row_1"] >= n_upd and v["room_1"] >= n_upd,
               f"{keys['row_1']} reads {v['row_1']}, {keys['room_1']} reads {v['room_1']} "
               f"(each >= {n_upd}: every UPDATE changed that row)")
        expect(v["table_ins"] == n_insc,
               f"{keys['table_ins']} version {v['table_ins']} (expected {n_insc})")
        expect(n_ins == inserted["plugin"] and v["row_last"] >= 1,
               f"{ins['plugin']}: {n_ins} rows ({inserted['plugin']} inserted); the last "
               f"one's row key reads {v['row_last']} (>= 1)")
        expect(base_keys == 0, f"{base_keys} keys bumped for the baseline tables (expected 0)")
        for result in (update, insert):
            worst = max([*result.log_rows, *result.warmup_log_rows], default=0)
            if result.bound is not None:
                expect(worst <= result.bound,
                       f"{result.scenario}: at most {worst} log rows per plugin commit "
                       f"(bound {result.bound}: max_keys escalation)")
            else:
                lines.append(f"info {result.scenario}: {worst} log rows per plugin commit "
                             "(this plugin has no max_keys bound)")
    finally:
        reader.close()
    if failures:
        raise SanityError("\n".join(lines))
    return lines


# --- storage --------------------------------------------------------------------------------

def relation_sizes(conn: Any) -> dict[str, int]:
    """Bytes of both tables with their indexes and TOAST, and their row counts."""
    row = conn.execute(
        f"SELECT pg_total_relation_size('{LOG_TABLE}'), pg_total_relation_size('{VERSIONS_TABLE}'),"
        f" (SELECT count(*) FROM {LOG_TABLE}), (SELECT count(*) FROM {VERSIONS_TABLE})"
    ).fetchone()
    log_b, ver_b, log_n, keys = (int(x) for x in row)
    return {"log_bytes": log_b, "versions_bytes": ver_b, "total_bytes": log_b + ver_b,
            "log_rows": log_n, "keys": keys}


def storage_stages(libpq: str) -> dict[str, Any]:
    """Sizes after folding, after a plain VACUUM (what autovacuum reaches, without blocking
    writers) and after VACUUM FULL (the least those keys can take)."""
    import psycopg

    reader = DBAPIReader.from_url(libpq, fold_threshold=None)
    try:
        reader.fold()
    finally:
        reader.close()
    with psycopg.connect(libpq, autocommit=True) as conn:
        after_fold = relation_sizes(conn)
        stats = conn.execute(
            "SELECT coalesce(autovacuum_count, 0), n_dead_tup FROM pg_stat_user_tables "
            "WHERE relname = %s", (LOG_TABLE,)).fetchone()
        conn.execute(f"VACUUM {LOG_TABLE}, {VERSIONS_TABLE}")
        after_vacuum = relation_sizes(conn)
        conn.execute(f"VACUUM FULL {LOG_TABLE}, {VERSIONS_TABLE}")
        minimum = relation_sizes(conn)
    keys = max(1, minimum["keys"])
    return {
        "keys": minimum["keys"],
        "after_fold": after_fold,
        "after_vacuum": after_vacuum,
        "minimum": minimum,
        "bytes_per_key_after_vacuum": round(after_vacuum["total_bytes"] / keys, 1),
        "bytes_per_key_minimum": round(minimum["total_bytes"] / keys, 1),
        "multiple_after_fold": round(after_fold["total_bytes"] / minimum["total_bytes"], 2),
        "multiple_after_vacuum": round(after_vacuum["total_bytes"] / minimum["total_bytes"],
                                       2),
        "log_autovacuums": int(stats[0]) if stats else None,
        "log_dead_rows_before_vacuum": int(stats[1]) if stats else None,
    }


def scaled_storage(server: URL, commits: int, n_keys: int, writers: int, seed: int, *,
                   vacuum_every: float | None = None) -> dict[str, Any]:
    """``commits`` raw bumps of one key each (keys drawn from ``n_keys``), committed one by
    one from ``writers`` connections while a folder runs every second and a reader samples
    versions; then the storage stages and an exact check of every key's version.

    ``vacuum_every``: also run a plain ``VACUUM`` of both tables that often (it never blocks
    the writers), standing in for autovacuum at the pace of this compressed run; without
    it only the server's autovacuum runs (the deployment as it ships).

    Commits go in batches of ``BATCH`` transactions per round trip (``BEGIN; INSERT ...;
    COMMIT`` x BATCH, the INSERT from :func:`bump_statements`), with this session's
    ``synchronous_commit`` off: the figure is about storage, not commit latency, and a
    million fsynced commits would take minutes. The server's settings are not changed."""
    import psycopg

    batch = 500
    db_url, drop = create_database(server)
    libpq = libpq_url(db_url)
    try:
        with psycopg.connect(libpq, autocommit=True) as conn:
            for sql in create_table_statements("postgresql"):
                conn.execute(sql)
            sql, params = insert_epoch_statement("postgresql", "format")
            conn.execute(sql, params)
        names = [f"k:{i:05d}" for i in range(n_keys)]
        counts: list[Counter[str]] = [Counter() for _ in range(writers)]
        batch_ms: list[float] = []
        errors: list[BaseException] = []
        done = threading.Event()
        sampled = {"reads": 0, "regressions": 0, "peak_bytes": 0, "peak_log_rows": 0}

        def write(idx: int) -> None:
            try:
                rng = random.Random(seed * 7 + idx)
                with psycopg.connect(libpq, autocommit=True) as conn:
                    conn.execute("SET synchronous_commit = off")
                    cur = psycopg.ClientCursor(conn)  # mogrify(): one string, many commits
                    todo = commits // writers + (1 if idx < commits % writers else 0)
                    while todo:
                        parts = []
                        for _ in range(min(batch, todo)):
                            key = names[rng.randrange(n_keys)]
                            counts[idx][key] += 1
                            ((sql, params),) = bump_statements("postgresql", [key], "format")
                            parts.append(f"BEGIN; {cur.mogrify(sql, params)}; COMMIT")
                        todo -= len(parts)
                        t0 = time.perf_counter()
                        cur.execute("; ".join(parts))
                        batch_ms.append((time.perf_counter() - t0) * 1000)
            except BaseException as exc:
                errors.append(exc)

        def sample() -> None:
            watch = names[:: max(1, n_keys // 50)]
            last: dict[str, int] = {}
            reader = DBAPIReader.from_url(libpq, fold_threshold=None)
            try:
                with psycopg.connect(libpq, autocommit=True) as conn:
                    tick = 0
                    while not done.wait(0.1):
                        snap = reader.read(watch)
                        sampled["reads"] += 1
                        for key in watch:
                            version = snap.version(key)
                            if version < last.get(key, 0):
                                sampled["regressions"] += 1
                            last[key] = version
                        tick += 1
                        if tick % 5 == 0:
                            sizes = relation_sizes(conn)
                            sampled["peak_bytes"] = max(sampled["peak_bytes"],
                                                        sizes["total_bytes"])
                            sampled["peak_log_rows"] = max(sampled["peak_log_rows"],
                                                           sizes["log_rows"])
            except BaseException as exc:
                errors.append(exc)
            finally:
                reader.close()

        vacuums = [0]

        def vacuum() -> None:
            try:
                with psycopg.connect(libpq, autocommit=True) as conn:
                    while vacuum_every is not None and not done.wait(vacuum_every):
                        conn.execute(f"VACUUM {LOG_TABLE}, {VERSIONS_TABLE}")
                        vacuums[0] += 1
            except BaseException as exc:
                errors.append(exc)

        fold_reader = DBAPIReader.from_url(libpq)
        folder = Folder(fold_reader, interval=FOLD_INTERVAL)
        helpers = [threading.Thread(target=sample, name="storage-sampler", daemon=True)]
        if vacuum_every is not None:
            helpers.append(threading.Thread(target=vacuum, name="storage-vacuum", daemon=True))
        threads = [threading.Thread(target=write, args=(i,), name=f"storage-writer-{i}",
                                    daemon=True) for i in range(writers)]
        folder.start()
        for t in helpers:
            t.start()
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        done.set()
        for t in helpers:
            t.join()
        folder.stop()
        fold_reader.close()
        if errors:
            raise RuntimeError(f"storage run failed: {errors[0]!r}") from errors[0]
        stages = storage_stages(libpq)
        expected: Counter[str] = Counter()
        for c in counts:
            expected.update(c)
        with psycopg.connect(libpq, autocommit=True) as conn:
            found: dict[str, int] = {
                str(k): int(v)
                for k, v in conn.execute(f"SELECT key_name, version FROM {VERSIONS_TABLE}")}
        wrong = sum(1 for k in set(expected) | set(found) if found.get(k) != expected[k])
        batch_ms.sort()
        return {
            "commits": commits, "keys_written": len(expected), "writers": writers,
            "vacuum_every_s": vacuum_every, "vacuums": vacuums[0],
            "seconds": round(elapsed, 1), "commits_per_s": round(commits / elapsed),
            "synchronous_commit": "off (this session only)",
            "folded_by_folder": folder.folded,
            "peak_bytes": sampled["peak_bytes"], "peak_log_rows": sampled["peak_log_rows"],
            "peak_multiple": round(sampled["peak_bytes"] / stages["minimum"]["total_bytes"], 2),
            "reads_sampled": sampled["reads"], "version_regressions": sampled["regressions"],
            "keys_with_wrong_version": wrong,
            "batch_ms_p50": round(percentile(batch_ms, 50), 1),
            "batch_ms_max": round(batch_ms[-1], 1) if batch_ms else None,
            **stages,
        }
    finally:
        drop()


# --- output ---------------------------------------------------------------------------------

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
    extra = "".join(f", {n} {k}" for k, n in sorted(r.conflicts.items()) if n)
    return (f"{r.variant:<8} {r.tps:9.1f} commits/s  p50 {r.p50_ms:7.2f} ms  "
            f"p99 {r.p99_ms:7.2f} ms  ({r.commits} commits{extra})")


def _table(head: list[str], rows: list[list[str]], left: int) -> list[str]:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return [line(head), "-" * len(line(head))] + [line(r) for r in rows]


def _num(value: Any, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _goal_cell(j: dict[str, Any]) -> str:
    if "goal" not in j:
        return ""
    return f"{j['goal']} {'met' if j['goal_met'] else 'MISSED'}"


def summary_table(cases: Sequence[CaseResult]) -> str:
    head = ["orm", "scenario", "writers", "base tps", "plugin tps", "ratio", "round ratios",
            "base p50", "p50", "base p99", "p99", "p99 x", "dl/sf", "goal"]
    described = [(case, case.as_json()) for case in cases]
    rows = []
    for case, j in described:
        rows.append([
            case.orm, case.scenario, str(case.writers), _num(j["baseline_tps"], 1),
            _num(j["plugin_tps"], 1), _num(j["ratio"], 3),
            f"{_num(j['round_ratio_min'], 2)}..{_num(j['round_ratio_max'], 2)}",
            _num(j["baseline_p50_ms"], 2), _num(j["p50_ms"], 2), _num(j["baseline_p99_ms"], 2),
            _num(j["p99_ms"], 2), _num(j["p99_ratio"], 2),
            f"{j['deadlocks']}/{j['serialization_failures']}", _goal_cell(j),
        ])
    out = _table(head, rows, 2)
    out.append("tps: commits/s; p50/p99: latency of the whole transaction, ms; medians across "
               "rounds; ratio = plugin/baseline tps;\nround ratios: min..max of the per-round "
               "paired tps ratios; p99 x = plugin p99 / baseline p99; dl/sf: deadlocks / "
               "serialization failures (plugin rounds)")
    head = ["orm", "scenario", "writers", "base client", "client", "base server", "server",
            "folder", "base total", "total", "total x"]
    rows = []
    for case, j in described:
        cpu = j["cpu_us_per_commit"]
        base, plug = cpu["baseline"], cpu["plugin"]
        totals = [None if b["server"] is None else b["client"] + b["server"] + b["folder"]
                  for b in (base, plug)]
        rows.append([case.orm, case.scenario, str(case.writers), _num(base["client"], 1),
                     _num(plug["client"], 1), _num(base["server"], 1),
                     _num(plug["server"], 1), _num(plug["folder"], 1), _num(totals[0], 1),
                     _num(totals[1], 1),
                     _num(totals[1] / totals[0] if totals[0] and totals[1] else None, 2)])
    out.append("")
    out += _table(head, rows, 2)
    out.append("CPU microseconds per commit, medians across rounds: client = this process (ORM, "
               "plugin, writers), server = the PostgreSQL\nprocesses (when on this machine), "
               "folder = the folder's process (Python side; its SQL is in server)")
    return "\n".join(out)


def bulk_table(results: Sequence[BulkResult]) -> str:
    head = ["orm", "op", "rows", "base s", "plugin s", "ratio", "round ratios",
            "log rows/commit", "goal"]
    rows = []
    for res in results:
        j = res.as_json()
        rows.append([
            res.orm, res.scenario, f"{res.rows:,}", _num(j["baseline_s"], 3),
            _num(j["plugin_s"], 3), _num(j["ratio"], 3),
            f"{_num(j['round_ratio_min'], 2)}..{_num(j['round_ratio_max'], 2)}",
            str(j["log_rows_per_commit"]), _goal_cell(j),
        ])
    out = _table(head, rows, 2)
    out.append("seconds: one whole transaction (objects built, statement, bump, COMMIT), median "
               "across rounds; ratio = plugin/baseline time (lower is better);\nlog rows/commit: "
               "keys one plugin commit bumped (max_keys escalation keeps it short)")
    return "\n".join(out)


def fmt_bytes(n: int) -> str:
    return f"{n / 1024:,.0f} kB" if n < 10 * 1024 * 1024 else f"{n / 1024 / 1024:,.1f} MB"


def storage_lines(title: str, s: dict[str, Any]) -> list[str]:
    out = [f"{title}: {s['keys']:,} keys"]
    for stage, label in (("after_fold", "after folding"),
                         ("after_vacuum", "after VACUUM (what autovacuum reaches)"),
                         ("minimum", "after VACUUM FULL (the least they take)")):
        st = s[stage]
        out.append(f"  {label:<40} {fmt_bytes(st['total_bytes']):>10}  (log "
                   f"{fmt_bytes(st['log_bytes'])}, {st['log_rows']} rows; versions "
                   f"{fmt_bytes(st['versions_bytes'])})")
    out.append(f"  bytes/key: {s['bytes_per_key_after_vacuum']} after VACUUM, "
               f"{s['bytes_per_key_minimum']} minimum; multiple of the minimum: "
               f"{s['multiple_after_fold']}x after folding, {s['multiple_after_vacuum']}x "
               f"after VACUUM; log autovacuums during the run: {s['log_autovacuums']}")
    if "commits" in s:
        out.append(f"  {s['commits']:,} commits over {s['keys_written']:,} keys from "
                   f"{s['writers']} connections in {s['seconds']} s ({s['commits_per_s']:,}/s;"
                   f" synchronous_commit {s['synchronous_commit']}); folder folded "
                   f"{s['folded_by_folder']:,} rows; {s['vacuums']} VACUUMs by the bench")
        out.append(f"  peak while writing: {fmt_bytes(s['peak_bytes'])} ({s['peak_multiple']}x"
                   f" the minimum), {s['peak_log_rows']:,} log rows; batch of 500 commits p50 "
                   f"{s['batch_ms_p50']} ms, max {s['batch_ms_max']} ms")
        out.append(f"  {s['reads_sampled']} sampled reads: {s['version_regressions']} versions "
                   f"went back; keys whose final version != commits: "
                   f"{s['keys_with_wrong_version']}")
    return out


# --- main -----------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true",
                   help="the goal cases only (spread at 8 writers, hot at 32), 1.2 s x 3 "
                        "rounds, bulk with 3 rounds, no 1M-commit storage run: < 2 minutes")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds per measured round and variant (default 2.5, --quick 1.2)")
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds per case; each runs both variants (default 5, --quick 3)")
    p.add_argument("--writers", default=None,
                   help="comma-separated writer counts for every throughput scenario "
                        "(default 1,8,32; --quick: each scenario's goal count)")
    p.add_argument("--scenarios", default=None,
                   help=f"comma-separated, from: {', '.join([*SCENARIOS, BULK, STORAGE])} "
                        f"(default {','.join(DEFAULT_SCENARIOS)}; --quick "
                        f"{','.join(QUICK_SCENARIOS)})")
    p.add_argument("--storage", action="store_true",
                   help=f"run the {STORAGE} scenario (1M commits over 1,000 keys) with --quick")
    p.add_argument("--orms", default=DEFAULT_ORMS,
                   help=f"comma-separated, from: {', '.join(ORMS)} (default {DEFAULT_ORMS})")
    p.add_argument("--bulk-rows", type=int, default=100_000,
                   help="rows the bulk UPDATE changes (default 100000)")
    p.add_argument("--bulk-insert-rows", type=int, default=10_000,
                   help="rows of the bulk insert / unit-of-work flush (default 10000)")
    p.add_argument("--bulk-rounds", type=int, default=None,
                   help="bulk rounds (default: --rounds)")
    p.add_argument("--storage-commits", type=int, default=1_000_000)
    p.add_argument("--storage-keys", type=int, default=1000)
    p.add_argument("--mode", choices=("triggers", "python"), default="triggers",
                   help="plugin rounds in trigger mode (create_triggers: the database bumps, "
                        "the PostgreSQL deployment we recommend; default) or with the keys "
                        "computed and bumped from Python at COMMIT")
    p.add_argument("--no-folder", action="store_true",
                   help="no folder during plugin rounds (to see what folding costs)")
    p.add_argument("--database-url", default=os.environ.get(URL_ENV, DEFAULT_URL),
                   help=f"a PostgreSQL server URL; a fresh database is created on it and "
                        f"dropped at the end (default ${URL_ENV} or {DEFAULT_URL})")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    args.duration = args.duration if args.duration is not None else (1.2 if args.quick else 2.5)
    args.rounds = args.rounds if args.rounds is not None else (3 if args.quick else 5)
    args.bulk_rounds = args.bulk_rounds if args.bulk_rounds is not None else args.rounds
    args.warmup = min(0.5 if args.quick else 1.0, args.duration / 2)
    if args.duration <= 0 or args.rounds < 1 or args.bulk_rounds < 1:
        p.error("--duration must be > 0, --rounds and --bulk-rounds >= 1")
    if args.writers is None:
        args.writer_counts = None
    else:
        try:
            args.writer_counts = [int(w) for w in args.writers.split(",") if w.strip()]
        except ValueError:
            p.error(f"--writers takes integers like 1,8; got {args.writers!r}")
        if not args.writer_counts or min(args.writer_counts) < 1:
            p.error("--writers needs at least one count >= 1")
    default = QUICK_SCENARIOS if args.quick else DEFAULT_SCENARIOS
    chosen = args.scenarios.split(",") if args.scenarios else list(default)
    args.scenario_list = [s.strip() for s in chosen if s.strip()]
    if args.storage and STORAGE not in args.scenario_list:
        args.scenario_list.append(STORAGE)
    args.orm_list = [o.strip() for o in args.orms.split(",") if o.strip()]
    for s in args.scenario_list:
        if s not in SCENARIOS and s not in (BULK, STORAGE):
            p.error(f"unknown scenario {s!r}; known: {', '.join([*SCENARIOS, BULK, STORAGE])}")
    for o in args.orm_list:
        if o not in ORMS:
            p.error(f"unknown ORM {o!r}; known: {', '.join(ORMS)}")
    if min(args.bulk_rows, args.bulk_insert_rows, args.storage_commits,
           args.storage_keys) < 1:
        p.error("--bulk-rows, --bulk-insert-rows, --storage-* must be >= 1")
    return args


def writer_counts(args: argparse.Namespace, scenario: Scenario) -> list[int]:
    if args.writer_counts is not None:
        return list(args.writer_counts)
    return list(scenario.quick_writers) if args.quick else [1, 8, 32]


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--folder-process"]:
        return folder_process(argv[1])
    args = parse_args(argv)
    url = server_url(args.database_url)
    settings = server_settings(url)
    fsync, sync_commit = settings["fsync"], settings["synchronous_commit"]
    scenarios = [SCENARIOS[s] for s in args.scenario_list if s in SCENARIOS]
    do_bulk, do_storage = BULK in args.scenario_list, STORAGE in args.scenario_list
    max_writers = max([w for sc in scenarios for w in writer_counts(args, sc)] or [1])
    pool_size = max_writers + 2

    say(f"write_path: PostgreSQL {settings['server_version']} at "
        f"{url.render_as_string(hide_password=True)}; fsync={fsync}, "
        f"synchronous_commit={sync_commit}, max_connections={settings['max_connections']} "
        f"({settings['connections_in_use']} in use)")
    say(f"python {platform.python_version()}, SQLAlchemy {sa.__version__}, "
        f"{os.cpu_count()} CPUs; ORMs {args.orm_list}; scenarios {args.scenario_list}; "
        f"{args.rounds} rounds x {args.duration:g} s per variant, warm-up {args.warmup:g} s; "
        f"folder during plugin rounds: {'no' if args.no_folder else f'every {FOLD_INTERVAL:g} s'}; "
        f"plugin mode: {args.mode}")
    load_start = load_average()
    say(f"load average at start: {load_start} (other processes on this machine add noise)")
    warnings: list[str] = []
    if fsync != "on":
        warnings.append(f"fsync is {fsync!r} on this server: commits do not reach the disk, "
                        "the figures below are NOT representative of a production database")
    if sync_commit != "on":
        warnings.append(f"synchronous_commit is {sync_commit!r}: commits do not wait for the "
                        "WAL flush, figures are not representative")
    # Tortoise holds two pools (baseline and plugin connections), the others one; plus the
    # folder's, the checks' and the storage run's connections.
    needed = 2 * pool_size + 8
    free = int(settings["max_connections"]) - int(settings["connections_in_use"]) - 3
    if needed > free:
        warnings.append(f"up to {needed} connections are needed, the server has about {free} "
                        "free: a pool may fail to connect")
    for w in warnings:
        banner = "!" * 100
        say(banner)
        say(f"!!! WARNING: {w}")
        say(banner)
        print(f"WARNING: {w}", file=sys.stderr, flush=True)

    db_url, drop = create_database(url)
    say(f"database {db_url.database} created (dropped at the end)")
    cases: list[CaseResult] = []
    bulk_results: list[BulkResult] = []
    skipped: dict[str, str] = {}
    storage: dict[str, Any] = {}
    sanity_ok = True
    started = time.perf_counter()
    folder = DeploymentFolder(db_url, enabled=not args.no_folder)
    try:
        for orm in args.orm_list:
            try:
                target = ORMS[orm](db_url, [*scenarios, *BULK_TABLES], pool_size)
                if args.mode == "triggers":
                    target.create_triggers()
                    target.triggers = True
                    if target.bulk_bump_bound is not None:
                        target.bulk_bump_bound = trigger_bound(target.bulk_bump_bound,
                                                               SqlAlchemyTarget.MAX_KEYS)
            except ImportError as exc:  # an ORM or plugin not installed here
                skipped[orm] = repr(exc)
                warnings.append(f"{orm} skipped: {exc}")
                say(f"\n!!! {orm} skipped: {exc}")
                continue
            try:
                for scenario in scenarios:
                    t0 = time.perf_counter()
                    got, sane = run_throughput(target, scenario, writer_counts(args, scenario),
                                               args, folder)
                    cases.extend(got)
                    sanity_ok &= sane
                    say(f"  ({orm} / {scenario.name}: {time.perf_counter() - t0:.1f} s)")
                if do_bulk:
                    t0 = time.perf_counter()
                    got_bulk, sane = run_bulk(target, target.engine, args, folder)
                    bulk_results.extend(got_bulk)
                    sanity_ok &= sane
                    say(f"  ({orm} / bulk: {time.perf_counter() - t0:.1f} s)")
            finally:
                target.close()
        if cases or bulk_results:
            say("\n== storage after the run (every table above, folded)")
            storage["after_run"] = storage_stages(libpq_url(db_url))
            for line in storage_lines("reality_log + reality_versions", storage["after_run"]):
                say(line)
    finally:
        folder.close()
        drop()
    throughput_s = time.perf_counter() - started
    if do_storage:
        modes = (("scaled", None, "the deployment as it ships: folder + the server's "
                  "autovacuum"),
                 ("scaled_with_vacuum", FOLD_INTERVAL, f"folder + a plain VACUUM every "
                  f"{FOLD_INTERVAL:g} s (autovacuum at this run's pace)"))
        for name, vacuum_every, what in modes:
            say(f"\n== storage: {args.storage_commits:,} commits over {args.storage_keys:,} "
                f"keys, raw bumps, fresh database; {what}")
            t0 = time.perf_counter()
            scaled = scaled_storage(url, args.storage_commits, args.storage_keys, 2,
                                    args.seed, vacuum_every=vacuum_every)
            scaled["run_s"] = round(time.perf_counter() - t0, 1)
            storage[name] = scaled
            for line in storage_lines(name, scaled):
                say(line)
            ok = (scaled["version_regressions"] == 0 and scaled["keys_with_wrong_version"] == 0
                  and scaled["after_vacuum"]["log_rows"] == 0)
            scaled["goal"] = "storage"
            scaled["goal_met"] = ok and scaled["multiple_after_vacuum"] <= STORAGE_MULTIPLE
            scaled["goal_text"] = (f"after VACUUM within {STORAGE_MULTIPLE:g}x of the least "
                                   f"{args.storage_keys:,} keys take; no version went back")
            if not ok:
                sanity_ok = False
                say("  FAIL: a version went back, a key's version != its commits, or log rows "
                    "remained after folding")

    load_end = load_average()
    say(f"\n== results ({time.perf_counter() - started:.0f} s, throughput + bulk "
        f"{throughput_s:.0f} s; fsync={fsync}, synchronous_commit={sync_commit}; load average "
        f"{load_start} -> {load_end}; folder folded {folder.folded:,} log rows in "
        f"{folder.runs} plugin rounds, in its own process, using {folder.cpu_s:.2f} s of CPU)")
    if cases:
        say(summary_table(cases))
    if bulk_results:
        say("")
        say(bulk_table(bulk_results))
    results = [{**r, "mode": args.mode}
               for r in [c.as_json() for c in cases] + [b.as_json() for b in bulk_results]]
    conflicts = {kind: sum(r.get(kind, 0) + r.get(f"baseline_{kind}", 0) for r in results)
                 for kind in CONFLICTS.values()}
    say(f"deadlocks: {conflicts['deadlocks']}, serialization failures: "
        f"{conflicts['serialization_failures']} (must be 0)")
    goals = [f"{r['goal']} {r['orm']} {r['scenario']}/{r['writers']}: "
             f"{'met' if r['goal_met'] else 'MISSED'}" for r in results if "goal" in r]
    for name in ("scaled", "scaled_with_vacuum"):
        if name in storage:
            st = storage[name]
            goals.append(f"storage ({name}): {'met' if st['goal_met'] else 'MISSED'} "
                         f"({st['multiple_after_vacuum']}x the minimum after VACUUM, "
                         f"{st['multiple_after_fold']}x before, peak {st['peak_multiple']}x)")
    if goals:
        say("goals: " + "; ".join(goals))
    for w in warnings:
        say(f"!!! WARNING: {w}")
    if not sanity_ok:
        say("!!! SANITY CHECK FAILED: the plugin did not bump what was committed (see above)")
    out: dict[str, Any] = {
        "bench": "write_path",
        "mode": args.mode,
        "fsync": fsync,
        "synchronous_commit": sync_commit,
        "server_version": settings["server_version"],
        "max_connections": int(settings["max_connections"]),
        "sqlalchemy": sa.__version__,
        "cpus": os.cpu_count(),
        "duration_s": args.duration,
        "rounds": args.rounds,
        "bulk_rounds": args.bulk_rounds,
        "quick": args.quick,
        "folder": None if args.no_folder else {"interval_s": FOLD_INTERVAL,
                                               "folded": folder.folded, "runs": folder.runs,
                                               "process": "child", "cpu_s": round(folder.cpu_s, 2)},
        "source": source_revision(),
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "elapsed_s": round(time.perf_counter() - started, 1),
        "sanity": "ok" if sanity_ok else "FAILED",
        "deadlocks": conflicts["deadlocks"],
        "serialization_failures": conflicts["serialization_failures"],
        "skipped": skipped,
        "warnings": warnings,
        "goals": {g.name: g.text for g in GOALS},
        "results": results,
        "storage": storage,
    }
    print(json.dumps(out, ensure_ascii=False), flush=True)
    return 0 if sanity_ok else 1


if __name__ == "__main__":
    sys.exit(main())
