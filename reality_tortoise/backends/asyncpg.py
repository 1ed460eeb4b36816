"""``reality_tortoise.backends.asyncpg``: Tortoise's asyncpg engine, with tracking."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tortoise.backends.asyncpg.client import AsyncpgDBClient, TransactionWrapper
from tortoise.backends.asyncpg.executor import AsyncpgExecutor
from tortoise.backends.asyncpg.schema_generator import AsyncpgSchemaGenerator
from tortoise.backends.base.client import TransactionContext, TransactionContextPooled
from tortoise.backends.base.executor import BaseExecutor

from reality_tortoise._schema import RealitySchemaGenerator
from reality_tortoise._tracking import (
    IdleTransaction,
    RealityClient,
    RealityExecutor,
    RealityTransaction,
    Rows,
)


class RealityAsyncpgSchemaGenerator(RealitySchemaGenerator, AsyncpgSchemaGenerator):
    pass


class RealityAsyncpgExecutor(RealityExecutor, AsyncpgExecutor):
    pass


class _Driver:
    """Reality's own statements (trigger mode) on an asyncpg connection."""

    @staticmethod
    async def _reality_fetch_on(connection: Any, sql: str) -> Rows:
        # asyncpg Records iterate over their values
        return [tuple(row) for row in await connection.fetch(sql)]

    @staticmethod
    async def _reality_execute_on(connection: Any, sql: str) -> None:
        await connection.execute(sql)  # no parameters: nothing reads placeholders

    @staticmethod
    def _reality_physical(connection: Any) -> Any:
        # The pool hands each acquire a new PoolConnectionProxy; ``_con`` is the connection.
        return getattr(connection, "_con", None) or connection


class RealityAsyncpgTransaction(_Driver, RealityTransaction, TransactionWrapper):
    reality_dialect = "postgresql"
    reality_paramstyle = "numeric_dollar"
    executor_class = RealityAsyncpgExecutor

    async def _reality_run(self, sql: str, params: Sequence[Any]) -> None:
        await self._connection.execute(sql, *params)


class RealityIdleAsyncpgTransaction(IdleTransaction, RealityAsyncpgTransaction):
    # Every tracked table bumps itself (see IdleTransaction): Tortoise's own executor.
    executor_class: type[BaseExecutor] = AsyncpgExecutor  # type: ignore[assignment]


class RealityAsyncpgClient(_Driver, RealityClient, AsyncpgDBClient):
    reality_dialect = "postgresql"
    reality_paramstyle = "numeric_dollar"
    executor_class = RealityAsyncpgExecutor
    schema_generator = RealityAsyncpgSchemaGenerator

    def _in_transaction(self) -> TransactionContext:
        cls = RealityIdleAsyncpgTransaction if self._reality_idle() else RealityAsyncpgTransaction
        return TransactionContextPooled(cls(self), self._pool_init_lock)


client_class = RealityAsyncpgClient
