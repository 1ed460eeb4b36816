"""The sync endpoint as a WSGI application (Flask, Django, any WSGI server).

Example::

    from reality_core.wsgi import SyncWSGIApp
    app = SyncWSGIApp(SyncService(DBAPIReader.from_url(url)), base="/reality")
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .asgi import normalize_base
from .errors import ConfigurationError
from .sync import Response, SyncService, error_response

StartResponse = Callable[..., Any]

_STATUS = {200: "200 OK", 400: "400 Bad Request", 403: "403 Forbidden", 404: "404 Not Found",
           405: "405 Method Not Allowed", 413: "413 Content Too Large",
           415: "415 Unsupported Media Type", 500: "500 Internal Server Error",
           503: "503 Service Unavailable"}


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
        start_response(_STATUS.get(response.status, f"{response.status} Error"), headers)
        return [response.body]

    def _sync(self, environ: dict[str, Any]) -> Response:
        limit = self.service.limits.max_body_bytes
        raw_length = environ.get("CONTENT_LENGTH") or "0"
        if not raw_length.isdigit():
            return error_response(400, "bad_content_length", "Content-Length must be a number")
        length = int(raw_length)
        if length > limit:
            return error_response(413, "body_too_large", f"the body is larger than {limit} bytes")
        body = environ["wsgi.input"].read(length) if length else b""
        headers = {k[5:].replace("_", "-").lower(): str(v) for k, v in environ.items()
                   if k.startswith("HTTP_")}
        return self.service.handle(body, environ.get("CONTENT_TYPE"), headers)
