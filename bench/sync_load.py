#!/usr/bin/env python3
"""Sync-endpoint load benchmark: what issue 6 asks of ``POST /reality/sync``, side by side.

Every server is a real ``reality serve`` subprocess (uvicorn) on PostgreSQL; every load
generator is another process. Four parts, in one run:

* **throughput** (``tput``): ``wrk`` POSTs ``{"known": {...}}`` bodies naming 100 keys of
  which 10 % are stale (the client's version is one behind the server's, so each answer
  lists 10 changed keys) to the **cached** server (``reality serve``: each process keeps the
  versions in memory, refreshed every ``--refresh-interval`` s) and to the **naive** one
  (``reality serve --no-cache``: one query per request), each with 1 and 2 uvicorn workers.
  Absolute req/s and wrk's p99, and cached/naive (goal: ratio >= 5; aim: >= 15,000 req/s
  and p99 <= 10 ms with 2 workers). wrk runs 1 thread and 64 connections by default
  (``--threads``, ``--connections``): one wrk thread out-paces these servers, and a second
  one would take CPU from them on 2 cores. Rounds alternate the variant order (AB BA ...) and each
  round starts a fresh server (health check, sanity requests, ``--warmup`` s of wrk, then
  ``--duration`` s measured); figures are medians across rounds. Before load, each server
  must answer a stale body with exactly its 10 stale keys at the right versions and an
  up-to-date body with nothing changed (that answer's size is the **response bytes**
  figure: goal <= 100 bytes of body); during load wrk must see no non-2xx answer and no
  socket error: a benchmark that measures errors is worthless. Because req/s on a shared
  2-core machine moves with whatever else runs, each round also reports **CPU time per
  request** (user + system, from ``/proc``) of the server's processes (its process group)
  and of the PostgreSQL backends connected to the bench database: a figure that does not
  depend on the neighbours, from which capacity on dedicated cores can be estimated
  (PostgreSQL: backends alive at both ends of the round only, so a lower bound).
* **database load** (during every throughput round): queries per second per server process,
  read from PostgreSQL: ``xact_commit + xact_rollback`` of the bench database in
  ``pg_stat_database`` is sampled every 0.1 s while wrk runs (from a connection to the
  maintenance database, so the sampling itself is not counted), the rate is the
  least-squares slope of the samples from wrk's second second to its end, divided by the
  workers. The servers read in autocommit mode, so one transaction is one statement (a fold
  step is one transaction too); this counts every transaction of every server process
  (version refresh, folding) and nothing of ours (seeding, sanity and health requests happen
  before the window). PostgreSQL 15 publishes a backend's counts at most once a second
  (``pg_stat_statements`` is not preloaded here and the server's settings are never
  changed), hence the slope over many samples rather than two end points; the naive rounds,
  where queries ~ requests, show the counter works. Goal: <= 20 per process for the cached
  server, whatever the req/s.
* **visibility** (``vis``): two cached servers, 1 worker each, on different ports, same
  database. ``--probes`` times: check that both report key ``k`` (one of 20) unchanged at
  version ``v``, sleep a random 0..2 refresh intervals (so commits land at every phase of
  the refresh), bump ``k`` in a transaction of its own (psycopg + ``bump_statements``) and
  COMMIT; from the moment COMMIT returned, poll both servers (``hint: "poll"``, keep-alive
  ``http.client``, one thread per server, ~1 ms apart) until each reports ``k`` at ``v+1``.
  The delays (two per probe, one per server process) give p50/p99 (goal <= 20 / 100 ms); a
  server that takes more than 5 s counts as a timeout. Then ``--mutation-probes`` times:
  bump, COMMIT, and one request with ``hint: "mutation"`` at once: must it reflect the
  commit? (goal: always). The delays include one request's round trip and the ~1 ms pause.
* **overload** (``over``): the cached server, 1 worker, ``--max-in-flight`` 4, hit by wrk with
  ``--overload-connections`` (256) connections plus ``bench/sync_load/overload_client.py``
  (asyncio streams, 8 keep-alive connections, its own process), which splits latency by
  status: shed answers (503/429; goal p99 <= 2 ms, each with ``Retry-After`` and a
  problem+json body) and admitted ones (200; goal p99 <= 50 ms). The load is **paced**:
  each connection waits a random (exponential) think time before each request, chosen so
  that all of them together offer ``--overload-multiple`` (5) times the 1-worker cached
  capacity measured in ``tput`` (or ``--overload-rate`` req/s): many clients polling, as
  real overload comes. A closed loop (``--closed-loop``, the old measure) keeps every
  connection's request outstanding at all times, so by Little's law its latency is
  connections / answers per second (264 / 18,000 = 15 ms) however early the server sheds:
  it measures the generator's queue, not the server. A paced generator slows down too
  when the answers get slow, so the multiple reached is printed as measured next to the
  target. **Server CPU per answer** (its process group, from ``/proc``) tells how much
  shedding costs independent of the neighbours. The client's own floor on this loaded
  machine: against a trivial asyncio server answering at once it measured p50 0.9 ms, p99
  2.1 ms, so the 2 ms goal sits at what a Python client can see here. Database
  transactions/s during overload are reported too. When the load stops, one request every
  5 ms until a 200 comes back: the **recovery** time (goal <= 5 s).

The server flags ``--no-cache``, ``--refresh-interval`` and ``--max-in-flight`` are used only
if ``reality serve --help`` lists them; a missing flag is reported (then "cached" is the
server's default and the ratio means little).

Seeding: a fresh database ``reality_bench_<hex>`` is created on the server of
``--database-url`` (default ``$REALITY_BENCH_DATABASE_URL`` or
``postgresql://postgres@127.0.0.1:5432/postgres``) and dropped at the end. Its tables come
from ``create_table_statements`` + ``insert_epoch_statement``; ``--keys`` keys (10,000)
``bench:key:<n>`` are bumped 1-3 times each with ``bump_statements`` and folded, both tables
are vacuumed and analysed (as autovacuum would: the naive server should not pay for our
seeding's dead log rows), and the folded versions are checked. wrk sends ``--bodies``
different bodies in turn (each 100 random keys, 10 of them stale) from
``bench/sync_load/sync.lua``.

    python bench/sync_load.py --quick        # ~45 s (must stay < 2 min)
    python bench/sync_load.py                # 3 rounds x 10 s per case, 200 probes (~4 min)
    python bench/sync_load.py --parts tput --workers 2 --duration 20
    python3 dev.py bench sync_load --quick   # the same through the project's .venv

Needs ``wrk`` on PATH (Debian: ``apt-get install -y wrk``); the bench says so and exits 2
without it. The machine has 2 cores and the servers, wrk, the probes and PostgreSQL all
share them: absolute figures are lower than on a machine where the load comes from
elsewhere, and the load average is printed. The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit, urlunsplit

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # run from a source checkout without installing
    sys.path.insert(0, str(_ROOT))

import psycopg  # noqa: E402

from reality_core.cache import DEFAULT_INTERVAL  # noqa: E402
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
HERE: Final = Path(__file__).resolve().parent / "sync_load"
LUA: Final = HERE / "sync.lua"
OVERLOAD_CLIENT: Final = HERE / "overload_client.py"
BASE: Final = "/reality"
SYNC_PATH: Final = f"{BASE}/sync"
KEY_PREFIX: Final = "bench:key:"
VIS_PREFIX: Final = "bench:vis:"
VIS_KEYS: Final = 20
PARTS: Final = ("tput", "vis", "over")
Variant = Literal["naive", "cached"]
VARIANTS: Final[tuple[Variant, Variant]] = ("naive", "cached")
OPTIONAL_FLAGS: Final = ("--no-cache", "--refresh-interval", "--max-in-flight")
VIS_TIMEOUT: Final = 5.0
INSTALL_WRK: Final = """\
sync_load: wrk (the HTTP load generator this bench drives) is not on PATH.
Install it, then run the bench again:
    apt-get update && apt-get install -y wrk     # Debian / Ubuntu (as root, or with sudo)
    brew install wrk                             # macOS"""

