"""``reality demo --orm peewee``: the demo app on the peewee backend, end to end."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from reality_core.demo.backend import room_key
from reality_core.demo.peewee_backend import PeeweeBackend
from reality_core.store import OWN_TABLES
from tests.demo_backend_checks import (
    check_a_message_moves_its_room_key_and_only_it,
    check_the_backend_protocol,
)
from tests.peewee.conftest import open_plain

# peewee 3 hands PyMySQL the old db= argument, which PyMySQL 1.1+ deprecates (peewee 4 no
# longer does); the demo's pooled MySQL database connects through peewee's own code.
pytestmark = pytest.mark.filterwarnings("ignore:'db' is deprecated:DeprecationWarning")


def _drop_demo_tables(url: str) -> None:
    db = open_plain(url)
    try:
        for table in ("demo_messages", "demo_rooms", *sorted(OWN_TABLES)):
            db.execute_sql(f"DROP TABLE IF EXISTS {table}")
    finally:
        db.close()


@pytest.fixture
def backend(url: str) -> Iterator[PeeweeBackend]:
    _drop_demo_tables(url)
    made = PeeweeBackend(url)
    try:
        yield made
    finally:
        made.close()
        _drop_demo_tables(url)


async def test_a_message_moves_its_room_key_and_only_it(backend: PeeweeBackend) -> None:
    await check_a_message_moves_its_room_key_and_only_it(backend)


def test_the_backend_protocol(backend: PeeweeBackend) -> None:
    check_the_backend_protocol(backend)
    assert backend.description.startswith("peewee on ")


def test_worker_threads_share_the_pool(backend: PeeweeBackend) -> None:
    errors: list[BaseException] = []

    def post(n: int) -> None:
        try:
            backend.post_message("general", "bob", f"t{n}")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=post, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    reader = backend.make_reader()
    assert reader.read([room_key("general")]).version(room_key("general")) == 4
