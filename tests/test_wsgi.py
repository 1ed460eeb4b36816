"""The sync endpoint through :class:`reality_core.wsgi.SyncWSGIApp`: the same requests as
``test_endpoint.py`` (shared tables), plus what only WSGI has (no streaming reads)."""

from __future__ import annotations

import io
import json
import wsgiref.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from reality_core import DBAPIReader, SyncService
from reality_core.keys import escalation_key
from reality_core.urls import DatabaseURL
from reality_core.wsgi import SyncWSGIApp
from tests import test_endpoint as shared
from tests.test_endpoint import (
    BAD_BODIES,
    HEALTH,
    JSON_TYPE,
    PROBLEM,
    SYNC,
    UNREACHABLE,
    Alive,
    Bad,
    BrokenReader,
    RecordingAuthorizer,
    Store,
    assert_problem,
    bad_headers,
    changed_of,
    create_tables,
    versions_of,
)

# The same stores and key namespaces as test_endpoint.py (fixtures are found by name).
store = shared.store
reader = shared.reader
ns = shared.ns
alive = shared.alive


def client_for(app: SyncWSGIApp) -> httpx.Client:
    return httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://reality.test")


@pytest.fixture
def client(reader: DBAPIReader) -> Iterator[httpx.Client]:
    with client_for(SyncWSGIApp(SyncService(reader))) as client:
        yield client


class Unreadable(io.RawIOBase):
    """A ``wsgi.input`` that fails the test if the app reads it."""

    def read(self, size: int = -1) -> bytes:
        raise AssertionError("the app read a body it should have refused unread")


def call(app: SyncWSGIApp, **environ: Any) -> tuple[int, dict[str, str], bytes]:
    """Call the app with a wsgiref-style environ; return status, headers, body."""
    wsgiref.util.setup_testing_defaults(environ)
    seen: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen.extend([status, headers])

    body = b"".join(app(environ, start_response))
    status, headers = seen
    assert status.split(" ", 1)[1]  # a reason phrase, e.g. "413 Content Too Large"
    return int(status.split()[0]), {k.lower(): v for k, v in headers}, body


def test_good_sync(client: httpx.Client, store: Store, ns: str) -> None:
    a, b, never, room7 = f"{ns}a", f"{ns}b", f"{ns}never", f"{ns}room:7"
    store.bump(a, b)
    store.bump(a)
    store.bump(escalation_key(f"{ns}room:"))
    response = client.post(SYNC, json={"known": {a: 2, b: 5, never: 0, room7: 0}})
    changed = changed_of(response)
    assert {k: v["version"] for k, v in changed.items()} == {b: 1, room7: 1}
    assert response.json()["epoch"] == store.epoch
    assert changed_of(client.post(SYNC, json={"known": {never: 4}}))[never] == {
        "key": never, "version": 0, "hash": "", "updatedAt": 0,
    }


@pytest.mark.parametrize("bad", BAD_BODIES, ids=[b.id for b in BAD_BODIES])
def test_bad_body_gets_its_status_and_code_then_the_server_still_answers(
    client: httpx.Client, alive: Alive, bad: Bad
) -> None:
    response = client.post(SYNC, content=bad.body, headers=bad_headers(bad))
    assert_problem(response, bad.status, bad.code)
    alive.check(client.post(SYNC, json={"known": alive.known}))


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [("GET", SYNC, 405, "POST"), ("POST", HEALTH, 405, "GET, HEAD"),
     ("GET", "/reality/nope", 404, None), ("POST", "/sync", 404, None)],
)
def test_wrong_method_or_path(
    client: httpx.Client, alive: Alive, method: str, path: str, status: int, allow: str | None
) -> None:
    response = client.request(method, path, json={"known": {}})
    assert_problem(response, status, "method_not_allowed" if status == 405 else "not_found")
    assert response.headers.get("allow") == allow
    alive.check(client.post(SYNC, json={"known": alive.known}))


def test_health_and_head(client: httpx.Client) -> None:
    response = client.get(HEALTH)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "store": "ok"}
    head = client.head(HEALTH)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == response.headers["content-length"]


def test_an_unreachable_store_gives_503_with_retry_after() -> None:
    reader = DBAPIReader.from_url(UNREACHABLE)
    try:
        with client_for(SyncWSGIApp(SyncService(reader))) as client:
            health = client.get(HEALTH)
            assert health.status_code == 503
            assert health.headers["retry-after"] == "2"
            assert health.json()["reason"] == "store_unavailable"
            response = client.post(SYNC, json={"known": {"room:7": 0}})
            assert_problem(response, 503, "store_unavailable")
            assert response.headers["retry-after"] == "2"
    finally:
        reader.close()


def test_a_store_that_becomes_ready_is_used_without_restarting(tmp_path: Path) -> None:
    url = DatabaseURL.parse(f"sqlite:///{tmp_path}/late.db")
    reader = DBAPIReader.from_url(url)
    try:
        with client_for(SyncWSGIApp(SyncService(reader))) as client:
            assert_problem(client.post(SYNC, json={"known": {}}), 503, "store_not_ready")
            conn = url.dbapi_connect()
            try:
                create_tables(conn, url)
            finally:
                conn.close()
            assert versions_of(client.post(SYNC, json={"known": {"room:7": 2}})) == {"room:7": 0}
    finally:
        reader.close()


