"""Trigger mode under concurrency (PostgreSQL): many writers on one hot table key, with
several statements per transaction (so one transaction leaves several log rows per key),
rollbacks, savepoints rolled back, a folder folding in small batches (so fold boundaries fall
between a transaction's rows) and readers sampling all the while.

Checked: every committed transaction moves the hot key by exactly one, nothing rolled back
counts, no reader ever sees the version go down, and a fold never counts a transaction twice.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from reality_core import DBAPIReader
from reality_core.keys import declare, row_key, table_key
from reality_core.store import LOG_TABLE, fold
from reality_core.triggers import TriggerSpec, trigger_statements
from reality_core.urls import DatabaseURL
from tests import dbs

pytestmark = pytest.mark.postgres

HOT = table_key("orders")


@pytest.fixture(params=["counted", "exact"])
def url(pg_server_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """``counted``: room_id is nullable, so the trigger counts each statement's rows with a
    query; ``exact``: room_id is NOT NULL, so it reads them off the log rows it appended."""
    db = dbs.create_pg_database(pg_server_url)
    libpq = DatabaseURL.parse(db).libpq()
    exact = request.param == "exact"
    with psycopg.connect(libpq, autocommit=True) as conn:
        dbs.create_reality_tables(conn, "postgresql", "pyformat")
        conn.execute("CREATE TABLE orders (id integer PRIMARY KEY, room_id integer"
                     + (" NOT NULL)" if exact else ")"))
        decl = declare(owner="orders", table="orders", columns=["id", "room_id"],
                       primary_key=["id"], keys=["room:{room_id}"])
        statements = trigger_statements(TriggerSpec(decl, 1000),
                                        {"id": "int4", "room_id": "int4"},
                                        {"id", "room_id"} if exact else {"id"})
        assert ("GET DIAGNOSTICS" in statements[0]) is exact
        assert ("SELECT count(*)" in statements[0]) is not exact
        for ddl in statements:
            conn.execute(ddl)
    try:
        yield libpq
    finally:
        dbs.drop_pg_database(db, pg_server_url)


def sample_hot(url: str, stop: threading.Event, samples: list[int],
               errors: list[BaseException]) -> None:
    """Read the hot key's version over and over until ``stop`` (a reader thread)."""
    reader = DBAPIReader.from_url(url, fold_threshold=None)
    try:
        while not stop.is_set():
            samples.append(reader.read([HOT]).version(HOT))
    except BaseException as exc:
        errors.append(exc)
    finally:
        reader.close()


