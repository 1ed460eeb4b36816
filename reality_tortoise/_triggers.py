"""``create_triggers()`` / ``drop_triggers()``: trigger mode (PostgreSQL) for Tortoise.

The DDL comes from :mod:`reality_core.triggers`; this module only finds the client, reads
the column types the checks need (asynchronously, before the core plans the DDL) and runs
the plan in one transaction.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient

from reality_core.catalog import check_max_keys
from reality_core.errors import ConfigurationError
from reality_core.store import LOG_TABLE
from reality_core.triggers import (
    TriggerSpec,
    column_types_statement,
    create_plan,
    drop_plan,
    drop_targets,
    pick,
)

from ._schema import resolve
from ._tracking import RealityClient, RealityTransaction, Rows, trigger_epoch

_INSTALLED: Any = object()  # max_keys default: the connection's installed setting

Plan = Callable[[RealityTransaction], Awaitable[list[str]]]


def _client(connection_name: str | None, using_db: BaseDBAsyncClient | None,
            verb: str) -> tuple[RealityClient, RealityTransaction | None]:
    """The connection's Reality client, and the open transaction to run in (if any)."""
    db = using_db or resolve(connection_name)
    tx: RealityTransaction | None = None
    if isinstance(db, RealityTransaction):
        client = db._reality_client()
        if not db._reality_root._reality_done:
            tx = db
    elif isinstance(db, RealityClient):
        client = db
    else:
        raise ConfigurationError(
            f"{verb}(): connection {db.connection_name!r} does not use a Reality engine: "
            "pass your Tortoise config through reality_tortoise.install(...)")
    if client.reality_dialect != "postgresql":
        raise ConfigurationError(
            f"{verb}(): trigger mode needs PostgreSQL, not {client.reality_dialect}; on "
            "other databases the plugin bumps from Python (nothing to create)")
    return client, tx


def _specs(client: RealityClient, max_keys: Any) -> list[TriggerSpec]:
    if max_keys is _INSTALLED:
        max_keys = client.reality_settings.max_keys
    return client._reality_catalog().core.trigger_specs(check_max_keys(max_keys))


async def _run(client: RealityClient, tx: RealityTransaction | None, plan: Plan) -> None:
    async def apply(on: RealityTransaction) -> None:
        # Marked first: however the transaction ends, every connection reads coverage again.
        on._reality_root._reality_ddl = True
        for sql in await plan(on):
            await on._reality_execute(sql)
        trigger_epoch[0] += 1  # this transaction's own connection sees the change now

    if tx is not None:
        await apply(tx)
        return
    async with client._in_transaction() as own:
        assert isinstance(own, RealityTransaction)
        await apply(own)


async def create_triggers(connection_name: str | None = None, *,
                          using_db: BaseDBAsyncClient | None = None,
                          tables: Iterable[str] | None = None,
                          max_keys: int | None = _INSTALLED) -> list[str]:
    """Trigger mode (PostgreSQL): let the database bump tracked tables' keys itself.

    Example::

        await Tortoise.init(config=TORTOISE_ORM)       # config from reality_tortoise.install
        await reality_tortoise.create_triggers()       # after your tables exist

    Creates (or replaces) one function and four statement-level triggers per tracked table
    (all, or the table names in ``tables``), in one transaction (the current one, when
    called inside ``in_transaction()`` or given one as ``using_db``). Writes to those
    tables then cost no extra statement at COMMIT and no key work in Python, and writes from
    outside Tortoise bump too; :mod:`reality_core.triggers` describes the contract and
    limits. ``max_keys`` must be the plugin's (default: the connection's installed setting).
    Run it again when a declaration changes; until then the plugin logs the trigger as stale
    and bumps that table from Python. A key column of a type the triggers cannot render
    (``boolean``, ``numeric``...) raises :class:`~reality_core.errors.ConfigurationError`
    naming it, and nothing is created. Returns the tables done. ``connection_name`` and
    ``using_db`` mean what they mean for :func:`create_tables`.
    """
    client, tx = _client(connection_name, using_db, "create_triggers")
    specs = _specs(client, max_keys)
    chosen = pick(specs, tables)

    async def plan(on: RealityTransaction) -> list[str]:
        # The core's planner asks for column types synchronously: read them all first.
        types: dict[str, Rows] = {}
        for table in [LOG_TABLE, *(spec.table for spec in chosen)]:  # ours is checked too
            sql = column_types_statement(table)
            types[sql] = await on._reality_fetch(sql)
        return create_plan(specs, tables, types.__getitem__)

    await _run(client, tx, plan)
    return [s.table for s in chosen]


async def drop_triggers(connection_name: str | None = None, *,
                        using_db: BaseDBAsyncClient | None = None,
                        tables: Iterable[str] | None = None) -> list[str]:
    """Remove what :func:`create_triggers` made (all tracked tables, or ``tables``); the
    plugin bumps those tables from Python again.

    Example::

        await reality_tortoise.drop_triggers()

    One transaction, as for :func:`create_triggers`. Restart other processes of the app:
    they keep believing the triggers are there until their connections are replaced.
    """
    client, tx = _client(connection_name, using_db, "drop_triggers")
    specs = _specs(client, None)
    done = drop_targets(specs, tables)

    async def plan(on: RealityTransaction) -> list[str]:
        return drop_plan(specs, done)

    await _run(client, tx, plan)
    return done
