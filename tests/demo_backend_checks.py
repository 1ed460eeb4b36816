"""Checks every demo backend (``reality_core.demo.*_backend``) passes, whatever its ORM.

A backend's test module builds the backend on each database it supports and calls these.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from reality_core.demo.app import DemoApp
from reality_core.demo.backend import ROOMS_KEY, Backend, RoomExists, RoomNotFound, room_key


async def sync(http: httpx.AsyncClient, known: dict[str, int]) -> dict[str, Any]:
    response = await http.post("/reality/sync", json={"known": known, "hint": "focus"})
    assert response.status_code == 200, response.text
    changed: dict[str, Any] = response.json()["changed"]
    return changed


async def check_a_message_moves_its_room_key_and_only_it(backend: Backend) -> None:
    app = DemoApp(backend)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as http:
        known = {room_key("general"): 0, room_key("random"): 0, ROOMS_KEY: 0}
        changed = await sync(http, known)
        known = {k: changed.get(k, {"version": v})["version"] for k, v in known.items()}
        response = await http.post("/api/rooms/general/messages",
                                   json={"author": "ada", "body": "hello"})
        assert response.status_code in (200, 201), response.text
        assert set(await sync(http, known)) == {room_key("general")}
        response = await http.get("/api/rooms/general/messages")
        assert [m["body"] for m in response.json()["messages"]] == ["hello"]


def check_the_backend_protocol(backend: Backend) -> None:
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
    assert reader.read([ROOMS_KEY]).version(ROOMS_KEY) == 2  # the seed, then "python"
