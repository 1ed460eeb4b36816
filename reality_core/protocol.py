"""The sync wire protocol (DESIGN §7): request validation, limits, problem+json errors.

Shared by the in-process API, the ASGI app and the WSGI app, so all three accept and refuse
exactly the same requests.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from .errors import ConfigurationError, ProtocolError
from .keys import CONTROL_CHARACTERS, MAX_KEY_LENGTH, key_problem

MAX_VERSION: Final = 2**63 - 1
MODES: Final = frozenset({"native", "sse-compat", "polling-compat"})
HINTS: Final = frozenset({"interaction", "focus", "idle", "mutation", "mount", "reconnect", "poll"})
PROBLEM_TYPE_BASE: Final = "https://reality-sync.dev/problems/"


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Request limits of the sync endpoint. Defaults are safe for the open internet.

    ``max_body_bytes``: larger bodies get 413 before they are parsed.
    ``max_keys``: more keys in one request get 413 (``too_many_keys``).
    ``max_key_length``: longer keys get 400 (``invalid_key``); at most 256, the key rule.
    """

    max_body_bytes: int = 256 * 1024
    max_keys: int = 1000
    max_key_length: int = MAX_KEY_LENGTH

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_keys", "max_key_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"Limits.{name} must be a positive int, not {value!r}")
        if self.max_key_length > MAX_KEY_LENGTH:
            raise ConfigurationError(
                f"Limits.max_key_length cannot exceed {MAX_KEY_LENGTH}, the longest valid key"
            )


@dataclass(frozen=True, slots=True)
class SyncRequest:
    known: Mapping[str, int]
    client_id: str | None = None
    hint: str | None = None


def validate_known(known: object, limits: Limits) -> dict[str, int]:
    """Check a ``known`` map: string keys obeying the key rules, int versions >= 0."""
    if not isinstance(known, Mapping):
        raise ProtocolError(
            '"known" must be an object mapping keys to versions, e.g. {"room:7": 3}',
            code="invalid_known",
        )
    if len(known) > limits.max_keys:
        raise ProtocolError(
            f"too many keys: {len(known)}; at most {limits.max_keys} per request",
            status=413, code="too_many_keys",
        )
    if _all_plainly_valid(known, limits):
        return dict(known)
    out: dict[str, int] = {}
    for key, version in known.items():
        problem = key_problem(key)
        if problem is None and len(key) > limits.max_key_length:
            problem = f"a key is at most {limits.max_key_length} characters"
        if problem is not None:
            raise ProtocolError(f"{problem}: {str(key)[:80]!r}", code="invalid_key")
        if isinstance(version, bool) or not isinstance(version, int):
            raise ProtocolError(
                f"the version of {key[:80]!r} must be an integer >= 0, not {version!r:.40}",
                code="invalid_version",
            )
        if not 0 <= version <= MAX_VERSION:
            raise ProtocolError(
                f"the version of {key[:80]!r} must be between 0 and {MAX_VERSION}",
                code="invalid_version",
            )
        out[key] = version
    return out


def _all_plainly_valid(known: Mapping[Any, Any], limits: Limits) -> bool:
    """The common case checked in a few C-level passes instead of key by key: string keys,
    ASCII without control characters, within the length limit; int versions in range. Any
    doubt returns False and the key-by-key check names the problem."""
    if not known:
        return True
    keys = known.keys()
    if set(map(type, keys)) != {str}:
        return False
    lengths = list(map(len, keys))
    if min(lengths) == 0 or max(lengths) > limits.max_key_length:
        return False
    joined = "".join(keys)
    if not joined.isascii() or CONTROL_CHARACTERS.search(joined) is not None:
        return False
    values = known.values()
    if set(map(type, values)) != {int}:  # bool is a type of its own: refused
        return False
    return bool(min(values) >= 0 and max(values) <= MAX_VERSION)


def parse_body(body: bytes, content_type: str | None, limits: Limits) -> SyncRequest:
    """Parse and validate a ``POST /sync`` body."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise ProtocolError(
            f"send the sync request as application/json, not {media or 'no content type'!r}",
            status=415, code="unsupported_media_type",
        )
    if len(body) > limits.max_body_bytes:
        raise_too_large(limits)
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"the body is not valid JSON: {exc}", code="malformed_json") from None
    if not isinstance(data, dict):
        raise ProtocolError('the body must be a JSON object like {"known": {...}}',
                            code="invalid_body")
    if "known" not in data:
        raise ProtocolError('the body needs a "known" object (it may be empty: {})',
                            code="invalid_known")
    known = validate_known(data["known"], limits)
    client_id = data.get("clientId")
    if client_id is not None and not isinstance(client_id, str):
        raise ProtocolError('"clientId" must be a string', code="invalid_body")
    mode = data.get("mode")
    # isinstance first: a list or object is unhashable and must not reach the set lookup.
    if mode is not None and not (isinstance(mode, str) and mode in MODES):
        raise ProtocolError(f'"mode" must be one of {sorted(MODES)}', code="invalid_body")
    hint = data.get("hint")
    if hint is not None and not (isinstance(hint, str) and hint in HINTS):
        raise ProtocolError(f'"hint" must be one of {sorted(HINTS)}', code="invalid_body")
    return SyncRequest(known=known, client_id=client_id, hint=hint)


def raise_too_large(limits: Limits) -> None:
    raise ProtocolError(
        f"the body is larger than {limits.max_body_bytes} bytes", status=413,
        code="body_too_large",
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


_TITLES: Final = {
    200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 411: "Length Required",
    413: "Content Too Large",
    415: "Unsupported Media Type", 500: "Internal Server Error", 503: "Service Unavailable",
}


def reason_phrase(status: int) -> str:
    """The HTTP reason phrase for the statuses the endpoint answers with."""
    return _TITLES.get(status, "Error")


def problem(status: int, code: str, detail: str) -> bytes:
    """An RFC 9457 problem document."""
    return json.dumps(
        {"type": PROBLEM_TYPE_BASE + code, "title": reason_phrase(status),
         "status": status, "code": code, "detail": detail},
        separators=(",", ":"),
    ).encode()
