"""Wake-ups (PostgreSQL): a bump's NOTIFY makes every cache refresh at once, and nothing
depends on it — a cut listening connection leaves polling in charge, then comes back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from reality_core import DBAPIReader, VersionCache
from reality_core.store import WAKE_CHANNEL, bump_statements
from tests.test_cache import wait_until
from tests.test_endpoint import Store, open_store

pytestmark = pytest.mark.postgres

#: Idle polling so slow that only a wake-up can explain a change seen within seconds.
SLOW = 30.0
#: The refresh rate cap (one token per this many seconds).
RATE = 0.05


@pytest.fixture
def pg_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    yield from open_store(request, tmp_path, "postgresql")


def slow_cache(store: Store, **kwargs: object) -> VersionCache:
    cache = VersionCache(DBAPIReader.from_url(store.url), interval=RATE, max_staleness=600.0,
                         idle_interval=SLOW, **kwargs)  # type: ignore[arg-type]
    assert cache.wait_ready(10)
    listener = cache.listener
    assert listener is not None
    wait_until(lambda: listener.listening)
    return cache


def test_a_bump_wakes_the_cache_at_once(pg_store: Store) -> None:
    cache = slow_cache(pg_store)
    try:
        time.sleep(0.2)  # the refresh the connect wake-up started is over
        before = cache.refreshes
        t0 = time.monotonic()
        pg_store.bump("room:1")
        wait_until(lambda: cache.read(["room:1"]).version("room:1") == 1, timeout=2.0)
        assert time.monotonic() - t0 < 2.0 < SLOW
        assert cache.refreshes > before
        assert cache.listener is not None
        assert cache.listener.wakeups >= 1
    finally:
        cache.close()


def test_wakeups_never_exceed_the_refresh_rate(pg_store: Store) -> None:
    """A flood of notifications (a busy database) still gives at most one refresh per
    ``interval`` on average (plus the burst)."""
    cache = VersionCache(DBAPIReader.from_url(pg_store.url), interval=0.1, max_staleness=60.0)
    try:
        assert cache.wait_ready(10)
        with psycopg.connect(pg_store.url.libpq(), autocommit=True) as conn:
            start, before = time.monotonic(), cache.refreshes
            while time.monotonic() - start < 1.5:
                conn.execute(f"NOTIFY {WAKE_CHANNEL}")
                time.sleep(0.002)
            elapsed, done = time.monotonic() - start, cache.refreshes - before
        assert done <= elapsed / 0.1 + 3, (done, elapsed)
        assert done >= 5  # and they did drive refreshes
    finally:
        cache.close()


def test_without_the_listener_polling_still_reports_everything(pg_store: Store) -> None:
    cache = VersionCache(DBAPIReader.from_url(pg_store.url), interval=0.05,
                         max_staleness=60.0, listen=False)
    try:
        assert cache.wait_ready(10)
        assert cache.listener is None
        pg_store.bump("room:2")
        wait_until(lambda: cache.read(["room:2"]).version("room:2") == 1)
    finally:
        cache.close()


def test_c12_a_killed_listening_connection_comes_back(pg_store: Store) -> None:
    cache = slow_cache(pg_store)
    listener = cache.listener
    assert listener is not None
    try:
        with psycopg.connect(pg_store.url.libpq(), autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE query LIKE 'LISTEN%' AND datname = current_database()").fetchall()
            assert killed == [(True,)]
            wait_until(lambda: not listener.listening, timeout=5)
            # While it is down the cache polls at its full rate (RATE), so this change
            # shows up without any wake-up.
            pg_store.bump("room:3")
            wait_until(lambda: cache.read(["room:3"]).version("room:3") == 1, timeout=5)
            wait_until(lambda: listener.listening, timeout=10)
            time.sleep(0.3)  # polling is idle again (SLOW): only a wake-up can bring room:4
            pg_store.bump("room:4")
            wait_until(lambda: cache.read(["room:4"]).version("room:4") == 1, timeout=5)
    finally:
        cache.close()


def test_the_bump_statement_notifies(pg_store: Store) -> None:
    """The Python path's bump (PostgreSQL) carries the gated NOTIFY."""
    ((sql, _),) = bump_statements("postgresql", ["a"], "pyformat")
    assert "pg_notify" in sql
    assert "pg_try_advisory_xact_lock" in sql
    with psycopg.connect(pg_store.url.libpq(), autocommit=True) as listener:
        listener.execute(f"LISTEN {WAKE_CHANNEL}")
        pg_store.bump("a", "b")
        got = list(listener.notifies(timeout=2.0, stop_after=1))
    assert [n.channel for n in got] == [WAKE_CHANNEL]


def test_an_open_transaction_does_not_hold_wakeups_back(pg_store: Store) -> None:
    """A writer that won the notify gate and then sits in its transaction blocks only its
    own 5 ms slot: other sessions' commits still wake the cache."""
    cache = slow_cache(pg_store)
    try:
        time.sleep(0.2)
        with psycopg.connect(pg_store.url.libpq()) as idle:
            for sql, params in bump_statements("postgresql", ["held"], "pyformat"):
                idle.execute(sql, params)  # wins a slot's lock; stays open
            time.sleep(0.02)
            t0 = time.monotonic()
            pg_store.bump("room:9")  # another session, a later slot
            wait_until(lambda: cache.read(["room:9"]).version("room:9") == 1, timeout=2.0)
            assert time.monotonic() - t0 < 2.0 < SLOW
            idle.rollback()
    finally:
        cache.close()
