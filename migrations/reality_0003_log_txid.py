"""reality_log.txid: the writing transaction's id, so a key counts once per transaction
even when database triggers (trigger mode, PostgreSQL) and the Python plugin both bump it;
on PostgreSQL the log loses its primary key (folds go by txid; an index-free log shrinks back
to nothing under VACUUM once folded).

Revision ID: reality_0003
Revises: reality_0002

On PostgreSQL the column defaults to the current transaction id; on SQLite and MySQL/MariaDB
it stays NULL (no trigger mode there: each log row is its transaction's one bump). Rows
already in the log keep NULL and count one each, as before.
History: like reality_0001, this file names its columns itself.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision: str = "reality_0003"
down_revision: str | None = "reality_0002"
branch_labels: tuple[str, ...] | None = None
depends_on: str | None = None

LOG = "reality_log"
TXID_DEFAULT = "pg_current_xact_id()::text::bigint"


def _has_column() -> bool:
    if context.is_offline_mode():
        return False
    return any(c["name"] == "txid" for c in sa.inspect(op.get_bind()).get_columns(LOG))


def upgrade() -> None:
    # create_tables() of this release makes the column itself: a store it made is kept.
    if not _has_column():
        with op.batch_alter_table(LOG) as batch:
            batch.add_column(sa.Column("txid", sa.BigInteger(), nullable=True))
    if op.get_context().dialect.name == "postgresql":
        op.execute(sa.text(f"ALTER TABLE {LOG} ALTER COLUMN txid SET DEFAULT ({TXID_DEFAULT})"))
        op.execute(sa.text(f"ALTER TABLE {LOG} DROP CONSTRAINT IF EXISTS pk_{LOG}"))
        op.execute(sa.text(f"ALTER TABLE {LOG} REPLICA IDENTITY FULL"))


#: Trigger mode's functions (their COMMENT marks them); CASCADE drops their triggers.
DROP_TRIGGER_FUNCTIONS = """
DO $drop$
DECLARE f regprocedure;
BEGIN
  FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
           WHERE starts_with(p.proname::text, 'reality_bump_')
             AND starts_with(COALESCE(obj_description(p.oid, 'pg_proc'), ''), 'reality trigger ')
  LOOP
    EXECUTE 'DROP FUNCTION ' || f::text || ' CASCADE';
  END LOOP;
END
$drop$
"""


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        # Trigger mode needs this revision; left behind, its triggers would fail every write
        # to the tracked tables once the log is gone (downgrade to base).
        op.execute(sa.text(DROP_TRIGGER_FUNCTIONS))
        # Without txid every log row counts once: keep one row per key and transaction.
        op.execute(sa.text(f"DELETE FROM {LOG} a USING {LOG} b WHERE a.txid = b.txid "
                           "AND a.key_name = b.key_name AND a.id > b.id"))
        op.execute(sa.text(f"ALTER TABLE {LOG} REPLICA IDENTITY DEFAULT"))
        op.create_primary_key(f"pk_{LOG}", LOG, ["id"])
    with op.batch_alter_table(LOG) as batch:
        batch.drop_column("txid")
