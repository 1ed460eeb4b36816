"""Reality's alembic branch: run it with ``reality migrate``, or from your own alembic.

Reality keeps its two tables (``reality_versions``, ``reality_meta``) in your database. Their
history is an independent alembic branch labelled ``reality``, shipped inside the wheel as
``reality_sqlalchemy/migrations`` (:func:`reality_sqlalchemy.migrations_path`). There are two
ways to apply it; pick one per database.

Without alembic of your own
---------------------------
::

    reality migrate --database-url postgresql://app@db/app        # upgrade to reality@head
    reality migrate --database-url sqlite:///app.db --downgrade base

or from Python::

    from reality_sqlalchemy.migrate import downgrade, upgrade

    upgrade("postgresql://app@db/app")            # revision="reality@head"
    downgrade("postgresql://app@db/app", "base")  # drops both tables

Any URL :meth:`reality_core.urls.DatabaseURL.parse` accepts works; async drivers are replaced
by the synchronous one (``postgresql+asyncpg://`` runs through psycopg). The applied revision
is recorded in its own table, ``reality_alembic_version``, so ``reality migrate`` never reads
or writes your ``alembic_version``.

With your project's alembic
---------------------------
Add our branch to ``version_locations`` in ``alembic.ini``. Once you set
``version_locations`` alembic no longer looks in ``<script_location>/versions`` by itself, so
list your own directory too::

    [alembic]
    script_location = %(here)s/alembic
    # "space" or "newline", never "os": on POSIX "os" splits on ":" and would cut
    # reality_sqlalchemy:migrations in two. (alembic < 1.16: version_path_separator = space)
    path_separator = space
    version_locations = %(here)s/alembic/versions reality_sqlalchemy:migrations

or, with alembic 1.16 or newer, in ``pyproject.toml`` (a list, so no separator to get wrong)::

    [tool.alembic]
    script_location = "%(here)s/alembic"
    version_locations = ["%(here)s/alembic/versions", "reality_sqlalchemy:migrations"]

``reality_sqlalchemy:migrations`` is a ``package:path`` resource that alembic resolves inside
the installed package. It exists only in an installed wheel: in a source checkout or an
editable install of Reality use the absolute path ``reality_sqlalchemy.migrations_path()``
returns. Alembic silently skips a location that does not exist; ``alembic upgrade
reality@head`` then fails with "Can't locate revision identified by 'reality'" (or, in a
project without revisions of its own, quietly does nothing).

In ``env.py`` keep autogenerate away from our tables (DESIGN I10)::

    import reality_sqlalchemy

    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        include_object=reality_sqlalchemy.include_object,
    )

Then::

    alembic upgrade heads              # your head and reality@head ("head" now means two heads)
    alembic upgrade reality@head       # only ours
    alembic downgrade reality@base     # drops our tables, leaves yours
    alembic revision --autogenerate --head app@head -m "..."

With two branches ``alembic revision`` needs ``--head``: give your first revision a label
(``branch_labels = ("app",)``) and pass ``--head app@head``, or pass your head's id. Do not
``alembic merge`` our branch into yours: ``downgrade reality@base`` would then have to undo
your later revisions too.

The first revision adopts tables that already exist (made by ``create_tables()``) and keeps
their epoch, so switching from ``create_tables()`` to alembic needs no ``stamp``.

API
---
:func:`upgrade`, :func:`downgrade`, :data:`VERSION_TABLE`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script.revision import RevisionError
from alembic.util import CommandError

from reality_core.errors import ConfigurationError, StoreError, StoreUnavailable
from reality_core.store import (
    LOG_TABLE,
    META_TABLE,
    MIGRATE_VERSION_TABLE,
    OWN_TABLES,
    VERSIONS_TABLE,
)
from reality_core.urls import DatabaseURL

from .schema import migrations_path

__all__ = ["VERSION_TABLE", "downgrade", "upgrade"]

#: Where ``reality migrate`` records the applied revision (never the user's ``alembic_version``).
VERSION_TABLE: Final = MIGRATE_VERSION_TABLE
SCRIPT_LOCATION: Final = Path(__file__).resolve().parent / "_alembic"

_EXTRAS: Final = {"postgresql": "sqlalchemy,postgres", "mysql": "sqlalchemy,mysql",
                  "sqlite": "sqlalchemy"}


def upgrade(database_url: str, revision: str = "reality@head") -> None:
    """Upgrade Reality's tables to ``revision`` (default: the newest).

    Example::

        upgrade("postgresql://app@db/app")

    Raises :class:`~reality_core.errors.ConfigurationError` for a bad URL or revision,
    :class:`~reality_core.errors.StoreUnavailable` when the database does not answer and
    :class:`~reality_core.errors.StoreError` when a migration step fails in the database.
    """
    _run("upgrade", command.upgrade, database_url, revision)


def downgrade(database_url: str, revision: str) -> None:
    """Downgrade Reality's tables to ``revision``; ``"base"`` drops them.

    Example::

        downgrade("sqlite:///app.db", "base")

    Raises the same errors as :func:`upgrade`.
    """
    _run("downgrade", command.downgrade, database_url, revision)


def _run(
    verb: str, step: Callable[[Config, str], None], database_url: str, revision: str
) -> None:
    url = _parse(database_url)
    if not isinstance(revision, str) or not revision.strip():
        raise ConfigurationError(
            f"{verb}: give a revision such as 'reality@head' or 'base', not {revision!r}"
        )
    revision = revision.strip()
    engine = _engine(url)
    shown = url.render(hide_password=True)
    try:
        try:
            connection = engine.connect()
        except sa.exc.DBAPIError as exc:
            hint = (
                "check that the directory exists and is writable"
                if url.dialect == "sqlite"
                else "check the URL and that the database server is running"
            )
            raise StoreUnavailable(f"cannot connect to {shown}: {exc.orig}; {hint}") from exc
        with connection, connection.begin():
            config = _config(connection)
            if verb == "upgrade":
                _forget_history_of_dropped_tables(connection)
            try:
                step(config, revision)
            except (CommandError, RevisionError) as exc:
                raise ConfigurationError(
                    f"cannot {verb} Reality's tables to {revision!r}: {exc} (revisions: "
                    "'reality@head', 'reality_0001', 'base', or relative like '-1')"
                ) from exc
            except sa.exc.DBAPIError as exc:
                raise StoreError(
                    f"{verb} of Reality's tables to {revision!r} failed in {shown}: {exc.orig}"
                ) from exc
    finally:
        engine.dispose()


def _forget_history_of_dropped_tables(connection: sa.Connection) -> None:
    """Tables dropped by hand while our revision history stays: alembic would think them
    up to date and do nothing. Our revisions create only what is missing, so replaying
    them from the start is safe; forget the history and say so."""
    inspector = sa.inspect(connection)
    if not inspector.has_table(VERSION_TABLE):
        return
    if connection.execute(sa.text(f"SELECT 1 FROM {VERSION_TABLE}")).first() is None:
        return
    missing = sorted(t for t in OWN_TABLES - {VERSION_TABLE} if not inspector.has_table(t))
    if missing:
        print(f"reality migrate: {', '.join(missing)} missing although {VERSION_TABLE} "
              "records a revision; creating Reality's tables again", file=sys.stderr)
        connection.execute(sa.text(f"DELETE FROM {VERSION_TABLE}"))
        if {LOG_TABLE, VERSIONS_TABLE} & set(missing) and inspector.has_table(META_TABLE):
            # Counts were lost, so versions would start again below what clients hold and
            # be reused: a new epoch (made by the first revision) makes clients drop them.
            print("reality migrate: version counts were lost; setting a new epoch (clients "
                  "drop what they know at their next sync)", file=sys.stderr)
            connection.execute(sa.text(f"DELETE FROM {META_TABLE} WHERE name = 'epoch'"))


def _parse(database_url: str) -> DatabaseURL:
    url = DatabaseURL.parse(database_url)
    if url.dialect == "sqlite" and url.database in (None, "", ":memory:"):
        raise ConfigurationError(
            f"{database_url!r} is an in-memory SQLite database, which vanishes as soon as "
            "the migration ends; give a file, e.g. sqlite:///app.db"
        )
    return url


def _engine(url: DatabaseURL) -> sa.Engine:
    try:
        return sa.create_engine(url.sqlalchemy(), poolclass=sa.NullPool)
    except ImportError as exc:
        raise ConfigurationError(
            f"migrating {url.dialect} needs its driver ({exc}): "
            f"pip install 'reality-sync[{_EXTRAS[url.dialect]}]'"
        ) from exc
    except sa.exc.ArgumentError as exc:
        raise ConfigurationError(
            f"SQLAlchemy refuses {url.render(hide_password=True)!r}: {exc}"
        ) from exc


def _config(connection: sa.Connection) -> Config:
    """An alembic Config for our bundled environment; no ini file, nothing from the cwd."""
    config = Config(attributes={"connection": connection})
    config.set_main_option("script_location", _ini_value(SCRIPT_LOCATION))
    # One location, separated by newlines so a path with spaces stays whole.
    config.set_main_option("path_separator", "newline")
    config.set_main_option("version_locations", _ini_value(migrations_path()))
    return config


def _ini_value(path: Path) -> str:
    return str(path).replace("%", "%%")  # configparser interpolation

