"""The sync endpoint (DESIGN §7) through the real ASGI app, over real databases.

Every request goes through :class:`reality_core.asgi.SyncASGIApp` with
``httpx.ASGITransport``; versions are written with :func:`reality_core.store.bump_statements`
on a real SQLite file or PostgreSQL database and read back by a :class:`DBAPIReader`.
The tables of bad requests here are shared with ``test_wsgi.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from reality_core import DBAPIReader, Limits, StoreUnavailable, SyncService
from reality_core.asgi import Message, SyncASGIApp
from reality_core.keys import escalation_key
from reality_core.store import (
    Snapshot,
    bump_statements,
    create_table_statements,
    read_statement,
    snapshot_from_rows,
)
from reality_core.urls import DatabaseURL
from tests import dbs

T = TypeVar("T")
JSON_TYPE = "application/json"
PROBLEM = "application/problem+json"
SYNC = "/reality/sync"
HEALTH = "/reality/health"
#: Guards against a hang (a test that would otherwise wait forever); never a timing check.
HANG_GUARD = 60.0


# --------------------------------------------------------------------------- a real store


class Store:
    """A database holding Reality's tables; versions are bumped with the store's own SQL."""

    def __init__(self, url: str) -> None:
        self.url = DatabaseURL.parse(url).with_driver(None)
        self.dialect = self.url.dialect
        self.paramstyle = self.url.paramstyle
        self._conn = self.url.dbapi_connect()  # autocommit: every bump commits at once
        create_tables(self._conn, self.url)

    def bump(self, *keys: str) -> None:
        cur = self._conn.cursor()
        try:
            for sql, params in bump_statements(self.dialect, sorted(set(keys)), self.paramstyle):
                cur.execute(sql, params)
        finally:
            cur.close()

    def version(self, key: str) -> int:
        """The version the endpoint must report, read with the store's own statement."""
        sql, params = read_statement([key], self.paramstyle)
        cur = self._conn.cursor()
        try:
            cur.execute(sql, params)
            return snapshot_from_rows([key], cur.fetchall()).version(key)
        finally:
            cur.close()

    def query(self, sql: str) -> list[Any]:
        cur = self._conn.cursor()
        try:
            cur.execute(sql)
            return list(cur.fetchall())
        finally:
            cur.close()

    @property
    def epoch(self) -> str:
        rows = self.query("SELECT value FROM reality_meta WHERE name = 'epoch'")
        return str(rows[0][0])

    def reader(self) -> DBAPIReader:
        return DBAPIReader.from_url(self.url)

    def close(self) -> None:
        self._conn.close()


def create_tables(conn: Any, url: DatabaseURL) -> None:
    """Reality's tables and epoch row, on an autocommit DB-API connection."""
    dbs.create_reality_tables(conn, url.dialect, url.paramstyle)


def open_store(request: pytest.FixtureRequest, tmp: Path, backend: str) -> Iterator[Store]:
    """A fresh database with Reality's tables: an SQLite file, or a new PostgreSQL or
    MariaDB database dropped afterwards."""
    if backend == "sqlite":
        store = Store(f"sqlite:///{tmp}/reality.db")
        try:
            yield store
        finally:
            store.close()
        return
    if backend == "postgresql":
        server = request.getfixturevalue("pg_server_url")
        url = dbs.create_pg_database(server)
        store = Store(url)
        try:
            yield store
        finally:
            store.close()
            dbs.drop_pg_database(url, server)
        return
    url = dbs.create_mysql_database(request.getfixturevalue("mysql_url"))
    store = Store(url)
    try:
        yield store
    finally:
        store.close()
        dbs.drop_mysql_database(url)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    """One store per module and backend; tests keep apart by key namespace (``ns``)."""
    yield from open_store(request, tmp_path_factory.mktemp("store"), request.param)


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path_factory.mktemp('fuzz')}/reality.db")
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def ns() -> str:
    """A key prefix of this test's own, so tests sharing a store never see each other."""
    return f"t{secrets.token_hex(5)}:"


@pytest.fixture
def reader(store: Store) -> Iterator[DBAPIReader]:
    reader = store.reader()
    try:
        yield reader
    finally:
        reader.close()


