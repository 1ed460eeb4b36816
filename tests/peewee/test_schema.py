"""Reality's tables made by reality_peewee.create_tables() are the ones the alembic branch
(``reality migrate``) makes: same columns, types, collations, keys and table options."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

import reality_peewee
from reality_sqlalchemy import migrate
from tests import dbs
from tests.peewee.conftest import DIALECTS, open_plain
from tests.test_migrations import _schema


@pytest.fixture(params=DIALECTS)
def two_databases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/a.db", f"sqlite:///{tmp_path}/b.db"
        return
    if request.param == "postgresql":
        server = request.getfixturevalue("pg_server_url")
        made = dbs.create_pg_database(server), dbs.create_pg_database(server)
        try:
            yield made
        finally:
            for url in made:
                dbs.drop_pg_database(url, server)
        return
    some = request.getfixturevalue("mysql_url")  # skips loudly when no server answers
    server = urlunsplit(urlsplit(some)._replace(path="/"))
    made = dbs.create_mysql_database(server), dbs.create_mysql_database(server)
    try:
        yield made
    finally:
        for url in made:
            dbs.drop_mysql_database(url)


def test_create_tables_makes_the_migrated_schema(two_databases: tuple[str, str]) -> None:
    migrated, created = two_databases
    migrate.upgrade(migrated)
    db = open_plain(created)
    try:
        reality_peewee.create_tables(db)
        reality_peewee.create_tables(db)  # idempotent
    finally:
        db.close()
    schema = _schema(created)
    assert schema == _schema(migrated)
    assert [c["name"] for c in schema["reality_versions"]["columns"]] == [
        "key_name", "version", "hash", "updated_at", "fold_seq"]
