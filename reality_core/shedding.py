"""Load shedding in the HTTP protocol, for ``reality serve``.

Under overload the app's own shedding (SyncASGIApp.max_in_flight) is correct but not cheap:
uvicorn has parsed the request into a scope, created a task and a cycle, and the app has
read the body and built a problem document before the 503 goes out; ~70 us of one core per
shed answer, so at a few times capacity the event loop spends itself on refusals and every
answer (shed or admitted) waits a loop pass behind all the others. ``reality serve``
therefore uses uvicorn's httptools protocol with one addition: a POST to the sync path that
arrives while ``max_in_flight`` sync requests of this process are being handled is answered
from prebuilt bytes the moment its headers are parsed, with no scope, task, app call or
body read (the body, if it follows, is skipped by the parser so the connection stays
usable). Everything else, and any case it is unsure of, goes through uvicorn and the app
unchanged, which still shed by themselves.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import weakref
from typing import Any

log = logging.getLogger("reality.serve")

PROTOCOL = "reality_core.shedding:SheddingHttpToolsProtocol"


class _Gate:
    """Sync requests of one process counted by the protocol: from the moment their body has
    arrived and their task runs until the task ends (slow senders take no slot, as in the
    app)."""

    __slots__ = ("body", "count", "head", "limit", "path")

    def __init__(self, limit: int, path: bytes, head: bytes, body: bytes) -> None:
        self.limit = limit
        self.count = 0
        self.path = path
        self.head = head
        self.body = body


_gates: weakref.WeakKeyDictionary[object, _Gate | None] = weakref.WeakKeyDictionary()


def _gate_for(app: object) -> _Gate | None:
    """The gate of the SyncASGIApp under uvicorn's middleware, or ``None`` (no limit, CORS
    headers that depend on the request, or not our app): the protocol then never sheds."""
    from .asgi import SyncASGIApp, overloaded_response, response_headers

    while not isinstance(app, SyncASGIApp) and hasattr(app, "app"):
        app = app.app
    if not isinstance(app, SyncASGIApp):
        return None
    if app in _gates:
        return _gates[app]
    gate = None
    if app.max_in_flight is not None and app.cors is None:
        shed = overloaded_response()
        head = b"".join(k + b": " + v + b"\r\n" for k, v in response_headers(shed))
        gate = _Gate(app.max_in_flight, app.sync_path.encode("ascii"), head, shed.body)
    _gates[app] = gate
    return gate


@functools.cache
def _protocol_class() -> type[asyncio.Protocol]:
    # uvicorn and httptools are optional (the "server" extra): imported when serving only.
    from uvicorn.protocols.http.httptools_impl import (
        STATUS_LINE,
        HttpToolsProtocol,
        RequestResponseCycle,
    )

    class SheddingHttpToolsProtocol(HttpToolsProtocol):

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._gate = _gate_for(self.app)
            self._skipping = False  # the current request was shed: drop its body
            self._sync: set[RequestResponseCycle] = set()  # sync requests not yet counted
            self._started: set[RequestResponseCycle] = set()
            self._counted: set[RequestResponseCycle] = set()

        def on_headers_complete(self) -> None:
            gate = self._gate
            if gate is None or self.parser.get_method() != b"POST" or not (
                    self.url == gate.path or self.url.startswith(gate.path + b"?")):
                super().on_headers_complete()
                return
            idle = (self.cycle is None or self.cycle.response_complete) and not self.pipeline
            if idle and gate.count >= gate.limit and not self.parser.should_upgrade():
                self._shed(gate)
                return
            before = self.cycle
            super().on_headers_complete()
            if self.cycle is not before:
                self._sync.add(self.cycle)

        def _shed(self, gate: _Gate) -> None:
            # An answer before the body is read is allowed (RFC 9112 §9.3); a client that
            # waits for 100-continue will not send the body the parser would wait for, and a
            # client that asked for close gets it.
            close = (self.expect_100_continue or not self.parser.should_keep_alive()
                     or self.parser.get_http_version() != "1.1")
            parts = [STATUS_LINE[503]]
            for name, value in self.server_state.default_headers:  # server, date
                parts += [name, b": ", value, b"\r\n"]
            parts += [gate.head, b"connection: close\r\n\r\n" if close else b"\r\n", gate.body]
            self.transport.write(b"".join(parts))
            if close:
                self.transport.close()
                return
            self._skipping = True

        def on_body(self, body: bytes) -> None:
            if not self._skipping:
                super().on_body(body)

        def on_message_complete(self) -> None:
            if self._skipping:
                self._skipping = False
                self.on_response_complete()  # count it, arm the keep-alive timeout
                return
            super().on_message_complete()
            cycle = self.cycle
            if cycle in self._started and not cycle.response_complete:
                self._count(cycle)

        def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
            # uvicorn's, plus a done callback that frees the slot when the app has finished
            # (not when the client went away: the app may still be working for it).
            context = contextvars.Context() if self.config.reset_contextvars else None
            task = self.loop.create_task(cycle.run_asgi(app), context=context)
            task.add_done_callback(self.tasks.discard)
            task.add_done_callback(lambda _: self._release(cycle))
            self.tasks.add(task)
            self._started.add(cycle)
            if not cycle.more_body:  # a pipelined request whose body is already here
                self._count(cycle)

        def _count(self, cycle: RequestResponseCycle) -> None:
            if cycle in self._sync and self._gate is not None:
                self._sync.discard(cycle)
                self._counted.add(cycle)
                self._gate.count += 1

        def _release(self, cycle: RequestResponseCycle) -> None:
            self._started.discard(cycle)
            self._sync.discard(cycle)
            if cycle in self._counted and self._gate is not None:
                self._counted.discard(cycle)
                self._gate.count -= 1

    # Named as uvicorn (and pickle, for --workers) find it: see __getattr__.
    SheddingHttpToolsProtocol.__qualname__ = "SheddingHttpToolsProtocol"
    return SheddingHttpToolsProtocol


def __getattr__(name: str) -> object:
    """``reality_core.shedding:SheddingHttpToolsProtocol``, built on first use: uvicorn imports
    it by this name in every worker, and this module must import without uvicorn."""
    if name == "SheddingHttpToolsProtocol":
        return _protocol_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: uvicorn methods the protocol overrides or relies on; checked before it is used, so another
#: uvicorn release whose internals moved gets uvicorn's own protocol (and the app's shedding).
_NEEDED = ("on_headers_complete", "on_body", "on_message_complete", "on_response_complete",
           "_start_asgi_task")


def http_protocol() -> str:
    """The shedding protocol if httptools is there (it is in the "server" extra) and uvicorn's
    httptools protocol has the methods it builds on, else uvicorn's choice, where the app
    still sheds by itself."""
    try:
        import httptools  # noqa: F401
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return "auto"
    missing = [name for name in _NEEDED if not callable(getattr(HttpToolsProtocol, name, None))]
    if missing:
        log.warning("this uvicorn's httptools protocol lacks %s: shedding in the app only",
                    ", ".join(missing))
        return "auto"
    return PROTOCOL
