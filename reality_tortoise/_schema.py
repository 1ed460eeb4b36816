"""Reality's tables, the Tortoise way: ``create_tables()``, ``Tortoise.generate_schemas()``
and a migration operation for Tortoise's own migrations.

All three run the core's DDL (:func:`reality_core.store.create_table_statements`), so the
schema is the one the alembic branch creates, byte for byte in the catalog.
"""

from __future__ import annotations

from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.backends.base.schema_generator import BaseSchemaGenerator
from tortoise.migrations.operations import RunSQL
from tortoise.migrations.schema_editor.base import BaseSchemaEditor
from tortoise.migrations.schema_generator.state import State

from reality_core.errors import ConfigurationError
from reality_core.store import (
    LOG_TABLE,
    META_TABLE,
    VERSIONS_TABLE,
    Dialect,
    create_table_statements,
    insert_epoch_statement,
    normalize_dialect,
)

from ._sql import Paramstyle


def dialect_of(client: BaseDBAsyncClient) -> tuple[Dialect, Paramstyle]:
    """The dialect and placeholder style of any Tortoise client (Reality's or not)."""
    dialect = getattr(client, "reality_dialect", None)
    style = getattr(client, "reality_paramstyle", None)
    if dialect is not None and style is not None:
        return dialect, style
    try:
        dialect = normalize_dialect(client.capabilities.dialect)
    except ConfigurationError:
        raise ConfigurationError(
            f"Reality supports Tortoise's asyncpg, psycopg and sqlite engines, not {client!r}"
        ) from None
    if dialect == "sqlite":
        return dialect, "qmark"
    if type(client).__module__.startswith("tortoise.backends.asyncpg"):
        return dialect, "numeric_dollar"
    return dialect, "format"


def _epoch(client: BaseDBAsyncClient) -> tuple[str, list[Any]]:
    dialect, style = dialect_of(client)
    sql, params = insert_epoch_statement(dialect, style)
    return sql, list(params)  # positional styles only: a sequence


def resolve(connection_name: str | None) -> BaseDBAsyncClient:
    """The current client for ``connection_name`` (the only connection when ``None``)."""
    from tortoise.connection import get_connections

    handler = get_connections()
    if connection_name is None:
        names = list(handler.db_config)
        if len(names) != 1:
            raise ConfigurationError(
                f"several connections are configured ({', '.join(names)}): pass "
                "connection_name="
            )
        connection_name = names[0]
    return handler.get(connection_name)


async def create_tables(connection_name: str | None = None, *,
                        using_db: BaseDBAsyncClient | None = None) -> None:
    """Create Reality's tables (and the epoch) if missing; safe to run twice.

    Example::

        await Tortoise.init(config=TORTOISE_ORM)
        await reality_tortoise.create_tables()

    ``Tortoise.generate_schemas()`` on a connection using a Reality engine creates them
    too. With Tortoise's migrations, add :class:`CreateRealityTables` to a migration instead.
    """
    client = using_db or resolve(connection_name)
    dialect, _ = dialect_of(client)
    for statement in create_table_statements(dialect):
        await client.execute_script(statement)
    sql, params = _epoch(client)
    await client.execute_query(sql, params)


class RealitySchemaGenerator(BaseSchemaGenerator):
    """Mixin for a Reality engine's schema generator: ``generate_schemas()`` creates
    Reality's tables next to the app's."""

    client: BaseDBAsyncClient

    def get_create_schema_sql(self, safe: bool = True) -> str:
        sql = super().get_create_schema_sql(safe)
        dialect, _ = dialect_of(self.client)
        ours = "\n".join(f"{statement};" for statement in create_table_statements(dialect))
        return f"{sql}\n{ours}" if sql else ours

    async def generate_from_string(self, creation_string: str) -> None:
        await super().generate_from_string(creation_string)
        sql, params = _epoch(self.client)
        await self.client.execute_query(sql, params)


class CreateRealityTables(RunSQL):
    """A migration operation for Tortoise's migrations (``tortoise makemigrations
    --empty <app>``, then list it in ``operations``)::

        from reality_tortoise import CreateRealityTables

        class Migration(migrations.Migration):
            dependencies = [("models", "0001_initial")]
            operations = [CreateRealityTables()]

    Forward creates both tables and the epoch; backward drops them.
    """

    def __init__(self) -> None:
        super().__init__(RunSQL.noop, RunSQL.noop)

    def describe(self) -> str:
        return "Create Reality's version tables"

    async def database_forward(self, app_label: str, old_state: State, new_state: State,
                               state_editor: BaseSchemaEditor | None = None) -> None:
        if state_editor is None:
            return
        dialect, _ = dialect_of(state_editor.client)
        statements: list[Any] = list(create_table_statements(dialect))
        statements.append(_epoch(state_editor.client))
        await self._run_sql(state_editor, statements)

    async def database_backward(self, app_label: str, old_state: State, new_state: State,
                                state_editor: BaseSchemaEditor | None = None) -> None:
        if state_editor is None:
            return
        await self._run_sql(state_editor, [f"DROP TABLE IF EXISTS {LOG_TABLE}",
                                           f"DROP TABLE IF EXISTS {VERSIONS_TABLE}",
                                           f"DROP TABLE IF EXISTS {META_TABLE}"])