def client_for(app: SyncASGIApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://reality.test")


@pytest.fixture
async def client(reader: DBAPIReader) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(SyncASGIApp(SyncService(reader))) as client:
        yield client


async def guarded(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, HANG_GUARD)


# --------------------------------------------------------------------------- helpers


async def post_sync(client: httpx.AsyncClient, known: Mapping[str, Any], **fields: Any
                    ) -> httpx.Response:
    return await guarded(client.post(SYNC, json={"known": dict(known), **fields}))


def changed_of(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == JSON_TYPE
    body = response.json()
    assert set(body) == {"changed", "serverTime", "epoch"}
    assert isinstance(body["serverTime"], int)
    changed: dict[str, Any] = body["changed"]
    for key, info in changed.items():
        assert info["key"] == key
        assert set(info) == {"key", "version", "hash", "updatedAt"}
    return changed


def versions_of(response: httpx.Response) -> dict[str, int]:
    return {k: v["version"] for k, v in changed_of(response).items()}


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"].endswith(f"/{code}")
    assert body["title"]
    assert body["detail"]
    return body


class Alive(NamedTuple):
    """A key bumped once, to prove the server still answers correctly after a bad request."""

    key: str
    epoch: str

    @property
    def known(self) -> dict[str, int]:
        return {self.key: 0, f"{self.key}:never": 0}

    def check(self, response: httpx.Response) -> None:
        assert versions_of(response) == {self.key: 1}
        assert response.json()["epoch"] == self.epoch


@pytest.fixture
def alive(store: Store, ns: str) -> Alive:
    store.bump(f"{ns}alive")
    return Alive(f"{ns}alive", store.epoch)


# --------------------------------------------------------------------------- good syncs


async def test_reports_exactly_the_keys_whose_version_differs(
    client: httpx.AsyncClient, store: Store, ns: str
) -> None:
    a, b, never, ahead = f"{ns}a", f"{ns}b", f"{ns}never", f"{ns}ahead"
    store.bump(a, b, ahead)
    store.bump(a)
    response = await post_sync(client, {a: 2, b: 0, never: 0, ahead: 7})
    changed = changed_of(response)
    # a is current, never was never written (version 0 both sides): neither is reported.
    assert sorted(changed) == [ahead, b]
    assert changed[b]["version"] == 1
    assert changed[ahead]["version"] == 1  # the client is ahead: it learns the server's version
    assert changed[b]["hash"]
    assert isinstance(changed[b]["updatedAt"], int)
    assert changed[b]["updatedAt"] > 0
    assert response.json()["epoch"] == store.epoch

    store.bump(a)
    assert versions_of(await post_sync(client, {a: 2, b: 1})) == {a: 3}
    assert versions_of(await post_sync(client, {a: 3, b: 1})) == {}


async def test_a_never_written_key_the_client_thinks_it_knows_reads_as_version_0(
    client: httpx.AsyncClient, ns: str
) -> None:
    key = f"{ns}ghost"
    changed = changed_of(await post_sync(client, {key: 3}))
    assert changed == {key: {"key": key, "version": 0, "hash": "", "updatedAt": 0}}


async def test_an_escalation_marker_makes_every_derived_key_read_as_changed(
    client: httpx.AsyncClient, store: Store, ns: str
) -> None:
    room7, room8, user = f"{ns}room:7", f"{ns}room:8", f"{ns}user:1"
    store.bump(room7)
    before = changed_of(await post_sync(client, {room7: 0}))[room7]
    store.bump(escalation_key(f"{ns}room:"))
    after = changed_of(await post_sync(client, {room7: 1, room8: 0, user: 0}))
    # room:7 = its own 1 + the marker's 1; room:8 was never written itself; user:1 is apart.
    assert {k: v["version"] for k, v in after.items()} == {room7: 2, room8: 1}
    assert after[room7]["hash"] != before["hash"]
    store.bump(escalation_key(f"{ns}room:"))
    store.bump(room8)
    assert versions_of(await post_sync(client, {room7: 2, room8: 1})) == {room7: 3, room8: 3}


async def test_optional_fields_are_accepted_and_unknown_ones_ignored(
    client: httpx.AsyncClient, alive: Alive
) -> None:
    response = await post_sync(
        client, alive.known, clientId="tab-1", mode="sse-compat", hint="focus",
        timestamp=1699876543210, wait=30, somethingNew={"x": [1]},
    )
    alive.check(response)


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "Application/JSON",
     " application/json ;charset=UTF-8"],
)
async def test_json_media_type_spellings(
    client: httpx.AsyncClient, alive: Alive, content_type: str
) -> None:
    response = await client.post(SYNC, content=json.dumps({"known": alive.known}),
                                 headers={"content-type": content_type})
    alive.check(response)


