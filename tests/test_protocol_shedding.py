"""Shedding in the HTTP protocol of ``reality serve`` (``reality_core.shedding``): a real uvicorn
server in this process, raw HTTP/1.1 over real sockets, the real app behind it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reality_core import SyncService, shedding
from reality_core.asgi import Receive, Scope, Send, SyncASGIApp
from reality_core.shedding import PROTOCOL, _gate_for
from tests.test_cors_and_shedding import SlowReader
from tests.test_endpoint import Store

uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("httptools")

#: Bound on any one wait; exceeding it fails the test as hung, it is never a speed.
HANG_GUARD = 30.0
BODY = json.dumps({"known": {"room:1": 0}}).encode()


def request(body: bytes = BODY, *, extra: bytes = b"", path: bytes = b"/reality/sync") -> bytes:
    return (b"POST " + path + b" HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            + extra + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


class Counting:
    """ASGI middleware (with ``.app``, as uvicorn's own are) that counts the requests that
    reach the app: a request shed by the protocol never does."""

    def __init__(self, app: SyncASGIApp) -> None:
        self.app = app
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.calls += 1
        await self.app(scope, receive, send)


@dataclass
class Running:
    port: int
    app: Counting
    slow: SlowReader

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port),
                                      HANG_GUARD)

    @property
    def in_flight(self) -> int:
        gate = _gate_for(self.app)
        assert gate is not None
        return gate.count


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HANG_GUARD)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.partition(":") for line in lines[1:] if line)}
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])),
                                  HANG_GUARD)
    return int(lines[0].split(" ", 2)[1]), headers, body


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path}/shed.db")
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
async def server(store: Store) -> AsyncIterator[Running]:
    slow = SlowReader(store.reader())
    app = Counting(SyncASGIApp(SyncService(slow), max_in_flight=1))
    config = uvicorn.Config(app, host="127.0.0.1", port=0, http=PROTOCOL, lifespan="off",
                            log_level="warning")
    srv = uvicorn.Server(config)
    task = asyncio.ensure_future(srv.serve())
    try:
        while not srv.started:
            assert not task.done(), task
            await asyncio.sleep(0.01)
        port = srv.servers[0].sockets[0].getsockname()[1]
        yield Running(port, app, slow)
    finally:
        slow.release.set()
        srv.should_exit = True
        await asyncio.wait_for(task, HANG_GUARD)
        slow.close()


async def hold_the_slot(server: Running) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """One sync request that sits in the (slow) database read: max_in_flight=1 is used up."""
    reader, writer = await server.connect()
    writer.write(request())
    await asyncio.to_thread(server.slow.entered.wait, HANG_GUARD)
    assert server.in_flight == 1
    return reader, writer


async def test_shed_by_the_protocol_before_the_app_and_the_body(server: Running) -> None:
    first_r, first_w = await hold_the_slot(server)
    calls = server.app.calls
    reader, writer = await server.connect()
    head, _, body = request().partition(b"\r\n\r\n")
    writer.write(head + b"\r\n\r\n")  # the headers only: the answer must not wait for the body
    status, headers, shed = await read_response(reader)
    assert status == 503
    assert headers["retry-after"] == "1"
    assert headers["content-type"] == "application/problem+json"
    assert headers["cache-control"] == "no-store"
    assert "connection" not in headers  # kept alive
    problem = json.loads(shed)
    assert problem["code"] == "overloaded"
    assert problem["status"] == 503
    assert server.app.calls == calls  # never reached the app: no scope, task or database
    writer.write(body)  # the body still comes; the parser skips it, the connection stays usable
    writer.write(request(path=b"/reality/health").replace(b"POST", b"GET", 1))
    health, _, _ = await read_response(reader)
    assert health == 200  # health is never shed
    server.slow.release.set()
    assert (await read_response(first_r))[0] == 200
    writer.write(request())  # recovered: the same connection is served again
    assert (await read_response(reader))[0] == 200
    assert server.in_flight == 0
    for w in (writer, first_w):
        w.close()


async def test_same_answer_as_the_app_would_give(server: Running, store: Store) -> None:
    first_r, first_w = await hold_the_slot(server)
    reader, writer = await server.connect()
    writer.write(request())
    _, headers, body = await read_response(reader)
    from reality_core.asgi import overloaded_response, response_headers

    expected = overloaded_response()
    assert body == expected.body
    for name, value in response_headers(expected):
        assert headers[name.decode()] == value.decode()
    server.slow.release.set()
    await read_response(first_r)
    for w in (writer, first_w):
        w.close()


async def test_a_client_asking_for_close_is_closed_after_the_shed(server: Running) -> None:
    first_r, first_w = await hold_the_slot(server)
    reader, writer = await server.connect()
    writer.write(request(extra=b"Connection: close\r\n"))
    status, headers, _ = await read_response(reader)
    assert status == 503
    assert headers["connection"] == "close"
    assert await asyncio.wait_for(reader.read(), HANG_GUARD) == b""  # closed by the server
    server.slow.release.set()
    await read_response(first_r)
    for w in (writer, first_w):
        w.close()


async def test_slots_are_freed_when_the_app_finishes(server: Running) -> None:
    """A client that leaves while its request is in the database keeps the slot until the
    app is done with it, then the slot is free again; a body still arriving takes none."""
    _, first_w = await hold_the_slot(server)
    first_w.close()  # gone, but the read it started is still running
    await asyncio.sleep(0.1)
    assert server.in_flight == 1
    server.slow.release.set()
    for _ in range(int(HANG_GUARD / 0.01)):
        if server.in_flight == 0:
            break
        await asyncio.sleep(0.01)
    assert server.in_flight == 0
    server.slow.release.clear()
    server.slow.entered.clear()
    trickle_r, trickle_w = await server.connect()
    trickle_w.write(request()[:-3])  # the body is not complete: no slot taken
    await asyncio.sleep(0.1)
    assert server.in_flight == 0
    server.slow.release.set()
    reader, writer = await server.connect()
    writer.write(request())
    assert (await read_response(reader))[0] == 200
    trickle_w.write(request()[-3:])
    assert (await read_response(trickle_r))[0] == 200
    assert server.in_flight == 0
    for w in (writer, trickle_w):
        w.close()


def test_no_gate_without_a_limit_or_with_cors(store: Store) -> None:
    from reality_core import CORSPolicy

    reader = store.reader()
    try:
        assert _gate_for(SyncASGIApp(SyncService(reader), max_in_flight=None)) is None
        cors = CORSPolicy(origins=("https://app.example.com",))
        assert _gate_for(SyncASGIApp(SyncService(reader), cors=cors)) is None
        assert _gate_for(object()) is None
    finally:
        reader.close()


def test_reality_serve_uses_the_shedding_protocol_by_name() -> None:
    """``reality serve`` hands uvicorn the protocol as an import string, which every worker
    process (``--workers``) resolves again; tests/test_serve.py runs it for real."""
    from uvicorn.importer import import_from_string

    from reality_core import cli

    assert cli.http_protocol is shedding.http_protocol  # what _serve passes to uvicorn
    assert shedding.http_protocol() == PROTOCOL
    cls = import_from_string(PROTOCOL)
    assert cls is shedding._protocol_class()
    assert f"{cls.__module__}:{cls.__qualname__}" == PROTOCOL
    with pytest.raises(AttributeError):
        shedding.NoSuchThing  # noqa: B018
