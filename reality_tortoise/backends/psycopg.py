"""``reality_tortoise.backends.psycopg``: Tortoise's psycopg engine, with tracking."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg.rows
from tortoise.backends.base.client import TransactionContext, TransactionContextPooled
from tortoise.backends.base.executor import BaseExecutor
from tortoise.backends.psycopg.client import PsycopgClient, TransactionWrapper
from tortoise.backends.psycopg.executor import PsycopgExecutor
from tortoise.backends.psycopg.schema_generator import PsycopgSchemaGenerator

from reality_tortoise._schema import RealitySchemaGenerator
from reality_tortoise._tracking import (
    IdleTransaction,
    RealityClient,
    RealityExecutor,
    RealityTransaction,
    Rows,
)


class RealityPsycopgSchemaGenerator(RealitySchemaGenerator, PsycopgSchemaGenerator):
    pass


class RealityPsycopgExecutor(RealityExecutor, PsycopgExecutor):
    pass


class _Driver:
    """Reality's own statements (trigger mode) on a psycopg connection."""

    @staticmethod
    async def _reality_fetch_on(connection: Any, sql: str) -> Rows:
        # Tortoise's pool makes dict rows; covered_from_rows unpacks tuples.
        async with connection.cursor(row_factory=psycopg.rows.tuple_row) as cursor:
            await cursor.execute(sql)
            return list(await cursor.fetchall())

    @staticmethod
    async def _reality_execute_on(connection: Any, sql: str) -> None:
        await connection.execute(sql)  # no parameters: nothing reads placeholders


class RealityPsycopgTransaction(_Driver, RealityTransaction, TransactionWrapper):
    reality_dialect = "postgresql"
    reality_paramstyle = "format"
    executor_class = RealityPsycopgExecutor

    async def _reality_run(self, sql: str, params: Sequence[Any]) -> None:
        await self._connection.execute(sql, params)


class RealityIdlePsycopgTransaction(IdleTransaction, RealityPsycopgTransaction):
    # Every tracked table bumps itself (see IdleTransaction): Tortoise's own executor.
    executor_class: type[BaseExecutor] = PsycopgExecutor  # type: ignore[assignment]


class RealityPsycopgClient(_Driver, RealityClient, PsycopgClient):
    reality_dialect = "postgresql"
    reality_paramstyle = "format"
    executor_class = RealityPsycopgExecutor
    schema_generator = RealityPsycopgSchemaGenerator

    def _in_transaction(self) -> TransactionContext:
        cls = RealityIdlePsycopgTransaction if self._reality_idle() else RealityPsycopgTransaction
        return TransactionContextPooled(cls(self), self._pool_init_lock)


client_class = RealityPsycopgClient
