"""The metadata tables as SQLAlchemy objects, ``create_tables`` and the alembic helpers."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.ext.asyncio import AsyncEngine

from reality_core.errors import ConfigurationError
from reality_core.store import (
    LOG_TABLE,
    META_TABLE,
    OWN_TABLES,
    VERSIONS_TABLE,
    insert_epoch_statement,
)

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
    sa.PrimaryKeyConstraint("id", name=f"pk_{LOG_TABLE}"),
    # No index on key_name: see reality_core.store.create_table_statements.
    mysql_engine="InnoDB",
)

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
