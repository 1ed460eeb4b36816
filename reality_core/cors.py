"""Opt-in CORS for the sync endpoint.

Browsers on another origin may call ``POST /sync`` only if the server says so. Nothing is
allowed unless you pass a :class:`CORSPolicy`; ``"*"`` (any origin) never goes with
credentials, which browsers would refuse anyway and which would let any site read a logged-in
user's key versions.

Example::

    SyncASGIApp(service, cors=CORSPolicy(origins=("https://app.example.com",)))
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import ConfigurationError

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class CORSPolicy:
    """``origins``: exact origins (``https://app.example.com``) or ``("*",)`` for any.
    ``allow_credentials``: send cookies/HTTP auth cross-origin (never with ``"*"``).
    ``max_age``: seconds a browser may cache a preflight answer."""

    origins: tuple[str, ...]
    allow_credentials: bool = False
    max_age: int = 600

    def __post_init__(self) -> None:
        if isinstance(self.origins, str) or not isinstance(self.origins, tuple | list):
            raise ConfigurationError(
                "CORSPolicy.origins takes a tuple of origins, e.g. ('https://app.example.com',)"
            )
        object.__setattr__(self, "origins", tuple(self.origins))
        if not self.origins:
            raise ConfigurationError("CORSPolicy.origins is empty: name at least one origin")
        for origin in self.origins:
            if origin == "*":
                continue
            parts = urlsplit(origin) if isinstance(origin, str) else None
            if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname
                    or parts.path or parts.query or parts.fragment):
                raise ConfigurationError(
                    f"not an origin: {origin!r}; write scheme://host[:port], no path"
                )
        if "*" in self.origins and self.allow_credentials:
            raise ConfigurationError(
                "CORS: '*' cannot be combined with allow_credentials=True; list the origins"
            )
        if isinstance(self.max_age, bool) or not isinstance(self.max_age, int) or self.max_age < 0:
            raise ConfigurationError(
                f"CORSPolicy.max_age must be an int >= 0, not {self.max_age!r}"
            )

    def headers(self, origin: str | None, *, preflight: bool) -> Headers:
        """Headers to add to an answer for a request from ``origin`` (none if not allowed)."""
        if origin is None:
            return ()
        if origin in self.origins:
            out: list[tuple[str, str]] = [("access-control-allow-origin", origin),
                                          ("vary", "origin")]
        elif "*" in self.origins:
            out = [("access-control-allow-origin", "*")]
        else:
            return (("vary", "origin"),)
        if self.allow_credentials:
            out.append(("access-control-allow-credentials", "true"))
        if preflight:
            out += [("access-control-allow-methods", "POST, GET"),
                    ("access-control-allow-headers", "content-type"),
                    ("access-control-max-age", str(self.max_age))]
        return tuple(out)
