"""The sync endpoint as a plain ASGI application.

Example::

    from reality_core import DBAPIReader, SyncService
    from reality_core.asgi import SyncASGIApp

    app = SyncASGIApp(SyncService(DBAPIReader.from_url(url)), base="/reality")
    # POST /reality/sync, GET /reality/health, GET /reality/openapi.json

``cors`` (a :class:`~reality_core.cors.CORSPolicy`) opts in to cross-origin calls; without it
no CORS header is ever sent. ``max_in_flight`` bounds the sync requests handled at once per
process: the next one is answered 503 ``overloaded`` with ``Retry-After: 1`` at once, before
it is parsed or the database touched, and service resumes as soon as requests finish. A body
must arrive within ``body_timeout`` seconds (408 ``body_timeout`` otherwise); requests still
sending their body do not count as in flight.

Mount it inside another ASGI app (Starlette ``Mount``, FastAPI ``app.mount``) or serve it
alone (``reality serve``). ``base`` is the path below the mount point: mounted at
``/reality``, pass ``base=""``. With a :class:`~reality_core.cache.VersionCache` a request is
answered from memory on the event loop; database reads (no cache, first load, a ``mutation``
hint waiting for a refresh) run in a worker thread, so a slow database never blocks the
event loop. The body is read incrementally and refused with 413 as soon as it
passes the limit, so a huge upload costs no memory.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .cors import CORSPolicy
from .errors import ConfigurationError, positive_number
from .openapi import openapi_document
from .sync import Response, SyncService, error_response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def overloaded_response() -> Response:
    """The answer to a shed sync request: 503 ``overloaded`` with ``Retry-After: 1``, from
    the app or (``reality serve``) straight from the HTTP protocol, which must send the same
    bytes the app would."""
    return error_response(503, "overloaded", "too many sync requests; retry soon",
                          (("retry-after", "1"),))


def response_headers(response: Response) -> list[tuple[bytes, bytes]]:
    """The headers :func:`_send` puts on ``response`` (the server adds its own, e.g. date)."""
    headers = [(b"content-type", response.content_type.encode()),
               (b"content-length", str(len(response.body)).encode()),
               (b"cache-control", b"no-store")]
    return headers + [(k.encode(), v.encode()) for k, v in response.headers]


def normalize_base(base: str) -> str:
    if not isinstance(base, str) or (base and not base.startswith("/")):
        raise ConfigurationError(f"base must be a path like '/reality' (or ''), not {base!r}")
    return base.rstrip("/")


class SyncASGIApp:
    """``POST {base}/sync`` and ``GET {base}/health``; everything else is a 404 problem."""

    def __init__(
        self,
        service: SyncService,
        *,
        base: str = "/reality",
        cors: CORSPolicy | None = None,
        max_in_flight: int | None = 64,
        body_timeout: float = 10.0,
    ) -> None:
        if not isinstance(service, SyncService):
            raise ConfigurationError(f"service must be a SyncService, not {service!r}")
        if cors is not None and not isinstance(cors, CORSPolicy):
            raise ConfigurationError(f"cors must be a reality_core.CORSPolicy, not {cors!r}")
        if max_in_flight is not None and (
            isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int)
            or max_in_flight < 1
        ):
            raise ConfigurationError(
                f"max_in_flight must be a positive int or None, not {max_in_flight!r}"
            )
        self.service = service
        self.base = normalize_base(base)
        self.cors = cors
        self.body_timeout = positive_number("body_timeout", body_timeout)
        self._openapi = json.dumps(openapi_document(self.base, service.limits)).encode()
        self.max_in_flight = max_in_flight
        self._in_flight = 0

    @property
    def sync_path(self) -> str:
        """The path of the sync endpoint below the mount point."""
        return f"{self.base}/sync"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send, self.service)
            return
        if scope["type"] != "http":
            return
        path = request_path(scope)
        method: str = scope.get("method", "GET")
        origin = _header(scope, b"origin")
        if method == "OPTIONS" and self.cors is not None and path in (
            self.sync_path, f"{self.base}/health"
        ):
            preflight = Response(204, b"", headers=self.cors.headers(origin, preflight=True))
            await _send(send, preflight)
            return
        if path == self.sync_path:
            if method != "POST":
                response = error_response(405, "method_not_allowed", "use POST for sync",
                                          (("allow", "POST"),))
            else:
                received = await self._sync(scope, receive)
                if received is None:
                    return  # the client went away: nobody to answer
                response = received
        elif path == f"{self.base}/openapi.json" and method in ("GET", "HEAD"):
            response = Response(200, self._openapi)
        elif path == f"{self.base}/health":
            if method not in ("GET", "HEAD"):
                response = error_response(405, "method_not_allowed", "use GET for health",
                                          (("allow", "GET, HEAD"),))
            else:
                response = await asyncio.to_thread(self.service.health)
        else:
            response = error_response(404, "not_found", f"no such endpoint: {path[:200]}")
        if self.cors is not None:
            extra = self.cors.headers(origin, preflight=False)
            response = Response(response.status, response.body, response.content_type,
                                response.headers + extra)
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
        try:
            # A client trickling its body must not hold a connection (or, were bodies counted
            # as in flight, a slot) for ever.
            async with asyncio.timeout(self.body_timeout):
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
        except TimeoutError:
            return error_response(408, "body_timeout",
                                  f"the body did not arrive within {self.body_timeout} s")
        body = b"".join(chunks)
        # Counted from here, not while the body arrives: slow senders cost no slot.
        if self.max_in_flight is not None and self._in_flight >= self.max_in_flight:
            # Shed at once, before parsing or touching the database.
            return overloaded_response()
        self._in_flight += 1
        try:
            # Yield once before answering. An answer from memory never awaits anything, so
            # without this each request would run start to finish in one step, the count
            # would never pass 1, and under overload requests would queue unseen in the
            # server and the socket. With it, every request that has arrived is counted
            # before any is answered, and the ones past max_in_flight are shed at once.
            await asyncio.sleep(0)
            # From the cache's memory, on the event loop: a thread hop would cost more than
            # the answer. Only what may block (the database, a wait for a refresh) goes to a
            # thread.
            response = self.service.handle_now(body, headers.get("content-type"), headers)
            if response is not None:
                return response
            return await asyncio.to_thread(
                self.service.handle, body, headers.get("content-type"), headers
            )
        finally:
            self._in_flight -= 1


def request_path(scope: Scope) -> str:
    """The path below the mount point: frameworks that mount an app put the mount in
    ``root_path`` and may or may not strip it from ``path``."""
    path: str = scope.get("path", "")
    root = scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def parse_content_length(value: str) -> int | None:
    """The value of a Content-Length header, or ``None`` if it is not a plain decimal number
    (``str.isdigit`` alone would accept digits such as ``"²"`` that ``int()`` refuses)."""
    value = value.strip()
    if not value or not value.isascii() or not value.isdigit():
        return None
    return int(value)


async def _send(send: Send, response: Response, *, head: bool = False) -> None:
    await send({"type": "http.response.start", "status": response.status,
                "headers": response_headers(response)})
    # A HEAD answer carries the headers of the GET answer and no body (RFC 9110 §9.3.2).
    await send({"type": "http.response.body", "body": b"" if head else response.body})


async def _lifespan(receive: Receive, send: Send, service: SyncService) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            service.start()  # load the cache and fold in the background
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await asyncio.to_thread(service.close)  # stops refreshing and folding
            await send({"type": "lifespan.shutdown.complete"})
            return
