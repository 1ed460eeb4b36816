"""reality_versions.fold_seq and the fold sequence (lets servers cache versions in memory);
reality_log loses its key_name index (every commit paid for it; the log is short).

Revision ID: reality_0002
Revises: reality_0001

Every fold stamps the rows it changes with the next number of the ``fold_seq`` row of
``reality_meta``; a server that has seen fold *n* reads only the rows with ``fold_seq > n``
on its next refresh. Existing rows get 0 (a cache's first load reads them all anyway).
History: like reality_0001, this file names its columns itself.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision: str = "reality_0002"
down_revision: str | None = "reality_0001"
branch_labels: tuple[str, ...] | None = None
depends_on: str | None = None

VERSIONS = "reality_versions"
LOG = "reality_log"
META = "reality_meta"
LOG_INDEX = f"ix_{LOG}_key_name"


def _has_column() -> bool:
    if context.is_offline_mode():
        return False
    columns = sa.inspect(op.get_bind()).get_columns(VERSIONS)
    return any(c["name"] == "fold_seq" for c in columns)


def _has_log_index() -> bool:
    if context.is_offline_mode():
        return True
    return any(i["name"] == LOG_INDEX for i in sa.inspect(op.get_bind()).get_indexes(LOG))


def _has_seq_row() -> bool:
    if context.is_offline_mode():
        return False
    query = sa.text(f"SELECT 1 FROM {META} WHERE name = 'fold_seq'")
    return op.get_bind().execute(query).first() is not None


def upgrade() -> None:
    # create_tables() of this release makes the column itself: a store it made is kept.
    if not _has_column():
        with op.batch_alter_table(VERSIONS) as batch:
            batch.add_column(sa.Column("fold_seq", sa.BigInteger(), nullable=False,
                                       server_default=sa.text("0")))
        op.create_index(f"ix_{VERSIONS}_fold_seq", VERSIONS, ["fold_seq"])
    if _has_log_index():
        op.drop_index(LOG_INDEX, table_name=LOG)
    if not _has_seq_row():
        meta = sa.table(META, sa.column("name", sa.String()), sa.column("value", sa.String()))
        op.bulk_insert(meta, [{"name": "fold_seq", "value": "0"}])


def downgrade() -> None:
    op.create_index(LOG_INDEX, LOG, ["key_name"])
    op.drop_index(f"ix_{VERSIONS}_fold_seq", table_name=VERSIONS)
    with op.batch_alter_table(VERSIONS) as batch:
        batch.drop_column("fold_seq")
    op.execute(sa.text(f"DELETE FROM {META} WHERE name = 'fold_seq'"))
