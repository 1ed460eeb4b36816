"""The sync endpoint as a WSGI application (Flask, Django, any WSGI server).

Example::

    from reality_core.wsgi import SyncWSGIApp
    app = SyncWSGIApp(SyncService(DBAPIReader.from_url(url)), base="/reality")

The body is read only up to the configured limit. A chunked request (no ``Content-Length``)
is read only when the server marks its input as terminated (``wsgi.input_terminated``, as
gunicorn does); otherwise it gets 411, because reading an unterminated stream could block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .asgi import normalize_base, parse_content_length
from .errors import ConfigurationError
from .protocol import reason_phrase
from .sync import Response, SyncService, error_response

StartResponse = Callable[..., Any]

_READ_CHUNK = 64 * 1024


class SyncWSGIApp:
    """``POST {base}/sync`` and ``GET {base}/health`` for WSGI servers."""

    def __init__(self, service: SyncService, *, base: str = "/reality") -> None:
        if not isinstance(service, SyncService):
            raise ConfigurationError(f"service must be a SyncService, not {service!r}")
        self.service = service
        self.base = normalize_base(base)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if path == f"{self.base}/sync":
            if method != "POST":
                response = error_response(405, "method_not_allowed", "use POST for sync",
                                          (("allow", "POST"),))
            else:
                response = self._sync(environ)
        elif path == f"{self.base}/health":
            if method not in ("GET", "HEAD"):
                response = error_response(405, "method_not_allowed", "use GET for health",
                                          (("allow", "GET, HEAD"),))
            else:
                response = self.service.health()
        else:
            response = error_response(404, "not_found", f"no such endpoint: {path[:200]}")
        headers = [("Content-Type", response.content_type),
                   ("Content-Length", str(len(response.body))), ("Cache-Control", "no-store")]
        headers += list(response.headers)
        start_response(f"{response.status} {reason_phrase(response.status)}", headers)
        # A HEAD answer carries the headers of the GET answer and no body (RFC 9110 §9.3.2).
        return [b"" if method == "HEAD" else response.body]

    def _sync(self, environ: dict[str, Any]) -> Response:
        limit = self.service.limits.max_body_bytes
        too_large = error_response(413, "body_too_large", f"the body is larger than {limit} bytes")
        raw_length = str(environ.get("CONTENT_LENGTH") or "")
        stream = environ["wsgi.input"]
        if raw_length:
            length = parse_content_length(raw_length)
            if length is None:
                return error_response(400, "bad_content_length",
                                      "Content-Length must be a number")
            if length > limit:
                return too_large
            body = stream.read(length) if length else b""
        elif environ.get("wsgi.input_terminated"):
            chunks: list[bytes] = []
            size = 0
            while chunk := stream.read(_READ_CHUNK):
                size += len(chunk)
                if size > limit:
                    return too_large
                chunks.append(chunk)
            body = b"".join(chunks)
        elif "chunked" in str(environ.get("HTTP_TRANSFER_ENCODING", "")).lower():
            return error_response(411, "length_required",
                                  "send a Content-Length header (this server cannot read "
                                  "chunked request bodies)")
        else:
            body = b""
        headers = {k[5:].replace("_", "-").lower(): str(v) for k, v in environ.items()
                   if k.startswith("HTTP_")}
        # WSGI moves these two out of HTTP_*; put them back so an authorizer sees the same
        # headers as under ASGI.
        for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if environ.get(key):
                headers[key.replace("_", "-").lower()] = str(environ[key])
        return self.service.handle(body, environ.get("CONTENT_TYPE"), headers)