async def test_limits_at_the_edge_are_accepted(client: httpx.AsyncClient, ns: str) -> None:
    longest = ns + "k" * (256 - len(ns))
    response = await post_sync(client, {longest: 2**63 - 1, f"{ns}zero": 0})
    assert versions_of(response) == {longest: 0}
    many = {f"{ns}{i}": 0 for i in range(Limits().max_keys)}
    assert versions_of(await post_sync(client, many)) == {}
    assert versions_of(await post_sync(client, {})) == {}


async def test_keys_are_case_sensitive_and_kept_verbatim(
    client: httpx.AsyncClient, store: Store, ns: str
) -> None:
    keys = [f"{ns}Room", f"{ns}room", f"{ns}ключ:%s:'q'\"", f"{ns}emoji:\U0001f600"]
    store.bump(keys[0], keys[2], keys[3])
    assert versions_of(await post_sync(client, dict.fromkeys(keys, 0))) == {
        keys[0]: 1, keys[2]: 1, keys[3]: 1,
    }


# --------------------------------------------------------------------------- bad requests


class Bad(NamedTuple):
    """A request body the endpoint refuses, with the status and code it must answer."""

    id: str
    body: bytes
    status: int
    code: str
    content_type: str | None = JSON_TYPE


def _known(known: Any) -> bytes:
    return json.dumps({"known": known}).encode()


def _raw_known(entries: str) -> bytes:
    return b'{"known": {' + entries.encode() + b"}}"


