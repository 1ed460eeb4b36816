"""The metadata tables as SQLAlchemy objects, ``create_tables`` and the alembic helpers."""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.ext.asyncio import AsyncEngine

from reality_core.catalog import check_max_keys
from reality_core.errors import ConfigurationError
from reality_core.store import (
    CURRENT_TXID,
    LOG_TABLE,
    META_TABLE,
    OWN_TABLES,
    VERSIONS_TABLE,
    insert_epoch_statement,
)
from reality_core.triggers import TriggerSpec, create_plan, drop_plan, drop_targets, pick

metadata = sa.MetaData()

KEY_TYPE = (
    sa.String(256)
    .with_variant(postgresql.VARCHAR(256, collation="C"), "postgresql")
    # UTF-8 bytes: every MySQL/MariaDB *_bin collation of VARCHAR ignores trailing spaces.
    .with_variant(mysql.VARBINARY(1024), "mysql", "mariadb")
)

log = sa.Table(
    LOG_TABLE, metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False,
              autoincrement=True),
    sa.Column("key_name", KEY_TYPE, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    # The writing transaction's id; on PostgreSQL its default (set below) fills it in.
    sa.Column("txid", sa.BigInteger, nullable=True),
    sa.PrimaryKeyConstraint("id", name=f"pk_{LOG_TABLE}"),
    # No index on key_name: see reality_core.store.create_table_statements.
    mysql_engine="InnoDB",
)

# On PostgreSQL the log has no index at all and txid its default: the same table as
# reality_core.store.create_table_statements makes (see the reasons there).
for _ddl in (f"ALTER TABLE {LOG_TABLE} ALTER COLUMN txid SET DEFAULT ({CURRENT_TXID})",
             f"ALTER TABLE {LOG_TABLE} DROP CONSTRAINT pk_{LOG_TABLE}",
             f"ALTER TABLE {LOG_TABLE} REPLICA IDENTITY FULL"):
    sa.event.listen(log, "after_create", sa.DDL(_ddl).execute_if(  # type: ignore[no-untyped-call]
        dialect="postgresql"))

