"""C13: Reality's alembic branch, ``reality migrate``, and a user project's own alembic.

Every test gets fresh databases (new SQLite files; new PostgreSQL and MySQL databases on the
servers the session fixtures found, dropped afterwards).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import alembic
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import Script

import reality_sqlalchemy
from reality_core import cli
from reality_core.errors import ConfigurationError, StoreUnavailable
from reality_core.reader import DBAPIReader
from reality_sqlalchemy import migrate
from tests import dbs

ROOT = Path(__file__).resolve().parent.parent
OWN = {"reality_log", "reality_versions", "reality_meta"}
NewDatabase = Callable[[], str]
HEAD = "reality_0003"

# What the reflected key_name type must say, so the schema comparison cannot pass vacuously.
KEY_TYPE = {
    "postgresql": "VARCHAR(length=256, collation='C')",
    "mysql": "VARBINARY(length=1024)",
    "sqlite": "VARCHAR(length=256)",
}

# ------------------------------------------------------------------------------------ helpers


@pytest.fixture(params=[pytest.param("postgresql", marks=pytest.mark.postgres), "sqlite", "mysql"])
def new_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NewDatabase]:
    """A factory of fresh, empty databases of one dialect; all dropped after the test."""
    made: list[str] = []
    if request.param == "postgresql":
        server = request.getfixturevalue("pg_server_url")

        def create() -> str:
            return dbs.create_pg_database(server)

        def drop(url: str) -> None:
            dbs.drop_pg_database(url, server)

    elif request.param == "mysql":
        mysql = urlunsplit(urlsplit(request.getfixturevalue("mysql_url"))._replace(path="/"))

        def create() -> str:
            return dbs.create_mysql_database(mysql)

        def drop(url: str) -> None:
            dbs.drop_mysql_database(url)

    else:

        def create() -> str:
            return f"sqlite:///{tmp_path}/db{len(made)}.db"

        def drop(url: str) -> None:
            """tmp_path goes away by itself."""

    def make() -> str:
        made.append(create())
        return made[-1]

    yield make
    for url in made:
        drop(url)


def _query(url: str, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:
            result = conn.execute(sa.text(sql), params or {})
            if not result.returns_rows:
                return []
            # MySQL/MariaDB return key_name (VARBINARY) as bytes.
            return [tuple(v.decode() if isinstance(v, bytes) else v for v in row)
                    for row in result]
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return set(sa.inspect(conn).get_table_names())
    finally:
        engine.dispose()


def _epoch(url: str) -> str:
    [(value,)] = _query(url, "SELECT value FROM reality_meta WHERE name = 'epoch'")
    assert isinstance(value, str)
    assert re.fullmatch(r"[0-9a-f]{32}", value), value
    return value


def _schema(url: str) -> dict[str, dict[str, Any]]:
    """What reflection says about our two tables, types rendered with their collation."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            return {
                table: {
                    "columns": [
                        {**column, "type": repr(column["type"])}
                        for column in inspector.get_columns(table)
                    ],
                    "primary_key": inspector.get_pk_constraint(table),
                    "indexes": inspector.get_indexes(table),
                    "unique": inspector.get_unique_constraints(table),
                    "options": inspector.get_table_options(table),
                }
                for table in sorted(OWN)
            }
    finally:
        engine.dispose()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _async_spelling(url: str) -> str:
    """The same database under an async driver's name: ``reality migrate`` must swap it."""
    scheme, rest = url.split("://", 1)
    driver = {"postgresql": "asyncpg", "mysql": "aiomysql", "sqlite": "aiosqlite"}
    return f"{scheme.split('+')[0]}+{driver[scheme.split('+')[0]]}://{rest}"


# ----------------------------------------------------------------------- reality migrate (API)


