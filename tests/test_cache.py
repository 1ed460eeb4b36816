"""The in-process version cache (issue 6): answers from memory, never loses a change.

Real databases throughout: writers commit bumps with the store's own SQL over their own
connections, folders fold, the cache refreshes, and the checks compare what the cache
reports with what was committed.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from reality_core import DatabaseURL, DBAPIReader, StoreUnavailable, SyncService, VersionCache
from reality_core.asgi import SyncASGIApp
from reality_core.errors import ConfigurationError
from reality_core.store import Snapshot, bump_statements, reset_epoch_statement
from tests.test_endpoint import Store, open_store

FAST = 0.01  # refresh and fold this often in tests: many refreshes per second of test


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    yield from open_store(request, tmp_path, request.param)


class CountingReader(DBAPIReader):
    """A real DBAPIReader that counts the statements it sends (to prove requests send none)."""

    queries = 0

    def query(self, sql: str, params: Any) -> list[Any]:
        self.queries += 1
        return super().query(sql, params)


def counting_reader(store: Store) -> CountingReader:
    url = store.url
    return CountingReader(lambda: url.dbapi_connect(timeout_ms=3000), paramstyle=url.paramstyle,
                          dialect=url.dialect, fold_threshold=None)


def wait_until(check: Any, timeout: float = 10.0, show: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not reached within {timeout} s"
                        + (f": {show()}" if show is not None else ""))
        time.sleep(0.005)


def same(a: Snapshot, b: Snapshot) -> bool:
    return (a.epoch, a.versions) == (b.epoch, b.versions)


def test_cache_reports_what_the_store_reports(store: Store) -> None:
    keys = ["a", "b", "hot", "$esc:room:"]
    for i in range(40):
        store.bump(*keys[: 1 + i % 4])
    probe = ["a", "b", "hot", "room:1", "never"]
    reader = store.reader()
    cache = VersionCache(store.reader(), interval=FAST)
    try:
        assert cache.wait_ready(10)
        expected = reader.read(probe)
        assert same(cache.read(probe), expected)
        assert reader.fold() == 100
        wait_until(lambda: same(cache.read(probe), expected))
        store.bump("a", "$esc:room:")
        wait_until(lambda: same(cache.read(probe), reader.read(probe)))
        assert cache.read(probe).version("room:1") == 11
        epoch, changed = cache.changed({"a": 0, "b": 30, "never": 0, "room:2": 11})
        assert epoch == store.epoch
        assert set(changed) == {"a"}
        assert changed["a"] == cache.read(["a"]).versions["a"].as_json()
    finally:
        cache.close()
        reader.close()


def test_requests_send_no_query(store: Store) -> None:
    """Two hundred sync requests through the real ASGI app: the database sees the cache's
    refreshes and nothing else."""
    store.bump("room:7")
    source = counting_reader(store)
    # No refresh falls inside the 200 requests (the next one is 20 s after the load), so
    # the count of statements must not move at all.
    # No wake-ups either: they come from commits (tests/test_wakeups.py), not requests.
    cache = VersionCache(source, interval=20.0, max_staleness=60.0, listen=False)
    app = SyncASGIApp(SyncService(cache))

    async def run() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            first = await client.post("/reality/sync", json={"known": {"room:7": 0}})
            assert first.json()["changed"]["room:7"]["version"] == 1
            wait_until(lambda: cache.refreshes == 1)  # the load has finished counting
            before, refreshes = source.queries, cache.refreshes
            for _ in range(200):
                response = await client.post("/reality/sync", json={"known": {"room:7": 1}})
                assert response.status_code == 200
                assert response.json()["changed"] == {}
            assert (source.queries, cache.refreshes) == (before, refreshes)

    try:
        import asyncio

        asyncio.run(run())
    finally:
        cache.close()


def test_up_to_date_answer_is_small(store: Store) -> None:
    store.bump(*(f"room:{i}" for i in range(100)))
    cache = VersionCache(store.reader(), interval=FAST)
    service = SyncService(cache)
    try:
        response = service.handle(
            b'{"known": {' + b", ".join(b'"room:%d": 1' % i for i in range(100)) + b"}}",
            "application/json")
        assert response.status == 200
        assert len(response.body) <= 100, response.body
    finally:
        service.close()


def test_c11_randomized_no_change_is_lost(store: Store) -> None:
    """Writers commit out of order (a transaction bumps, waits, commits after later ones),
    some roll back, folders fold every 10 ms, the cache refreshes every 10 ms and readers
    sample it; on PostgreSQL the cache's connections are also killed now and then. Every
    committed bump must reach the cache (versions equal the commits counted), no sampled
    version may go down, and rolled-back bumps never count."""
    rng = random.Random(611)
    keys = ["hot", "k1", "k2", "k3", "$esc:k"]
    writers, per_writer = (2, 15) if store.dialect == "sqlite" else (6, 30)
    committed: dict[str, int] = dict.fromkeys(keys, 0)
    counted = threading.Lock()
    errors: list[BaseException] = []
    stop = threading.Event()
    cache = VersionCache(store.reader(), interval=FAST, max_staleness=5.0)
    folder = store.reader()
    assert cache.wait_ready(10)

    def writer(seed: int) -> None:
        local = random.Random(seed)
        conn = store.url.dbapi_connect()
        try:
            for _ in range(per_writer):
                chosen = sorted(set(local.sample(keys, local.randint(1, 3))))
                commit = local.random() > 0.2
                cur = conn.cursor()
                try:
                    cur.execute({"sqlite": "BEGIN IMMEDIATE", "mysql": "START TRANSACTION"}
                                .get(store.dialect, "BEGIN"))
                    for sql, params in bump_statements(store.dialect, chosen, store.paramstyle):
                        cur.execute(sql, params)
                    if store.dialect != "sqlite":
                        time.sleep(local.random() * 0.03)  # commit after later transactions
                    cur.execute("COMMIT" if commit else "ROLLBACK")
                finally:
                    cur.close()
                if commit:
                    with counted:
                        for key in chosen:
                            committed[key] += 1
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    def folding() -> None:
        try:
            while not stop.is_set():
                folder.fold(batch=rng.choice([1, 3, 50]))
                time.sleep(FAST)
        except BaseException as exc:
            errors.append(exc)

    probe = ["hot", "k1", "k2", "k3", "k9"]
    samples: list[dict[str, int]] = []

    def sampling() -> None:
        try:
            while not stop.is_set():
                snapshot = cache.read(probe)
                samples.append({k: snapshot.version(k) for k in probe})
                time.sleep(0.002)
        except BaseException as exc:
            errors.append(exc)

    killed: list[bool] = []

    def killing() -> None:
        killer = store.url.dbapi_connect()
        try:
            while not stop.wait(0.15):
                cur = killer.cursor()
                cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                            "datname = current_database() AND pid <> pg_backend_pid() AND "
                            "query LIKE %s", ("%UNION ALL SELECT 3%",))
                killed.extend(row[0] for row in cur.fetchall())
                cur.close()
        finally:
            killer.close()

    threads = [threading.Thread(target=writer, args=(rng.random(),)) for _ in range(writers)]
    background = [threading.Thread(target=folding), threading.Thread(target=sampling)]
    if store.dialect == "postgresql":
        background.append(threading.Thread(target=killing))
    try:
        for thread in [*threads, *background]:
            thread.start()
        for thread in threads:
            thread.join(120)
        folder.fold()
        stop.set()
        for thread in background:
            thread.join(30)
        assert not errors, errors
        marker = committed.pop("$esc:k")
        # "$esc:k" escalates every key starting with "k".
        expected = {k: n + (marker if k.startswith("k") else 0)
                    for k, n in committed.items()} | {"k9": marker}
        def now() -> dict[str, int]:
            return {k: cache.read(probe).version(k) for k in probe}

        wait_until(lambda: now() == expected,
                   show=lambda: f"cache {now()}, committed {expected}, "
                                f"store { {k: store.version(k) for k in probe} }")
        assert samples, "the sampler never read the cache"
        if store.dialect == "postgresql":
            assert any(killed), "no cache connection was ever killed"
        for before, after in itertools.pairwise(samples):
            for key in probe:
                assert after[key] >= before[key], (key, before, after)
    finally:
        stop.set()
        cache.close()
        folder.close()


def test_reset_epoch_reloads(store: Store) -> None:
    store.bump("a")
    cache = VersionCache(store.reader(), interval=FAST)
    try:
        assert cache.wait_ready(10)
        old = cache.changed({"a": 0})[0]
        cur = store._conn.cursor()
        cur.execute(*reset_epoch_statement(store.paramstyle))
        cur.close()
        wait_until(lambda: cache.changed({"a": 0})[0] == store.epoch != old)
        assert cache.read(["a"]).version("a") == 1
    finally:
        cache.close()


def test_restored_backup_reloads(store: Store) -> None:
    """The fold sequence going back (a restore) must not leave versions the cache made up."""
    store.bump("a")
    reader = store.reader()
    cache = VersionCache(store.reader(), interval=FAST)
    try:
        reader.fold()
        store.bump("a")
        reader.fold()
        assert cache.wait_ready(10)
        wait_until(lambda: cache.read(["a"]).version("a") == 2)
        cur = store._conn.cursor()
        cur.execute("UPDATE reality_versions SET version = 7, fold_seq = 1")
        cur.execute("UPDATE reality_meta SET value = '1' WHERE name = 'fold_seq'")
        cur.close()
        wait_until(lambda: cache.read(["a"]).version("a") == 7)
    finally:
        cache.close()
        reader.close()


def test_mutation_hint_sees_the_clients_own_commit(store: Store) -> None:
    """A long refresh interval, a commit, and at once a sync with hint "mutation": it must
    report the commit (the server waits for a refresh that began after the request)."""
    cache = VersionCache(store.reader(), interval=0.5, max_staleness=5.0)
    service = SyncService(cache)
    try:
        assert cache.wait_ready(10)
        for n in range(1, 4):
            store.bump("room:7")
            result = service.sync({"room:7": n - 1}, hint="mutation")
            assert result["changed"]["room:7"]["version"] == n
    finally:
        service.close()


def test_no_refresh_means_503_then_recovery(pg_server_url: str) -> None:
    """The database refuses connections: reads fail with StoreUnavailable within
    max_staleness (never hang), health says why, and service resumes by itself."""
    from tests import dbs

    url = dbs.create_pg_database(pg_server_url)
    store = Store(url)
    admin = DatabaseURL.parse(pg_server_url).dbapi_connect()
    name = store.url.database
    cache = VersionCache(store.reader(), interval=FAST, max_staleness=0.5)
    service = SyncService(cache)
    try:
        store.bump("a")
        assert cache.wait_ready(10)
        cur = admin.cursor()
        cur.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
        cur.close()
        deadline = time.monotonic() + 10
        while True:
            began = time.monotonic()
            response = service.handle(b'{"known": {"a": 0}}', "application/json")
            assert time.monotonic() - began < 1.0
            if response.status == 503:
                break
            assert response.status == 200
            assert time.monotonic() < deadline, "never noticed the outage"
            time.sleep(0.02)
        began = time.monotonic()
        with pytest.raises(StoreUnavailable):  # known to be failing: no wait
            service.sync({"a": 0}, hint="mutation")
        assert time.monotonic() - began < 1.0
        assert dict(response.headers)["retry-after"] == "2"
        assert b"store_unavailable" in response.body
        assert service.health().status == 503
        with pytest.raises(StoreUnavailable):
            cache.read(["a"])
        cur = admin.cursor()
        cur.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        cur.close()
        wait_until(lambda: service.health().status == 200)
        assert service.sync({"a": 0})["changed"]["a"]["version"] == 1
    finally:
        service.close()
        store.close()
        admin.close()
        dbs.drop_pg_database(url, pg_server_url)


def test_missing_tables_say_so(tmp_path: Path) -> None:
    import sqlite3

    sqlite3.connect(tmp_path / "empty.db").close()
    cache = VersionCache(DBAPIReader.from_url(f"sqlite:///{tmp_path}/empty.db"),
                         interval=FAST, max_staleness=0.5)
    service = SyncService(cache)
    try:
        response = service.handle(b'{"known": {"a": 0}}', "application/json")
        assert response.status == 503
        assert b"store_not_ready" in response.body
    finally:
        service.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"interval": 0}, "interval must be a positive number"),
        ({"interval": True}, "interval must be a positive number"),
        ({"max_staleness": "2"}, "max_staleness must be a positive number"),
        ({"interval": 1.0, "max_staleness": 0.5}, "must be longer than interval"),
    ],
)
def test_bad_settings_are_refused(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    reader = DBAPIReader.from_url(f"sqlite:///{tmp_path}/x.db")
    with pytest.raises(ConfigurationError, match=message):
        VersionCache(reader, **kwargs)
    with pytest.raises(ConfigurationError, match="source must be a DBAPIReader"):
        VersionCache("sqlite:///x.db")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def primary_and_replica() -> Iterator[tuple[str, str]]:
    """A throwaway PostgreSQL primary and a streaming replica of it, from the local
    binaries (the shared server's pg_hba allows no replication connections)."""
    from tests import dbs

    try:
        primary = dbs.start_local_cluster()
    except RuntimeError as exc:
        pytest.fail(f"cannot start a local PostgreSQL cluster for the replica test: {exc}")
    try:
        Store(primary.url).close()  # Reality's tables, before the replica copies the cluster
        replica = dbs.start_replica(primary)
        try:
            yield primary.url, replica.url
        finally:
            replica.stop()
    finally:
        primary.stop()


@pytest.mark.postgres
def test_refreshes_read_the_replica(primary_and_replica: tuple[str, str]) -> None:
    """With a read replica, refreshes (and the first load) go to the replica; the primary
    answers only folds and one WAL-position query per mutation request, and a mutation
    request still sees the client's own commit. When the replica stops replaying, the
    mutation request fails with StoreUnavailable in bounded time instead of lying."""
    primary_url, replica_url = primary_and_replica
    store = Store(primary_url)
    replica_conn = DatabaseURL.parse(replica_url).dbapi_connect()
    primary = counting_reader(store)
    replica_url_parsed = DatabaseURL.parse(replica_url)
    replica = CountingReader(lambda: replica_url_parsed.dbapi_connect(timeout_ms=3000),
                             paramstyle="format", dialect="postgresql", fold_threshold=None)
    cache = VersionCache(primary, replica=replica, interval=FAST, max_staleness=5.0)
    service = SyncService(cache)
    try:
        assert cache.wait_ready(10)
        for n in range(1, 6):
            store.bump("room:7")
            assert service.sync({"room:7": n - 1}, hint="mutation")["changed"]["room:7"][
                "version"] == n
        assert primary.queries == 5  # one pg_current_wal_insert_lsn() per mutation request
        assert replica.queries >= 5
        wait_until(lambda: service.sync({"room:7": 0})["changed"]["room:7"]["version"] == 5)

        replica_conn.cursor().execute("SELECT pg_wal_replay_pause()")
        store.bump("room:7")
        began = time.monotonic()
        with pytest.raises(StoreUnavailable, match="did not replay"):
            cache.wait_fresh(timeout=0.5)
        assert time.monotonic() - began < 3
        # Meanwhile every other request is answered from the replica's (older) state.
        assert service.sync({"room:7": 5})["changed"] == {}
        replica_conn.cursor().execute("SELECT pg_wal_replay_resume()")
        assert service.sync({"room:7": 5}, hint="mutation")["changed"]["room:7"]["version"] == 6
    finally:
        service.close()
        replica_conn.close()
        store.close()


def test_a_replica_must_be_postgresql(tmp_path: Path) -> None:
    reader = DBAPIReader.from_url(f"sqlite:///{tmp_path}/x.db")
    with pytest.raises(ConfigurationError, match="streaming replica"):
        VersionCache(reader, replica=DBAPIReader.from_url(f"sqlite:///{tmp_path}/y.db"))


def test_the_cache_thread_folds_in_place_of_a_refresh(store: Store) -> None:
    """SyncService(cache, fold_interval=...) folds from the cache's own thread (no Folder
    thread, no extra statements per interval), and only while the log has rows."""
    cache = VersionCache(store.reader(), interval=FAST)
    service = SyncService(cache, fold_interval=0.05)
    try:
        assert cache.fold_interval == 0.05
        for _ in range(20):
            store.bump("hot", "cold")
        assert service.sync({"hot": 0}, hint="mutation")["changed"]["hot"]["version"] == 20
        wait_until(lambda: int(store.query("SELECT COUNT(*) FROM reality_log")[0][0]) == 0)
        assert service.sync({"hot": 20, "cold": 0})["changed"]["cold"]["version"] == 20
        assert service.sync({"hot": 20, "cold": 20})["changed"] == {}
    finally:
        service.close()


@pytest.mark.postgres
def test_c12_database_restart_loses_nothing() -> None:
    """The database restarts under a running cache (its own throwaway cluster): reads fail
    with StoreUnavailable while it is down (never a wrong version), the cache reconnects by
    itself, and every commit from before, during-the-gap and after is reported exactly."""
    from tests import dbs

    try:
        cluster = dbs.start_local_cluster()
    except RuntimeError as exc:
        pytest.fail(f"cannot start a local PostgreSQL cluster for the restart test: {exc}")
    store = Store(cluster.url)
    cache = VersionCache(store.reader(), interval=FAST, max_staleness=0.5)
    seen: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def sampling() -> None:
        while not stop.is_set():
            try:
                seen.append(cache.read(["room:7"]).version("room:7"))
            except StoreUnavailable:
                pass  # the database is down: no answer is the right answer
            except BaseException as exc:
                errors.append(exc)
            time.sleep(0.002)

    sampler = threading.Thread(target=sampling)
    try:
        for _ in range(5):
            store.bump("room:7")
        assert cache.wait_ready(10)
        sampler.start()
        wait_until(lambda: cache.read(["room:7"]).version("room:7") == 5)
        store.close()
        dbs._run_pg([str(cluster.bindir / "pg_ctl"), "restart", "-D", str(cluster.datadir),
                     "-m", "fast", "-w", "-t", "60",
                     # (a log file, or the new postmaster would hold our output pipe open)
                     "-l", str(cluster.datadir / "server.log")])
        store = Store(cluster.url)
        for _ in range(3):
            store.bump("room:7")
        wait_until(lambda: cache.ready and cache.read(["room:7"]).version("room:7") == 8)
        stop.set()
        sampler.join(10)
        assert not errors, errors
        assert seen
        assert all(a <= b for a, b in itertools.pairwise(seen)), seen
    finally:
        stop.set()
        cache.close()
        store.close()
        cluster.stop()


def test_keys_loaded_packed_are_found_promoted_and_overridden(store: Store) -> None:
    """Folded before the cache starts, so the first load packs them (the cold store): every
    key must be found by its exact bytes (neighbours, prefixes, non-ASCII, case), changes
    after the load must win, and escalation markers from the load must still apply."""
    keys = ["a", "ab", "b", "Room", "room", "room:1", "ключ:ü", "zz", "$row:t:1", "$esc:esc:"]
    for n, key in enumerate(keys):
        for _ in range(n + 1):
            store.bump(key)
    reader = store.reader()
    reader.fold()
    probe = [*keys, "aa", "room:", "esc:9", "zzz", "ключ", "A"]
    cache = VersionCache(store.reader(), interval=FAST)
    try:
        assert cache.wait_ready(10)
        assert same(cache.read(probe), reader.read(probe))
        assert cache.read(["esc:9"]).version("esc:9") == 10  # the marker, from the load
        for key in ("ab", "ключ:ü", "new"):
            store.bump(key)
        reader.fold()
        wait_until(lambda: same(cache.read([*probe, "new"]), reader.read([*probe, "new"])))
        assert cache.read(["ab"]).version("ab") == 3
        _epoch, changed = cache.changed({"ab": 3, "b": 0, "ключ:ü": 7, "nope": 0})
        assert set(changed) == {"b", "ключ:ü"}
        assert changed["ключ:ü"]["version"] == 8
    finally:
        cache.close()
        reader.close()


class HangingReader(DBAPIReader):
    """A real reader whose next statement, once armed, never returns until released: what a
    connection that goes silent (no reply, no reset) does to the thread using it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.armed = threading.Event()
        self.release = threading.Event()
        self.hung = threading.Event()

    def query(self, sql: str, params: Any) -> list[Any]:
        if self.armed.is_set():
            self.armed.clear()
            self.hung.set()
            self.release.wait(30)
        return super().query(sql, params)


def test_a_stuck_refresh_is_replaced(store: Store) -> None:
    url = store.url
    source = HangingReader(lambda: url.dbapi_connect(timeout_ms=3000), paramstyle=url.paramstyle,
                           dialect=url.dialect, fold_threshold=None)
    cache = VersionCache(source, interval=FAST, max_staleness=0.3)
    cache.stuck_after = 0.6
    try:
        store.bump("a")
        assert cache.wait_ready(10)
        source.armed.set()
        assert source.hung.wait(10)
        store.bump("a")
        time.sleep(0.7)  # stale, and stuck for longer than stuck_after
        with pytest.raises(StoreUnavailable):
            cache.read(["a"])  # ...which notices and starts a new refresh thread
        wait_until(lambda: cache.ready and cache.read(["a"]).version("a") == 2)
        source.release.set()  # the abandoned refresh finishes; its result is ignored
        store.bump("a")
        wait_until(lambda: cache.read(["a"]).version("a") == 3)
    finally:
        source.release.set()
        cache.close()


def test_folding_never_starves_refreshes(store: Store) -> None:
    """A long refresh interval with frequent folding: every tick still refreshes."""
    cache = VersionCache(store.reader(), interval=0.3, max_staleness=1.0)
    service = SyncService(cache, fold_interval=0.05)
    try:
        assert cache.wait_ready(10)
        for n in range(1, 6):
            store.bump("a")
            wait_until(lambda n=n: cache.ready and cache.read(["a"]).version("a") == n)
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            assert cache.ready
            time.sleep(0.05)
    finally:
        service.close()


class SlowReader(DBAPIReader):
    """A real reader whose every statement takes ``delay`` more seconds (a slow network)."""

    delay = 0.0

    def query(self, sql: str, params: Any) -> list[Any]:
        time.sleep(self.delay)
        return super().query(sql, params)


def test_a_long_first_load_is_not_mistaken_for_a_stuck_one(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first load of many pages takes longer than stuck_after in all; requests arriving
    meanwhile must not restart it (only one statement running too long is "stuck")."""
    import reality_core.cache

    monkeypatch.setattr(reality_core.cache, "PAGE", 2)
    for i in range(12):
        store.bump(f"k{i}")
    folder = store.reader()
    folder.fold()
    folder.close()
    url = store.url
    source = SlowReader(lambda: url.dbapi_connect(timeout_ms=3000), paramstyle=url.paramstyle,
                        dialect=url.dialect, fold_threshold=None)
    source.delay = 0.1  # 9+ statements: about a second in all
    cache = VersionCache(source, interval=FAST, max_staleness=5.0)
    cache.stuck_after = 0.5
    try:
        cache.start()
        began = time.monotonic()
        while not cache.loaded:
            cache.start()  # what every request does
            assert time.monotonic() - began < 20, "the first load never finished"
            time.sleep(0.05)
        assert cache.read(["k0", "k11"]).version("k11") == 1
    finally:
        cache.close()


def test_once_a_refresh_has_failed_waits_end_at_once(tmp_path: Path) -> None:
    """Nothing loaded yet and the store failing: after the first failed attempt, requests
    (mutation or not) get their 503 at once instead of waiting max_staleness each."""
    cache = VersionCache(DBAPIReader.from_url(f"sqlite:///{tmp_path}/no-tables.db"),
                         interval=0.5, max_staleness=3.0)
    service = SyncService(cache)
    try:
        service.handle(b'{"known": {"a": 0}}', "application/json")  # the first attempt
        for hint in ("poll", "mutation"):
            began = time.monotonic()
            body = b'{"known": {"a": 0}, "hint": "%s"}' % hint.encode()
            assert service.handle(body, "application/json").status == 503
            assert time.monotonic() - began < 0.5, hint
    finally:
        service.close()