def test_authorizer(reader: DBAPIReader, alive: Alive, ns: str) -> None:
    authorizer = RecordingAuthorizer(ns)
    with client_for(SyncWSGIApp(SyncService(reader, authorizer=authorizer))) as client:
        refused = client.post(SYNC, json={"known": {**alive.known, f"{ns}secret:1": 0}})
        assert_problem(refused, 403, "forbidden")
        alive.check(client.post(SYNC, json={"known": alive.known},
                                headers={"X-User-Id": "Alice"}))
    headers = authorizer.calls[-1][1]
    assert headers["x-user-id"] == "Alice"
    # The same names as under ASGI, Content-Type included (WSGI keeps it out of HTTP_*).
    assert headers["content-type"] == JSON_TYPE
    assert all(name == name.lower() for name in headers)


def test_an_internal_error_is_a_generic_500_that_leaks_nothing() -> None:
    with client_for(SyncWSGIApp(SyncService(BrokenReader()))) as client:
        response = client.post(SYNC, json={"known": {"room:7": 1}})
        assert_problem(response, 500, "internal")
        assert "hunter2" not in response.text
        assert "hunter2" not in client.get(HEALTH).text


def test_a_chunked_body_the_server_did_not_terminate_gets_411(
    client: httpx.Client, alive: Alive
) -> None:
    def upload() -> Iterator[bytes]:
        yield json.dumps({"known": alive.known}).encode()

    # httpx sends a generator chunked; its WSGI transport does not set wsgi.input_terminated.
    response = client.post(SYNC, content=upload(), headers={"content-type": JSON_TYPE})
    assert_problem(response, 411, "length_required")
    alive.check(client.post(SYNC, json={"known": alive.known}))


def test_a_terminated_input_without_content_length_is_read_up_to_the_limit(
    reader: DBAPIReader, alive: Alive
) -> None:
    app = SyncWSGIApp(SyncService(reader))
    good = json.dumps({"known": alive.known}).encode()
    status, headers, body = call(
        app, REQUEST_METHOD="POST", PATH_INFO=SYNC, CONTENT_TYPE=JSON_TYPE,
        HTTP_TRANSFER_ENCODING="chunked", **{"wsgi.input": io.BytesIO(good),
                                             "wsgi.input_terminated": True},
    )
    assert status == 200, body
    assert set(json.loads(body)["changed"]) == {alive.key}
    huge = io.BytesIO(b'{"known": {}}' + b" " * (1 << 20))
    status, headers, body = call(
        app, REQUEST_METHOD="POST", PATH_INFO=SYNC, CONTENT_TYPE=JSON_TYPE,
        **{"wsgi.input": huge, "wsgi.input_terminated": True},
    )
    assert status == 413
    assert headers["content-type"] == PROBLEM
    assert json.loads(body)["code"] == "body_too_large"
    assert huge.tell() < 1 << 20  # it stopped reading past the limit


def test_a_declared_content_length_over_the_limit_is_refused_unread(reader: DBAPIReader) -> None:
    status, _, body = call(
        SyncWSGIApp(SyncService(reader)), REQUEST_METHOD="POST", PATH_INFO=SYNC,
        CONTENT_TYPE=JSON_TYPE, CONTENT_LENGTH=str(1 << 20), **{"wsgi.input": Unreadable()},
    )
    assert status == 413
    assert json.loads(body)["code"] == "body_too_large"


@pytest.mark.parametrize("length", ["abc", "-1", "\u00b2", "1.5"])
def test_a_malformed_content_length_is_a_400(reader: DBAPIReader, length: str) -> None:
    status, _, body = call(
        SyncWSGIApp(SyncService(reader)), REQUEST_METHOD="POST", PATH_INFO=SYNC,
        CONTENT_TYPE=JSON_TYPE, CONTENT_LENGTH=length, **{"wsgi.input": Unreadable()},
    )
    assert status == 400
    assert json.loads(body)["code"] == "bad_content_length"


def test_no_body_at_all_is_malformed_json(reader: DBAPIReader) -> None:
    status, _, body = call(
        SyncWSGIApp(SyncService(reader)), REQUEST_METHOD="POST", PATH_INFO=SYNC,
        CONTENT_TYPE=JSON_TYPE, **{"wsgi.input": Unreadable()},
    )
    assert status == 400
    assert json.loads(body)["code"] == "malformed_json"


def test_mounted_under_a_script_name(reader: DBAPIReader, alive: Alive) -> None:
    app = SyncWSGIApp(SyncService(reader), base="/reality")
    payload = json.dumps({"known": alive.known}).encode()
    status, _, body = call(
        app, REQUEST_METHOD="POST", SCRIPT_NAME="/app", PATH_INFO=SYNC, CONTENT_TYPE=JSON_TYPE,
        CONTENT_LENGTH=str(len(payload)), **{"wsgi.input": io.BytesIO(payload)},
    )
    assert status == 200
    assert set(json.loads(body)["changed"]) == {alive.key}
