"""The sync endpoint as a plain ASGI application.

Example::

    from reality_core import DBAPIReader, SyncService
    from reality_core.asgi import SyncASGIApp

    app = SyncASGIApp(SyncService(DBAPIReader.from_url(url)), base="/reality")
    # POST /reality/sync, GET /reality/health

Mount it inside another ASGI app (Starlette ``Mount``, FastAPI ``app.mount``) or serve it
alone (``reality serve``). Store reads run in a worker thread, so a slow database never
blocks the event loop. The body is read incrementally and refused with 413 as soon as it
passes the limit, so a huge upload costs no memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .errors import ConfigurationError
from .sync import Response, SyncService, error_response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def normalize_base(base: str) -> str:
    if not isinstance(base, str) or (base and not base.startswith("/")):
        raise ConfigurationError(f"base must be a path like '/reality' (or ''), not {base!r}")
    return base.rstrip("/")


class SyncASGIApp:
    """``POST {base}/sync`` and ``GET {base}/health``; everything else is a 404 problem."""

    def __init__(self, service: SyncService, *, base: str = "/reality") -> None:
        if not isinstance(service, SyncService):
            raise ConfigurationError(f"service must be a SyncService, not {service!r}")
        self.service = service
        self.base = normalize_base(base)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            await asyncio.to_thread(self.service.close)  # stops background folding
            return
        if scope["type"] != "http":
            return
        path: str = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        method: str = scope.get("method", "GET")
        if path == f"{self.base}/sync":
            if method != "POST":
                response = error_response(405, "method_not_allowed", "use POST for sync",
                                          (("allow", "POST"),))
            else:
                received = await self._sync(scope, receive)
                if received is None:
                    return  # the client went away: nobody to answer
                response = received
        elif path == f"{self.base}/health":
            if method not in ("GET", "HEAD"):
                response = error_response(405, "method_not_allowed", "use GET for health",
                                          (("allow", "GET, HEAD"),))
            else:
                response = await asyncio.to_thread(self.service.health)
        else:
            response = error_response(404, "not_found", f"no such endpoint: {path[:200]}")
        await _send(send, response, head=method == "HEAD")

    async def _sync(self, scope: Scope, receive: Receive) -> Response | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", ())}
        limit = self.service.limits.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None:
            length = parse_content_length(declared)
            if length is None:
                return error_response(400, "bad_content_length",
                                      "Content-Length must be a number")
            if length > limit:
                # Refused before reading a byte; a chunked body is counted as it arrives.
                return error_response(413, "body_too_large",
                                      f"the body is larger than {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return error_response(413, "body_too_large",
                                      f"the body is larger than {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        return await asyncio.to_thread(
            self.service.handle, body, headers.get("content-type"), headers
        )


def parse_content_length(value: str) -> int | None:
    """The value of a Content-Length header, or ``None`` if it is not a plain decimal number
    (``str.isdigit`` alone would accept digits such as ``"²"`` that ``int()`` refuses)."""
    value = value.strip()
    if not value or not value.isascii() or not value.isdigit():
        return None
    return int(value)


async def _send(send: Send, response: Response, *, head: bool = False) -> None:
    headers = [(b"content-type", response.content_type.encode()),
               (b"content-length", str(len(response.body)).encode()),
               (b"cache-control", b"no-store")]
    headers += [(k.encode(), v.encode()) for k, v in response.headers]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    # A HEAD answer carries the headers of the GET answer and no body (RFC 9110 §9.3.2).
    await send({"type": "http.response.body", "body": b"" if head else response.body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