# Goals of issue 6 (name -> text); checked in main().
GOALS: Final = {
    "ratio": "cached/naive req/s >= 5 (2 workers)",
    "rps": "aim: >= 15,000 req/s with 2 workers",
    "p99": "aim: p99 <= 10 ms with 2 workers",
    "response_bytes": "up-to-date client's response body <= 100 bytes",
    "db_queries": "DB queries/s per server process <= 20 (cached, any req/s)",
    "vis_p50": "COMMIT -> reported by every server process: p50 <= 20 ms",
    "vis_p99": "COMMIT -> reported by every server process: p99 <= 100 ms",
    "mutation": "sync with hint 'mutation' right after COMMIT reflects it",
    "shed_p99": "shed answers (503/429) p99 <= 2 ms, Retry-After + problem+json",
    "admitted_p99": "admitted answers under overload p99 <= 50 ms",
    "recovery": "served 200 again <= 5 s after the load stops",
}


# --- small helpers --------------------------------------------------------------------------

def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (``q`` in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def median(values: Sequence[float]) -> float | None:
    clean = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(clean) if clean else None


def rnd(value: float | None, digits: int = 2) -> float | None:
    return None if value is None or math.isnan(value) else round(value, digits)


def fmt(value: float | None, spec: str = ",.0f") -> str:
    return "n/a" if value is None or math.isnan(value) else format(value, spec)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_database(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{dbname}", parts.query, parts.fragment))


def source_revision() -> str | None:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=_ROOT, text=True,
                             capture_output=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=_ROOT, text=True,
                               capture_output=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+dirty" if dirty else "")


def reality_command() -> list[str]:
    exe = Path(sys.executable).parent / "reality"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("reality")
    return [found] if found else [sys.executable, "-m", "reality_core.cli"]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), env.get("PYTHONPATH")) if p)
    return env


def proc_cpu_seconds(select: Callable[[int, int], bool]) -> dict[int, float]:
    """CPU seconds (user + system, all threads) of the processes for which
    ``select(pid, process_group)`` is true, from ``/proc`` (Linux; empty elsewhere)."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    out: dict[int, float] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = entry.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        pid, pgrp = int(entry.parent.name), int(fields[2])
        if select(pid, pgrp):
            out[pid] = (int(fields[11]) + int(fields[12])) / tick
    return out


class CPUMeter:
    """CPU time spent by one server's processes (its process group) and by the PostgreSQL
    backends connected to the bench database, between :meth:`start` and :meth:`stop`.
    Processes present at both ends only (the servers' pools are long-lived)."""

    def __init__(self, store: Store, server: Server) -> None:
        self.store = store
        self.server = server
        self._server0: dict[int, float] = {}
        self._db0: dict[int, float] = {}
        self.server_s = math.nan
        self.db_s = math.nan

    def _backends(self) -> set[int]:
        with psycopg.connect(self.store.admin_url, autocommit=True) as conn:
            rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s",
                                (self.store.dbname,)).fetchall()
        return {int(r[0]) for r in rows}

    def _read(self) -> tuple[dict[int, float], dict[int, float]]:
        pgid = self.server.proc.pid if self.server.proc else -1
        backends = self._backends()
        return (proc_cpu_seconds(lambda _pid, pgrp: pgrp == pgid),
                proc_cpu_seconds(lambda pid, _pgrp: pid in backends))

    def start(self) -> None:
        self._server0, self._db0 = self._read()

    def stop(self) -> None:
        server1, db1 = self._read()
        if self._server0 and server1:
            self.server_s = sum(v - self._server0[k] for k, v in server1.items()
                                if k in self._server0)
        if db1:
            self.db_s = sum(v - self._db0[k] for k, v in db1.items() if k in self._db0)


# --- HTTP -----------------------------------------------------------------------------------