def test_hot_key_writers_with_multi_statement_transactions_folders_and_readers(
        url: str) -> None:
    writers, per_writer = 6, 30
    committed = [0] * writers
    errors: list[BaseException] = []
    stop = threading.Event()
    seen: list[list[int]] = [[], []]
    folded = [0]

    def writer(n: int) -> None:
        rng = random.Random(n)
        try:
            with psycopg.connect(url) as conn:
                for i in range(per_writer):
                    oid = n * 1000 + i
                    outcome = rng.choice(["commit", "commit", "rollback", "savepoint"])
                    conn.execute("INSERT INTO orders VALUES (%s, %s)", (oid, rng.randrange(5)))
                    # Two more statements on the same row: three log rows per key, one bump.
                    conn.execute("UPDATE orders SET room_id = room_id + 1 WHERE id = %s",
                                 (oid,))
                    if outcome == "savepoint":
                        conn.execute("SAVEPOINT s")
                        conn.execute("UPDATE orders SET room_id = 99 WHERE id = %s", (oid,))
                        conn.execute("ROLLBACK TO SAVEPOINT s")
                    conn.execute("UPDATE orders SET room_id = room_id WHERE id = %s", (oid,))
                    if outcome == "rollback":
                        conn.rollback()
                    else:
                        conn.commit()
                        committed[n] += 1
        except BaseException as exc:
            errors.append(exc)

    def folder() -> None:
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                while not stop.is_set():
                    # Tiny batches: boundaries fall between one transaction's rows often.
                    folded[0] += fold(conn, "postgresql", "pyformat", batch=5)
                    time.sleep(0.002)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    helpers = [threading.Thread(target=folder),
               *(threading.Thread(target=sample_hot, args=(url, stop, mine, errors))
                 for mine in seen)]
    for t in threads + helpers:
        t.start()
    for t in threads:
        t.join(timeout=60)
    stop.set()
    for t in helpers:
        t.join(timeout=30)
    assert not errors, errors
    total = sum(committed)
    assert 0 < total < writers * per_writer  # some rolled back
    assert folded[0] > 0
    reader = DBAPIReader.from_url(url, fold_threshold=None)
    try:
        assert reader.read([HOT]).version(HOT) == total
        reader.fold()
        snap = reader.read([HOT, row_key("orders", [0]), "room:99"])
        assert snap.version(HOT) == total
        assert snap.version("room:99") == 0  # only ever written in rolled-back savepoints
    finally:
        reader.close()
    # Each reader's samples never go down (folds moved rows under them all the while).
    for mine in seen:
        assert mine
        assert mine == sorted(mine)
        assert mine[-1] <= total
    with psycopg.connect(url) as conn:
        left = conn.execute(f"SELECT count(*) FROM {LOG_TABLE}").fetchone()
    assert left == (0,)


def test_each_sampler_sees_versions_only_rise(url: str) -> None:
    """One reader, one writer committing one transaction at a time: every sample is >= the
    one before and the last equals the commits."""
    stop = threading.Event()
    samples: list[int] = []
    errors: list[BaseException] = []

    thread = threading.Thread(target=sample_hot, args=(url, stop, samples, errors))
    thread.start()
    with psycopg.connect(url) as conn, psycopg.connect(url, autocommit=True) as folder:
        for i in range(60):
            conn.execute("INSERT INTO orders VALUES (%s, 1)", (i,))
            conn.execute("UPDATE orders SET room_id = 2 WHERE id = %s", (i,))
            conn.commit()
            if i % 7 == 0:
                fold(folder, "postgresql", "pyformat", batch=3)
    stop.set()
    thread.join(timeout=30)
    assert not errors, errors
    assert samples == sorted(samples)
    reader = DBAPIReader.from_url(url, fold_threshold=None)
    try:
        assert reader.read([HOT]).version(HOT) == 60
    finally:
        reader.close()


def escalation_markers(conn: psycopg.Connection[Any]) -> tuple[int]:
    """``(count,)`` of the escalation markers in the log (ends the reading transaction)."""
    row = conn.execute(f"SELECT count(*) FROM {LOG_TABLE} "
                       "WHERE starts_with(key_name::text, '$esc:')").fetchone()
    conn.commit()
    assert row is not None
    return (row[0],)


def test_many_small_transactions_on_one_connection_never_escalate(url: str) -> None:
    """The escalation limit counts rows of one transaction. (PostgreSQL's
    pg_stat_get_xact_* counters also hold earlier transactions' rows until the backend
    flushes its statistics: counting with them escalated busy single-row writers.)"""
    with psycopg.connect(url) as conn:
        for i in range(1500):  # more rows than max_keys (1000), one per transaction
            conn.execute("INSERT INTO orders VALUES (%s, %s)", (i, i % 7))
            conn.commit()
        markers = escalation_markers(conn)
    assert markers == (0,)
    reader = DBAPIReader.from_url(url, fold_threshold=None)
    try:
        snap = reader.read([HOT, row_key("orders", [1499]), row_key("orders", [99999])])
        assert snap.version(HOT) == 1500
        assert snap.version(row_key("orders", [1499])) == 1
        assert snap.version(row_key("orders", [99999])) == 0  # never written, not escalated
    finally:
        reader.close()