BAD_BODIES: list[Bad] = [
    Bad("malformed-json", b'{"known": {', 400, "malformed_json"),
    Bad("empty-body", b"", 400, "malformed_json"),
    Bad("trailing-garbage", b'{"known": {}} x', 400, "malformed_json"),
    Bad("nan", _raw_known('"a": NaN'), 400, "malformed_json"),
    Bad("infinity", _raw_known('"a": -Infinity'), 400, "malformed_json"),
    Bad("invalid-utf8", b'{"known": {"\xff\xfe": 1}}', 400, "malformed_json"),
    Bad("deep-nesting", b"[" * 50_000 + b"]" * 50_000, 400, "malformed_json"),
    Bad("body-is-a-list", b"[]", 400, "invalid_body"),
    Bad("body-is-a-string", b'"known"', 400, "invalid_body"),
    Bad("body-is-a-number", b"5", 400, "invalid_body"),
    Bad("body-is-null", b"null", 400, "invalid_body"),
    Bad("missing-known", b"{}", 400, "invalid_known"),
    Bad("known-wrong-case", b'{"Known": {}}', 400, "invalid_known"),
    Bad("known-is-a-list", _known(["room:7"]), 400, "invalid_known"),
    Bad("known-is-null", _known(None), 400, "invalid_known"),
    Bad("known-is-a-string", _known("room:7"), 400, "invalid_known"),
    Bad("version-string", _known({"room:7": "5"}), 400, "invalid_version"),
    Bad("version-true", _known({"room:7": True}), 400, "invalid_version"),
    Bad("version-false", _known({"room:7": False}), 400, "invalid_version"),
    Bad("version-null", _known({"room:7": None}), 400, "invalid_version"),
    Bad("version-float", _known({"room:7": 1.5}), 400, "invalid_version"),
    Bad("version-float-integral", _raw_known('"room:7": 1.0'), 400, "invalid_version"),
    Bad("version-exponent", _raw_known('"room:7": 1e3'), 400, "invalid_version"),
    Bad("version-overflowing-float", _raw_known('"room:7": 1e400'), 400, "invalid_version"),
    Bad("version-object", _known({"room:7": {"version": 1}}), 400, "invalid_version"),
    Bad("version-negative", _known({"room:7": -1}), 400, "invalid_version"),
    Bad("version-2**63", _known({"room:7": 2**63}), 400, "invalid_version"),
    Bad("version-10**30", _known({"room:7": 10**30}), 400, "invalid_version"),
    Bad("version-5000-digits", _raw_known('"room:7": ' + "9" * 5000), 400, "malformed_json"),
    Bad("key-10kb", _known({"k" * 10_240: 0}), 400, "invalid_key"),
    Bad("key-257-chars", _known({"k" * 257: 0}), 400, "invalid_key"),
    Bad("key-empty", _known({"": 0}), 400, "invalid_key"),
    Bad("key-control-char", _known({"room\x01:7": 0}), 400, "invalid_key"),
    Bad("key-newline", _known({"room:\n7": 0}), 400, "invalid_key"),
    Bad("key-nul", _known({"room:\x007": 0}), 400, "invalid_key"),
    Bad("key-del", _known({"room:\x7f": 0}), 400, "invalid_key"),
    Bad("key-c1-control", _known({"room:\x85": 0}), 400, "invalid_key"),
    Bad("key-lone-surrogate", _raw_known('"room:\\ud800": 0'), 400, "invalid_key"),
    Bad("too-many-keys", _known({f"k{i}": 0 for i in range(10_000)}), 413, "too_many_keys"),
    Bad("one-key-too-many", _known({f"k{i}": 0 for i in range(1001)}), 413, "too_many_keys"),
    Bad("bad-mode", _raw_known("") [:-1] + b', "mode": "websocket"}', 400, "invalid_body"),
    Bad("mode-list", _raw_known("")[:-1] + b', "mode": ["native"]}', 400, "invalid_body"),
    Bad("bad-hint", _raw_known("")[:-1] + b', "hint": "later"}', 400, "invalid_body"),
    Bad("hint-object", _raw_known("")[:-1] + b', "hint": {"a": 1}}', 400, "invalid_body"),
    Bad("hint-number", _raw_known("")[:-1] + b', "hint": 1}', 400, "invalid_body"),
    Bad("client-id-number", _raw_known("")[:-1] + b', "clientId": 7}', 400, "invalid_body"),
    Bad("text-plain", _known({}), 415, "unsupported_media_type", "text/plain"),
    Bad("no-content-type", _known({}), 415, "unsupported_media_type", None),
    Bad("form", b"known=1", 415, "unsupported_media_type", "application/x-www-form-urlencoded"),
    Bad("json-lookalike", _known({}), 415, "unsupported_media_type", "application/jsonx"),
    Bad("body-1mb", b'{"known": {}}' + b" " * (1 << 20), 413, "body_too_large"),
]


def bad_headers(bad: Bad) -> dict[str, str]:
    return {} if bad.content_type is None else {"content-type": bad.content_type}


@pytest.mark.parametrize("bad", BAD_BODIES, ids=[b.id for b in BAD_BODIES])
async def test_bad_body_gets_its_status_and_code_then_the_server_still_answers(
    client: httpx.AsyncClient, alive: Alive, bad: Bad
) -> None:
    response = await guarded(client.post(SYNC, content=bad.body, headers=bad_headers(bad)))
    assert_problem(response, bad.status, bad.code)
    assert response.headers["cache-control"] == "no-store"
    alive.check(await post_sync(client, alive.known))


async def test_an_oversized_body_without_content_length_is_refused_while_streaming(
    client: httpx.AsyncClient, alive: Alive
) -> None:
    sent: list[int] = []
    chunk = b" " * 65_536

    async def upload() -> AsyncIterator[bytes]:
        yield b'{"known": {}}'
        for i in range(64):  # 4 MiB in all, unless the server stops reading
            sent.append(i)
            yield chunk

    response = await guarded(client.post(SYNC, content=upload(),
                                         headers={"content-type": JSON_TYPE}))
    assert "content-length" not in response.request.headers
    assert_problem(response, 413, "body_too_large")
    # The server stopped reading just past the limit instead of buffering the whole upload.
    assert len(sent) <= Limits().max_body_bytes // len(chunk) + 1
    alive.check(await post_sync(client, alive.known))


