"""``reality_tortoise.backends.sqlite``: Tortoise's SQLite engine, with tracking.

Two things differ from Tortoise's own SQLite wrapper, both so that a transaction commits
exactly once, with its bump:

* ``execute_script`` inside a transaction runs the script statement by statement: Python's
  ``sqlite3`` ``executescript`` would COMMIT the open transaction first, publishing its data
  without its bump (and outside the caller's transaction).
* ``BEGIN`` on a connection still inside a transaction someone abandoned (never committed
  nor rolled back) rolls that work back: Tortoise would COMMIT it, publishing data nobody
  committed and no bump for it. A COMMIT that fails (a deferred foreign key) rolls back
  too, instead of leaving the transaction open for the next BEGIN to commit.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

from tortoise.backends.base.client import TransactionContext
from tortoise.backends.sqlite.client import (
    SqliteClient,
    SqliteClientWithRegexpSupport,
    SqliteTransactionContext,
    SqliteTransactionWrapper,
    translate_exceptions,
)
from tortoise.backends.sqlite.executor import SqliteExecutor
from tortoise.backends.sqlite.schema_generator import SqliteSchemaGenerator

from reality_tortoise._schema import RealitySchemaGenerator
from reality_tortoise._tracking import RealityClient, RealityExecutor, RealityTransaction


def split_script(script: str) -> Iterator[str]:
    """The statements of an SQLite script (``sqlite3.complete_statement`` decides where one
    ends, so semicolons in strings, comments and trigger bodies are no boundaries)."""
    current = ""
    for piece in script.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if current.strip(" \t\r\n;"):
                yield current
            current = ""
    tail = current[:-1]
    if tail.strip(" \t\r\n;"):
        yield tail


class RealitySqliteSchemaGenerator(RealitySchemaGenerator, SqliteSchemaGenerator):
    pass


class RealitySqliteExecutor(RealityExecutor, SqliteExecutor):
    pass


class _StatementByStatementScripts(SqliteTransactionWrapper):
    @translate_exceptions
    async def execute_script(self, query: str) -> None:
        async with self.acquire_connection() as connection:
            self.log.debug(query)
            for statement in split_script(query):
                cursor = await connection.execute(statement)
                await cursor.close()


class RealitySqliteTransaction(RealityTransaction, _StatementByStatementScripts):
    reality_dialect = "sqlite"
    reality_paramstyle = "qmark"
    executor_class = RealitySqliteExecutor

    async def begin(self) -> None:
        if self._connection is not None and self._connection.in_transaction:
            await self._connection.rollback()  # abandoned work: never commit it
        await super().begin()

    async def _reality_run(self, sql: str, params: Sequence[Any]) -> None:
        cursor = await self._connection.execute(sql, params)
        await cursor.close()

    async def _reality_after_failed_commit(self) -> None:
        if self._connection is not None and self._connection.in_transaction:
            await self._connection.rollback()


class RealitySqliteClient(RealityClient, SqliteClient):
    reality_dialect = "sqlite"
    reality_paramstyle = "qmark"
    executor_class = RealitySqliteExecutor
    schema_generator = RealitySqliteSchemaGenerator

    def _in_transaction(self) -> TransactionContext:
        return SqliteTransactionContext(RealitySqliteTransaction(self), self._lock)


class RealitySqliteClientWithRegexpSupport(RealitySqliteClient, SqliteClientWithRegexpSupport):
    pass


client_class = RealitySqliteClient


def get_client_class(db_info: dict[str, Any]) -> type[RealitySqliteClient]:
    if db_info.get("credentials", {}).get("install_regexp_functions"):
        return RealitySqliteClientWithRegexpSupport
    return RealitySqliteClient
