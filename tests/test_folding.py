"""The version log and its folding (issue: hot keys without a global lock, bounded storage).

Writers append; folders move log rows into counts. These tests run real writers, folders and
readers at once, for seconds at most, and check the invariants: every commit lands, no
reader ever sees a version go down, rolled-back bumps never count, and folding leaves every
version where it was.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reality_core import DBAPIReader, SyncService
from reality_core.cli import main as cli_main
from reality_core.store import bump_statements, fold
from tests.test_endpoint import Store, open_store


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    yield from open_store(request, tmp_path, request.param)


def log_rows(store: Store) -> int:
    return int(store.query("SELECT COUNT(*) FROM reality_log")[0][0])


def bump_in_transaction(conn: Any, store: Store, keys: list[str], *, commit: bool) -> None:
    cur = conn.cursor()
    try:
        if store.dialect == "sqlite":
            cur.execute("BEGIN IMMEDIATE")
        else:
            cur.execute("START TRANSACTION" if store.dialect == "mysql" else "BEGIN")
        for sql, params in bump_statements(store.dialect, sorted(keys), store.paramstyle):
            cur.execute(sql, params)
        cur.execute("COMMIT" if commit else "ROLLBACK")
    finally:
        cur.close()


def test_fold_keeps_every_version_and_empties_the_log(store: Store) -> None:
    keys = ["hot", "a", "b", "$esc:room:"]
    for i in range(30):
        store.bump(*keys[: 1 + i % 4])
    reader = store.reader()
    try:
        probe = ["hot", "a", "b", "room:1"]
        before = {k: reader.read(probe).version(k) for k in probe}
        assert before == {"hot": 30, "a": 22, "b": 14, "room:1": 7}
        assert reader.fold() == 73
        assert log_rows(store) == 0
        assert {k: reader.read(probe).version(k) for k in probe} == before
        store.bump("hot")
        assert reader.read(["hot"]).version("hot") == 31
        assert reader.fold() == 1
        assert reader.read(["hot"]).version("hot") == 31
    finally:
        reader.close()


def test_hot_key_writers_folders_and_readers_at_once(store: Store) -> None:
    """Many writers commit (or roll back) on one hot key while a folder folds and readers
    sample: every commit lands, nothing rolled back counts, no version ever goes down."""
    writers, per_writer = (2, 20) if store.dialect == "sqlite" else (6, 25)
    url = store.url
    committed = [0] * writers
    errors: list[BaseException] = []
    stop = threading.Event()
    seen: list[list[int]] = []

    def writer(n: int) -> None:
        conn = url.dbapi_connect()
        try:
            for i in range(per_writer):
                commit = (i + n) % 4 != 0
                bump_in_transaction(conn, store, ["hot", f"w{n}"], commit=commit)
                committed[n] += commit
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            conn.close()

    def folder() -> None:
        conn = url.dbapi_connect()
        try:
            while not stop.is_set():
                fold(conn, store.dialect, store.paramstyle, batch=7)
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)
        finally:
            conn.close()

    def reader_loop() -> None:
        reader = DBAPIReader.from_url(url, pool_size=1, fold_threshold=None)
        samples: list[int] = []
        try:
            while not stop.is_set():
                samples.append(reader.read(["hot"]).version("hot"))
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)
        finally:
            reader.close()
            seen.append(samples)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    helpers = [threading.Thread(target=folder), threading.Thread(target=reader_loop),
               threading.Thread(target=reader_loop)]
    for t in helpers + threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    stop.set()
    for t in helpers:
        t.join(timeout=60)
    assert not errors, errors
    total = sum(committed)
    final = store.reader()
    try:
        assert final.read(["hot"]).version("hot") == total
        for n in range(writers):
            assert final.read([f"w{n}"]).version(f"w{n}") == committed[n]
        final.fold()
        assert final.read(["hot"]).version("hot") == total
    finally:
        final.close()
    for samples in seen:
        assert samples, "a reader never got to read"
        assert all(a <= b for a, b in itertools.pairwise(samples)), "went down"
        assert samples[-1] <= total


def test_c11_a_late_commit_is_not_skipped_by_folding(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """T1 appends first but commits last; a fold runs in between. T1's bump must still be
    counted: folding only ever takes committed rows, and reads have no cursor to skip."""
    for pg in open_store(request, tmp_path, "postgresql"):
        t1, t2 = pg.url.dbapi_connect(), pg.url.dbapi_connect()
        reader = pg.reader()
        try:
            for conn in (t1, t2):
                conn.autocommit = False
            for conn in (t1, t2):  # T1 takes the lower log id
                for sql, params in bump_statements("postgresql", ["k"], "format"):
                    conn.cursor().execute(sql, params)
            t2.commit()  # T2 commits first
            assert reader.read(["k"]).version("k") == 1
            assert reader.fold() == 1  # T2's row; T1's is invisible to the fold, not lost
            t1.commit()
            assert reader.read(["k"]).version("k") == 2
            assert reader.fold() == 1
            assert reader.read(["k"]).version("k") == 2
        finally:
            reader.close()
            t1.close()
            t2.close()


def test_storage_stays_bounded_with_folding(store: Store) -> None:
    """Many commits over a few keys: after folding, one row per key, whatever the count."""
    keys = [f"k{i}" for i in range(20)]
    for _ in range(25):
        for sql, params in bump_statements(store.dialect, keys, store.paramstyle):
            cur = store._conn.cursor()
            cur.execute(sql, params)
            cur.close()
    assert log_rows(store) == 500
    reader = store.reader()
    try:
        reader.fold()
        assert log_rows(store) == 0
        assert int(store.query("SELECT COUNT(*) FROM reality_versions")[0][0]) == 20
        assert {reader.read(keys).version(k) for k in keys} == {25}
    finally:
        reader.close()


def test_reads_fold_when_the_log_is_long(store: Store) -> None:
    reader = DBAPIReader.from_url(store.url, fold_threshold=10)
    try:
        for _ in range(12):
            store.bump("busy")
        assert reader.read(["busy"]).version("busy") == 12  # triggers a background fold
        for _ in range(100):
            if log_rows(store) == 0:
                break
            threading.Event().wait(0.05)
        assert log_rows(store) == 0
        assert reader.read(["busy"]).version("busy") == 12
    finally:
        reader.close()


def test_sync_service_folds_in_the_background_and_stops(store: Store) -> None:
    reader = DBAPIReader.from_url(store.url, fold_threshold=None)
    service = SyncService(reader, fold_interval=0.05)
    try:
        store.bump("x")
        assert service.sync({"x": 0})["changed"]["x"]["version"] == 1
        for _ in range(100):
            if log_rows(store) == 0:
                break
            threading.Event().wait(0.05)
        assert log_rows(store) == 0
    finally:
        service.close()
        reader.close()


def test_cli_fold(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    store.bump("a", "b")
    assert cli_main(["fold", "--database-url", str(store.url)]) == 0
    assert "folded 2" in capsys.readouterr().err
    assert log_rows(store) == 0


def test_cli_reset_epoch(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    before = store.epoch
    reader = store.reader()
    try:
        assert reader.read(["a"]).epoch == before
        assert cli_main(["reset-epoch", "--database-url", str(store.url)]) == 0
        assert "new epoch" in capsys.readouterr().err
        assert store.epoch != before
        assert reader.read(["a"]).epoch == store.epoch
    finally:
        reader.close()


def test_cli_refuses_missing_stores_without_creating_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.db"
    for command in ("fold", "reset-epoch"):
        assert cli_main([command, "--database-url", f"sqlite:///{missing}"]) == 1
        assert "no SQLite database" in capsys.readouterr().err
    assert not missing.exists()
    empty = tmp_path / "empty.db"
    import sqlite3

    sqlite3.connect(empty).close()
    assert cli_main(["reset-epoch", "--database-url", f"sqlite:///{empty}"]) == 1
    assert "reality migrate" in capsys.readouterr().err


def test_folding_vacuums_the_log_at_most_every_few_seconds(store: Store) -> None:
    """After a fold that moved rows, PostgreSQL's log and counts are vacuumed (their space
    is reused long before autovacuum's next visit), at most once per interval; other
    databases need no VACUUM and get none."""
    reader = store.reader()
    try:
        store.bump("a")
        assert reader.fold() == 1
        ran = reader.vacuum_if_due(min_interval=60)
        assert ran is (store.dialect == "postgresql")
        assert reader.vacuum_if_due(min_interval=60) is False  # not due again yet
        if store.dialect == "postgresql":
            rows = store.query("SELECT vacuum_count FROM pg_stat_user_tables "
                               "WHERE relname = 'reality_log'")
            deadline = time.monotonic() + 10  # statistics are published with a delay
            while int(rows[0][0]) < 1 and time.monotonic() < deadline:
                time.sleep(0.2)
                rows = store.query("SELECT vacuum_count FROM pg_stat_user_tables "
                                   "WHERE relname = 'reality_log'")
            assert int(rows[0][0]) >= 1
    finally:
        reader.close()


@pytest.fixture
def pg_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    yield from open_store(request, tmp_path, "postgresql")


def test_a_bloated_fold_seq_index_is_rebuilt(pg_store: Store) -> None:
    """PostgreSQL: when the fold_seq index outgrows its table, the VACUUM after a fold
    rebuilds it (REINDEX CONCURRENTLY), leaving the versions untouched."""
    store = pg_store
    reader = store.reader()
    conn = store.url.dbapi_connect()
    try:
        for i in range(20):
            store.bump(f"k{i}")
        assert reader.fold() == 20
        # Index entries whose rows are gone at the table's end: VACUUM truncates the table,
        # the index keeps its pages (what fold churn does to it, made quickly).
        conn.execute("INSERT INTO reality_versions (key_name, version, hash, updated_at, "
                     "fold_seq) SELECT 'zz' || g, 1, '', 0, g FROM generate_series(1, 40000) g")
        conn.execute("DELETE FROM reality_versions WHERE key_name LIKE 'zz%'")
        size = "SELECT pg_relation_size('ix_reality_versions_fold_seq')"
        bloated = int(store.query(size)[0][0])
        assert reader.vacuum_if_due(min_interval=0)
        assert reader.reindexed == 1
        assert int(store.query(size)[0][0]) < bloated / 10
        assert reader.read([f"k{i}" for i in range(20)]).version("k7") == 1
        assert reader.vacuum_if_due(min_interval=0)
        assert reader.reindexed == 1  # looked at again only after REINDEX_CHECK_INTERVAL
    finally:
        conn.close()
        reader.close()
