"""The demo chat (``reality demo``): its HTTP API, the page, the command — on real databases.

Two clients talk to the real ASGI app through ``httpx.ASGITransport``; one test also runs the
command as a subprocess and talks to it over real HTTP.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from reality_core.cli import build_parser, main
from reality_core.demo import default_database_url, open_backend
from reality_core.demo.app import MAX_BODY_BYTES, DemoApp
from reality_core.demo.backend import MAX_TEXT, ROOMS_KEY, room_key
from reality_core.errors import ConfigurationError
from reality_core.urls import DatabaseURL

ROOT = Path(__file__).resolve().parent.parent
PROBLEM = "application/problem+json"


def _drop_demo_tables(url: str) -> None:
    """The PostgreSQL database lives for the whole session: start each test from empty."""
    import psycopg

    with psycopg.connect(DatabaseURL.parse(url).libpq(), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS demo_messages, demo_rooms")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        url: str = request.getfixturevalue("sqlite_url")
        return url
    url = request.getfixturevalue("pg_url")
    _drop_demo_tables(url)
    return url


@pytest.fixture
def app(database_url: str) -> Iterator[DemoApp]:
    backend = open_backend("sqlalchemy", database_url)
    try:
        yield DemoApp(backend)
    finally:
        backend.close()


def _client(app: DemoApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://demo")


@pytest.fixture
async def client(app: DemoApp) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(app) as http:
        yield http


async def _sync(http: httpx.AsyncClient, known: dict[str, int], hint: str = "focus"
                ) -> dict[str, Any]:
    response = await http.post("/reality/sync", json={"known": known, "hint": hint})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _learn(known: dict[str, int], response: dict[str, Any]) -> dict[str, int]:
    """What a client records from a sync response, before it reads any data (I9)."""
    return {key: response["changed"].get(key, {"version": version})["version"]
            for key, version in known.items()}


async def _bodies(http: httpx.AsyncClient, room: str) -> list[str]:
    response = await http.get(f"/api/rooms/{room}/messages")
    assert response.status_code == 200, response.text
    assert response.json()["key"] == room_key(room)
    return [m["body"] for m in response.json()["messages"]]


# --- end to end -------------------------------------------------------------------------


async def test_client_a_learns_of_client_b_message(app: DemoApp) -> None:
    async with _client(app) as a, _client(app) as b:
        # A mounts: it asks about its keys, records the versions, and only then reads.
        first = await _sync(a, {"room:general": 0, "room:random": 0}, "mount")
        known = _learn({"room:general": 0, "room:random": 0}, first)
        v0 = known["room:general"]
        before = await _bodies(a, "general")

        posted = await b.post("/api/rooms/general/messages",
                              json={"author": "bob", "body": "hello from B"})
        assert posted.status_code == 201, posted.text
        message = posted.json()["message"]
        assert message["author"] == "bob"
        assert message["room"] == "general"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", message["createdAt"])

        second = await _sync(a, known, "interaction")
        assert set(second["changed"]) == {"room:general"}  # room:random did not move
        assert second["changed"]["room:general"]["version"] > v0
        assert second["epoch"] == first["epoch"]
        known = _learn(known, second)
        assert await _bodies(a, "general") == [*before, "hello from B"]

        # Caught up: nothing is reported until the next write.
        assert (await _sync(a, known))["changed"] == {}


async def test_posting_to_one_room_reports_only_that_room(client: httpx.AsyncClient) -> None:
    keys = {ROOMS_KEY: 0, "room:general": 0, "room:random": 0}
    known = _learn(keys, await _sync(client, keys, "mount"))
    for text in ("one", "two"):
        response = await client.post("/api/rooms/random/messages",
                                     json={"author": "ada", "body": text})
        assert response.status_code == 201
    changed = (await _sync(client, known))["changed"]
    assert set(changed) == {"room:random"}
    assert changed["room:random"]["version"] > known["room:random"]
    assert await _bodies(client, "random") == ["one", "two"]
    assert await _bodies(client, "general") == []


async def test_creating_a_room_moves_the_room_list_key(client: httpx.AsyncClient) -> None:
    listing = await client.get("/api/rooms")
    assert listing.status_code == 200
    assert listing.json()["key"] == ROOMS_KEY
    assert [r["id"] for r in listing.json()["rooms"]] == ["general", "random"]
    keys = {ROOMS_KEY: 0, "room:general": 0}
    known = _learn(keys, await _sync(client, keys, "mount"))

    created = await client.post("/api/rooms", json={"title": "  Python 3.14!  "})
    assert created.status_code == 201, created.text
    assert created.json()["room"] == {"id": "python-3-14", "title": "Python 3.14!",
                                      "key": "room:python-3-14"}
    assert set((await _sync(client, known))["changed"]) == {ROOMS_KEY}
    rooms = (await client.get("/api/rooms")).json()["rooms"]
    assert [r["id"] for r in rooms] == ["general", "python-3-14", "random"]

    again = await client.post("/api/rooms", json={"title": "python 3 14"})
    assert again.status_code == 409
    assert again.json()["code"] == "room_exists"


async def test_texts_round_trip_unchanged(client: httpx.AsyncClient) -> None:
    text = "multi\nline\twith 'quotes', \"json\", <b>html</b>, ünïcödé and 🎉"
    response = await client.post("/api/rooms/general/messages",
                                 json={"author": "zoë", "body": text})
    assert response.status_code == 201
    assert await _bodies(client, "general") == [text]


# --- bad input ----------------------------------------------------------------------------

JSON_HEADERS = {"content-type": "application/json"}

BAD_REQUESTS = [
    # (id, method, path, body bytes, headers, status, code)
    ("not json", "POST", "/api/rooms/general/messages", b"{author", JSON_HEADERS, 400,
     "invalid_json"),
    ("array", "POST", "/api/rooms/general/messages", b"[]", JSON_HEADERS, 400, "invalid_json"),
    ("no author", "POST", "/api/rooms/general/messages", b'{"body": "hi"}', JSON_HEADERS, 400,
     "invalid_author"),
    ("author not string", "POST", "/api/rooms/general/messages",
     b'{"author": 7, "body": "hi"}', JSON_HEADERS, 400, "invalid_author"),
    ("blank author", "POST", "/api/rooms/general/messages",
     b'{"author": "   ", "body": "hi"}', JSON_HEADERS, 400, "invalid_author"),
    ("long author", "POST", "/api/rooms/general/messages",
     b'{"author": "' + b"a" * 41 + b'", "body": "hi"}', JSON_HEADERS, 400, "invalid_author"),
    ("control in author", "POST", "/api/rooms/general/messages",
     b'{"author": "a\\nb", "body": "hi"}', JSON_HEADERS, 400, "invalid_author"),
    ("empty body", "POST", "/api/rooms/general/messages", b'{"author": "a", "body": ""}',
     JSON_HEADERS, 400, "invalid_body"),
    ("NUL in body", "POST", "/api/rooms/general/messages",
     b'{"author": "a", "body": "x\\u0000y"}', JSON_HEADERS, 400, "invalid_body"),
    ("lone surrogate", "POST", "/api/rooms/general/messages",
     b'{"author": "a", "body": "x\\ud800"}', JSON_HEADERS, 400, "invalid_body"),
    ("message too long", "POST", "/api/rooms/general/messages",
     b'{"author": "a", "body": "' + b"x" * (MAX_TEXT + 1) + b'"}', JSON_HEADERS, 413,
     "message_too_long"),
    ("request too large", "POST", "/api/rooms/general/messages",
     b'{"author": "a", "body": "' + b"x" * MAX_BODY_BYTES + b'"}', JSON_HEADERS, 413,
     "body_too_large"),
    ("form encoded", "POST", "/api/rooms/general/messages", b"author=a&body=b",
     {"content-type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
    ("unknown room", "POST", "/api/rooms/nowhere/messages", b'{"author": "a", "body": "b"}',
     JSON_HEADERS, 404, "room_not_found"),
    ("unknown room read", "GET", "/api/rooms/nowhere/messages", b"", {}, 404,
     "room_not_found"),
    ("bad room id", "GET", "/api/rooms/No%20Such/messages", b"", {}, 404, "room_not_found"),
    ("title without letters", "POST", "/api/rooms", b'{"title": "!!!"}', JSON_HEADERS, 400,
     "invalid_title"),
    ("unknown path", "GET", "/api/nothing", b"", {}, 404, "not_found"),
    ("unknown asset", "GET", "/static/secrets.py", b"", {}, 404, "not_found"),
    ("wrong method", "DELETE", "/api/rooms", b"", {}, 405, "method_not_allowed"),
    ("sync by GET", "GET", "/reality/sync", b"", {}, 405, "method_not_allowed"),
]


@pytest.fixture
async def sqlite_client(sqlite_url: str) -> AsyncIterator[httpx.AsyncClient]:
    backend = open_backend("sqlalchemy", sqlite_url)
    try:
        async with _client(DemoApp(backend)) as http:
            yield http
    finally:
        backend.close()


# Validation lives in the ORM-free app, so one database is enough here; the test after this
# one sends every case to every database.
@pytest.mark.parametrize(("method", "path", "body", "headers", "status", "code"),
                         [pytest.param(*case[1:], id=case[0]) for case in BAD_REQUESTS])
async def test_bad_requests_get_a_problem(sqlite_client: httpx.AsyncClient, method: str,
                                          path: str, body: bytes, headers: dict[str, str],
                                          status: int, code: str) -> None:
    response = await sqlite_client.request(method, path, content=body, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["status"] == status
    assert problem["code"] == code
    assert problem["type"].endswith(code)
    assert problem["detail"]
    if status == 405:
        assert response.headers["allow"]


async def test_bad_requests_write_nothing(client: httpx.AsyncClient) -> None:
    keys = {"room:general": 0}
    known = _learn(keys, await _sync(client, keys, "mount"))
    for case, method, path, body, headers, status, code in BAD_REQUESTS:
        response = await client.request(method, path, content=body, headers=headers)
        assert (response.status_code, response.json()["code"]) == (status, code), case
    assert (await _sync(client, known))["changed"] == {}
    assert await _bodies(client, "general") == []


# --- the page -----------------------------------------------------------------------------


async def test_page_loads_the_client(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    html = page.text
    assert '<script type="module" src="/static/chat.js"></script>' in html
    assert 'href="/static/reality-client.js"' in html
    # The server fills in the key names it declares.
    assert 'data-rooms-key="$table:demo_rooms"' in html
    assert 'data-room-key-prefix="room:"' in html
    assert "{{" not in html

    for name in ("chat.js", "reality-client.js", "style.css"):
        asset = await client.get(f"/static/{name}")
        assert asset.status_code == 200, name
        assert asset.headers["x-content-type-options"] == "nosniff"
    chat = (await client.get("/static/chat.js")).text
    assert 'from "./reality-client.js"' in chat

    head = await client.head("/")
    assert head.status_code == 200
    assert head.content == b""


async def test_client_script_syncs_only_on_events(client: httpx.AsyncClient) -> None:
    script = (await client.get("/static/reality-client.js")).text
    assert (await client.get("/static/reality-client.js")).headers["content-type"] == (
        "text/javascript; charset=utf-8")
    assert "export class RealityClient" in script
    assert "/sync" in script
    assert '"mutation"' in script
    for event in ('"focus"', '"visibilitychange"', '"click"', '"keydown"'):
        assert event in script, event
    # No timer loop and no long-poll (DESIGN §8), in the client or the page.
    page_script = (await client.get("/static/chat.js")).text
    for source in (script, page_script):
        assert not re.search(r"\bset(Interval|Timeout)\s*\(", source)
        assert "EventSource" not in source
        assert "WebSocket" not in source
        assert '"wait"' not in source


async def test_sync_endpoint_is_mounted(client: httpx.AsyncClient) -> None:
    health = await client.get("/reality/health")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "store": "ok"}
    response = await _sync(client, {"room:never-written": 0})
    assert response["changed"] == {}
    assert response["epoch"]


# --- the command --------------------------------------------------------------------------


def test_demo_arguments_parse() -> None:
    args = build_parser().parse_args(
        ["demo", "--port", "8123", "--host", "0.0.0.0",
         "--database-url", "postgresql://app@127.0.0.1/chat"])
    assert (args.command, args.port, args.host) == ("demo", 8123, "0.0.0.0")
    assert args.database_url == "postgresql://app@127.0.0.1/chat"
    defaults = build_parser().parse_args(["demo"])
    assert (defaults.database_url, defaults.orm, defaults.port) == (None, "sqlalchemy", 8000)


def test_demo_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--database-url" in out
    assert "--port" in out


@pytest.mark.parametrize("argv", [["demo", "--port", "0"], ["demo", "--orm", "django"],
                                  ["demo", "--database-url", "oracle://x/y"]])
def test_demo_refuses_bad_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert "error" in capsys.readouterr().err


def test_demo_reports_an_unreachable_database(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    code = main(["demo", "--port", str(_free_port()),
                 "--database-url", f"postgresql://nobody@127.0.0.1:{dead}/chat"])
    assert code == 1
    assert "reality demo:" in capsys.readouterr().err


def test_default_database_is_a_file_in_the_current_directory(tmp_path: Path) -> None:
    assert default_database_url(tmp_path) == f"sqlite:///{tmp_path.resolve()}/reality-demo.db"


def test_unknown_orm_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="sqlalchemy"):
        open_backend("django", "sqlite://")


def test_in_memory_sqlite_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="SQLite file"):
        open_backend("sqlalchemy", "sqlite://")


def test_importing_the_demo_imports_no_orm() -> None:
    code = ("import sys, reality_core.demo, reality_core.demo.app; "
            "print(sorted(m for m in ('sqlalchemy', 'peewee', 'tortoise') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True,
                         text=True, check=True, timeout=60).stdout
    assert out.strip() == "[]"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


def _wait_until_healthy(http: httpx.Client, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"reality demo exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if http.get("/reality/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"reality demo did not answer /reality/health within 30 s:\n{log.read_text()}")


def test_demo_command_serves_over_http(tmp_path: Path) -> None:
    port = _free_port()
    database = tmp_path / "chat.db"
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "reality_core.cli", "demo", "--port", str(port),
             "--database-url", f"sqlite:///{database}"],
            stdout=out, stderr=subprocess.STDOUT, env=_env(), cwd=tmp_path,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            _wait_until_healthy(http, proc, log)
            keys = {"room:general": 0, "room:random": 0}
            first = http.post("/reality/sync", json={"known": keys, "hint": "mount"})
            assert first.status_code == 200
            known = _learn(keys, first.json())

            posted = http.post("/api/rooms/general/messages",
                               json={"author": "subprocess", "body": "over real HTTP"})
            assert posted.status_code == 201, posted.text

            second = http.post("/reality/sync", json={"known": known, "hint": "focus"}).json()
            assert set(second["changed"]) == {"room:general"}
            assert second["changed"]["room:general"]["version"] > known["room:general"]
            messages = http.get("/api/rooms/general/messages").json()["messages"]
            assert [m["body"] for m in messages] == ["over real HTTP"]
            assert "reality-client.js" in http.get("/").text
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:  # pragma: no cover - only if shutdown hangs
            proc.kill()
            proc.wait()
    output = log.read_text()
    assert f"open http://127.0.0.1:{port}/" in output
    assert str(database) in output
    assert database.exists()
