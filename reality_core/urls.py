"""Database URLs: one parser, and the spelling each driver needs.

Users give one URL (``postgresql://user@host/db``, ``sqlite:///app.db``,
``mysql://root@localhost/app``); each plugin needs it spelled for its driver. Getting this
wrong is a classic source of "works with psycopg, breaks with asyncpg" bugs, so the
conversions live here, once, and are tested per driver.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from .errors import ConfigurationError
from .store import Dialect, normalize_dialect

#: Default driver per dialect for synchronous DB-API access, and the async ones we know.
SYNC_DRIVERS: dict[Dialect, str] = {"postgresql": "psycopg", "sqlite": "pysqlite",
                                     "mysql": "pymysql"}
ASYNC_DRIVERS: dict[Dialect, str] = {"postgresql": "asyncpg", "sqlite": "aiosqlite",
                                      "mysql": "aiomysql"}
KNOWN_DRIVERS: dict[Dialect, frozenset[str]] = {
    "postgresql": frozenset({"psycopg", "psycopg2", "asyncpg", "pg8000", "psycopg_async"}),
    "sqlite": frozenset({"pysqlite", "aiosqlite"}),
    "mysql": frozenset({"pymysql", "mysqldb", "aiomysql", "asyncmy", "mysqlconnector",
                        "mariadbconnector"}),
}
#: Drivers SQLAlchemy drives through ``create_async_engine``; every other known one is
#: synchronous. (``psycopg`` can do both; a plain ``postgresql+psycopg`` URL counts as
#: synchronous, and ``postgresql+psycopg_async`` names its async side.)
_ASYNC_ONLY: frozenset[str] = frozenset({"asyncpg", "psycopg_async", "aiosqlite", "aiomysql",
                                         "asyncmy"})


@dataclass(frozen=True, slots=True)
class DatabaseURL:
    """A parsed database URL. ``str()`` gives the SQLAlchemy spelling."""

    dialect: Dialect
    driver: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    host: str | None = None
    port: int | None = None
    database: str | None = None
    query: tuple[tuple[str, str], ...] = ()
    mariadb: bool = False

    @classmethod
    def parse(cls, url: str) -> DatabaseURL:
        if not isinstance(url, str) or "://" not in url:
            shown = redact(url) if isinstance(url, str) else url
            raise ConfigurationError(
                f"not a database URL: {shown!r}; expected e.g. postgresql://user@host/db, "
                "sqlite:///path/to/file.db or mysql://user@host/db"
            )
        scheme, rest = url.split("://", 1)
        name, _, driver = scheme.partition("+")
        try:
            dialect = normalize_dialect(name)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{exc} (in URL {redact(url)!r})") from None
        if driver and driver not in KNOWN_DRIVERS[dialect]:
            raise ConfigurationError(
                f"unknown {dialect} driver {driver!r} in {redact(url)!r}; known: "
                + ", ".join(sorted(KNOWN_DRIVERS[dialect]))
            )
        if dialect == "sqlite":
            path, _, q = rest.partition("?")
            if path and not path.startswith("/"):
                raise ConfigurationError(
                    f"an SQLite URL has no host: {redact(url)!r}; write sqlite:///relative.db, "
                    "sqlite:////absolute/path.db or sqlite:// (in memory)"
                )
            # sqlite:///rel.db -> "rel.db"; sqlite:////abs.db -> "/abs.db"; sqlite:// -> memory
            return cls(dialect, driver or None, database=path[1:] or None,
                       query=_parse_query(q))
        parts = urlsplit(f"//{rest}")
        try:
            port = parts.port
        except ValueError:
            # Not urllib's message: with a raw "/" in the password, the "port" it quotes is
            # a piece of the password.
            raise ConfigurationError(
                f"bad port in {redact(url)!r}: a port is a number from 0 to 65535 (quote "
                "special characters in the user name and password, e.g. '/' as %2F)"
            ) from None
        return cls(
            dialect,
            driver or None,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            host=parts.hostname,
            port=port,
            database=unquote(parts.path.lstrip("/")) or None,
            query=_parse_query(parts.query),
            mariadb=name.lower() == "mariadb",
        )

    def with_driver(self, driver: str | None) -> DatabaseURL:
        if driver is not None and driver not in KNOWN_DRIVERS[self.dialect]:
            raise ConfigurationError(f"unknown {self.dialect} driver {driver!r}")
        return replace(self, driver=driver)

    def with_database(self, database: str | None) -> DatabaseURL:
        return replace(self, database=database)

    def render(self, *, hide_password: bool = False) -> str:
        name = "mariadb" if self.mariadb else self.dialect
        scheme = f"{name}+{self.driver}" if self.driver else name
        query = self.query
        if hide_password:
            query = tuple((k, "***" if k == "password" else v) for k, v in query)
        q = f"?{urlencode(query)}" if query else ""
        if self.dialect == "sqlite":
            return f"{scheme}:///{self.database or ''}{q}" if self.database else f"{scheme}://{q}"
        auth = ""
        if self.username is not None or self.password is not None:
            auth = quote(self.username or "", safe="")
            if self.password is not None:
                auth += ":" + ("***" if hide_password else quote(self.password, safe=""))
            auth += "@"
        host = self.host or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{self.port}" if self.port is not None else ""
        db = f"/{quote(self.database, safe='')}" if self.database else "/"
        return f"{scheme}://{auth}{host}{port}{db}{q}"

    def __str__(self) -> str:
        return self.render()

    def sqlalchemy(self, *, asynchronous: bool = False) -> str:
        """The URL for SQLAlchemy's ``create_engine`` (or ``create_async_engine`` with
        ``asynchronous=True``), with the password in it.

        A driver the URL names is kept when it fits (``postgresql+psycopg2`` stays psycopg2
        for ``create_engine``); otherwise, or without one, the default driver of that side
        is used: psycopg / pysqlite / PyMySQL, and asyncpg / aiosqlite / aiomysql.
        """
        if self.driver is not None and (self.driver in _ASYNC_ONLY) == asynchronous:
            return self.render()
        drivers = ASYNC_DRIVERS if asynchronous else SYNC_DRIVERS
        return self.with_driver(drivers[self.dialect]).render()

    def libpq(self) -> str:
        """A ``postgresql://`` URI for psycopg/asyncpg/libpq tools (no driver suffix)."""
        if self.dialect != "postgresql":
            raise ConfigurationError(f"{self.dialect} URL has no libpq form")
        return replace(self, driver=None).render()

    @property
    def paramstyle(self) -> str:
        """The paramstyle of the connections :meth:`dbapi_connect` opens."""
        return "qmark" if self.dialect == "sqlite" else "format"

    def dbapi_connect(self, *, timeout_ms: int | None = None) -> Any:
        """Open a synchronous DB-API connection in autocommit mode. The driver is imported
        here so the core needs none at import time. ``timeout_ms`` bounds every statement
        (and lock wait) on the connection, so a locked table makes a read fail instead of
        hanging."""
        q = dict(self.query)
        if self.dialect == "sqlite":
            import sqlite3

            return sqlite3.connect(
                self.database or ":memory:", isolation_level=None, check_same_thread=False,
                timeout=self._number(q, "timeout", 5),
            )
        connect_timeout = int(self._number(q, "connect_timeout", 5))
        if self.dialect == "postgresql":
            try:
                import psycopg
            except ImportError as exc:
                raise ConfigurationError(
                    "reading PostgreSQL needs psycopg: pip install 'reality-sync[postgres]'"
                ) from exc
            options = (f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms}"
                       if timeout_ms else None)
            return psycopg.connect(self.libpq(), autocommit=True, connect_timeout=connect_timeout,
                                   options=options)
        try:
            import pymysql
        except ImportError as exc:
            raise ConfigurationError(
                "reading MySQL/MariaDB needs PyMySQL: pip install 'reality-sync[mysql]'"
            ) from exc
        return pymysql.connect(
            host=self.host or "localhost", port=self.port or 3306, user=self.username or "root",
            # PyMySQL encodes a str password as latin-1; the server hashed the UTF-8 bytes.
            password=(self.password or "").encode("utf-8"), database=self.database,
            autocommit=True, connect_timeout=connect_timeout, charset="utf8mb4",
            read_timeout=max(1, timeout_ms // 1000) if timeout_ms else None,
        )

    def _number(self, query: dict[str, str], name: str, default: float) -> float:
        raw = query.get(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise ConfigurationError(
                f"{name}={raw!r} in {self.render(hide_password=True)!r} must be a positive "
                "number of seconds"
            )
        return value


def _parse_query(query: str) -> tuple[tuple[str, str], ...]:
    # Blank values are kept: "?sslmode=" means something different from no sslmode.
    return tuple(parse_qsl(query, keep_blank_values=True))


_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def redact(url: str) -> str:
    """``url`` with the password replaced by ``***``, for error messages.

    Works on strings that do not parse, too: everything between the first ``:`` after the
    scheme and the *last* ``@`` goes, so a password holding a raw ``@`` or ``/`` cannot leak
    (at worst the user name is hidden as well).
    """
    url = _QUERY_PASSWORD.sub(r"\1***", url)  # libpq also takes ?password=...
    at = url.rfind("@")
    if at < 0:
        return url
    start = url.find("://")
    start = start + 3 if start >= 0 else 0
    colon = url.find(":", start, at)
    if colon < 0:
        return url
    return f"{url[: colon + 1]}***{url[at:]}"