@dataclass(slots=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    wire_bytes: int  # status line + headers + body, as uvicorn sends them

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """One keep-alive HTTP/1.1 connection (``http.client``), reopened after an error."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.port = port
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None) -> Answer:
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                        timeout=self.timeout)
            try:
                headers = {"Content-Type": "application/json"} if body is not None else {}
                self._conn.request(method, path, body=body, headers=headers)
                resp = self._conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 2:
                    raise
                continue
            pairs = resp.getheaders()
            head = f"HTTP/1.1 {resp.status} {resp.reason}\r\n" + "".join(
                f"{k}: {v}\r\n" for k, v in pairs) + "\r\n"
            return Answer(resp.status, {k.lower(): v for k, v in pairs}, data,
                          len(head.encode("latin-1")) + len(data))
        raise AssertionError("unreachable")

    def sync(self, known: dict[str, int], hint: str | None = None) -> Answer:
        doc: dict[str, Any] = {"known": known}
        if hint is not None:
            doc["hint"] = hint
        return self.request("POST", SYNC_PATH, json.dumps(doc).encode())

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# --- servers --------------------------------------------------------------------------------

class Server:
    """``reality serve`` as a subprocess in its own process group; output to a log file."""

    def __init__(self, *, name: str, url: str, workers: int, flags: Sequence[str],
                 log_dir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.workers = workers
        self.log_path = log_dir / f"{name}-{self.port}.log"
        self.cmd = [*reality_command(), "serve", "--database-url", url, "--host", "127.0.0.1",
                    "--port", str(self.port), "--workers", str(workers), *flags]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        with self.log_path.open("ab") as log:
            log.write(f"$ {' '.join(self.cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=subprocess_env(),
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        client = Client(self.port, timeout=2.0)
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server {self.name} exited with {self.proc.returncode}"
                                       f" before answering:\n{self.log_tail()}")
                with contextlib.suppress(OSError, http.client.HTTPException):
                    if client.request("GET", f"{BASE}/health").status == 200:
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server {self.name} not healthy after {timeout} s:\n"
                                       f"{self.log_tail()}")
                time.sleep(0.1)
        finally:
            client.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        # Whatever is left of this server's own process group (uvicorn's workers).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        return proc.returncode

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])


@contextlib.contextmanager
def running(*servers: Server) -> Iterator[None]:
    try:
        for s in servers:
            s.start()
        yield
    finally:
        for s in servers:
            s.stop()


def serve_flags() -> set[str]:
    """The optional flags this ``reality serve`` has (from its ``--help``)."""
    out = subprocess.run([*reality_command(), "serve", "--help"], capture_output=True,
                         text=True, env=subprocess_env(), timeout=60)
    return {f for f in OPTIONAL_FLAGS if f in out.stdout}


def variant_flags(variant: Variant, have: set[str], refresh: float,
                  max_in_flight: int | None = None) -> list[str]:
    flags: list[str] = []
    if variant == "naive" and "--no-cache" in have:
        flags.append("--no-cache")
    if variant == "cached" and "--refresh-interval" in have:
        flags += ["--refresh-interval", str(refresh)]
    if max_in_flight is not None and "--max-in-flight" in have:
        flags += ["--max-in-flight", str(max_in_flight)]
    return flags


# --- database -------------------------------------------------------------------------------

@dataclass(slots=True)
class Store:
    admin_url: str
    dbname: str
    url: str
    versions: dict[str, int] = field(default_factory=dict)  # what we committed, per key

    def connect(self, *, autocommit: bool = False) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url, autocommit=autocommit)

    def bump(self, conn: psycopg.Connection[Any], keys: Sequence[str]) -> None:
        """Bump ``keys`` (unique) once each in ``conn``'s open transaction (not committed)."""
        with conn.cursor() as cur:
            for sql, params in bump_statements("postgresql", sorted(keys), "pyformat"):
                cur.execute(sql, params)
        for k in keys:
            self.versions[k] = self.versions.get(k, 0) + 1


def create_store(admin_url: str) -> Store:
    dbname = f"reality_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    store = Store(admin_url=admin_url, dbname=dbname, url=with_database(admin_url, dbname))
    with store.connect() as conn:
        for ddl in create_table_statements("postgresql"):
            conn.execute(ddl)
        sql, params = insert_epoch_statement("postgresql", "pyformat")
        conn.execute(sql, params)
        conn.commit()
    return store


def drop_store(store: Store) -> None:
    with psycopg.connect(store.admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{store.dbname}" WITH (FORCE)')


class XactSampler:
    """Samples the bench database's transaction count every ``period`` s in a thread (one
    connection to the maintenance database), for :meth:`rate`."""

    def __init__(self, store: Store, period: float = 0.1) -> None:
        self.store = store
        self.period = period
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="xact-sampler", daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.store.admin_url, autocommit=True) as conn:
            while not self._stop.is_set():
                row = conn.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                                   "WHERE datname = %s", (self.store.dbname,)).fetchone()
                self.samples.append((time.perf_counter(), int(row[0]) if row else 0))
                self._stop.wait(self.period)

    def __enter__(self) -> XactSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def rate(self, start: float, end: float) -> float:
        """Transactions per second between ``start`` and ``end`` (perf_counter times): the
        least-squares slope of the samples in that window. PostgreSQL 15 publishes a
        backend's counts at most once a second, so the count is a staircase that lags by up
        to a second; a slope fitted over many samples is steadier than two end points."""
        pts = [(t, float(n)) for t, n in self.samples if start <= t <= end]
        if len(pts) < 3 or pts[-1][0] - pts[0][0] < 0.5:
            return math.nan
        mt = statistics.fmean(t for t, _ in pts)
        mn = statistics.fmean(n for _, n in pts)
        den = sum((t - mt) ** 2 for t, _ in pts)
        return sum((t - mt) * (n - mn) for t, n in pts) / den if den else math.nan


def seed(store: Store, keys: int) -> list[str]:
    """Bump ``keys`` keys 1..3 times each (and the visibility keys once), fold, and check
    that the folded versions are what was committed."""
    names = [f"{KEY_PREFIX}{n}" for n in range(keys)]
    vis = [f"{VIS_PREFIX}{n}" for n in range(VIS_KEYS)]
    with store.connect() as conn:
        # One transaction per round: a key counts once per transaction (I6).
        store.bump(conn, names + vis)
        conn.commit()
        store.bump(conn, [k for n, k in enumerate(names) if n % 3 >= 1])
        conn.commit()
        store.bump(conn, [k for n, k in enumerate(names) if n % 3 == 2])
        conn.commit()
    reader = DBAPIReader.from_url(store.url, fold_threshold=None)
    try:
        reader.fold()
    finally:
        reader.close()
    with store.connect() as conn:
        left = conn.execute(f"SELECT count(*) FROM {LOG_TABLE}").fetchone()
        rows = conn.execute(f"SELECT key_name, version FROM {VERSIONS_TABLE}").fetchall()
        conn.commit()
    with store.connect(autocommit=True) as conn:
        # Folding left ~30,000 dead log rows; a deployment's autovacuum clears them between
        # folds, so the naive server's log scan should not pay for our seeding.
        conn.execute(f"VACUUM ANALYZE {LOG_TABLE}, {VERSIONS_TABLE}")
    folded = {str(k): int(v) for k, v in rows}
    remaining = int(left[0]) if left else -1
    if remaining or folded != store.versions:
        raise SanityError(f"seeding: {remaining} log rows left after folding; "
                          f"{len(folded)} folded keys vs {len(store.versions)} committed; "
                          f"versions equal: {folded == store.versions}")
    return names


class SanityError(AssertionError):
    pass


# --- bodies ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Body:
    known: dict[str, int]
    stale: dict[str, int]  # key -> the server's version

    def encode(self) -> str:
        return json.dumps({"known": self.known}, separators=(",", ":"))


def make_bodies(store: Store, names: Sequence[str], count: int, known: int, stale: float,
                rng: random.Random) -> list[Body]:
    n_stale = round(known * stale)
    out: list[Body] = []
    for _ in range(count):
        keys = rng.sample(list(names), known)
        stale_keys = set(keys[:n_stale])
        rng.shuffle(keys)
        out.append(Body(
            known={k: store.versions[k] - (1 if k in stale_keys else 0) for k in keys},
            stale={k: store.versions[k] for k in stale_keys},
        ))
    return out