async def test_a_declared_content_length_over_the_limit_is_refused_before_reading(
    client: httpx.AsyncClient, alive: Alive
) -> None:
    sent: list[bytes] = []

    async def upload() -> AsyncIterator[bytes]:
        sent.append(b"x")
        yield b"x" * 300_000

    response = await guarded(client.post(
        SYNC, content=upload(),
        headers={"content-type": JSON_TYPE, "content-length": "300000"},
    ))
    assert_problem(response, 413, "body_too_large")
    assert sent == []
    alive.check(await post_sync(client, alive.known))


@pytest.mark.parametrize("length", ["abc", "-1", "1e3", "\u00b2"])
async def test_a_malformed_content_length_is_a_400(
    reader: DBAPIReader, alive: Alive, length: str
) -> None:
    app = SyncASGIApp(SyncService(reader))
    # Straight to the app: an HTTP client would refuse to send such a header.
    messages: list[Message] = []
    scope = {"type": "http", "method": "POST", "path": SYNC, "root_path": "",
             "headers": [(b"content-type", b"application/json"),
                         (b"content-length", length.encode("latin-1"))]}

    async def receive() -> Message:
        return {"type": "http.request", "body": b'{"known": {}}', "more_body": False}

    async def send(message: Message) -> None:
        messages.append(message)

    await guarded(app(scope, receive, send))
    assert messages[0]["status"] == 400
    assert json.loads(messages[1]["body"])["code"] == "bad_content_length"
    async with client_for(app) as client:
        alive.check(await post_sync(client, alive.known))


@pytest.mark.parametrize("limit", [1000])
async def test_the_body_limit_is_configurable_and_exact(
    reader: DBAPIReader, alive: Alive, limit: int
) -> None:
    app = SyncASGIApp(SyncService(reader, limits=Limits(max_body_bytes=limit)))
    body = json.dumps({"known": alive.known}).encode()
    exact = body + b" " * (limit - len(body))

    async def stream(data: bytes) -> AsyncIterator[bytes]:
        for i in range(0, len(data), 100):
            yield data[i : i + 100]

    async with client_for(app) as client:
        headers = {"content-type": JSON_TYPE}
        alive.check(await client.post(SYNC, content=exact, headers=headers))
        alive.check(await client.post(SYNC, content=stream(exact), headers=headers))
        assert_problem(await client.post(SYNC, content=exact + b" ", headers=headers),
                       413, "body_too_large")
        assert_problem(await client.post(SYNC, content=stream(exact + b" "), headers=headers),
                       413, "body_too_large")


async def test_key_and_key_count_limits_are_configurable(
    reader: DBAPIReader, alive: Alive, ns: str
) -> None:
    app = SyncASGIApp(SyncService(reader, limits=Limits(max_keys=2, max_key_length=40)))
    async with client_for(app) as client:
        alive.check(await post_sync(client, alive.known))
        assert_problem(await post_sync(client, {f"{ns}{i}": 0 for i in range(3)}),
                       413, "too_many_keys")
        assert_problem(await post_sync(client, {ns + "k" * 40: 0}), 400, "invalid_key")
        alive.check(await post_sync(client, alive.known))


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        ("GET", SYNC, 405, "POST"),
        ("PUT", SYNC, 405, "POST"),
        ("DELETE", SYNC, 405, "POST"),
        ("HEAD", SYNC, 405, "POST"),
        ("POST", HEALTH, 405, "GET, HEAD"),
        ("GET", "/reality/nope", 404, None),
        ("POST", "/sync", 404, None),
        ("POST", "/reality/sync/", 404, None),
        ("GET", "/", 404, None),
    ],
)
async def test_wrong_method_or_path(
    client: httpx.AsyncClient, alive: Alive, method: str, path: str, status: int,
    allow: str | None,
) -> None:
    response = await guarded(client.request(method, path, content=b"{}",
                                            headers={"content-type": JSON_TYPE}))
    if method == "HEAD":
        assert response.status_code == status
        assert response.content == b""
    else:
        assert_problem(response, status, "method_not_allowed" if status == 405 else "not_found")
    assert response.headers.get("allow") == allow
    alive.check(await post_sync(client, alive.known))


async def test_base_path_and_root_path(reader: DBAPIReader, alive: Alive) -> None:
    app = SyncASGIApp(SyncService(reader), base="/api/v1/reality/")
    async with client_for(app) as client:
        alive.check(await client.post("/api/v1/reality/sync", json={"known": alive.known}))
        assert_problem(await client.post(SYNC, json={"known": {}}), 404, "not_found")
    # Mounted under /mount, the server passes root_path and the full path.
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, root_path="/mount"), base_url="http://t"
    ) as client:
        alive.check(await client.post("/mount/api/v1/reality/sync", json={"known": alive.known}))


