"""Database URLs: one parser, and the spelling each driver needs.

Users give one URL (``postgresql://user@host/db``, ``sqlite:///app.db``,
``mysql://root@localhost/app``); each plugin needs it spelled for its driver. Getting this
wrong is a classic source of "works with psycopg, breaks with asyncpg" bugs, so the
conversions live here, once, and are tested per driver.
"""

from __future__ import annotations

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
    "mysql": frozenset({"pymysql", "mysqldb", "aiomysql", "asyncmy", "mysqlconnector"}),
}


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
            raise ConfigurationError(
                f"not a database URL: {url!r}; expected e.g. postgresql://user@host/db, "
                "sqlite:///path/to/file.db or mysql://user@host/db"
            )
        scheme, rest = url.split("://", 1)
        name, _, driver = scheme.partition("+")
        try:
            dialect = normalize_dialect(name)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{exc} (in URL {cls._redact(url)!r})") from None
        if driver and driver not in KNOWN_DRIVERS[dialect]:
            raise ConfigurationError(
                f"unknown {dialect} driver {driver!r} in {cls._redact(url)!r}; known: "
                + ", ".join(sorted(KNOWN_DRIVERS[dialect]))
            )
        if dialect == "sqlite":
            path, _, q = rest.partition("?")
            # sqlite:///rel.db -> "rel.db"; sqlite:////abs.db -> "/abs.db"; sqlite:// -> memory
            database = path[1:] if path.startswith("/") else path
            return cls(dialect, driver or None, database=database or None,
                       query=tuple(parse_qsl(q)))
        parts = urlsplit(f"//{rest}")
        try:
            port = parts.port
        except ValueError as exc:
            raise ConfigurationError(f"bad port in {cls._redact(url)!r}: {exc}") from None
        return cls(
            dialect,
            driver or None,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            host=parts.hostname,
            port=port,
            database=unquote(parts.path.lstrip("/")) or None,
            query=tuple(parse_qsl(parts.query)),
            mariadb=name.lower() == "mariadb",
        )

    @staticmethod
    def _redact(url: str) -> str:
        head, sep, tail = url.partition("@")
        if not sep or "://" not in head:
            return url
        scheme, creds = head.split("://", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{tail}" if ":" in creds else url

    def with_driver(self, driver: str | None) -> DatabaseURL:
        if driver is not None and driver not in KNOWN_DRIVERS[self.dialect]:
            raise ConfigurationError(f"unknown {self.dialect} driver {driver!r}")
        return replace(self, driver=driver)

    def with_database(self, database: str | None) -> DatabaseURL:
        return replace(self, database=database)

    def render(self, *, hide_password: bool = False) -> str:
        name = "mariadb" if self.mariadb else self.dialect
        scheme = f"{name}+{self.driver}" if self.driver else name
        q = f"?{urlencode(self.query)}" if self.query else ""
        if self.dialect == "sqlite":
            return f"{scheme}:///{self.database or ''}{q}" if self.database else f"{scheme}://{q}"
        auth = ""
        if self.username is not None:
            auth = quote(self.username, safe="")
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
        """The URL for SQLAlchemy's ``create_engine``/``create_async_engine``."""
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

    def dbapi_connect(self) -> Any:
        """Open a synchronous DB-API connection in autocommit mode. The driver is imported
        here so the core needs none at import time."""
        q = dict(self.query)
        if self.dialect == "sqlite":
            import sqlite3

            conn = sqlite3.connect(
                self.database or ":memory:", isolation_level=None, check_same_thread=False,
                timeout=float(q.get("timeout", 5)),
            )
            return conn
        if self.dialect == "postgresql":
            try:
                import psycopg
            except ImportError as exc:
                raise ConfigurationError(
                    "reading PostgreSQL needs psycopg: pip install 'reality-sync[postgres]'"
                ) from exc
            conn = psycopg.connect(self.libpq(), autocommit=True,
                                   connect_timeout=int(q.get("connect_timeout", 5)))
            return conn
        try:
            import pymysql
        except ImportError as exc:
            raise ConfigurationError(
                "reading MySQL/MariaDB needs PyMySQL: pip install 'reality-sync[mysql]'"
            ) from exc
        conn = pymysql.connect(
            host=self.host or "localhost", port=self.port or 3306, user=self.username or "root",
            password=self.password or "", database=self.database, autocommit=True,
            connect_timeout=int(q.get("connect_timeout", 5)), charset="utf8mb4",
        )
        return conn