def check_answers(server: Server, bodies: Sequence[Body]) -> tuple[int, int]:
    """Sanity before load: a stale body gets exactly its stale keys at the server's versions,
    an up-to-date one gets nothing. Returns the up-to-date answer's size: body, and status
    line + headers + body."""
    client = Client(server.port)
    try:
        for body in bodies[:3]:
            ans = client.request("POST", SYNC_PATH, body.encode().encode())
            if ans.status != 200:
                raise SanityError(f"{server.name}: stale body answered {ans.status}: "
                                  f"{ans.body[:300]!r}")
            changed = ans.json().get("changed", {})
            got = {k: v.get("version") for k, v in changed.items()}
            if got != body.stale:
                raise SanityError(f"{server.name}: expected {len(body.stale)} changed keys "
                                  f"{sorted(body.stale.items())[:3]}..., got {len(got)}: "
                                  f"{sorted(got.items())[:3]}...")
        fresh = {k: bodies[0].stale.get(k, v) for k, v in bodies[0].known.items()}
        ans = client.request("POST", SYNC_PATH,
                             json.dumps({"known": fresh}, separators=(",", ":")).encode())
        if ans.status != 200 or ans.json().get("changed") != {}:
            raise SanityError(f"{server.name}: up-to-date body answered {ans.status}: "
                              f"{ans.body[:300]!r}")
        return len(ans.body), ans.wire_bytes
    finally:
        client.close()


# --- wrk ------------------------------------------------------------------------------------

@dataclass(slots=True)
class WrkResult:
    requests: int
    duration_s: float
    non2xx: int
    socket_errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    raw: dict[str, Any]

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def errors(self) -> int:
        return self.non2xx + self.socket_errors


def wrk_command(port: int, bodies_file: Path, threads: int, connections: int,
                duration: float, mean_delay_ms: float = 0.0) -> list[str]:
    pacing = [f"{mean_delay_ms:.3f}"] if mean_delay_ms > 0 else []
    return ["wrk", f"-t{threads}", f"-c{max(connections, threads)}",
            f"-d{max(1, round(duration))}s", "--latency", "--timeout", "5s", "-s", str(LUA),
            f"http://127.0.0.1:{port}{SYNC_PATH}", "--", str(bodies_file), *pacing]


def parse_wrk(out: str, err: str, returncode: int) -> WrkResult:
    for line in out.splitlines():
        if line.startswith("SYNC_LOAD_RESULT "):
            raw = json.loads(line.split(" ", 1)[1])
            return WrkResult(
                requests=raw["requests"], duration_s=raw["duration_us"] / 1e6,
                non2xx=raw["non2xx"],
                socket_errors=raw["connect_errors"] + raw["read_errors"]
                + raw["write_errors"] + raw["timeouts"],
                p50_ms=raw["p50_us"] / 1000, p99_ms=raw["p99_us"] / 1000,
                max_ms=raw["max_us"] / 1000, raw=raw)
    raise RuntimeError(f"wrk exited {returncode} without a result line:\n{out}\n{err}")


def run_wrk(port: int, bodies_file: Path, threads: int, connections: int,
            duration: float) -> WrkResult:
    cmd = wrk_command(port, bodies_file, threads, connections, duration)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    return parse_wrk(done.stdout, done.stderr, done.returncode)


# --- part 1+2: throughput and database load -------------------------------------------------

@dataclass(slots=True)
class Round:
    variant: Variant
    workers: int
    wrk: WrkResult
    db_per_s: float  # transactions/s of all the server's processes while wrk ran
    response_bytes: tuple[int, int]  # up-to-date answer: body, whole HTTP response
    server_cpu_s: float  # CPU seconds of the server's processes while wrk ran
    db_cpu_s: float  # CPU seconds of the bench database's backends while wrk ran

    @property
    def server_us_per_req(self) -> float:
        return self.server_cpu_s / max(self.wrk.requests, 1) * 1e6

    @property
    def db_us_per_req(self) -> float:
        return self.db_cpu_s / max(self.wrk.requests, 1) * 1e6

    @property
    def db_per_process(self) -> float:
        return self.db_per_s / self.workers


def throughput_round(store: Store, variant: Variant, workers: int, flags: list[str],
                     bodies: Sequence[Body], bodies_file: Path, args: argparse.Namespace,
                     log_dir: Path) -> Round:
    server = Server(name=f"{variant}-w{workers}", url=store.url, workers=workers, flags=flags,
                    log_dir=log_dir)
    with running(server):
        size = check_answers(server, bodies)
        if args.warmup > 0:
            warm = run_wrk(server.port, bodies_file, args.threads, args.connections, args.warmup)
            if warm.errors:
                raise SanityError(f"{server.name}: {warm.non2xx} non-2xx answers and "
                                  f"{warm.socket_errors} socket errors during warm-up")
        cpu = CPUMeter(store, server)
        with XactSampler(store) as sampler:
            cpu.start()
            t0 = time.perf_counter()
            result = run_wrk(server.port, bodies_file, args.threads, args.connections,
                             args.duration)
            t1 = time.perf_counter()
            cpu.stop()
        if not server.alive():
            raise SanityError(f"{server.name} died during the run:\n{server.log_tail()}")
    # Skip wrk's first second: counts from before it may still be arriving then.
    return Round(variant, workers, result, sampler.rate(t0 + 1.0, t1), size, cpu.server_s,
                 cpu.db_s)


@dataclass(slots=True)
class Case:
    workers: int
    rounds: dict[Variant, list[Round]] = field(
        default_factory=lambda: {v: [] for v in VARIANTS})

    def med(self, variant: Variant, what: str) -> float | None:
        rs = self.rounds[variant]
        if what == "rps":
            return median([r.wrk.rps for r in rs])
        if what == "p99":
            return median([r.wrk.p99_ms for r in rs])
        if what == "p50":
            return median([r.wrk.p50_ms for r in rs])
        if what == "db":
            return median([r.db_per_process for r in rs])
        if what == "cpu":
            return median([r.server_us_per_req for r in rs])
        if what == "dbcpu":
            return median([r.db_us_per_req for r in rs])
        if what == "min":
            return min((r.wrk.rps for r in rs), default=None)
        if what == "max":
            return max((r.wrk.rps for r in rs), default=None)
        raise ValueError(what)

    def ratio(self) -> float | None:
        cached, naive = self.med("cached", "rps"), self.med("naive", "rps")
        return cached / naive if cached and naive else None

    def errors(self) -> int:
        return sum(r.wrk.errors for rs in self.rounds.values() for r in rs)


