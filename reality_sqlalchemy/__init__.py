"""Reality for SQLAlchemy 2.x: bump key versions in the same transaction as your writes.

Usage
-----
::

    import reality_sqlalchemy as reality

    @reality.track(keys=["room:{room_id}"])
    class Message(Base):
        __tablename__ = "messages"
        id: Mapped[int] = mapped_column(primary_key=True)
        room_id: Mapped[int]
        body: Mapped[str]

    engine = create_engine("postgresql+psycopg://app@localhost/app")
    SessionLocal = sessionmaker(engine)
    reality.install(SessionLocal)        # or an async_sessionmaker, a Session class, an Engine
    reality.create_tables(engine)        # or: alembic upgrade reality@head

    with SessionLocal.begin() as session:
        session.add(Message(room_id=7, body="hi"))
    # committed together: $table:messages, $row:messages:1 and room:7 moved by one

What is tracked
---------------
Unit-of-work inserts, updates (old and new values) and deletes, ORM bulk
INSERT/UPDATE/DELETE, legacy ``Query.update/delete`` and ``bulk_*`` methods, Core
statements, many-to-many link rows, ``text()`` and ``exec_driver_sql`` on tracked tables.
Where rows are unknowable (a WHERE-based bulk statement, a raw UPDATE, a database-side
``ON DELETE CASCADE``) every key derived from the table reads as changed (escalation).

Trigger mode (PostgreSQL)
-------------------------
``reality.create_triggers(engine)`` (after your tables exist) lets the database bump each
tracked table from inside every write statement: no extra statement at COMMIT, no key work
in Python, and writes from anywhere (raw SQL, other programs, cascades) are seen. The plugin
finds the triggers on each new connection and leaves those tables to them;
:mod:`reality_core.triggers` states the contract and limits. :func:`drop_triggers` undoes it.

What is not tracked
-------------------
Without trigger mode: writes inside stored procedures, triggers or functions called from a
``SELECT``; writes by other programs. Bump those keys yourself with :func:`bump`.

API
---
:func:`track`, :func:`track_table`, :func:`install`, :func:`uninstall`, :func:`bump`,
:func:`abump`, :func:`create_tables`, :func:`acreate_tables`, :func:`create_triggers`,
:func:`drop_triggers`, :func:`version_reader`,
:func:`enable_sqlite_savepoints`, :func:`include_object`, :func:`include_name`,
:func:`migrations_path`.
"""

from __future__ import annotations

try:
    import sqlalchemy as _sa
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "reality_sqlalchemy needs SQLAlchemy 2.x: pip install 'reality-sync[sqlalchemy]'"
    ) from exc

if int(_sa.__version__.split(".")[0]) < 2:  # pragma: no cover
    raise ImportError(
        f"reality_sqlalchemy needs SQLAlchemy 2.0 or newer, found {_sa.__version__}: "
        "pip install -U 'reality-sync[sqlalchemy]'"
    )

from reality_core.catalog import Settings

from ._declarations import registry, track, track_table
from ._plugin import abump, bump, install, installed, uninstall
from .engines import enable_sqlite_savepoints, version_reader
from .schema import (
    acreate_tables,
    create_tables,
    create_triggers,
    drop_triggers,
    include_name,
    include_object,
    metadata,
    migrations_path,
)

__all__ = [
    "Settings",
    "abump",
    "acreate_tables",
    "bump",
    "create_tables",
    "create_triggers",
    "drop_triggers",
    "enable_sqlite_savepoints",
    "include_name",
    "include_object",
    "install",
    "installed",
    "metadata",
    "migrations_path",
    "registry",
    "track",
    "track_table",
    "uninstall",
    "version_reader",
]
