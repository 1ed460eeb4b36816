"""Test database provisioning (DESIGN.md §9).

Tests run against real databases, never mocks. This module finds a PostgreSQL server, in order:

1. ``REALITY_TEST_DATABASE_URL`` (``postgresql://...`` or ``postgresql+psycopg://...``);
2. testcontainers, when a Docker daemon answers;
3. a throwaway cluster started from the local ``initdb``/``pg_ctl`` binaries (as the ``postgres``
   OS user when running as root), removed at interpreter exit;
4. nothing: PostgreSQL tests are skipped loudly, or fail when ``CI`` or
   ``REALITY_REQUIRE_POSTGRES=1`` is set.

MySQL/MariaDB comes from ``REALITY_TEST_MYSQL_URL`` or ``root@127.0.0.1:3306``; skipped loudly
when unreachable, a failure when ``REALITY_REQUIRE_MYSQL=1``.

Every test session gets its own freshly created database, dropped at the end.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import glob
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pytest

from reality_core.store import Dialect, create_table_statements, insert_epoch_statement

__all__ = [
    "LocalCluster",
    "create_mysql_database",
    "create_pg_database",
    "create_reality_tables",
    "drop_mysql_database",
    "drop_pg_database",
    "mysql_url",
    "pg_server_url",
    "pg_url",
    "postgres_server_url",
    "pytest_terminal_summary",
    "sqlite_url",
    "start_local_cluster",
]

_PG_FLAGS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
_TESTCONTAINERS_CONSTRUCT_TIMEOUT = 15.0
_NOTES: list[str] = []  # shown in the pytest terminal summary


def _note(message: str) -> None:
    line = f"[reality tests] {message}"
    if line not in _NOTES:
        _NOTES.append(line)
        print(line, file=sys.stderr, flush=True)


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


# --------------------------------------------------------------------------- PostgreSQL sources


@dataclass
class LocalCluster:
    """A throwaway PostgreSQL cluster in a temporary data directory."""

    datadir: Path
    port: int
    bindir: Path
    _stopped: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        """Stop the server and delete its data directory (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(Exception):
            _run_pg(
                [
                    str(self.bindir / "pg_ctl"),
                    "stop",
                    "-D",
                    str(self.datadir),
                    "-m",
                    "immediate",
                    "-w",
                    "-t",
                    "30",
                ]
            )
        shutil.rmtree(self.datadir, ignore_errors=True)


def _pg_bindir() -> Path | None:
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent

    def version(path: str) -> tuple[int, ...]:
        part = Path(path).parent.parent.name
        return tuple(int(p) for p in part.split(".") if p.isdigit())

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    return Path(candidates[-1]).parent if candidates else None


def _run_pg(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL server binary, as the ``postgres`` user when we are root."""
    if os.geteuid() == 0:
        if shutil.which("runuser"):
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        else:
            cmd = ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(cmd)]
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120, cwd="/tmp")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_local_cluster() -> LocalCluster:
    """Start a throwaway cluster (trust auth, fsync off); it is stopped at interpreter exit."""
    bindir = _pg_bindir()
    if bindir is None:
        raise RuntimeError("no initdb/pg_ctl found on PATH or under /usr/lib/postgresql/*/bin")
    datadir = Path(tempfile.mkdtemp(prefix="reality-pg-", dir="/tmp"))
    if os.geteuid() == 0:
        shutil.chown(datadir, user="postgres", group="postgres")
    cluster = LocalCluster(datadir=datadir, port=_free_port(), bindir=bindir)
    atexit.register(cluster.stop)
    try:
        _run_pg(
            [
                str(bindir / "initdb"),
                "-D",
                str(datadir),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )
        options = (
            f"{_PG_FLAGS} -c listen_addresses=127.0.0.1 -p {cluster.port} "
            f"-c unix_socket_directories={datadir}"
        )
        _run_pg(
            [
                str(bindir / "pg_ctl"),
                "start",
                "-D",
                str(datadir),
                "-w",
                "-t",
                "60",
                "-l",
                str(datadir / "server.log"),
                "-o",
                options,
            ]
        )
    except subprocess.CalledProcessError as exc:
        log = datadir / "server.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        cluster.stop()
        output = f"{exc.stdout}{exc.stderr}{tail}"
        raise RuntimeError(f"{shlex.join(exc.cmd)} failed:\n{output}") from exc
    except BaseException:
        cluster.stop()
        raise
    return cluster


def start_replica(primary: LocalCluster) -> LocalCluster:
    """A streaming replica of ``primary`` (a cluster from :func:`start_local_cluster`, whose
    trust pg_hba allows replication from loopback), in hot standby; stopped at exit."""
    datadir = Path(tempfile.mkdtemp(prefix="reality-replica-", dir="/tmp"))
    if os.geteuid() == 0:
        shutil.chown(datadir, user="postgres", group="postgres")
    replica = LocalCluster(datadir=datadir, port=_free_port(), bindir=primary.bindir)
    atexit.register(replica.stop)
    try:
        # initdb/pg_ctl may be symlinks on PATH; pg_basebackup sits beside their targets.
        basebackup = (primary.bindir / "pg_ctl").resolve().parent / "pg_basebackup"
        _run_pg([str(basebackup), "-h", "127.0.0.1", "-p",
                 str(primary.port), "-U", "postgres", "-D", str(datadir), "-R", "-X", "stream",
                 "--no-sync"])
        options = (f"{_PG_FLAGS} -c listen_addresses=127.0.0.1 -p {replica.port} "
                   f"-c unix_socket_directories={datadir} -c hot_standby=on")
        _run_pg([str(primary.bindir / "pg_ctl"), "start", "-D", str(datadir), "-w", "-t", "60",
                 "-l", str(datadir / "server.log"), "-o", options])
    except subprocess.CalledProcessError as exc:
        log = datadir / "server.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        replica.stop()
        raise RuntimeError(f"{shlex.join(exc.cmd)} failed:\n{exc.stdout}{exc.stderr}{tail}"
                           ) from exc
    except BaseException:
        replica.stop()
        raise
    return replica


def _from_testcontainers() -> str:
    """Start a PostgreSQL container; raises quickly when no Docker daemon answers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from testcontainers.community.postgres import PostgresContainer
        except ImportError:  # testcontainers < 4.10
            from testcontainers.postgres import PostgresContainer

        # The constructor contacts the daemon; bound it in case DOCKER_HOST points nowhere.
        box: dict[str, Any] = {}

        def construct() -> None:
            try:
                box["c"] = PostgresContainer("postgres:16-alpine", driver=None)
            except BaseException as exc:
                box["e"] = exc

        thread = threading.Thread(target=construct, daemon=True)
        thread.start()
        thread.join(_TESTCONTAINERS_CONSTRUCT_TIMEOUT)
        if "e" in box:
            raise box["e"]
        if "c" not in box:
            raise TimeoutError("Docker daemon did not answer")
        container = box["c"]
        container.start()
        atexit.register(container.stop)
        url: str = container.get_connection_url(driver=None)
        return url


def _resolve_postgres_server_url() -> str | None:
    env = os.environ.get("REALITY_TEST_DATABASE_URL")
    if env:
        _note(f"PostgreSQL: from REALITY_TEST_DATABASE_URL ({_redact(env)})")
        return env
    reasons: list[str] = []
    sources: list[tuple[str, Callable[[], str]]] = [
        ("testcontainers", _from_testcontainers),
        ("local throwaway cluster", lambda: start_local_cluster().url),
    ]
    for name, source in sources:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                url: str | None = source()
            except Exception as exc:
                reasons.append(f"{name}: {type(exc).__name__}: {str(exc).strip()[:300]}")
                url = None
            if url is None:
                # A failed attempt (e.g. the Docker client) may leave sockets in reference
                # cycles; free them now, quietly, rather than as a ResourceWarning in pytest.
                gc.collect()
                continue
        tried = f"; not used: {'; '.join(r[:160] for r in reasons)}" if reasons else ""
        _note(f"PostgreSQL: from {name} ({_redact(url)}){tried}")
        return url
    _note("PostgreSQL: NO SERVER. REALITY_TEST_DATABASE_URL unset; " + "; ".join(reasons))
    return None


_cache: list[str | None] = []


def postgres_server_url() -> str | None:
    """URL of a PostgreSQL server to create test databases on; resolved once per process."""
    if not _cache:
        _cache.append(_resolve_postgres_server_url())
    return _cache[0]


# --------------------------------------------------------------------------- database helpers


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def _with_db(url: str, dbname: str, scheme: str) -> str:
    return urlunsplit(urlsplit(url)._replace(scheme=scheme, path=f"/{quote(dbname)}"))


def _libpq(url: str) -> str:
    """``postgresql+psycopg://...`` -> ``postgresql://...`` (what psycopg.connect accepts)."""
    return urlunsplit(urlsplit(url)._replace(scheme="postgresql"))


def _new_name() -> str:
    return f"reality_test_{secrets.token_hex(6)}"


def create_pg_database(server_url: str) -> str:
    """Create a fresh database; return its SQLAlchemy URL (``postgresql+psycopg://...``)."""
    import psycopg
    from psycopg import sql

    name = _new_name()
    with psycopg.connect(_libpq(server_url), autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return _with_db(server_url, name, "postgresql+psycopg")


def create_reality_tables(conn: Any, dialect: Dialect, paramstyle: str) -> None:
    """Reality's tables and epoch row, on an autocommit DB-API connection."""
    cur = conn.cursor()
    try:
        for sql in create_table_statements(dialect):
            cur.execute(sql)
        sql, params = insert_epoch_statement(dialect, paramstyle)
        cur.execute(sql, params)
    finally:
        cur.close()


def drop_pg_database(url: str, server_url: str | None = None) -> None:
    """Drop a database made by :func:`create_pg_database`, even if connections remain."""
    import psycopg
    from psycopg import sql

    name = unquote(urlsplit(url).path.lstrip("/"))
    admin = _libpq(server_url) if server_url else _with_db(url, "postgres", "postgresql")
    with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        conn.execute(drop.format(sql.Identifier(name)))


def _mysql_connect(url: str, **kwargs: Any) -> Any:
    import pymysql

    parts = urlsplit(url)
    return pymysql.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=unquote(parts.username or "root"),
        password=unquote(parts.password or ""),
        connect_timeout=3,
        autocommit=True,
        **kwargs,
    )


def create_mysql_database(server_url: str) -> str:
    """Create a fresh utf8mb4 database; return its ``mysql+pymysql://`` URL."""
    name = _new_name()
    conn = _mysql_connect(server_url)
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    finally:
        conn.close()
    return _with_db(server_url, name, "mysql+pymysql")


def drop_mysql_database(url: str) -> None:
    conn = _mysql_connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{unquote(urlsplit(url).path.lstrip('/'))}`")
    finally:
        conn.close()


# --------------------------------------------------------------------------- pytest fixtures


def _unavailable(what: str, reason: str, required_by: str | None) -> NoReturn:
    message = f"{what} TESTS NOT RUN: {reason}"
    if required_by:
        _note(f"{message} (a failure because {required_by} is set)")
        pytest.fail(f"{message}; {required_by} is set, so this is a failure", pytrace=False)
    _note(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    url = postgres_server_url()
    if url is None:
        required = next((v for v in ("CI", "REALITY_REQUIRE_POSTGRES") if _truthy(v)), None)
        _unavailable(
            "POSTGRESQL",
            "no server (set REALITY_TEST_DATABASE_URL, run Docker, or "
            "install the PostgreSQL server binaries)",
            required,
        )
    return url


@pytest.fixture(scope="session")
def pg_url(pg_server_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this session (SQLAlchemy URL form)."""
    url = create_pg_database(pg_server_url)
    try:
        yield url
    finally:
        drop_pg_database(url, pg_server_url)


@pytest.fixture(scope="session")
def mysql_url() -> Iterator[str]:
    """A fresh utf8mb4 MySQL/MariaDB database for this session (``mysql+pymysql://``)."""
    server = os.environ.get("REALITY_TEST_MYSQL_URL") or "mysql+pymysql://root@127.0.0.1:3306/"
    problem = ""
    try:
        url = create_mysql_database(server)
    except Exception as exc:
        problem = f"{_redact(server)} unreachable ({exc})"
    if problem:  # outside the except block, so the report is not a chain of tracebacks
        required = "REALITY_REQUIRE_MYSQL" if _truthy("REALITY_REQUIRE_MYSQL") else None
        _unavailable("MYSQL", problem, required)
    _note(f"MySQL: {_redact(server)}")
    try:
        yield url
    finally:
        drop_mysql_database(url)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/test.db"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say where the test databases came from (and loudly, what was not run)."""
    if _NOTES:
        terminalreporter.section("reality test databases")
        for line in _NOTES:
            terminalreporter.write_line(line)