def run_throughput(store: Store, have: set[str], bodies: Sequence[Body], bodies_file: Path,
                   args: argparse.Namespace, log_dir: Path) -> list[Case]:
    print(f"\n== throughput: wrk -t{args.threads} -c{args.connections}, {args.rounds} round(s)"
          f" x {args.duration:g} s per variant after {args.warmup:g} s warm-up; "
          f"{args.known} known keys, {round(args.known * args.stale)} stale", flush=True)
    cases: list[Case] = []
    for workers in args.workers:
        case = Case(workers)
        cases.append(case)
        for n in range(args.rounds):
            order = VARIANTS if n % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                # Capacity is measured without shedding (wrk's closed loop always saturates
                # the server); the overload phase measures shedding with its own limit.
                flags = variant_flags(variant, have, args.refresh_interval,
                                      max(4 * args.connections, 1024))
                r = throughput_round(store, variant, workers, flags, bodies, bodies_file, args,
                                     log_dir)
                case.rounds[variant].append(r)
                print(f"  workers={workers} round {n + 1} {variant:6s}: "
                      f"{r.wrk.rps:9,.0f} req/s  p50 {r.wrk.p50_ms:6.2f} ms  "
                      f"p99 {r.wrk.p99_ms:6.2f} ms  max {r.wrk.max_ms:7.1f} ms  "
                      f"non-2xx {r.wrk.non2xx}  socket errors {r.wrk.socket_errors}  "
                      f"db {r.db_per_process:6,.1f} q/s/process  CPU/req: server "
                      f"{fmt(r.server_us_per_req)} us, PostgreSQL {fmt(r.db_us_per_req)} us",
                      flush=True)
    return cases


# --- part 3: visibility ---------------------------------------------------------------------

def poll_until(client: Client, key: str, version: int, t0: float, deadline: float) -> float:
    """Seconds from ``t0`` until the server reports ``key`` at ``version`` or later."""
    while True:
        ans = client.sync({key: version - 1}, hint="poll")
        now = time.perf_counter()
        if ans.status != 200:
            raise SanityError(f"visibility poll answered {ans.status}: {ans.body[:300]!r}")
        changed = ans.json()["changed"].get(key)
        if changed is not None:
            if changed["version"] < version:
                raise SanityError(f"{key}: server reports {changed['version']} < {version}")
            return now - t0
        if now > deadline:
            return math.inf
        time.sleep(0.001)


@dataclass(slots=True)
class Visibility:
    delays: list[float]  # seconds, sorted; inf = timeout
    timeouts: int
    mutation_reflected: int
    mutation_probes: int

    def pct_ms(self, q: float) -> float:
        return percentile(self.delays, q) * 1000


def run_visibility(store: Store, have: set[str], args: argparse.Namespace,
                   log_dir: Path) -> Visibility:
    flags = variant_flags("cached", have, args.refresh_interval)
    servers = [Server(name=f"vis-{n}", url=store.url, workers=1, flags=flags, log_dir=log_dir)
               for n in (1, 2)]
    print(f"\n== visibility: {args.probes} commits, 2 cached servers (1 worker each, ports "
          f"{servers[0].port}, {servers[1].port}), polled ~1 ms apart", flush=True)
    rng = random.Random(args.seed + 1)
    keys = [f"{VIS_PREFIX}{n}" for n in range(VIS_KEYS)]
    delays: list[float] = []
    with running(*servers), store.connect() as conn, ThreadPoolExecutor(2) as pool:
        clients = [Client(s.port) for s in servers]
        try:
            for i in range(args.probes):
                key = keys[i % len(keys)]
                v = store.versions[key]
                for c in clients:  # both up to date (and the key recently asked about)
                    ans = c.sync({key: v}, hint="poll")
                    if ans.status != 200 or ans.json()["changed"]:
                        raise SanityError(f"{key}@{v} before the bump: {ans.status} "
                                          f"{ans.body[:300]!r}")
                time.sleep(rng.uniform(0, 2 * args.refresh_interval))
                store.bump(conn, [key])
                conn.commit()
                t0 = time.perf_counter()
                futures = [pool.submit(poll_until, c, key, v + 1, t0, t0 + VIS_TIMEOUT)
                           for c in clients]
                delays += [f.result() for f in futures]
            reflected = 0
            for i in range(args.mutation_probes):
                key = keys[i % len(keys)]
                v = store.versions[key]
                store.bump(conn, [key])
                conn.commit()
                ans = clients[0].sync({key: v}, hint="mutation")
                if ans.status == 200 and ans.json()["changed"].get(key, {}).get("version") \
                        == v + 1:
                    reflected += 1
                # Leave both servers up to date for the next try.
                for c in clients:
                    poll_until(c, key, v + 1, time.perf_counter(),
                               time.perf_counter() + VIS_TIMEOUT)
        finally:
            for c in clients:
                c.close()
    delays.sort()
    vis = Visibility(delays, sum(1 for d in delays if math.isinf(d)), reflected,
                     args.mutation_probes)
    print(f"  {len(delays)} delays (2 per commit): p50 {vis.pct_ms(50):.1f} ms  "
          f"p90 {vis.pct_ms(90):.1f} ms  p99 {vis.pct_ms(99):.1f} ms  "
          f"max {vis.pct_ms(100):.1f} ms  timeouts (> {VIS_TIMEOUT:g} s) {vis.timeouts}",
          flush=True)
    print(f"  hint 'mutation' right after COMMIT reflected it {reflected}/{args.mutation_probes}"
          " times", flush=True)
    return vis


# --- part 4: overload -----------------------------------------------------------------------

@dataclass(slots=True)
class Overload:
    wrk: WrkResult
    client: dict[str, Any]
    offered_rps: float
    target_rps: float | None
    multiple: float | None
    db_per_s: float
    server_cpu_s: float
    recovery_s: float | None
    recovery_status: int | None
    after_ok: bool
    max_in_flight: int | None

    @property
    def server_us_per_answer(self) -> float:
        answers = self.wrk.requests + int(self.client["requests"])
        return self.server_cpu_s / max(answers, 1) * 1e6


CLIENT_CONNECTIONS: Final = 8


def overload_pacing(capacity: float | None, args: argparse.Namespace
                    ) -> tuple[float | None, float, float]:
    """(target req/s, wrk's mean delay per connection in ms, the client's mean interval in
    s). Without a target (no capacity measured, no ``--overload-rate``), both loops are
    closed: every connection keeps one request outstanding at all times."""
    target = args.overload_rate or (capacity * args.overload_multiple if capacity else None)
    if not target:
        return None, 0.0, 0.0
    client_rps = CLIENT_CONNECTIONS / args.client_interval
    wrk_rps = max(target - client_rps, 1.0)
    return target, args.overload_connections / wrk_rps * 1000, args.client_interval


