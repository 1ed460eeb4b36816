"""The published OpenAPI description matches what the endpoint really answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from reality_core import SyncService, VersionCache
from reality_core.asgi import SyncASGIApp
from reality_core.openapi import ERROR_CODES
from tests.test_endpoint import Store, client_for

BAD_REQUESTS: list[tuple[dict[str, Any], int, str]] = [
    ({"content": b"{", "headers": {"content-type": "application/json"}}, 400, "malformed_json"),
    ({"json": []}, 400, "invalid_body"),
    ({"json": {"known": []}}, 400, "invalid_known"),
    ({"json": {"known": {"": 1}}}, 400, "invalid_key"),
    ({"json": {"known": {"a": -1}}}, 400, "invalid_version"),
    ({"json": {"known": {"a": 1}, "hint": "nope"}}, 400, "invalid_body"),
    ({"json": {"known": {f"k{i}": 0 for i in range(1001)}}}, 413, "too_many_keys"),
    ({"content": b"{}", "headers": {"content-type": "text/plain"}}, 415,
     "unsupported_media_type"),
    ({"content": b"x" * 300_000, "headers": {"content-type": "application/json"}}, 413,
     "body_too_large"),
]


@pytest.fixture
def app(tmp_path: Path) -> Any:
    store = Store(f"sqlite:///{tmp_path}/r.db")
    store.bump("room:7")
    cache = VersionCache(store.reader(), interval=0.05)
    yield SyncASGIApp(SyncService(cache), base="/rt")
    cache.close()
    store.close()


async def test_the_description_is_served_and_names_every_route(app: SyncASGIApp) -> None:
    async with client_for(app) as http:
        doc = (await http.get("/rt/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) == {"/rt/sync", "/rt/health"}
    request = doc["components"]["schemas"]["SyncRequest"]
    assert request["properties"]["known"]["maxProperties"] == 1000
    assert set(doc["paths"]["/rt/sync"]["post"]["responses"]) == {
        "200", *(str(s) for s in ERROR_CODES)}


async def test_every_answer_is_one_the_description_lists(app: SyncASGIApp) -> None:
    async with client_for(app) as http:
        doc = (await http.get("/rt/openapi.json")).json()
        responses = doc["paths"]["/rt/sync"]["post"]["responses"]
        problem = doc["components"]["schemas"]["Problem"]
        for kwargs, status, code in BAD_REQUESTS:
            answer = await http.post("/rt/sync", **kwargs)
            assert (answer.status_code, answer.json()["code"]) == (status, code), kwargs
            assert str(status) in responses
            assert code in responses[str(status)]["description"]
            assert code in problem["properties"]["code"]["enum"]
            assert set(problem["required"]) <= set(answer.json())
        ok = await http.post("/rt/sync", json={"known": {"room:7": 0}, "hint": "mutation"})
        required = doc["components"]["schemas"]["SyncResponse"]["required"]
        assert set(required) <= set(ok.json())
        info = ok.json()["changed"]["room:7"]
        assert set(doc["components"]["schemas"]["VersionInfo"]["required"]) == set(info)