def test_escalating_midway_moves_each_key_by_one(url: str) -> None:
    """Statements that keyed rows one by one, then one that crosses max_keys: the markers
    cover the earlier keys, which are taken back, so every key moves by exactly one."""
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO orders SELECT g, g % 5 FROM generate_series(1, 1600) g")
        conn.commit()
    reader = DBAPIReader.from_url(url, fold_threshold=None)
    probe = [HOT, row_key("orders", [1]), row_key("orders", [500]), row_key("orders", [1599]),
             "room:1", "room:3", "room:77"]
    try:
        before = reader.read(probe)
        with psycopg.connect(url) as conn:
            for lo in range(1, 1601, 400):  # four statements of 400 rows in one transaction
                conn.execute("UPDATE orders SET room_id = room_id WHERE id >= %s AND id < %s",
                             (lo, lo + 400))
            conn.commit()
        after = reader.read(probe)
        assert {k: after.version(k) - before.version(k) for k in probe} == dict.fromkeys(probe, 1)
    finally:
        reader.close()


def test_a_statement_past_max_keys_escalates_and_appends_a_bounded_number_of_keys(
        url: str) -> None:
    """One statement of many rows: the markers, not one key per row (the exact mode reads at
    most max_keys + 1 rows of it, then takes them back)."""
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO orders SELECT g, g % 5 FROM generate_series(1, 5000) g")
        conn.commit()
        rows = conn.execute(f"SELECT key_name FROM {LOG_TABLE}").fetchall()
        conn.commit()
    assert sorted(k for (k,) in rows) == ["$esc:$row:orders:", "$esc:room:", HOT]
    reader = DBAPIReader.from_url(url, fold_threshold=None)
    try:
        probe = [HOT, row_key("orders", [4999]), "room:3", "room:999"]
        snap = reader.read(probe)
        assert {k: snap.version(k) for k in probe} == dict.fromkeys(probe, 1)
    finally:
        reader.close()


def test_statements_below_max_keys_do_not_escalate(url: str) -> None:
    """1,000 rows in one transaction, over ten statements: each key once, no marker."""
    with psycopg.connect(url) as conn:
        for lo in range(0, 1000, 100):
            conn.execute("INSERT INTO orders SELECT g, g %% 7 "
                         "FROM generate_series(%s::int, %s::int) g", (lo, lo + 99))
        conn.execute("UPDATE orders SET room_id = room_id WHERE id < 0")  # no rows
        conn.commit()
        markers = escalation_markers(conn)
    assert markers == (0,)
    reader = DBAPIReader.from_url(url, fold_threshold=None)
    try:
        snap = reader.read([HOT, row_key("orders", [999]), row_key("orders", [1000]), "room:6"])
        assert (snap.version(HOT), snap.version(row_key("orders", [999])),
                snap.version(row_key("orders", [1000])), snap.version("room:6")) == (1, 1, 0, 1)
    finally:
        reader.close()


def test_a_key_column_that_loses_not_null_falls_back_to_its_marker(url: str) -> None:
    """The exact mode's keys assume NOT NULL as it was when the triggers were made; a NULL
    arriving after an ALTER must neither fail the write nor lose the key: its kind's marker
    is appended (over-invalidation). The counted mode skips the NULL template."""
    with psycopg.connect(url) as conn:
        conn.execute("ALTER TABLE orders ALTER COLUMN room_id DROP NOT NULL")
        conn.execute("INSERT INTO orders VALUES (1, NULL)")
        conn.commit()
        keys = sorted(k for (k,) in conn.execute(f"SELECT key_name FROM {LOG_TABLE}"))
        conn.commit()
        exact = "GET DIAGNOSTICS" in conn.execute(
            "SELECT prosrc FROM pg_proc WHERE proname = 'reality_bump_orders'").fetchone()[0]
    assert keys == sorted([HOT, row_key("orders", [1]), *(["$esc:room:"] if exact else [])])
