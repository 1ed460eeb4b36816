"""PostgreSQL through each driver peewee can use here: psycopg2 (peewee 3's and 4's
default when installed) and psycopg 3 (peewee 4's ``prefer_psycopg3``, peewee 3's
``playhouse.psycopg3_ext``). Only installed drivers are collected."""

from __future__ import annotations

from collections.abc import Iterator
from importlib.util import find_spec
from typing import Any

import peewee
import pytest

import reality_peewee
from reality_core.errors import WritePathError
from reality_core.keys import row_key, table_key
from reality_core.store import LOG_TABLE
from reality_core.urls import DatabaseURL
from tests.peewee.conftest import prepared
from tests.peewee.models import Message, Room

PEEWEE_4 = int(peewee.__version__.split(".")[0]) >= 4
DRIVERS = [d for d in ("psycopg2", "psycopg") if find_spec(d) is not None]
if "psycopg" in DRIVERS and not PEEWEE_4 and find_spec("playhouse.psycopg3_ext") is None:
    DRIVERS.remove("psycopg")


def _open(driver: str, url: str) -> peewee.Database:
    parsed = DatabaseURL.parse(url)
    params: dict[str, Any] = {"host": parsed.host, "port": parsed.port, "user": parsed.username}
    if driver == "psycopg" and not PEEWEE_4:
        from playhouse.psycopg3_ext import Psycopg3Database

        return Psycopg3Database(parsed.database, **params)
    if PEEWEE_4:
        params["prefer_psycopg3"] = driver == "psycopg"
    return peewee.PostgresqlDatabase(parsed.database, **params)


@pytest.fixture(params=[pytest.param(d, marks=pytest.mark.postgres) for d in DRIVERS])
def pg(request: pytest.FixtureRequest, pg_url: str) -> Iterator[peewee.Database]:
    db = _open(request.param, pg_url)
    assert type(db.connection()).__module__.split(".")[0] == request.param
    with prepared(db):
        yield db


def test_driver_paths(pg: peewee.Database) -> None:
    reader = reality_peewee.version_reader(pg)
    keys = (table_key("message"), row_key("message", [1]), row_key("message", [2]), "room:1",
            "room:2")

    def versions() -> dict[str, int]:
        snap = reader.read(keys)
        return {k: snap.version(k) for k in keys}

    try:
        Room.create(id=1)
        Room.create(id=2)
        start = versions()
        with pg.atomic():
            m = Message.create(room=1)  # id from RETURNING, read and rewound
            assert m.id == 1
            with pytest.raises(RuntimeError), pg.atomic():
                Message.create(room=2)
                raise RuntimeError
        m.room = 2
        m.save()  # outside atomic(): a transaction of its own
        after = versions()
        assert {k for k in keys if after[k] != start[k]} == {
            table_key("message"), row_key("message", [1]), "room:1", "room:2"}

        pg.execute_sql(f"DROP TABLE {LOG_TABLE}")  # where every bump writes
        with pytest.raises(WritePathError):
            Message.create(room=1)  # the failed bump ends the transaction on every driver
        assert Message.select().count() == 1
        reality_peewee.create_tables(pg)
    finally:
        reader.close()
