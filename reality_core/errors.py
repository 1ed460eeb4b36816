"""Exceptions raised by Reality.

Every error Reality raises derives from :class:`RealityError` and carries a stable
``code`` (for logs, tests and problem+json bodies) and a message that says how to fix it::

    RealityError
    ├── ConfigurationError      bad arguments to a public entry point (install, Limits, ...)
    │   └── DeclarationError    a key declaration that cannot work (unknown column, bad template)
    ├── InvalidKeyError         a key that breaks the key rules (length, control characters)
    ├── WritePathError          keys could not be computed or bumped: the user's transaction fails
    │   └── UnsupportedStatementError  raw SQL the plugin cannot understand, in strict mode
    ├── StoreError              the version store cannot be read (missing table, unreachable)
    │   └── StoreUnavailable    the database did not answer: the endpoint answers 503
    └── ProtocolError           a sync request that breaks the wire protocol (400/405/413/415)
"""

from __future__ import annotations


class RealityError(Exception):
    """Root of every error Reality raises."""

    code: str = "reality_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigurationError(RealityError, ValueError):
    code = "configuration"


def positive_number(name: str, value: object) -> float:
    """``value`` as a float when it is a positive int or float (a bool is not), else a
    :class:`ConfigurationError` naming ``name``: one check for every interval and timeout."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigurationError(f"{name} must be a positive number, not {value!r}")
    return float(value)


class DeclarationError(ConfigurationError):
    code = "declaration"


class InvalidKeyError(RealityError, ValueError):
    code = "invalid_key"


class WritePathError(RealityError):
    code = "write_path"


class UnsupportedStatementError(WritePathError):
    code = "unsupported_statement"


class StoreError(RealityError):
    code = "store"


class StoreUnavailable(StoreError):
    code = "store_unavailable"


class ProtocolError(RealityError):
    """A sync request the server refuses; ``status`` is the HTTP status to answer with."""

    code = "bad_request"

    def __init__(self, message: str, *, status: int = 400, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.status = status
