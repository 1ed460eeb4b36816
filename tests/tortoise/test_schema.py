"""Reality's tables the Tortoise ways -- create_tables(), generate_schemas() and Tortoise's
migrations -- are the schema the alembic branch creates; version_reader() reads them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tortoise.context import TortoiseContext
from tortoise.migrations.api.migrate import migrate
from tortoise.migrations.api.sqlmigrate import sqlmigrate
from tortoise.transactions import in_transaction

import reality_tortoise
from reality_core.keys import row_key
from reality_core.urls import DatabaseURL
from reality_sqlalchemy import migrate as alembic_branch
from tests import dbs
from tests.contract.tortoise_harness import Order, TortoiseHarness, tortoise_config
from tests.test_migrations import _schema, _tables
from tests.tortoise.conftest import BACKENDS

MODELS = ("tests.tortoise.models",)
MIGRATIONS = "tests.tortoise.reality_migrations"
#: Tortoise 1.1.9's migration recorder writes asyncpg's ``$1`` placeholders on every
#: PostgreSQL driver, so its migrations cannot run on psycopg at all (Reality or not).
MIGRATING_BACKENDS = ("postgresql+asyncpg", "sqlite")
NewDatabase = Callable[[], str]


@pytest.fixture
def new_database(request: pytest.FixtureRequest, tmp_path: Path,
                 backend: str) -> Iterator[NewDatabase]:
    """Fresh empty databases of the backend's dialect, dropped afterwards."""
    made: list[str] = []
    server = request.getfixturevalue("pg_server_url") if backend != "sqlite" else ""

    def create() -> str:
        url = (dbs.create_pg_database(server) if server
               else f"sqlite:///{tmp_path}/db{len(made)}.db")
        made.append(url)
        return url

    yield create
    for url in made:
        if server:
            dbs.drop_pg_database(url, server)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    dialect: str = request.param
    return dialect


def _config(backend: str, url: str, **app: Any) -> dict[str, Any]:
    config = tortoise_config(backend, url, models=MODELS)
    (label,) = config["apps"]
    config["apps"][label].update(app)
    return config


@contextlib.asynccontextmanager
async def _tortoise(backend: str, url: str, **app: Any) -> AsyncIterator[TortoiseContext]:
    async with TortoiseContext() as ctx:
        await ctx.init(config=_config(backend, url, **app))
        yield ctx


def _sync(url: str) -> str:
    return DatabaseURL.parse(url).sqlalchemy()


async def test_every_tortoise_path_creates_the_alembic_schema(
        backend: str, new_database: NewDatabase) -> None:
    reference = new_database()
    alembic_branch.upgrade(reference)
    expected = _schema(_sync(reference))

    by_create_tables, by_generate = new_database(), new_database()
    async with _tortoise(backend, by_create_tables):
        await reality_tortoise.create_tables()
        await reality_tortoise.create_tables()  # idempotent
    async with _tortoise(backend, by_generate) as ctx:
        await ctx.generate_schemas()
    for url in (by_create_tables, by_generate):
        assert _schema(_sync(url)) == expected, url


@pytest.mark.parametrize("backend", MIGRATING_BACKENDS)
async def test_the_migration_creates_the_alembic_schema_goes_back_and_shows_its_sql(
        backend: str, new_database: NewDatabase) -> None:
    reference = new_database()
    alembic_branch.upgrade(reference)
    url = new_database()
    config = _config(backend, url, migrations=MIGRATIONS)
    (label,) = config["apps"]
    async with TortoiseContext():
        await migrate(config=config)
    assert _schema(_sync(url)) == _schema(_sync(reference))
    async with TortoiseContext():
        await migrate(config=config, target=f"{label}.__first__")
    assert not {"reality_versions", "reality_meta"} & _tables(_sync(url))
    async with TortoiseContext():
        sql = "\n".join(await sqlmigrate(config=config, app_label=label,
                                         migration_name="0001"))
    assert "CREATE TABLE IF NOT EXISTS reality_versions" in sql
    assert "INSERT INTO reality_meta" in sql


async def test_version_reader_reads_what_the_plugin_bumped(h: TortoiseHarness) -> None:
    reader = reality_tortoise.version_reader()
    try:
        before = reader.read([row_key("orders", [1])])
        async with in_transaction():
            await Order.create(id=1, room_id=1)
        after = reader.read([row_key("orders", [1]), "room:1"])
    finally:
        reader.close()
    assert before.version(row_key("orders", [1])) == 0
    assert after.version(row_key("orders", [1])) == 1
    assert after.version("room:1") == 1
    assert after.epoch == before.epoch
    assert len(after.epoch) == 32
