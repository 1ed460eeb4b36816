"""The sync service: what changed among the keys a client knows.

Example (in-process, e.g. for server-side rendering)::

    service = SyncService(DBAPIReader.from_url("postgresql://app@db/app"))
    service.sync({"room:7": 3})
    # {"changed": {"room:7": {"key": "room:7", "version": 5, ...}}, "serverTime": ..., "epoch": ...}

The ASGI and WSGI apps wrap :meth:`SyncService.handle`, so every entry point validates and
answers the same way.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from .cache import VersionCache
from .errors import (
    ConfigurationError,
    ProtocolError,
    StoreError,
    StoreUnavailable,
    positive_number,
)
from .folding import Folder
from .protocol import Limits, parse_body, problem, validate_known
from .reader import DBAPIReader, VersionReader

log = logging.getLogger("reality.sync")

#: Decides which keys a caller may learn about. Called once per request with the whole batch
#: and the request's headers (lower-cased names); returns the keys it allows.
Authorizer = Callable[[frozenset[str], Mapping[str, str]], Collection[str]]

JSON = "application/json"
PROBLEM_JSON = "application/problem+json"


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = field(default=())


class SyncService:
    """Answers sync requests from a :class:`~reality_core.cache.VersionCache` (versions in
    memory: no database work per request) or any :class:`~reality_core.reader.VersionReader`
    (a :class:`~reality_core.reader.DBAPIReader` queries the database for every request).

    ``limits`` bound each request; ``authorizer`` (optional) filters the keys a caller may
    see — a request naming any refused key gets 403; ``retry_after`` is the ``Retry-After``
    (seconds) sent with 503 when the store cannot be read. ``fold_interval`` (seconds) starts
    a :class:`~reality_core.folding.Folder` with the first request, when the reader can fold;
    :meth:`close` stops it (and the cache's refresh thread). Without it the reader still
    folds when a read counts many unfolded log rows (``DBAPIReader(fold_threshold=...)``).

    A request with ``"hint": "mutation"`` (the client just wrote) is answered from a cache
    refresh that started after the request arrived, so it sees the client's own commit.
    """

    def __init__(
        self,
        reader: VersionReader,
        *,
        limits: Limits | None = None,
        authorizer: Authorizer | None = None,
        retry_after: int = 2,
        fold_interval: float | None = None,
    ) -> None:
        if limits is not None and not isinstance(limits, Limits):
            raise ConfigurationError(f"limits must be a reality_core.Limits, not {limits!r}")
        if authorizer is not None and not callable(authorizer):
            raise ConfigurationError("authorizer must be callable (keys, headers) -> allowed keys")
        if isinstance(retry_after, bool) or not isinstance(retry_after, int) or retry_after < 1:
            raise ConfigurationError(f"retry_after must be a positive int, not {retry_after!r}")
        self.reader = reader
        self.limits = limits or Limits()
        self.authorizer = authorizer
        self.retry_after = retry_after
        self._warned: dict[tuple[str, str], float] = {}
        self._folder: Folder | None = None
        if fold_interval is not None and isinstance(reader, VersionCache):
            # The cache's own thread folds after its refreshes (no Folder thread).
            reader.fold_interval = positive_number("fold interval", fold_interval)
        elif fold_interval is not None and isinstance(reader, DBAPIReader) and reader.dialect:
            self._folder = Folder(reader, interval=fold_interval)

    @property
    def cache(self) -> VersionCache | None:
        return self.reader if isinstance(self.reader, VersionCache) else None

    def start(self) -> None:
        """Start background work now (cache loading, folding) instead of at the first
        request; the ASGI app calls this at startup."""
        if self._folder is not None:
            self._folder.start()
        if self.cache is not None:
            self.cache.start()

    def close(self) -> None:
        """Stop background folding and the cache's refreshing. A plain reader stays open
        (close it yourself)."""
        if self._folder is not None:
            self._folder.stop()
        if self.cache is not None:
            self.cache.close()

    def sync(
        self, known: Mapping[str, int], *, headers: Mapping[str, str] | None = None,
        hint: str | None = None,
    ) -> dict[str, Any]:
        """The protocol's response for ``known``, as a dict. Raises :class:`ProtocolError`
        for invalid input and :class:`StoreError` when the store cannot be read. With
        ``hint="mutation"`` and a cache, waits for a fresh refresh (see the class)."""
        return self._answer(validate_known(known, self.limits), headers or {}, hint)

    def _answer(
        self, checked: Mapping[str, int], headers: Mapping[str, str], hint: str | None
    ) -> dict[str, Any]:
        """:meth:`sync` for a ``known`` map already validated (``parse_body`` did)."""
        if self._folder is not None:
            self._folder.start()
        self._authorize(checked, headers)
        cache = self.cache
        if cache is not None:
            if hint == "mutation":
                cache.wait_fresh()
            elif not cache.loaded:
                cache.wait_ready(cache.max_staleness)  # a request right after startup
            epoch, changed_now = cache.changed(checked)
            return {"changed": changed_now, "serverTime": int(time.time() * 1000),
                    "epoch": epoch}
        snapshot = self.reader.read(checked.keys())
        changed: dict[str, Any] = {}
        for key, client_version in checked.items():
            info = snapshot.versions.get(key)
            version = info.version if info is not None else 0
            if version != client_version:
                changed[key] = (
                    info.as_json() if info is not None
                    else {"key": key, "version": 0, "hash": "", "updatedAt": 0}
                )
        return {"changed": changed, "serverTime": int(time.time() * 1000),
                "epoch": snapshot.epoch}

    def _warn_once(self, message: str, exc: StoreError) -> None:
        """Log an outage once a minute per kind of failure, not once per request: during an
        outage every client keeps asking (and messages carry changing details)."""
        now = time.monotonic()
        key = (message, type(exc).__name__)
        if now - self._warned.get(key, float("-inf")) < 60:
            return
        self._warned[key] = now
        log.warning(message, exc)

    def _authorize(self, known: Mapping[str, int], headers: Mapping[str, str]) -> None:
        if self.authorizer is None or not known:
            return
        keys = frozenset(known)
        # The HTTP apps already lower-case names; callers of sync() may not have.
        allowed = self.authorizer(keys, {k.lower(): v for k, v in headers.items()})
        refused = keys.difference(allowed)
        if refused:
            raise ProtocolError(
                f"not allowed to read {len(refused)} of the requested keys", status=403,
                code="forbidden",
            )

    def handle(
        self, body: bytes, content_type: str | None, headers: Mapping[str, str] | None = None
    ) -> Response:
        """Answer one ``POST /sync``; never raises. May block on the database."""
        response = self._handle(body, content_type, headers, may_wait=True)
        assert response is not None  # may_wait=True always answers
        return response

    def handle_now(
        self, body: bytes, content_type: str | None, headers: Mapping[str, str] | None = None
    ) -> Response | None:
        """Answer one ``POST /sync`` from memory, or return ``None`` when answering would
        block (no cache, cache still loading, a ``mutation`` hint waiting for a refresh):
        the ASGI app then calls :meth:`handle` in a worker thread. Never raises."""
        cache = self.cache
        if cache is None or not cache.loaded:
            return None
        return self._handle(body, content_type, headers, may_wait=False)

    def _handle(
        self, body: bytes, content_type: str | None, headers: Mapping[str, str] | None,
        *, may_wait: bool,
    ) -> Response | None:
        try:
            request = parse_body(body, content_type, self.limits)
            if not may_wait and request.hint == "mutation":
                return None
            result = self._answer(request.known, headers or {}, request.hint)
        except ProtocolError as exc:
            return error_response(exc.status, exc.code, exc.message)
        except StoreError as exc:
            self._warn_once("sync: version store unavailable: %s", exc)
            code, detail = _store_problem(exc)
            return error_response(
                503, code, f"{detail}; retry later", (("retry-after", str(self.retry_after)),)
            )
        except Exception:
            log.exception("sync: internal error")
            return error_response(500, "internal", "internal server error")
        return Response(200, json.dumps(result, separators=(",", ":")).encode())

    def health(self) -> Response:
        """``GET /health``: 200 when the store answers, 503 and the reason when not."""
        try:
            self.reader.ping()
        except StoreError as exc:
            # The driver's message names hosts and ports; it goes to the log, not to callers.
            self._warn_once("health: version store unavailable: %s", exc)
            code, detail = _store_problem(exc)
            state = "unreachable" if code == "store_unavailable" else "not_ready"
            body = {"status": "unavailable", "store": state, "reason": code, "detail": detail}
            return Response(503, json.dumps(body).encode(),
                            headers=(("retry-after", str(self.retry_after)),))
        except Exception as exc:
            log.exception("health: internal error")
            body = {"status": "error", "detail": type(exc).__name__}
            return Response(500, json.dumps(body).encode())
        return Response(200, b'{"status":"ok","store":"ok"}')


def _store_problem(exc: StoreError) -> tuple[str, str]:
    """A stable code and a detail safe to show callers, for a store that cannot be read."""
    if isinstance(exc, StoreUnavailable):
        return "store_unavailable", "the version store does not answer"
    return "store_not_ready", (
        'the version store\'s tables are missing or incomplete; run "reality migrate"'
    )


def error_response(
    status: int, code: str, detail: str, headers: tuple[tuple[str, str], ...] = ()
) -> Response:
    return Response(status, problem(status, code, detail), PROBLEM_JSON, headers)
