"""The ``harness`` fixture: every (plugin, database) pair the contract suite runs on.

A plugin registers itself in ``FACTORIES`` below with the dialects it supports; each
factory is an async context manager ``factory(dialect, url, triggers=False)`` yielding a
:class:`~tests.contract.harness.Harness` on a fresh schema. A dialect may carry a driver
(``postgresql+asyncpg``); its base name picks the database fixture. The third entry lists
the dialects the suite runs again in trigger mode (``triggers=True``: the plugin's
``create_triggers`` ran after the schema was made), ids ending in ``-triggers``.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import pytest

from tests.contract.harness import Harness

Factory = Callable[..., AbstractAsyncContextManager[Harness]]

#: plugin -> (module:function of its factory, dialects, dialects also run in trigger mode)
FACTORIES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "sqlalchemy": ("tests.contract.sqlalchemy_harness:sqlalchemy_harness",
                   ("postgresql", "sqlite", "mysql"), ("postgresql",)),
    "sqlalchemy_async": ("tests.contract.sqlalchemy_harness:sqlalchemy_async_harness",
                         ("postgresql+asyncpg", "sqlite+aiosqlite"), ("postgresql+asyncpg",)),
    "peewee": ("tests.contract.peewee_harness:peewee_harness",
               ("postgresql", "sqlite", "mysql"), ("postgresql",)),
    "tortoise": ("tests.contract.tortoise_harness:tortoise_harness",
                 ("postgresql+asyncpg", "postgresql+psycopg", "sqlite"),
                 ("postgresql+asyncpg", "postgresql+psycopg")),
}

_URL_FIXTURE = {"postgresql": "pg_url", "sqlite": "sqlite_url", "mysql": "mysql_url"}

PARAMS = [
    pytest.param((plugin, dialect, False), id=f"{plugin}-{dialect}")
    for plugin, (_, dialects, _) in FACTORIES.items()
    for dialect in dialects
] + [
    pytest.param((plugin, dialect, True), id=f"{plugin}-{dialect}-triggers")
    for plugin, (_, _, trigger_dialects) in FACTORIES.items()
    for dialect in trigger_dialects
]


def _factory(plugin: str) -> Factory:
    target = FACTORIES[plugin][0]
    module, _, name = target.partition(":")
    factory: Factory = getattr(importlib.import_module(module), name)
    return factory


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``@pytest.mark.dialects(...)`` limits a case to the databases where it can happen;
    the other combinations are deselected (not skipped: they do not exist)."""
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        marker = item.get_closest_marker("dialects")
        callspec = getattr(item, "callspec", None)
        if marker is None or callspec is None or "harness" not in callspec.params:
            keep.append(item)
            continue
        dialect = callspec.params["harness"][1].partition("+")[0]
        (keep if dialect in marker.args else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture(params=PARAMS)
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    plugin, dialect, triggers = request.param
    url = request.getfixturevalue(_URL_FIXTURE[dialect.partition("+")[0]])
    async with _factory(plugin)(dialect, url, **({"triggers": True} if triggers else {})) as h:
        yield h