def test_c13_upgrade_downgrade_upgrade(new_database: NewDatabase) -> None:
    url = new_database()
    # A user's own alembic history in the same database must stay untouched.
    _query(url, "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
    _query(url, "INSERT INTO alembic_version VALUES ('user_0007')")

    migrate.upgrade(url)
    assert _tables(url) == {*OWN, "alembic_version", migrate.VERSION_TABLE}
    assert _query(url, f"SELECT version_num FROM {migrate.VERSION_TABLE}") == [(HEAD,)]
    first = _epoch(url)

    migrate.downgrade(url, "base")
    assert _tables(url) == {"alembic_version", migrate.VERSION_TABLE}
    assert _query(url, f"SELECT version_num FROM {migrate.VERSION_TABLE}") == []

    migrate.upgrade(url, "reality@head")
    assert _tables(url) == {*OWN, "alembic_version", migrate.VERSION_TABLE}
    assert _epoch(url) != first  # new tables, new life: clients must drop what they know
    assert _query(url, "SELECT version_num FROM alembic_version") == [("user_0007",)]


def test_c13_migrated_schema_equals_create_tables(new_database: NewDatabase) -> None:
    migrated, created = new_database(), new_database()
    migrate.upgrade(migrated)
    engine = sa.create_engine(created, poolclass=sa.NullPool)
    try:
        reality_sqlalchemy.create_tables(engine)
    finally:
        engine.dispose()

    schema = _schema(migrated)
    assert schema == _schema(created)
    dialect = sa.make_url(migrated).get_backend_name()
    key_name = schema["reality_versions"]["columns"][0]
    assert (key_name["name"], key_name["type"], key_name["nullable"]) == (
        "key_name", KEY_TYPE[dialect], False)
    assert schema["reality_versions"]["primary_key"]["constrained_columns"] == ["key_name"]
    if dialect == "mysql":  # MySQL names every primary key PRIMARY
        assert schema["reality_meta"]["options"]["mysql_engine"] == "InnoDB"
    else:
        assert schema["reality_versions"]["primary_key"]["name"] == "pk_reality_versions"
        assert schema["reality_meta"]["primary_key"]["name"] == "pk_reality_meta"
    _epoch(migrated)
    _epoch(created)


def test_c13_upgrade_adopts_tables_from_create_tables(new_database: NewDatabase) -> None:
    url = new_database()
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        reality_sqlalchemy.create_tables(engine)
    finally:
        engine.dispose()
    epoch = _epoch(url)
    _query(url, "INSERT INTO reality_versions (key_name, version, hash, updated_at) "
                "VALUES ('room:7', 3, 'h', 1)")

    migrate.upgrade(url)

    assert _epoch(url) == epoch
    assert _query(url, "SELECT key_name, version FROM reality_versions") == [("room:7", 3)]
    assert _query(url, f"SELECT version_num FROM {migrate.VERSION_TABLE}") == [(HEAD,)]


def test_c13_upgrade_recreates_tables_dropped_by_hand(
    new_database: NewDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    url = new_database()
    migrate.upgrade(url)
    epoch = _epoch(url)
    _query(url, "DROP TABLE reality_versions")  # counts lost: versions would be reused...
    migrate.upgrade(url)
    assert _epoch(url) != epoch  # ...so clients must drop what they know
    assert "setting a new epoch" in capsys.readouterr().err
    for table in ("reality_log", "reality_versions", "reality_meta"):
        _query(url, f"DROP TABLE {table}")
    migrate.upgrade(url)
    assert _tables(url) == {*OWN, migrate.VERSION_TABLE}
    assert "creating Reality's tables again" in capsys.readouterr().err
    _epoch(url)
    migrate.downgrade(url, "base")  # and the history is consistent again
    assert _tables(url) == {migrate.VERSION_TABLE}


def test_c13_upgrade_from_0001_keeps_versions_and_adds_the_fold_sequence(
    new_database: NewDatabase,
) -> None:
    url = new_database()
    migrate.upgrade(url, "reality_0001")
    epoch = _epoch(url)
    _query(url, "INSERT INTO reality_versions VALUES ('room:7', 3, 'h', 1)")
    _query(url, "INSERT INTO reality_log (key_name, created_at) VALUES ('room:7', 2)")

    migrate.upgrade(url)

    assert _epoch(url) == epoch
    assert _query(url, "SELECT key_name, version, fold_seq FROM reality_versions") == [
        ("room:7", 3, 0)]
    assert _query(url, "SELECT value FROM reality_meta WHERE name = 'fold_seq'") == [("0",)]
    reader = DBAPIReader.from_url(url.replace("+pymysql", "").replace("+psycopg", ""))
    try:
        assert reader.fold() == 1
    finally:
        reader.close()
    assert _query(url, "SELECT key_name, version, fold_seq FROM reality_versions") == [
        ("room:7", 4, 1)]
    assert _query(url, "SELECT value FROM reality_meta WHERE name = 'fold_seq'") == [("1",)]

    migrate.downgrade(url, "reality_0001")
    assert _query(url, "SELECT key_name, version FROM reality_versions") == [("room:7", 4)]
    assert _query(url, "SELECT name FROM reality_meta") == [("epoch",)]


@pytest.mark.parametrize(
    ("url", "revision", "message"),
    [
        ("not a url", "reality@head", "not a database URL"),
        ("oracle://scott@db/app", "reality@head", "Reality supports PostgreSQL, SQLite"),
        ("sqlite://", "reality@head", "in-memory SQLite database"),
        ("sqlite:///:memory:", "reality@head", "in-memory SQLite database"),
        ("{file}", " ", "give a revision such as 'reality@head'"),
        ("{file}", "reality@nope", "Can't locate revision identified by 'nope'"),
    ],
)
def test_c13_migrate_refuses_bad_input(
    tmp_path: Path, url: str, revision: str, message: str
) -> None:
    url = url.format(file=f"sqlite:///{tmp_path}/app.db")
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        migrate.upgrade(url, revision)


def test_c13_migrate_reports_an_unreachable_database(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match="cannot connect to postgresql://"):
        migrate.upgrade(f"postgresql://postgres@127.0.0.1:{_closed_port()}/app")
    with pytest.raises(StoreUnavailable, match="check that the directory exists"):
        migrate.upgrade(f"sqlite:///{tmp_path}/missing/app.db")


# ------------------------------------------------------------------------------ reality (CLI)


def test_c13_cli_migrate_up_and_down(
    new_database: NewDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    database = new_database()
    url = _async_spelling(database)  # the CLI swaps in the synchronous driver
    assert cli.main(["migrate", "--database-url", url]) == 0
    assert _tables(database) >= OWN
    assert "upgraded to reality@head" in capsys.readouterr().err
    assert cli.main(["migrate", "--database-url", url, "--downgrade", "base"]) == 0
    assert not _tables(database) & OWN
    assert "downgraded to base" in capsys.readouterr().err


def test_c13_cli_refuses_a_bad_url(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["migrate", "--database-url", "oracle://scott@db/app"])
    assert exit_.value.code == 2
    assert "Reality supports PostgreSQL, SQLite and MySQL/MariaDB" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite://", "reality migrate: 'sqlite://' is an in-memory SQLite database"),
        ("postgresql://postgres@127.0.0.1:{port}/app", "reality migrate: cannot connect to"),
    ],
)
def test_c13_cli_reports_errors_without_a_traceback(
    url: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["migrate", "--database-url", url.format(port=_closed_port())]) == 1
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


# -------------------------------------------------------- a user project with its own alembic

USER_ENV = '''\
import sqlalchemy as sa
from alembic import context

import reality_sqlalchemy

config = context.config
target_metadata = sa.MetaData()
sa.Table(
    "widgets", target_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(50), nullable=False),
)
# The documented line; a test switches it off to show what it prevents.
include_object = (
    reality_sqlalchemy.include_object if config.attributes.get("reality_filter", True) else None
)
engine = sa.create_engine(config.get_main_option("sqlalchemy.url"), poolclass=sa.NullPool)
with engine.connect() as connection:
    context.configure(
        connection=connection, target_metadata=target_metadata, include_object=include_object
    )
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
'''

USER_REVISION = '''\
import sqlalchemy as sa
from alembic import op

revision = "app_0001"
down_revision = None
branch_labels = ("app",)
depends_on = None


def upgrade():
    op.create_table(
        "widgets",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(50), nullable=False),
    )


def downgrade():
    op.drop_table("widgets")
'''


def _user_project(root: Path, url: str, locations: Sequence[str], separator: str) -> Path:
    """An alembic project like ``alembic init`` makes, with one revision of its own."""
    versions = root / "alembic" / "versions"
    versions.mkdir(parents=True)
    (root / "alembic" / "env.py").write_text(USER_ENV)
    template = Path(alembic.__file__).parent / "templates" / "generic" / "script.py.mako"
    shutil.copy(template, root / "alembic" / "script.py.mako")
    (versions / "app_0001_widgets.py").write_text(USER_REVISION)
    joined = " ".join(locations) if separator == "space" else "\n    " + "\n    ".join(locations)
    (root / "alembic.ini").write_text(
        "[alembic]\n"
        "script_location = %(here)s/alembic\n"
        f"path_separator = {separator}\n"
        f"version_locations = {joined}\n"
        f"sqlalchemy.url = {url.replace('%', '%%')}\n"
    )
    return root / "alembic.ini"


def _source_project(root: Path, url: str, *, with_reality: bool = True) -> Config:
    # A source checkout has no reality_sqlalchemy/migrations (only the wheel does), so the
    # package:path form is exercised by the wheel test; here the absolute path is used.
    locations = ["%(here)s/alembic/versions"]
    if with_reality:
        locations.append(str(reality_sqlalchemy.migrations_path()).replace("%", "%%"))
    return Config(str(_user_project(root, url, locations, separator="newline")))


def _versions(url: str) -> set[str]:
    return {v for (v,) in _query(url, "SELECT version_num FROM alembic_version")}


def _autogenerate(config: Config, rev_id: str, head: str = "app@head") -> str:
    """The upgrade() body alembic autogenerate proposes; the script file is removed again."""
    script = command.revision(config, message="probe", autogenerate=True, head=head,
                              rev_id=rev_id)
    assert isinstance(script, Script)
    path = Path(script.path)
    text = path.read_text()
    path.unlink()
    return text.split("def upgrade()", 1)[1].split("def downgrade()", 1)[0]


def test_c13_user_project_upgrades_and_downgrades_our_branch_beside_its_own(
    new_database: NewDatabase, tmp_path: Path
) -> None:
    url = new_database()
    config = _source_project(tmp_path / "app", url)

    command.upgrade(config, "heads")
    assert _tables(url) == {"widgets", "alembic_version", *OWN}
    assert _versions(url) == {"app_0001", HEAD}
    _epoch(url)
    _query(url, "INSERT INTO widgets (id, name) VALUES (1, 'sprocket')")

    command.downgrade(config, "reality@base")
    assert _tables(url) == {"widgets", "alembic_version"}
    assert _versions(url) == {"app_0001"}
    assert _query(url, "SELECT id, name FROM widgets") == [(1, "sprocket")]

    command.upgrade(config, "reality@head")
    assert _tables(url) == {"widgets", "alembic_version", *OWN}
    assert _versions(url) == {"app_0001", HEAD}
    assert migrate.VERSION_TABLE not in _tables(url)  # the user's alembic uses its own table


def test_c13_user_autogenerate_proposes_no_drop_of_our_tables(
    new_database: NewDatabase, tmp_path: Path
) -> None:
    url = new_database()
    config = _source_project(tmp_path / "app", url)
    command.upgrade(config, "heads")

    proposed = _autogenerate(config, "app_0002")
    assert "drop_table" not in proposed
    assert "reality_" not in proposed

    # Without include_object the same project would drop our tables: the check above can fail.
    config.attributes["reality_filter"] = False
    unfiltered = _autogenerate(config, "app_0003")
    assert "op.drop_table('reality_versions')" in unfiltered
    assert "op.drop_table('reality_meta')" in unfiltered


def test_c13_user_autogenerate_ignores_the_reality_migrate_version_table(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/app.db"
    config = _source_project(tmp_path / "app", url, with_reality=False)
    command.upgrade(config, "head")
    migrate.upgrade(url)  # the user runs 'reality migrate' instead of our branch in theirs

    proposed = _autogenerate(config, "app_0002", head="head")
    assert "reality_" not in proposed


# ---------------------------------------------------------------------- the installed wheel


def _clean_env() -> dict[str, str]:
    """The environment without anything that would let a subprocess see this source tree."""
    hidden = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    return {k: v for k, v in os.environ.items() if k not in hidden}


def _run(cmd: Sequence[str | Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=_clean_env(), capture_output=True,
                          text=True, timeout=300, check=False)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {done.returncode}:\n"
                    f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}", pytrace=False)
    return done


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Build the wheel and install it (with its sqlalchemy and postgres extras) into a fresh
    venv; returns the wheel and the venv's bin directory."""
    root = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", root / "dist", ROOT], cwd=root)
    [wheel] = (root / "dist").glob("*.whl")
    # No pip inside the venv (ensurepip is the slow part): this pip installs into it.
    _run([sys.executable, "-m", "venv", "--without-pip", root / "venv"], cwd=root)
    bindir = root / "venv" / "bin"
    _run([sys.executable, "-m", "pip", "--python", bindir / "python", "install",
          "--disable-pip-version-check", "--quiet", "--no-compile",
          f"{wheel}[sqlalchemy,postgres]"], cwd=root)
    return wheel, bindir


def _wheel_project(root: Path, url: str) -> Path:
    """A user project configured exactly as the reality_sqlalchemy.migrate docstring says."""
    _user_project(root, url, ["%(here)s/alembic/versions", "reality_sqlalchemy:migrations"],
                  separator="space")
    return root


@pytest.mark.slow
def test_c13_wheel_ships_our_branch_to_a_user_project(
    wheel_venv: tuple[Path, Path], tmp_path: Path
) -> None:
    wheel, bindir = wheel_venv
    names = zipfile.ZipFile(wheel).namelist()
    assert "reality_sqlalchemy/migrations/reality_0001_version_tables.py" in names
    assert "reality_sqlalchemy/migrations/reality_0002_fold_seq.py" in names
    assert "reality_sqlalchemy/_alembic/env.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith("migrations/__init__.py")]

    project = _wheel_project(tmp_path / "app", f"sqlite:///{tmp_path}/app.db")
    url = f"sqlite:///{tmp_path}/app.db"
    where = _run([bindir / "python", "-c",
                  "import reality_sqlalchemy; print(reality_sqlalchemy.migrations_path())"],
                 cwd=project).stdout.strip()
    assert Path(where).is_relative_to(bindir.parent), where  # the installed copy, not ROOT

    heads = _run([bindir / "alembic", "heads"], cwd=project).stdout
    assert f"{HEAD} (reality) (head)" in heads
    upgraded = _run([bindir / "alembic", "upgrade", "heads"], cwd=project)
    assert "eprecat" not in upgraded.stderr  # the documented alembic.ini is warning-free
    assert _tables(url) == {"widgets", "alembic_version", *OWN}
    assert _versions(url) == {"app_0001", HEAD}
    _epoch(url)

    _run([bindir / "alembic", "downgrade", "reality@base"], cwd=project)
    assert _tables(url) == {"widgets", "alembic_version"}
    _run([bindir / "alembic", "upgrade", "reality@head"], cwd=project)
    assert _tables(url) >= OWN

    # The pyproject.toml form of the same settings (alembic >= 1.16) finds both branches.
    toml_project = _wheel_project(tmp_path / "toml_app", url)
    (toml_project / "alembic.ini").write_text(f"[alembic]\nsqlalchemy.url = {url}\n")
    (toml_project / "pyproject.toml").write_text(
        '[tool.alembic]\nscript_location = "%(here)s/alembic"\n'
        'version_locations = ["%(here)s/alembic/versions", "reality_sqlalchemy:migrations"]\n'
    )
    heads = _run([bindir / "alembic", "heads"], cwd=toml_project).stdout
    assert f"{HEAD} (reality) (head)" in heads
    assert "app_0001 (app) (head)" in heads

    # The console script and its bundled alembic environment work from the wheel too.
    other = f"sqlite:///{tmp_path}/other.db"
    _run([bindir / "reality", "migrate", "--database-url", other], cwd=project)
    assert _tables(other) == {*OWN, migrate.VERSION_TABLE}


@pytest.mark.slow
@pytest.mark.postgres
def test_c13_wheel_upgrades_a_postgres_user_project(
    wheel_venv: tuple[Path, Path], tmp_path: Path, pg_server_url: str
) -> None:
    _, bindir = wheel_venv
    url = dbs.create_pg_database(pg_server_url)
    try:
        project = _wheel_project(tmp_path / "app", url)
        _run([bindir / "alembic", "upgrade", "heads"], cwd=project)
        assert _tables(url) == {"widgets", "alembic_version", *OWN}
        assert _schema(url)["reality_versions"]["columns"][0]["type"] == KEY_TYPE["postgresql"]
        _run([bindir / "alembic", "downgrade", "reality@base"], cwd=project)
        assert _tables(url) == {"widgets", "alembic_version"}
    finally:
        dbs.drop_pg_database(url, pg_server_url)


@pytest.mark.postgres
def test_downgrading_to_base_removes_trigger_mode(pg_server_url: str) -> None:
    """Left behind, triggers would write to a log that no longer exists: every write to the
    tracked table would fail. Downgrading below reality_0003 drops them."""
    from reality_core.keys import declare
    from reality_core.triggers import TriggerSpec, trigger_statements

    url = dbs.create_pg_database(pg_server_url)
    try:
        migrate.upgrade(url)
        _query(url, "CREATE TABLE items (id integer PRIMARY KEY, room_id integer)")
        decl = declare(owner="items", table="items", columns=["id", "room_id"],
                       primary_key=["id"], keys=["room:{room_id}"])
        for ddl in trigger_statements(TriggerSpec(decl, 1000),
                                      {"id": "int4", "room_id": "int4"}):
            _query(url, ddl)
        _query(url, "INSERT INTO items VALUES (1, 1)")
        assert _query(url, "SELECT count(*) FROM reality_log") == [(3,)]  # table, row, room
        migrate.downgrade(url, "base")
        assert _query(url, "SELECT count(*) FROM pg_trigger WHERE "
                           "starts_with(tgname::text, 'reality_bump')") == [(0,)]
        _query(url, "INSERT INTO items VALUES (2, 2)")  # the table works without Reality
        assert _query(url, "SELECT count(*) FROM items") == [(2,)]
    finally:
        dbs.drop_pg_database(url, pg_server_url)


@pytest.mark.postgres
def test_downgrading_below_txid_keeps_one_log_row_per_key_and_transaction(
        pg_server_url: str) -> None:
    url = dbs.create_pg_database(pg_server_url)
    try:
        migrate.upgrade(url)
        _query(url, "INSERT INTO reality_log (key_name, created_at) "
                    "VALUES ('room:1', 0), ('room:1', 0), ('room:2', 0)")  # one transaction
        migrate.downgrade(url, "reality_0002")
        assert _query(url, "SELECT key_name, count(*) FROM reality_log GROUP BY key_name "
                           "ORDER BY key_name") == [("room:1", 1), ("room:2", 1)]
        migrate.upgrade(url)
        reader = DBAPIReader.from_url(url, fold_threshold=None)
        try:
            assert reader.read(["room:1"]).version("room:1") == 1
        finally:
            reader.close()
    finally:
        dbs.drop_pg_database(url, pg_server_url)
