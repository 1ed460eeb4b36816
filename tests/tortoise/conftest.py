"""Fixtures of the Tortoise plugin's tests: every backend, a fresh schema per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.contract.tortoise_harness import MODELS, TortoiseHarness, tortoise_harness

PG_BACKENDS = ("postgresql+asyncpg", "postgresql+psycopg")
BACKENDS = (*PG_BACKENDS, "sqlite")
PLUGIN_MODELS = (*MODELS, "tests.tortoise.models")


def database_url(request: pytest.FixtureRequest, dialect: str) -> str:
    fixture = "pg_url" if dialect.startswith("postgresql") else "sqlite_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture(params=BACKENDS)
async def h(request: pytest.FixtureRequest) -> AsyncIterator[TortoiseHarness]:
    """The contract harness (orders, posts, tags) plus this package's models."""
    dialect: str = request.param
    async with tortoise_harness(dialect, database_url(request, dialect),
                                models=PLUGIN_MODELS) as harness:
        yield harness


@pytest.fixture(params=PG_BACKENDS)
def pg_dialect(request: pytest.FixtureRequest) -> str:
    """PostgreSQL through each driver, for what only PostgreSQL can show."""
    dialect: str = request.param
    return dialect


class Versions:
    """Versions of some keys before an action; then which moved, and by how much."""

    def __init__(self, h: TortoiseHarness, before: dict[str, int]) -> None:
        self.h = h
        self.before = before

    async def delta(self) -> dict[str, int]:
        after = await self.h.versions(*self.before)
        for key, version in after.items():
            assert version >= self.before[key], f"{key} went backwards"
        return {k: after[k] - self.before[k] for k in self.before}

    async def moved(self) -> set[str]:
        return {k for k, v in (await self.delta()).items() if v}


async def watch(h: TortoiseHarness, *keys: str) -> Versions:
    return Versions(h, await h.versions(*keys))