def run_overload(store: Store, have: set[str], bodies: Sequence[Body], bodies_file: Path,
                 capacity: float | None, args: argparse.Namespace,
                 log_dir: Path) -> Overload:
    limit = args.max_in_flight if "--max-in-flight" in have else None
    flags = variant_flags("cached", have, args.refresh_interval, args.max_in_flight)
    server = Server(name="overload", url=store.url, workers=1, flags=flags, log_dir=log_dir)
    target, wrk_delay_ms, client_interval = overload_pacing(capacity, args)
    pacing = ("closed loop (no target rate)" if target is None else
              f"paced to {target:,.0f} req/s: wrk mean delay {wrk_delay_ms:.2f} ms per "
              f"connection, client mean interval {client_interval * 1000:g} ms")
    print(f"\n== overload: 1 cached worker, max-in-flight "
          f"{limit if limit is not None else 'server default (flag missing)'}; wrk "
          f"-c{args.overload_connections} + overload_client.py {CLIENT_CONNECTIONS} "
          f"connections for {args.overload_duration:g} s, {pacing}", flush=True)
    with running(server):
        check_answers(server, bodies)
        cpu = CPUMeter(store, server)
        with XactSampler(store) as sampler:
            cpu.start()
            t0 = time.perf_counter()
            client_proc = subprocess.Popen(
                [sys.executable, str(OVERLOAD_CLIENT), "--port", str(server.port), "--path",
                 SYNC_PATH, "--bodies", str(bodies_file), "--connections",
                 str(CLIENT_CONNECTIONS), "--duration", str(args.overload_duration),
                 "--interval", str(client_interval)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            wrk_proc = subprocess.Popen(
                wrk_command(server.port, bodies_file, 1, args.overload_connections,
                            args.overload_duration, wrk_delay_ms),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            wrk_out, wrk_err = wrk_proc.communicate(timeout=args.overload_duration + 60)
            c_out, c_err = client_proc.communicate(timeout=args.overload_duration + 60)
            stopped = time.perf_counter()
            cpu.stop()
        # Recovery: one request every 5 ms until a 200.
        probe = Client(server.port, timeout=5.0)
        recovery: float | None = None
        first_status: int | None = None
        try:
            while time.perf_counter() - stopped < 30:
                ans = probe.request("POST", SYNC_PATH, bodies[0].encode().encode())
                first_status = first_status or ans.status
                if ans.status == 200:
                    recovery = time.perf_counter() - stopped
                    break
                time.sleep(0.005)
            after_ok = all(probe.request("POST", SYNC_PATH, b.encode().encode()).status == 200
                           for b in bodies[:10])
        finally:
            probe.close()
        if not server.alive():
            raise SanityError(f"overload server died:\n{server.log_tail()}")
    result = parse_wrk(wrk_out, wrk_err, wrk_proc.returncode)
    if client_proc.returncode != 0:
        raise RuntimeError(f"overload_client.py failed ({client_proc.returncode}):\n{c_err}")
    client: dict[str, Any] = json.loads(c_out.strip().splitlines()[-1])
    offered = result.rps + client["requests"] / max(client["elapsed_s"], 1e-9)
    multiple = offered / capacity if capacity else None
    db = sampler.rate(t0 + 1.0, stopped)
    ov = Overload(result, client, offered, target, multiple, db, cpu.server_s, recovery,
                  first_status, after_ok, limit)
    shed, adm = client["shed"], client["admitted"]
    print(f"  wrk: {result.rps:,.0f} answers/s, {result.non2xx:,} of {result.requests:,} "
          f"non-2xx ({result.non2xx / max(result.requests, 1):.0%}), socket errors "
          f"{result.socket_errors}, p50 {result.p50_ms:.2f} ms p99 (all statuses) "
          f"{result.p99_ms:.1f} ms", flush=True)
    print(f"  offered (= answered): {offered:,.0f} req/s = "
          f"{fmt(multiple, '.1f')}x the 1-worker cached capacity ({fmt(capacity)} req/s)"
          + ("" if target is None else f"; target {target:,.0f} req/s"
             + (" NOT reached (generators or server saturated)" if offered < 0.9 * target
                else "")))
    print(f"  server CPU per answer: {fmt(ov.server_us_per_answer)} us "
          f"({cpu.server_s:.2f} CPU s over {stopped - t0:.1f} s)")
    print(f"  client: {client['by_status']}  shed p50 {shed['p50_ms']} ms p99 {shed['p99_ms']}"
          f" ms max {shed['max_ms']} ms; admitted p50 {adm['p50_ms']} ms p99 {adm['p99_ms']}"
          f" ms; Retry-After missing {client['retry_after_missing']}, not problem+json "
          f"{client['not_problem_json']}, bad problem body {client['bad_problem_body']}, "
          f"errors {client['errors']}", flush=True)
    if client.get("sample_shed"):
        print(f"  a shed answer: {json.dumps(client['sample_shed'])}")
    print(f"  DB transactions/s during overload (1 process): {db:,.1f}")
    print(f"  recovery: first status after the load {first_status}, 200 after "
          f"{fmt(recovery, '.3f')} s; next 10 requests all 200: {after_ok}", flush=True)
    return ov


# --- main -----------------------------------------------------------------------------------

def scan_logs(log_dir: Path) -> list[str]:
    """Lines of the servers' output that look like trouble."""
    found: list[str] = []
    for path in sorted(log_dir.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if any(w in line for w in ("Traceback", "ERROR", "WARNING", "Exception", "CRITICAL")):
                found.append(f"{path.name}: {line.strip()[:300]}")
    return found


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="1 round x 4 s, 50 probes, 3 s overload (< 2 min)")
    p.add_argument("--database-url", default=os.environ.get(URL_ENV, DEFAULT_URL))
    p.add_argument("--parts", default=",".join(PARTS), help=f"subset of {','.join(PARTS)}")
    p.add_argument("--workers", default="1,2", help="uvicorn worker counts (default 1,2)")
    p.add_argument("--rounds", type=int, default=None, help="default 3 (quick 1)")
    p.add_argument("--duration", type=float, default=None, help="s per round (10; quick 4)")
    p.add_argument("--warmup", type=float, default=None, help="s of wrk before (2; quick 1)")
    p.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    p.add_argument("--keys", type=int, default=10_000, help="keys seeded (10,000)")
    p.add_argument("--known", type=int, default=100, help="keys per request (100)")
    p.add_argument("--stale", type=float, default=0.10, help="stale fraction (0.10)")
    p.add_argument("--bodies", type=int, default=16, help="distinct bodies wrk rotates (16)")
    p.add_argument("--refresh-interval", type=float, default=DEFAULT_INTERVAL,
                   help="cached servers' --refresh-interval (default: reality serve's, "
                        f"{DEFAULT_INTERVAL})")
    p.add_argument("--probes", type=int, default=None, help="visibility commits (200; quick 50)")
    p.add_argument("--mutation-probes", type=int, default=None, help="(20; quick 10)")
    p.add_argument("--max-in-flight", type=int, default=4, help="overload server's limit (4)")
    p.add_argument("--overload-connections", type=int, default=256)
    p.add_argument("--overload-multiple", type=float, default=5.0,
                   help="offered load as a multiple of the 1-worker cached capacity (5)")
    p.add_argument("--overload-rate", type=float, default=None,
                   help="offered req/s instead (needed for a target without 'tput')")
    p.add_argument("--client-interval", type=float, default=0.005,
                   help="overload_client.py's mean interval per connection, s (0.005)")
    p.add_argument("--closed-loop", action="store_true",
                   help="overload without pacing: every connection always has a request "
                        "outstanding (the old measure; latency = connections / answers/s)")
    p.add_argument("--overload-duration", type=float, default=None, help="s (8; quick 3)")
    p.add_argument("--seed", type=int, default=6)
    args = p.parse_args(argv)
    q = args.quick
    for name, full, quick in (("rounds", 3, 1), ("duration", 10.0, 4.0), ("warmup", 2.0, 1.0),
                              ("probes", 200, 50), ("mutation_probes", 20, 10),
                              ("overload_duration", 8.0, 3.0)):
        if getattr(args, name) is None:
            setattr(args, name, quick if q else full)
    if args.closed_loop:
        args.overload_rate, args.overload_multiple = None, 0.0
    args.parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        p.error(f"unknown parts {sorted(unknown)}; choose from {','.join(PARTS)}")
    args.workers = [int(x) for x in args.workers.split(",") if x.strip()]
    if not 0 < args.known <= args.keys:
        p.error("--known must be between 1 and --keys")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print(INSTALL_WRK, file=sys.stderr)
        return 2
    started = time.perf_counter()
    load_start = os.getloadavg()
    have = serve_flags()
    missing = [f for f in OPTIONAL_FLAGS if f not in have]
    warnings: list[str] = []
    if missing:
        warnings.append(f"reality serve lacks {', '.join(missing)}: "
                        + ("'naive' and 'cached' are the same server; " if "--no-cache" in missing
                           else "") + "see the notes")
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
    print(f"sync_load: {platform.python_implementation()} {platform.python_version()}, "
          f"{os.cpu_count()} CPUs shared by the servers, wrk, the probes and PostgreSQL; "
          f"load average {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}")
    print(f"  {wrk_version.splitlines()[0] if wrk_version else 'wrk'}; reality serve "
          f"optional flags present: {sorted(have) or 'none'}"
          + (f"; MISSING {missing}" if missing else ""), flush=True)

    store = create_store(args.database_url)
    log_dir = Path(tempfile.mkdtemp(prefix="sync_load_"))
    cases: list[Case] = []
    vis: Visibility | None = None
    over: Overload | None = None
    sanity_errors: list[str] = []
    try:
        with psycopg.connect(args.database_url, autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            pg_version = str(row[0]) if row else "?"
        t_seed = time.perf_counter()
        names = seed(store, args.keys)
        print(f"  database {store.dbname} (PostgreSQL {pg_version}): {args.keys:,} keys seeded "
              f"and folded in {time.perf_counter() - t_seed:.1f} s; logs in {log_dir}",
              flush=True)
        rng = random.Random(args.seed)
        bodies = make_bodies(store, names, args.bodies, args.known, args.stale, rng)
        bodies_file = log_dir / "bodies.jsonl"
        bodies_file.write_text("".join(b.encode() + "\n" for b in bodies))
        try:
            if "tput" in args.parts:
                cases = run_throughput(store, have, bodies, bodies_file, args, log_dir)
            if "vis" in args.parts:
                vis = run_visibility(store, have, args, log_dir)
            if "over" in args.parts:
                one = next((c for c in cases if c.workers == 1), None)
                capacity = one.med("cached", "rps") if one else None
                over = run_overload(store, have, bodies, bodies_file, capacity, args, log_dir)
        except SanityError as exc:
            sanity_errors.append(str(exc))
            print(f"\n!! SANITY FAILURE: {exc}", flush=True)
    finally:
        drop_store(store)
    server_errors = scan_logs(log_dir)

    # --- report -----------------------------------------------------------------------------
    print("\n== summary (2 cores shared by server and load generator; medians across rounds)")
    by_workers = {c.workers: c for c in cases}
    results: list[dict[str, Any]] = []
    for c in cases:
        entry = {"workers": c.workers, "rounds": len(c.rounds["cached"]),
                 "cached_rps": rnd(c.med("cached", "rps"), 0),
                 "cached_p50_ms": rnd(c.med("cached", "p50")),
                 "cached_p99_ms": rnd(c.med("cached", "p99")),
                 "naive_rps": rnd(c.med("naive", "rps"), 0),
                 "naive_p50_ms": rnd(c.med("naive", "p50")),
                 "naive_p99_ms": rnd(c.med("naive", "p99")),
                 "ratio": rnd(c.ratio()),
                 "cached_db_queries_per_s_per_process": rnd(c.med("cached", "db"), 1),
                 "naive_db_queries_per_s_per_process": rnd(c.med("naive", "db"), 1),
                 "cached_rps_min": rnd(c.med("cached", "min"), 0),
                 "cached_rps_max": rnd(c.med("cached", "max"), 0),
                 "naive_rps_min": rnd(c.med("naive", "min"), 0),
                 "naive_rps_max": rnd(c.med("naive", "max"), 0),
                 "cached_server_cpu_us_per_req": rnd(c.med("cached", "cpu"), 0),
                 "cached_db_cpu_us_per_req": rnd(c.med("cached", "dbcpu"), 0),
                 "naive_server_cpu_us_per_req": rnd(c.med("naive", "cpu"), 0),
                 "naive_db_cpu_us_per_req": rnd(c.med("naive", "dbcpu"), 0),
                 "errors": c.errors()}
        results.append(entry)
        print(f"  {c.workers} worker(s): cached {fmt(c.med('cached', 'rps'))} req/s p99 "
              f"{fmt(c.med('cached', 'p99'), '.2f')} ms | naive {fmt(c.med('naive', 'rps'))} "
              f"req/s p99 {fmt(c.med('naive', 'p99'), '.2f')} ms | ratio "
              f"{fmt(c.ratio(), '.2f')}x | DB q/s/process cached "
              f"{fmt(c.med('cached', 'db'), '.1f')}, naive {fmt(c.med('naive', 'db'), '.1f')}"
              f" | non-2xx + socket errors {c.errors()}")
        print(f"      rounds: cached {fmt(c.med('cached', 'min'))}..{fmt(c.med('cached', 'max'))}"
              f" req/s, naive {fmt(c.med('naive', 'min'))}..{fmt(c.med('naive', 'max'))} req/s"
              f" | CPU per request: cached server {fmt(c.med('cached', 'cpu'))} us + "
              f"PostgreSQL {fmt(c.med('cached', 'dbcpu'))} us; naive server "
              f"{fmt(c.med('naive', 'cpu'))} us + PostgreSQL {fmt(c.med('naive', 'dbcpu'))} us")
    two = by_workers.get(2) or (cases[-1] if cases else None)
    rps = two.med("cached", "rps") if two else None
    p99 = two.med("cached", "p99") if two else None
    naive = two.med("naive", "rps") if two else None
    ratio = two.ratio() if two else None
    db_values = [v for c in cases if (v := c.med("cached", "db")) is not None]
    db_q = max(db_values) if db_values else None
    sizes = next((r.response_bytes for c in cases for r in c.rounds["cached"]), None)
    response_bytes, wire_bytes = sizes if sizes else (None, None)
    tput_errors = sum(c.errors() for c in cases)
    if tput_errors:
        sanity_errors.append(f"{tput_errors} non-2xx answers / socket errors under load")

    shed_p99 = over.client["shed"]["p99_ms"] if over else None
    admitted_p99 = over.client["admitted"]["p99_ms"] if over else None
    shed_ok = bool(over and over.client["shed"]["count"] and shed_p99 is not None
                   and shed_p99 <= 2 and not over.client["retry_after_missing"]
                   and not over.client["not_problem_json"]
                   and not over.client["bad_problem_body"])
    checks: dict[str, bool | None] = {
        "ratio": None if ratio is None else ratio >= 5,
        "rps": None if rps is None else rps >= 15_000,
        "p99": None if p99 is None else p99 <= 10,
        "response_bytes": None if response_bytes is None else response_bytes <= 100,
        "db_queries": None if db_q is None else db_q <= 20,
        "vis_p50": None if vis is None else vis.pct_ms(50) <= 20,
        "vis_p99": None if vis is None else vis.pct_ms(99) <= 100,
        "mutation": None if vis is None else vis.mutation_reflected == vis.mutation_probes,
        "shed_p99": None if over is None else shed_ok,
        "admitted_p99": None if over is None or admitted_p99 is None else admitted_p99 <= 50,
        "recovery": None if over is None else (over.recovery_s is not None
                                               and over.recovery_s <= 5 and over.after_ok),
    }
    figures = {
        "ratio": f"{fmt(ratio, '.2f')}x ({fmt(rps)} vs {fmt(naive)} req/s)",
        "rps": f"{fmt(rps)} req/s", "p99": f"{fmt(p99, '.2f')} ms",
        "response_bytes": f"{response_bytes} bytes of body ({wire_bytes} with headers)",
        "db_queries": f"{fmt(db_q, '.1f')} per process per s (worst cached case)",
        "vis_p50": f"{fmt(vis.pct_ms(50), '.1f') if vis else 'n/a'} ms",
        "vis_p99": f"{fmt(vis.pct_ms(99), '.1f') if vis else 'n/a'} ms",
        "mutation": f"{vis.mutation_reflected}/{vis.mutation_probes}" if vis else "n/a",
        "shed_p99": "n/a" if over is None else (
            f"{shed_p99} ms" if over.client["shed"]["count"]
            else f"nothing shed (0 of {over.client['requests']:,})"),
        "admitted_p99": f"{admitted_p99} ms" if over else "n/a",
        "recovery": f"{fmt(over.recovery_s, '.3f')} s" if over else "n/a",
    }
    for name, text in GOALS.items():
        state = {True: "met", False: "MISSED", None: "not measured"}[checks[name]]
        print(f"  {name:15s} {state:12s} {figures[name]:45s} goal: {text}")
    if missing:
        print(f"  NOTE: reality serve lacks {', '.join(missing)}; figures above are for what"
              " it has")
    for w in warnings:
        print(f"  WARNING: {w}")
    if server_errors:
        print(f"  SERVER LOG TROUBLE ({len(server_errors)} lines; logs in {log_dir}):")
        for line in server_errors[:20]:
            print(f"    {line}")
    for err in sanity_errors:
        print(f"  SANITY FAILED: {err}")
    load_end = os.getloadavg()
    elapsed = time.perf_counter() - started
    print(f"  load average at end {load_end[0]:.2f}; elapsed {elapsed:.0f} s", flush=True)

    out: dict[str, Any] = {
        "bench": "sync_load",
        "rps": rnd(rps, 0), "p99_ms": rnd(p99), "naive_rps": rnd(naive, 0),
        "ratio": rnd(ratio), "workers": two.workers if two else None,
        "db_queries_per_s": rnd(db_q, 1),
        "visibility_p50_ms": rnd(vis.pct_ms(50), 1) if vis else None,
        "visibility_p99_ms": rnd(vis.pct_ms(99), 1) if vis else None,
        "visibility_max_ms": rnd(vis.pct_ms(100), 1) if vis else None,
        "visibility_timeouts": vis.timeouts if vis else None,
        "visibility_delays": len(vis.delays) if vis else None,
        "mutation_reflected": f"{vis.mutation_reflected}/{vis.mutation_probes}" if vis else None,
        "shed_p99_ms": shed_p99, "admitted_p99_ms": admitted_p99,
        "shed_p50_ms": over.client["shed"]["p50_ms"] if over else None,
        "shed_count": over.client["shed"]["count"] if over else None,
        "overload_by_status": over.client["by_status"] if over else None,
        "overload_wrk_non2xx": over.wrk.non2xx if over else None,
        "overload_wrk_requests": over.wrk.requests if over else None,
        "overload_offered_rps": rnd(over.offered_rps, 0) if over else None,
        "overload_target_rps": rnd(over.target_rps, 0) if over else None,
        "overload_server_cpu_us_per_answer": rnd(over.server_us_per_answer, 0) if over else None,
        "overload_multiple": rnd(over.multiple) if over else None,
        "overload_db_queries_per_s": rnd(over.db_per_s, 1) if over else None,
        "max_in_flight": over.max_in_flight if over else None,
        "retry_after_missing": over.client["retry_after_missing"] if over else None,
        "not_problem_json": over.client["not_problem_json"] if over else None,
        "recovery_s": rnd(over.recovery_s, 3) if over else None,
        "response_bytes": response_bytes, "response_wire_bytes": wire_bytes,
        "results": results,
        "goals_met": checks,
        "serve_flags_missing": missing,
        "wrk": {"threads": args.threads, "connections": args.connections,
                "duration_s": args.duration, "warmup_s": args.warmup, "rounds": args.rounds},
        "keys": args.keys, "known": args.known, "stale": args.stale,
        "refresh_interval_s": args.refresh_interval,
        "probes": args.probes, "quick": args.quick, "cpus": os.cpu_count(),
        "postgresql": pg_version, "source": source_revision(),
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in load_end],
        "elapsed_s": round(elapsed, 1),
        "sanity": "FAILED" if sanity_errors else "ok",
        "sanity_errors": sanity_errors,
        "server_log_trouble": server_errors[:50],
        "warnings": warnings,
    }
    print(json.dumps(out, ensure_ascii=False), flush=True)
    return 1 if sanity_errors else 0


if __name__ == "__main__":
    sys.exit(main())