# --------------------------------------------------------------------------- health


async def test_health_is_200_when_the_store_answers(client: httpx.AsyncClient) -> None:
    response = await guarded(client.get(HEALTH))
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "store": "ok"}
    assert response.headers["cache-control"] == "no-store"
    head = await guarded(client.head(HEALTH))
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == response.headers["content-length"]


UNREACHABLE = "postgresql://postgres@127.0.0.1:1/nowhere?connect_timeout=3"


async def test_an_unreachable_store_gives_503_with_retry_after(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reader = DBAPIReader.from_url(UNREACHABLE)
    app = SyncASGIApp(SyncService(reader, retry_after=7))
    try:
        async with client_for(app) as client:
            for _ in range(2):  # and again: a failure leaves nothing stuck behind
                health = await guarded(client.get(HEALTH))
                assert health.status_code == 503
                assert health.headers["retry-after"] == "7"
                assert health.json()["status"] == "unavailable"
                assert health.json()["store"] == "unreachable"
                assert health.json()["reason"] == "store_unavailable"
                # The driver's message (host, port) goes to the log, not to the caller.
                assert "127.0.0.1" not in health.text
                response = await guarded(client.post(SYNC, json={"known": {"room:7": 1}}))
                body = assert_problem(response, 503, "store_unavailable")
                assert response.headers["retry-after"] == "7"
                assert "127.0.0.1" not in body["detail"]
    finally:
        reader.close()
    assert any("127.0.0.1" in r.getMessage() for r in caplog.records)


async def test_a_store_that_becomes_ready_is_used_without_restarting(tmp_path: Path) -> None:
    url = DatabaseURL.parse(f"sqlite:///{tmp_path}/late.db")
    reader = DBAPIReader.from_url(url)
    try:
        async with client_for(SyncASGIApp(SyncService(reader))) as client:
            response = await guarded(client.post(SYNC, json={"known": {"room:7": 0}}))
            body = assert_problem(response, 503, "store_not_ready")
            assert "reality migrate" in body["detail"]
            assert response.headers["retry-after"] == "2"
            health = await guarded(client.get(HEALTH))
            assert health.status_code == 503
            assert health.json()["reason"] == "store_not_ready"

            conn = url.dbapi_connect()
            try:
                create_tables(conn, url)
            finally:
                conn.close()
            store = Store(str(url))  # the tables exist now: this only bumps
            try:
                store.bump("room:7")
            finally:
                store.close()
            assert versions_of(await guarded(client.post(SYNC, json={"known": {"room:7": 0}}))
                               ) == {"room:7": 1}
            assert (await guarded(client.get(HEALTH))).status_code == 200
    finally:
        reader.close()


async def test_a_store_without_its_epoch_row_is_not_ready(tmp_path: Path) -> None:
    url = DatabaseURL.parse(f"sqlite:///{tmp_path}/noepoch.db")
    conn = url.dbapi_connect()
    for sql in create_table_statements("sqlite"):
        conn.execute(sql)
    conn.close()
    reader = DBAPIReader.from_url(url)
    try:
        async with client_for(SyncASGIApp(SyncService(reader))) as client:
            assert_problem(await guarded(client.post(SYNC, json={"known": {}})), 503,
                           "store_not_ready")
    finally:
        reader.close()


@pytest.mark.parametrize("store", ["postgresql"], indirect=True)
async def test_the_reader_survives_its_pooled_connection_being_killed(
    store: Store, reader: DBAPIReader, alive: Alive
) -> None:
    async with client_for(SyncASGIApp(SyncService(reader))) as client:
        alive.check(await post_sync(client, alive.known))  # leaves a pooled connection
        killed = store.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert killed
        assert all(row[0] for row in killed)
        alive.check(await post_sync(client, alive.known))
        assert (await guarded(client.get(HEALTH))).status_code == 200


# --------------------------------------------------------------------------- authorizer


class RecordingAuthorizer:
    """Allows every key outside ``{ns}secret:``; records each call."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.calls: list[tuple[frozenset[str], dict[str, str]]] = []

    def __call__(self, keys: frozenset[str], headers: Mapping[str, str]) -> Collection[str]:
        self.calls.append((keys, dict(headers)))
        return [k for k in keys if not k.startswith(f"{self.ns}secret:")]


async def test_authorizer_refuses_with_403_and_allows_with_200(
    reader: DBAPIReader, alive: Alive, ns: str
) -> None:
    authorizer = RecordingAuthorizer(ns)
    app = SyncASGIApp(SyncService(reader, authorizer=authorizer))
    async with client_for(app) as client:
        secret = f"{ns}secret:salary"
        response = await guarded(client.post(
            SYNC, json={"known": {**alive.known, secret: 0}}, headers={"X-User-Id": "Alice"}
        ))
        body = assert_problem(response, 403, "forbidden")
        assert secret not in response.text
        assert "1 of" in body["detail"]
        # Once per request, with the whole batch.
        assert len(authorizer.calls) == 1
        assert authorizer.calls[0][0] == frozenset({*alive.known, secret})

        alive.check(await guarded(client.post(SYNC, json={"known": alive.known},
                                              headers={"X-User-Id": "Alice"})))
        assert len(authorizer.calls) == 2
        keys, headers = authorizer.calls[1]
        assert keys == frozenset(alive.known)
        assert headers["x-user-id"] == "Alice"
        assert headers["content-type"] == JSON_TYPE
        assert all(name == name.lower() for name in headers)


def test_authorizer_sees_lower_cased_headers_from_in_process_callers(
    reader: DBAPIReader, alive: Alive, ns: str
) -> None:
    authorizer = RecordingAuthorizer(ns)
    service = SyncService(reader, authorizer=authorizer)
    result = service.sync(alive.known, headers={"X-Tenant": "acme"})
    assert set(result["changed"]) == {alive.key}
    assert authorizer.calls[0][1] == {"x-tenant": "acme"}


# --------------------------------------------------------------------------- internal errors


class BrokenReader:
    """A reader with a bug: it raises something that is not a StoreError."""

    def read(self, keys: Collection[str]) -> Snapshot:
        raise RuntimeError("secret detail: password=hunter2 host=db.internal")

    def ping(self) -> None:
        raise RuntimeError("secret detail: password=hunter2 host=db.internal")

    def close(self) -> None:
        pass


async def test_an_internal_error_is_a_generic_500_that_leaks_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with client_for(SyncASGIApp(SyncService(BrokenReader()))) as client:
        with caplog.at_level(logging.ERROR, logger="reality"):
            response = await guarded(client.post(SYNC, json={"known": {"room:7": 1}}))
        body = assert_problem(response, 500, "internal")
        assert body["detail"] == "internal server error"
        assert "hunter2" not in response.text
        assert "RuntimeError" not in response.text
        health = await guarded(client.get(HEALTH))
        assert health.status_code == 500
        assert "hunter2" not in health.text
    # ...but it is logged, with the traceback, for the operator.
    assert any(r.exc_info and "hunter2" in str(r.exc_info[1]) for r in caplog.records)


async def test_a_store_error_raised_by_a_custom_reader_is_a_503() -> None:
    class DownReader(BrokenReader):
        def read(self, keys: Collection[str]) -> Snapshot:
            raise StoreUnavailable("replica lagging")

    async with client_for(SyncASGIApp(SyncService(DownReader()))) as client:
        response = await guarded(client.post(SYNC, json={"known": {}}))
        assert_problem(response, 503, "store_unavailable")
        assert "lagging" not in response.text


# --------------------------------------------------------------------------- lifespan


async def test_lifespan_and_other_scopes() -> None:
    app = SyncASGIApp(SyncService(BrokenReader()))
    incoming: list[Message] = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    await guarded(app({"type": "lifespan"}, receive, send))
    assert [m["type"] for m in sent] == ["lifespan.startup.complete",
                                         "lifespan.shutdown.complete"]


async def test_a_client_that_disconnects_mid_body_gets_no_answer(
    reader: DBAPIReader,
) -> None:
    app = SyncASGIApp(SyncService(reader))
    incoming: list[Message] = [
        {"type": "http.request", "body": b'{"known":', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": SYNC,
             "headers": [(b"content-type", b"application/json")]}
    await guarded(app(scope, receive, send))
    assert sent == []


# --------------------------------------------------------------------------- fuzzing


def _characters() -> st.SearchStrategy[str]:
    # Everything, lone surrogates and control characters included.
    return st.characters(codec=None, exclude_categories=())


_json_scalars = (st.none() | st.booleans() | st.integers() | st.floats()
                 | st.text(_characters(), max_size=20))
_json = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)
_keys = st.one_of(st.text(_characters(), max_size=300), st.sampled_from(
    ["room:7", "secret:x", "", "$table:orders", "$esc:room:"]))
_versions = st.one_of(st.integers(min_value=-2, max_value=2**64), _json_scalars)
_bodies = st.one_of(
    _json.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(_keys, _versions, max_size=6).map(lambda k: json.dumps({"known": k}).encode()),
    st.fixed_dictionaries(
        {"known": st.dictionaries(_keys, st.integers(min_value=0, max_value=2**63), max_size=6)},
        optional={"mode": _json, "hint": _json, "clientId": _json, "wait": _json},
    ).map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=512),
)
_content_types = st.sampled_from(
    ["application/json", "application/json; charset=utf-8", "text/plain", "", "application/*"]
)


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as runner:
        yield runner


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_bodies, content_type=_content_types)
# Bodies that once broke the endpoint, always tried first.
@example(body=b'{"known": {}, "mode": []}', content_type="application/json")
@example(body=b'{"known": {"room:\\udc80": 1}}', content_type="application/json")
@example(body=b'{"known": {"secret:a": 1, "room:7": 2}}', content_type="application/json")
def test_fuzzed_bodies_never_break_the_endpoint(
    runner: asyncio.Runner, sqlite_store: Store, body: bytes, content_type: str
) -> None:
    sqlite_store.bump("alive")
    expected = {"alive": sqlite_store.version("alive")}
    reader = sqlite_store.reader()
    authorizer = RecordingAuthorizer("")  # refuses "secret:..." keys: 403 is reachable

    async def exchange() -> tuple[httpx.Response, httpx.Response]:
        app = SyncASGIApp(SyncService(reader, authorizer=authorizer))
        async with client_for(app) as client:
            headers = {"content-type": content_type} if content_type else {}
            fuzzed = await guarded(client.post(SYNC, content=body, headers=headers))
            good = await guarded(client.post(SYNC, json={"known": {"alive": 0}}))
            return fuzzed, good

    try:
        fuzzed, good = runner.run(exchange())
    finally:
        reader.close()
    assert fuzzed.status_code in {200, 400, 403, 413, 415}, fuzzed.text
    expected_type = JSON_TYPE if fuzzed.status_code == 200 else PROBLEM
    assert fuzzed.headers["content-type"] == expected_type
    json.loads(fuzzed.content)
    assert versions_of(good) == expected


def test_sqlite_reader_handles_concurrent_requests(sqlite_store: Store, runner: asyncio.Runner
                                                   ) -> None:
    """Requests run in worker threads; the reader's pool hands each its own connection."""
    sqlite_store.bump("concurrent")
    reader = sqlite_store.reader()

    async def many() -> list[httpx.Response]:
        async with client_for(SyncASGIApp(SyncService(reader))) as client:
            return await guarded(asyncio.gather(
                *(client.post(SYNC, json={"known": {"concurrent": 0}}) for _ in range(40))
            ))

    try:
        responses = runner.run(many())
    finally:
        reader.close()
    assert {tuple(versions_of(r).items()) for r in responses} == {
        (("concurrent", sqlite_store.version("concurrent")),),
    }


def test_a_locked_version_table_gives_503_not_a_hung_request(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    for pg in open_store(request, tmp_path, "postgresql"):
        locker = pg.url.dbapi_connect()
        locker.autocommit = False
        reader = pg.reader()
        try:
            locker.cursor().execute("LOCK TABLE reality_versions IN ACCESS EXCLUSIVE MODE")
            service = SyncService(reader)
            response = service.handle(b'{"known": {"a": 0}}', "application/json")
            assert response.status == 503
            assert ("retry-after", "2") in response.headers
        finally:
            locker.rollback()
            locker.close()
            reader.close()
