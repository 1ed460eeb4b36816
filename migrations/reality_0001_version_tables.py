"""Reality's version tables: reality_log, reality_versions and reality_meta (with the epoch).

Revision ID: reality_0001
Revises:
Branch labels: reality

This file is history: it defines its own columns instead of importing
``reality_sqlalchemy.schema``, so later changes to the code never rewrite what this revision
did. Change the schema with a new revision on the ``reality`` branch.

Tables that already exist (made by ``reality_sqlalchemy.create_tables()`` before the project
adopted alembic) are kept as they are, and so is an existing epoch: upgrading never makes
clients drop what they know. In offline mode (``alembic upgrade --sql``) the tables are
created unconditionally and the epoch is a literal chosen when the script is generated, so
generate one script per database.
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import mysql, postgresql

revision: str = "reality_0001"
down_revision: str | None = None
branch_labels: tuple[str, ...] | None = ("reality",)
depends_on: str | None = None

VERSIONS = "reality_versions"
LOG = "reality_log"
META = "reality_meta"


def _key_type() -> sa.types.TypeEngine[str]:
    # Bytewise comparison everywhere: case-sensitive keys, the same sort order as Python's.
    return (
        sa.String(256)
        .with_variant(postgresql.VARCHAR(256, collation="C"), "postgresql")
        .with_variant(
            mysql.VARBINARY(1024), "mysql", "mariadb"
        )
    )


def _missing(table: str) -> bool:
    if context.is_offline_mode():
        return True
    return not sa.inspect(op.get_bind()).has_table(table)


def _has_epoch() -> bool:
    if context.is_offline_mode():
        return False
    query = sa.text(f"SELECT 1 FROM {META} WHERE name = 'epoch'")
    return op.get_bind().execute(query).first() is not None


def upgrade() -> None:
    if _missing(LOG):
        op.create_table(
            LOG,
            sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                      nullable=False, autoincrement=True),
            sa.Column("key_name", _key_type(), nullable=False),
            sa.Column("created_at", sa.BigInteger(), nullable=False),
            sa.PrimaryKeyConstraint("id", name=f"pk_{LOG}"),
            mysql_engine="InnoDB",
        )
        op.create_index(f"ix_{LOG}_key_name", LOG, ["key_name"])
    if _missing(VERSIONS):
        op.create_table(
            VERSIONS,
            sa.Column("key_name", _key_type(), nullable=False),
            sa.Column("version", sa.BigInteger(), nullable=False),
            sa.Column("hash", sa.String(64), nullable=False),
            sa.Column("updated_at", sa.BigInteger(), nullable=False),
            sa.PrimaryKeyConstraint("key_name", name=f"pk_{VERSIONS}"),
            mysql_engine="InnoDB",
        )
    if _missing(META):
        op.create_table(
            META,
            sa.Column("name", sa.String(64), nullable=False),
            sa.Column("value", sa.String(256), nullable=False),
            sa.PrimaryKeyConstraint("name", name=f"pk_{META}"),
            mysql_engine="InnoDB",
        )
    if not _has_epoch():
        meta = sa.table(META, sa.column("name", sa.String()), sa.column("value", sa.String()))
        op.bulk_insert(meta, [{"name": "epoch", "value": secrets.token_hex(16)}])


def downgrade() -> None:
    op.drop_table(META)
    op.drop_table(VERSIONS)
    op.drop_index(f"ix_{LOG}_key_name", table_name=LOG)
    op.drop_table(LOG)
