"""``reality demo --orm tortoise``: the demo app on the Tortoise backend, end to end."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from reality_core.demo.app import DemoApp
from reality_core.demo.backend import ROOMS_KEY, RoomExists, RoomNotFound, room_key
from reality_core.demo.tortoise_backend import TortoiseBackend
from reality_core.urls import DatabaseURL
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


async def _sync(http: httpx.AsyncClient, known: dict[str, int]) -> dict[str, Any]:
    response = await http.post("/reality/sync", json={"known": known, "hint": "focus"})
    assert response.status_code == 200, response.text
    changed: dict[str, Any] = response.json()["changed"]
    return changed


async def test_a_message_moves_its_room_key_and_only_it(backend: TortoiseBackend) -> None:
    app = DemoApp(backend)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as http:
        known = {room_key("general"): 0, room_key("random"): 0, ROOMS_KEY: 0}
        changed = await _sync(http, known)
        known = {k: changed.get(k, {"version": v})["version"] for k, v in known.items()}
        response = await http.post("/api/rooms/general/messages",
                                   json={"author": "ada", "body": "hello"})
        assert response.status_code in (200, 201), response.text
        assert set(await _sync(http, known)) == {room_key("general")}
        response = await http.get("/api/rooms/general/messages")
        assert [m["body"] for m in response.json()["messages"]] == ["hello"]


def test_the_backend_protocol(backend: TortoiseBackend) -> None:
    assert [r.id for r in backend.list_rooms()] == ["general", "random"]
    assert backend.create_room("python", "Python").id == "python"
    with pytest.raises(RoomExists):
        backend.create_room("python", "Again")
    with pytest.raises(RoomNotFound):
        backend.post_message("nowhere", "ada", "hi")
    with pytest.raises(RoomNotFound):
        backend.list_messages("nowhere")
    for n in range(3):
        backend.post_message("python", "ada", f"m{n}")
    assert [m.body for m in backend.list_messages("python", limit=2)] == ["m1", "m2"]
    reader = backend.make_reader()
    assert reader.read([room_key("python")]).version(room_key("python")) == 3
    assert backend.description.startswith("Tortoise ORM on ")
