"""Fixtures of the peewee plugin's tests: each database, a fresh schema per test.

``db`` is a plain (unpooled) peewee database with the plugin installed; the contract suite
runs the pooled ones. Run on peewee 3 by putting it first on the path, e.g.
``pip install --target /tmp/pw3 'peewee==3.19.0' psycopg2-binary`` then
``PYTHONPATH=/tmp/pw3 python -m pytest tests/peewee tests/contract -k peewee``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import peewee
import pytest

import reality_peewee
from reality_core.keys import row_key, table_key
from reality_core.reader import DBAPIReader
from reality_core.store import OWN_TABLES
from reality_core.urls import DatabaseURL
from tests.peewee.models import MODELS, declare

DIALECTS = [pytest.param("postgresql", marks=pytest.mark.postgres), "sqlite", "mysql"]
_URL_FIXTURE = {"postgresql": "pg_url", "sqlite": "sqlite_url", "mysql": "mysql_url"}


def pytest_report_header() -> str:
    return f"peewee {peewee.__version__} (reality_peewee plugin tests)"


class _MySQL(peewee.MySQLDatabase):
    def _connect(self) -> Any:
        with warnings.catch_warnings():
            # peewee 3 passes PyMySQL the old db= argument, which PyMySQL 1.1+ deprecates.
            warnings.filterwarnings("ignore", "'db' is deprecated", DeprecationWarning)
            return super()._connect()


def open_plain(url: str, **kwargs: Any) -> peewee.Database:
    parsed = DatabaseURL.parse(url)
    if parsed.dialect == "sqlite":
        return peewee.SqliteDatabase(parsed.database, pragmas={"foreign_keys": 1}, **kwargs)
    params: dict[str, Any] = {"host": parsed.host or "127.0.0.1", "user": parsed.username,
                              **kwargs}
    if parsed.port:
        params["port"] = parsed.port
    if parsed.password:
        params["password"] = parsed.password
    if parsed.dialect == "postgresql":
        return peewee.PostgresqlDatabase(parsed.database, **params)
    return _MySQL(parsed.database, charset="utf8mb4", **params)


@pytest.fixture(params=DIALECTS)
def dialect(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def url(request: pytest.FixtureRequest, dialect: str) -> str:
    value: str = request.getfixturevalue(_URL_FIXTURE[dialect])
    return value


def reset_schema(db: peewee.Database) -> None:
    db.drop_tables(MODELS, safe=True)
    for table in sorted(OWN_TABLES):
        db.execute_sql(f"DROP TABLE IF EXISTS {table}")


@contextlib.contextmanager
def prepared(database: peewee.Database) -> Iterator[peewee.Database]:
    """``database`` with the test models bound to a fresh schema and the plugin installed;
    all of it removed afterwards."""
    database.bind(MODELS)
    declare()
    reality_peewee.install(database)
    reset_schema(database)
    database.create_tables(MODELS)
    reality_peewee.create_tables(database)
    try:
        yield database
    finally:
        if not database.is_closed() and database.in_transaction():
            database.rollback()
        database.close()  # a test may have left its thread's connection open
        reset_schema(database)
        reality_peewee.uninstall(database)
        database.close()


@pytest.fixture
def db(url: str) -> Iterator[peewee.Database]:
    with prepared(open_plain(url)) as database:
        yield database


@pytest.fixture
def reader(db: peewee.Database) -> Iterator[DBAPIReader]:
    r = reality_peewee.version_reader(db)
    try:
        yield r
    finally:
        r.close()


class Watch:
    """Versions of some keys now; later, which of them moved."""

    def __init__(self, reader: DBAPIReader, keys: tuple[str, ...]) -> None:
        self.reader = reader
        self.before = self._read(keys)

    def _read(self, keys: tuple[str, ...]) -> dict[str, int]:
        snap = self.reader.read(keys)
        return {k: snap.version(k) for k in keys}

    def delta(self) -> dict[str, int]:
        after = self._read(tuple(self.before))
        for key, version in after.items():
            assert version >= self.before[key], f"{key} went backwards"
        return {k: after[k] - self.before[k] for k in self.before}

    def moved(self) -> set[str]:
        return {k for k, d in self.delta().items() if d}


@pytest.fixture
def watch(reader: DBAPIReader) -> Any:
    def start(*keys: str) -> Watch:
        return Watch(reader, keys)

    return start


def T(table: str) -> str:
    return table_key(table)


def R(table: str, *pk: object) -> str:
    return row_key(table, list(pk))
