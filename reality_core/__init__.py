"""Reality core: keys, the per-transaction key buffer, the version store and the sync
protocol. Imports no ORM; the plugins (``reality_sqlalchemy``...) build on it."""

from __future__ import annotations

from .buffer import KeyBuffer
from .cache import VersionCache
from .cors import CORSPolicy
from .errors import (
    ConfigurationError,
    DeclarationError,
    InvalidKeyError,
    ProtocolError,
    RealityError,
    StoreError,
    StoreUnavailable,
    UnsupportedStatementError,
    WritePathError,
)
from .keys import Declaration, KeyTemplate, declare, row_key, table_key, validate_key
from .protocol import Limits
from .reader import DBAPIReader, VersionReader
from .store import Snapshot, VersionInfo
from .sync import Authorizer, SyncService
from .urls import DatabaseURL

__version__ = "0.1.0"

__all__ = [
    "Authorizer",
    "CORSPolicy",
    "ConfigurationError",
    "DBAPIReader",
    "DatabaseURL",
    "Declaration",
    "DeclarationError",
    "InvalidKeyError",
    "KeyBuffer",
    "KeyTemplate",
    "Limits",
    "ProtocolError",
    "RealityError",
    "Snapshot",
    "StoreError",
    "StoreUnavailable",
    "SyncService",
    "UnsupportedStatementError",
    "VersionCache",
    "VersionInfo",
    "VersionReader",
    "WritePathError",
    "__version__",
    "declare",
    "row_key",
    "table_key",
    "validate_key",
]
