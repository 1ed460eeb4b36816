"""The demo chat as a plain ASGI app: a small router, a JSON API, the page, and the sync
endpoint mounted at ``/reality``. It imports no ORM: storage is a
:class:`~reality_core.demo.backend.Backend`.

Routes::

    GET  /                              the page (static/index.html)
    GET  /static/<file>                 the page's scripts and stylesheet
    GET  /api/rooms                     {"key": "$table:demo_rooms", "rooms": [...]}
    POST /api/rooms                     {"title": "..."}             -> 201 {"room": {...}}
    GET  /api/rooms/<room>/messages     {"key": "room:<room>", "room": "<room>", "messages": [...]}
    POST /api/rooms/<room>/messages     {"author": "...", "body": "..."} -> 201 {"message": {...}}
    POST /reality/sync, GET /reality/health     the sync endpoint (SyncASGIApp)

Every data response names the key its data hangs on. Errors are RFC 9457
``application/problem+json`` like the sync endpoint's: 400 invalid input, 404 unknown room or
path, 405 wrong method, 409 the room exists, 413 over a size limit, 415 not JSON, 503 the
database is unavailable, a generic 500 for anything else (logged, never leaked).

Backend calls are synchronous and run in a worker thread, so the event loop never waits on
the database.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

from reality_core.asgi import Receive, Scope, Send, SyncASGIApp, request_path
from reality_core.errors import StoreError
from reality_core.sync import Response, SyncService, error_response

from .backend import (
    MAX_AUTHOR,
    MAX_TEXT,
    MAX_TITLE,
    ROOM_ID_RE,
    ROOM_KEY_PREFIX,
    ROOMS_KEY,
    Backend,
    RoomExists,
    RoomNotFound,
    room_key,
    slugify,
)

log = logging.getLogger("reality.demo")

SYNC_BASE: Final = "/reality"
#: API request bodies larger than this get 413 before they are parsed.
MAX_BODY_BYTES: Final = 16 * 1024

_CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# The page loads nothing but its own files and talks to nothing but its own origin.
_PAGE_CSP: Final = (
    "default-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
# Characters no name may contain; a message body may also hold newlines and tabs.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_IN_TEXT: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class HTTPProblem(Exception):
    """Raised by a handler to answer with a problem+json error."""

    def __init__(self, status: int, code: str, detail: str,
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    params: Mapping[str, str]
    headers: Mapping[str, str]
    receive: Receive


Handler = Callable[[Request], Awaitable[Response]]


class DemoApp:
    """The demo chat: ``DemoApp(backend)`` is an ASGI application.

    Example::

        from reality_core.demo.sqlalchemy_backend import SQLAlchemyBackend

        app = DemoApp(SQLAlchemyBackend("sqlite:///chat.db"))
        # uvicorn.run(app), or httpx.ASGITransport(app=app) in tests

    ``service`` replaces the default :class:`SyncService` over ``backend.make_reader()``
    (e.g. to set limits or an authorizer).
    """

    def __init__(self, backend: Backend, *, service: SyncService | None = None) -> None:
        self.backend = backend
        self.sync = SyncASGIApp(service or SyncService(backend.make_reader()), base=SYNC_BASE)
        assets = _load_assets()
        page, _ = assets.pop("index.html")
        self.page = _render_page(page)
        self.assets = assets
        self.routes: list[tuple[re.Pattern[str], dict[str, Handler]]] = [
            (re.compile(r"/"), {"GET": self._page}),
            (re.compile(r"/static/(?P<name>[^/]+)"), {"GET": self._static}),
            (re.compile(r"/api/rooms"), {"GET": self._rooms, "POST": self._create_room}),
            (re.compile(r"/api/rooms/(?P<room>[^/]+)/messages"),
             {"GET": self._messages, "POST": self._post_message}),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.sync(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        path = request_path(scope)
        if path == SYNC_BASE or path.startswith(SYNC_BASE + "/"):
            await self.sync(scope, receive, send)
            return
        method: str = scope.get("method", "GET")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", ())}
        response = await self._dispatch(path, method, headers, receive)
        await _send(send, response, head=method == "HEAD")

    async def _dispatch(self, path: str, method: str, headers: Mapping[str, str],
                        receive: Receive) -> Response:
        for pattern, handlers in self.routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            handler = handlers.get("GET" if method == "HEAD" else method)
            if handler is None:
                allowed = sorted(handlers) + (["HEAD"] if "GET" in handlers else [])
                return error_response(405, "method_not_allowed",
                                      f"{path} accepts {', '.join(allowed)}, not {method[:20]}",
                                      (("allow", ", ".join(allowed)),))
            try:
                return await handler(Request(method, match.groupdict(), headers, receive))
            except HTTPProblem as exc:
                return error_response(exc.status, exc.code, exc.detail, exc.headers)
            except RoomNotFound as exc:
                return error_response(404, "room_not_found", f"no room {exc.args[0]!r}")
            except RoomExists as exc:
                return error_response(409, "room_exists", f"room {exc.args[0]!r} already exists")
            except StoreError as exc:
                log.warning("demo: database unavailable: %s", exc)
                return error_response(503, "store_unavailable",
                                      "the database is unavailable; retry later",
                                      (("retry-after", "2"),))
            except Exception:
                log.exception("demo: internal error on %s %s", method, path)
                return error_response(500, "internal", "internal server error")
        return error_response(404, "not_found", f"no such page: {path[:200]}")

    # --- handlers ---------------------------------------------------------------------

    async def _page(self, request: Request) -> Response:
        return Response(200, self.page, _CONTENT_TYPES[".html"],
                        (("content-security-policy", _PAGE_CSP),))

    async def _static(self, request: Request) -> Response:
        asset = self.assets.get(request.params["name"])
        if asset is None:
            raise HTTPProblem(404, "not_found", f"no such file: {request.params['name'][:100]}")
        return Response(200, *asset)

    async def _rooms(self, request: Request) -> Response:
        rooms = await asyncio.to_thread(self.backend.list_rooms)
        return _json(200, {"key": ROOMS_KEY, "rooms": [r.as_json() for r in rooms]})

    async def _create_room(self, request: Request) -> Response:
        data = await _json_body(request)
        title = _name(data, "title", MAX_TITLE)
        room_id = slugify(title)
        if not room_id:
            raise HTTPProblem(400, "invalid_title",
                              '"title" needs at least one letter or digit (a-z, 0-9)')
        room = await asyncio.to_thread(self.backend.create_room, room_id, title)
        return _json(201, {"room": room.as_json()})

    async def _messages(self, request: Request) -> Response:
        room = _room_id(request)
        messages = await asyncio.to_thread(self.backend.list_messages, room)
        return _json(200, {"key": room_key(room), "room": room,
                           "messages": [m.as_json() for m in messages]})

    async def _post_message(self, request: Request) -> Response:
        room = _room_id(request)
        data = await _json_body(request)
        author = _name(data, "author", MAX_AUTHOR)
        body = _field(data, "body")
        if _CONTROL_IN_TEXT.search(body):
            raise HTTPProblem(400, "invalid_body", '"body" must not contain control characters')
        if len(body) > MAX_TEXT:
            raise HTTPProblem(413, "message_too_long",
                              f'"body" is {len(body)} characters; the limit is {MAX_TEXT}')
        message = await asyncio.to_thread(self.backend.post_message, room, author, body)
        return _json(201, {"message": message.as_json()})


# --- request parsing ------------------------------------------------------------------

def _room_id(request: Request) -> str:
    room = request.params["room"]
    if not ROOM_ID_RE.fullmatch(room):
        # Not a valid id, so no such room; say what ids look like.
        raise HTTPProblem(404, "room_not_found",
                          f"no room {room[:60]!r} (room ids are lowercase letters, digits and -)")
    return room


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    too_large = HTTPProblem(413, "body_too_large",
                            f"the request body is larger than {MAX_BODY_BYTES} bytes")
    if declared is not None:
        declared = declared.strip()
        # isascii: str.isdigit() also accepts digits such as "²" that int() refuses.
        if not (declared.isascii() and declared.isdigit()):
            raise HTTPProblem(400, "bad_content_length", "Content-Length must be a number")
        if int(declared) > MAX_BODY_BYTES:
            raise too_large
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise HTTPProblem(400, "disconnected", "client went away")
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _json_body(request: Request) -> dict[str, Any]:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise HTTPProblem(415, "unsupported_media_type",
                          f"send the body as application/json, not {media[:60] or 'nothing'}")
    raw = await _read_body(request)
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise HTTPProblem(400, "invalid_json", "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise HTTPProblem(400, "invalid_json",
                          'the body must be a JSON object, e.g. {"author": "ada", "body": "hi"}')
    return data


def _field(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str):
        got = "nothing" if value is None else type(value).__name__
        raise HTTPProblem(400, f"invalid_{name}", f'"{name}" must be a string, got {got}')
    value = value.strip()
    if not value:
        raise HTTPProblem(400, f"invalid_{name}", f'"{name}" must not be empty')
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from "\ud800" in the JSON
        raise HTTPProblem(400, f"invalid_{name}", f'"{name}" is not valid Unicode') from None
    return value


def _name(data: Mapping[str, Any], name: str, limit: int) -> str:
    value = _field(data, name)
    if _CONTROL.search(value):
        raise HTTPProblem(400, f"invalid_{name}", f'"{name}" must not contain control characters')
    if len(value) > limit:
        raise HTTPProblem(400, f"invalid_{name}",
                          f'"{name}" is {len(value)} characters; at most {limit} are allowed')
    return value


# --- responses ------------------------------------------------------------------------

def _json(status: int, data: Any) -> Response:
    return Response(status, json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode())


async def _send(send: Send, response: Response, *, head: bool = False) -> None:
    headers = [(b"content-type", response.content_type.encode()),
               (b"content-length", str(len(response.body)).encode()),
               (b"cache-control", b"no-store" if response.content_type.startswith(
                   ("application/", "text/html")) else b"no-cache"),
               (b"x-content-type-options", b"nosniff")]
    headers += [(k.encode(), v.encode()) for k, v in response.headers]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else response.body})


def _load_assets() -> dict[str, tuple[bytes, str]]:
    """The files under ``static/``, read once (they are small), by name."""
    assets: dict[str, tuple[bytes, str]] = {}
    for entry in (resources.files("reality_core.demo") / "static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _CONTENT_TYPES:
            assets[entry.name] = (entry.read_bytes(), _CONTENT_TYPES[suffix])
    return assets


def _render_page(template: bytes) -> bytes:
    """Fill in the keys, so the page learns the key names from the server that declares
    them instead of hard-coding them."""
    values = {"rooms_key": ROOMS_KEY, "room_key_prefix": ROOM_KEY_PREFIX,
              "sync_base": SYNC_BASE}
    text = template.decode("utf-8")
    for name, value in values.items():
        text = text.replace("{{" + name + "}}", html.escape(value, quote=True))
    return text.encode("utf-8")
