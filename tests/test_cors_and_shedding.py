"""Opt-in CORS and load shedding of the ASGI sync endpoint, through the real app."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import pytest

from reality_core import CORSPolicy, DBAPIReader, SyncService, VersionCache
from reality_core.asgi import SyncASGIApp
from reality_core.errors import ConfigurationError
from reality_core.store import Snapshot
from tests.test_endpoint import Store, client_for

BODY = {"known": {"room:1": 0}}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path}/cors.db")
    try:
        yield s
    finally:
        s.close()


client = client_for


async def test_no_cors_header_unless_configured(store: Store) -> None:
    reader = store.reader()
    try:
        async with client(SyncASGIApp(SyncService(reader))) as http:
            r = await http.post("/reality/sync", json=BODY,
                                headers={"origin": "https://app.example.com"})
            assert r.status_code == 200
            assert "access-control-allow-origin" not in r.headers
            pre = await http.options("/reality/sync",
                                     headers={"origin": "https://app.example.com"})
            assert pre.status_code == 405
    finally:
        reader.close()


async def test_listed_origins_only(store: Store) -> None:
    reader = store.reader()
    policy = CORSPolicy(origins=("https://app.example.com",), allow_credentials=True)
    try:
        async with client(SyncASGIApp(SyncService(reader), cors=policy)) as http:
            ok = await http.post("/reality/sync", json=BODY,
                                 headers={"origin": "https://app.example.com"})
            assert ok.headers["access-control-allow-origin"] == "https://app.example.com"
            assert ok.headers["access-control-allow-credentials"] == "true"
            assert "origin" in ok.headers["vary"]
            other = await http.post("/reality/sync", json=BODY,
                                    headers={"origin": "https://evil.example"})
            assert other.status_code == 200
            assert "access-control-allow-origin" not in other.headers
            pre = await http.options("/reality/sync",
                                     headers={"origin": "https://app.example.com",
                                              "access-control-request-method": "POST"})
            assert pre.status_code == 204
            assert "POST" in pre.headers["access-control-allow-methods"]
            assert pre.headers["access-control-allow-headers"] == "content-type"
    finally:
        reader.close()


async def test_any_origin_without_credentials(store: Store) -> None:
    reader = store.reader()
    try:
        app = SyncASGIApp(SyncService(reader), cors=CORSPolicy(origins=("*",)))
        async with client(app) as http:
            r = await http.post("/reality/sync", json=BODY, headers={"origin": "https://x.io"})
            assert r.headers["access-control-allow-origin"] == "*"
            assert "access-control-allow-credentials" not in r.headers
    finally:
        reader.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"origins": ("*",), "allow_credentials": True}, "cannot be combined"),
        ({"origins": ("app.example.com",)}, "not an origin"),
        ({"origins": ("https://a.io/path",)}, "not an origin"),
        ({"origins": "https://a.io"}, "tuple of origins"),
        ({"origins": ()}, "empty"),
        ({"origins": ("*",), "max_age": -1}, "max_age"),
    ],
)
def test_bad_cors_policies_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        CORSPolicy(**kwargs)  # type: ignore[arg-type]


class SlowReader:
    """A reader that holds each read until released: requests pile up in flight."""

    def __init__(self, inner: DBAPIReader) -> None:
        self.inner = inner
        self.release = threading.Event()
        self.entered = threading.Event()

    def read(self, keys: Collection[str]) -> Snapshot:
        self.entered.set()
        self.release.wait(10)
        return self.inner.read(keys)

    def ping(self) -> None:
        self.inner.ping()

    def close(self) -> None:
        self.inner.close()


async def test_overload_is_shed_with_503_and_recovers(store: Store) -> None:
    slow = SlowReader(store.reader())
    app = SyncASGIApp(SyncService(slow), max_in_flight=1)
    try:
        async with client(app) as http:
            first = asyncio.ensure_future(http.post("/reality/sync", json=BODY))
            await asyncio.to_thread(slow.entered.wait, 10)
            shed = await http.post("/reality/sync", json=BODY)
            assert shed.status_code == 503
            assert shed.headers["retry-after"] == "1"
            assert shed.headers["content-type"] == "application/problem+json"
            assert shed.json()["code"] == "overloaded"
            health = await http.get("/reality/health")  # health is never shed
            assert health.status_code == 200
            slow.release.set()
            assert (await first).status_code == 200
            again = await http.post("/reality/sync", json=BODY)
            assert again.status_code == 200
    finally:
        slow.release.set()
        slow.close()


def test_bad_max_in_flight_is_refused(store: Store) -> None:
    reader = store.reader()
    try:
        with pytest.raises(ConfigurationError, match="max_in_flight"):
            SyncASGIApp(SyncService(reader), max_in_flight=0)
    finally:
        reader.close()


async def test_a_flood_of_cached_requests_is_shed_and_recovers(store: Store) -> None:
    """Answers from the cache never wait on anything; the app must still see a flood (all
    requests arrived at once) and shed what exceeds max_in_flight, answering the rest."""
    store.bump("room:7")
    cache = VersionCache(store.reader(), interval=0.05)
    app = SyncASGIApp(SyncService(cache), max_in_flight=8)
    try:
        assert cache.wait_ready(10)
        async with client(app) as http:
            answers = await asyncio.gather(*(http.post("/reality/sync", json=BODY)
                                             for _ in range(100)))
            statuses = [a.status_code for a in answers]
            assert statuses.count(200) >= 8, statuses
            assert statuses.count(503) > 0, statuses
            assert set(statuses) == {200, 503}
            for shed in (a for a in answers if a.status_code == 503):
                assert shed.headers["retry-after"] == "1"
                assert shed.json()["code"] == "overloaded"
            again = await http.post("/reality/sync", json=BODY)
            assert again.status_code == 200
    finally:
        cache.close()


async def test_slow_bodies_time_out_and_take_no_slot(store: Store) -> None:
    """A client trickling its body gets 408 after body_timeout, and while it trickles it
    does not count against max_in_flight: others are served."""
    reader = store.reader()
    app = SyncASGIApp(SyncService(reader), max_in_flight=1, body_timeout=0.5)

    async def trickle() -> Any:
        yield b'{"known": '
        await asyncio.sleep(2)
        yield b"{}}"

    try:
        async with client(app) as http:
            slow = asyncio.ensure_future(http.post(
                "/reality/sync", content=trickle(),
                headers={"content-type": "application/json"}))
            await asyncio.sleep(0.1)
            served = await http.post("/reality/sync", json=BODY)
            assert served.status_code == 200
            timed_out = await slow
            assert timed_out.status_code == 408
            assert timed_out.json()["code"] == "body_timeout"
    finally:
        reader.close()
