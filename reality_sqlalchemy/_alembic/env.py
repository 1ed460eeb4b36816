"""The alembic environment of ``reality migrate`` (see :mod:`reality_sqlalchemy.migrate`).

Not for user projects: they run the ``reality`` branch from their own ``env.py``. The
connection comes from :func:`reality_sqlalchemy.migrate.upgrade`/``downgrade``, already inside
a transaction; the applied revision goes to ``reality_alembic_version``, never to the user's
``alembic_version``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from reality_sqlalchemy.migrate import VERSION_TABLE

connection = context.config.attributes.get("connection")
if not isinstance(connection, sa.Connection):
    raise RuntimeError(
        "this alembic environment only runs through reality_sqlalchemy.migrate "
        "(the 'reality migrate' command), which hands it a connection"
    )
context.configure(connection=connection, version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
