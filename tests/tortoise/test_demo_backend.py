"""``reality demo --orm tortoise``: the demo app on the Tortoise backend, end to end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from reality_core.demo.tortoise_backend import TortoiseBackend
from reality_core.urls import DatabaseURL
from tests.demo_backend_checks import (
    check_a_message_moves_its_room_key_and_only_it,
    check_the_backend_protocol,
)
from tests.tortoise.conftest import BACKENDS, database_url


def _drop_demo_tables(url: str) -> None:
    import psycopg

    with psycopg.connect(DatabaseURL.parse(url).libpq(), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS demo_messages, demo_rooms, reality_versions, "
                     "reality_log, reality_meta CASCADE")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[TortoiseBackend]:
    dialect: str = request.param
    url = database_url(request, dialect)
    if dialect.startswith("postgresql"):
        _drop_demo_tables(url)
        url = str(DatabaseURL.parse(url).with_driver(dialect.partition("+")[2]))
    made = TortoiseBackend(url)
    try:
        yield made
    finally:
        made.close()


async def test_a_message_moves_its_room_key_and_only_it(backend: TortoiseBackend) -> None:
    await check_a_message_moves_its_room_key_and_only_it(backend)


def test_the_backend_protocol(backend: TortoiseBackend) -> None:
    check_the_backend_protocol(backend)
    assert backend.description.startswith("Tortoise ORM on ")