versions = sa.Table(
    VERSIONS_TABLE, metadata,
    sa.Column("key_name", KEY_TYPE, nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    # The fold that last changed the row: caches read what changed since the fold they saw.
    sa.Column("fold_seq", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.PrimaryKeyConstraint("key_name", name=f"pk_{VERSIONS_TABLE}"),
    sa.Index(f"ix_{VERSIONS_TABLE}_fold_seq", "fold_seq"),
    mysql_engine="InnoDB",
)

meta = sa.Table(
    META_TABLE, metadata,
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("value", sa.String(256), nullable=False),
    sa.PrimaryKeyConstraint("name", name=f"pk_{META_TABLE}"),
    mysql_engine="InnoDB",
)


def _create(conn: sa.Connection) -> None:
    metadata.create_all(conn)
    from reality_core.store import normalize_dialect

    sql, params = insert_epoch_statement(normalize_dialect(conn.dialect.name), "named")
    conn.execute(sa.text(sql), params)


def create_tables(engine: sa.Engine | sa.Connection) -> None:
    """Create the metadata tables (and the epoch) if missing. For apps without alembic.

    Example::

        engine = create_engine("postgresql+psycopg://app@db/app")
        reality_sqlalchemy.create_tables(engine)

    With alembic, run ``alembic upgrade reality@head`` (or ``reality migrate``) instead.
    For an ``AsyncEngine`` use ``await acreate_tables(engine)``.
    """
    if isinstance(engine, sa.Connection):
        _create(engine)
        return
    if not isinstance(engine, sa.Engine):
        raise ConfigurationError(
            f"create_tables() takes an Engine or a Connection, not {type(engine).__name__}"
            + (" (use await acreate_tables() for an AsyncEngine)"
               if isinstance(engine, AsyncEngine) else "")
        )
    with engine.begin() as conn:
        _create(conn)


async def acreate_tables(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(_create)


def include_object(obj: Any, name: str | None, type_: str, reflected: bool,
                   compare_to: Any) -> bool:
    """For ``context.configure(include_object=...)`` in a user's alembic ``env.py``: keeps
    autogenerate from proposing to drop (or alter) Reality's tables (I10)."""
    table = obj if type_ == "table" else getattr(obj, "table", None)
    table_name_ = name if type_ == "table" else getattr(table, "name", None)
    return table_name_ not in OWN_TABLES


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """For ``context.configure(include_name=...)``: skips reflecting Reality's tables."""
    return not (type_ == "table" and name in OWN_TABLES)


def migrations_path() -> Path:
    """The directory of Reality's alembic revisions (branch label ``reality``).

    Put ``reality_sqlalchemy:migrations`` in ``version_locations`` of your ``alembic.ini``
    (alembic resolves ``package:path`` against the installed package), or this path.
    """
    # In a source checkout this is a symlink to the repository's migrations/ directory.
    return Path(str(resources.files("reality_sqlalchemy"))) / "migrations"


_INSTALLED: Any = object()  # max_keys default: the installed plugin's setting


def _trigger_specs(max_keys: Any) -> list[TriggerSpec]:
    from ._declarations import registry
    from ._plugin import _plugin

    if max_keys is _INSTALLED:
        max_keys = _plugin.settings.max_keys
    # Link tables of relationships are tracked when their mappers are configured.
    sa.orm.configure_mappers()
    return registry.catalog.trigger_specs(check_max_keys(max_keys))


def _trigger_bind(bind: Any, verb: str) -> sa.Engine | sa.Connection:
    if isinstance(bind, sa.Engine | sa.Connection):
        if bind.dialect.name != "postgresql":
            raise ConfigurationError(
                f"{verb}(): trigger mode needs PostgreSQL, not {bind.dialect.name}; on other "
                "databases the plugin bumps from Python (nothing to create)")
        return bind
    raise ConfigurationError(
        f"{verb}() takes an Engine or a Connection, not {type(bind).__name__}"
        + (" (pass engine.sync_engine for an AsyncEngine)"
           if isinstance(bind, AsyncEngine) else ""))


def _run_ddl(bind: sa.Engine | sa.Connection, plan: Any) -> None:
    from ._plugin import _plugin

    def run(conn: sa.Connection) -> None:
        for sql in plan(lambda q: conn.exec_driver_sql(q).fetchall()):
            conn.exec_driver_sql(sql)

    if isinstance(bind, sa.Connection):
        run(bind)
    else:
        with bind.begin() as conn:
            run(conn)
    _plugin.trigger_epoch += 1  # this process's connections look again


def create_triggers(bind: sa.Engine | sa.Connection, *, tables: Iterable[str] | None = None,
                    max_keys: int | None = _INSTALLED) -> list[str]:
    """Trigger mode (PostgreSQL): let the database bump tracked tables' keys itself.

    Example::

        reality_sqlalchemy.install(SessionLocal)
        reality_sqlalchemy.create_triggers(engine)      # after your tables exist

    Creates (or replaces) one function and four statement-level triggers per tracked table
    (all, or the table names in ``tables``), in one transaction. Writes to those tables then
    cost no extra statement at COMMIT and no key work in Python, and writes from outside
    SQLAlchemy bump too; :mod:`reality_core.triggers` describes the contract and limits.
    ``max_keys`` must be the plugin's (default: the installed setting). Run it again when a
    declaration changes; until then the plugin logs the trigger as stale and bumps that
    table from Python. Returns the tables done. With alembic, call it from a revision with
    ``op.get_bind()``.
    """
    conn = _trigger_bind(bind, "create_triggers")
    specs = _trigger_specs(max_keys)
    done = [s.table for s in pick(specs, tables)]
    _run_ddl(conn, lambda query: create_plan(specs, tables, query))
    return done


def drop_triggers(bind: sa.Engine | sa.Connection, *,
                  tables: Iterable[str] | None = None) -> list[str]:
    """Remove what :func:`create_triggers` made (all tracked tables, or ``tables``); the
    plugin bumps those tables from Python again. Restart other processes of the app: they
    keep believing the triggers are there until their connections are replaced."""
    conn = _trigger_bind(bind, "drop_triggers")
    specs = _trigger_specs(None)
    done = drop_targets(specs, tables)
    _run_ddl(conn, lambda query: drop_plan(specs, done))
    return done
