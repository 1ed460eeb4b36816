"""C13 — database URLs are built correctly for each driver (reality_core.urls).

Parsing and rendering per driver, passwords that need quoting, IPv6 hosts, SQLite paths,
query strings, the libpq form, errors that name the problem without the password; then the
produced URLs really connect: ``create_engine`` (psycopg, pysqlite, PyMySQL) and
``create_async_engine`` (asyncpg, aiosqlite) against the real servers.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from reality_core import ConfigurationError, DBAPIReader
from reality_core.urls import DatabaseURL, redact

SPECIAL_PASSWORDS = ["p@ss", "a:b", "sl/ash", "per%cent", "%40", "q?h#a&e= +", "ü€✓", "@:/%"]


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://postgres@127.0.0.1:5432/app",
         {"dialect": "postgresql", "driver": None, "username": "postgres", "host": "127.0.0.1",
          "port": 5432, "database": "app"}),
        ("postgres://u@db/app", {"dialect": "postgresql", "driver": None}),
        ("postgresql+psycopg://u@db/app", {"driver": "psycopg"}),
        ("postgresql+psycopg2://u:pw@db/app", {"driver": "psycopg2", "password": "pw"}),
        ("postgresql+asyncpg://u@db:6543/app", {"driver": "asyncpg", "port": 6543}),
        ("postgresql+psycopg_async://u@db/app", {"driver": "psycopg_async"}),
        ("postgresql:///app", {"host": None, "username": None, "database": "app"}),
        ("sqlite:///app.db", {"dialect": "sqlite", "driver": None, "database": "app.db"}),
        ("sqlite+pysqlite:///app.db", {"driver": "pysqlite", "database": "app.db"}),
        ("sqlite+aiosqlite:////var/lib/app.db", {"driver": "aiosqlite",
                                                 "database": "/var/lib/app.db"}),
        ("sqlite://", {"database": None}),
        ("sqlite:///:memory:", {"database": ":memory:"}),
        ("mysql://root@127.0.0.1:3306/app", {"dialect": "mysql", "mariadb": False,
                                             "username": "root", "password": None}),
        ("mysql+pymysql://root:@h/app", {"driver": "pymysql", "password": ""}),
        ("mysql+aiomysql://root@h/app", {"driver": "aiomysql"}),
        ("mariadb://root@h/app", {"dialect": "mysql", "mariadb": True, "driver": None}),
        ("mariadb+pymysql://root@h/app", {"mariadb": True, "driver": "pymysql"}),
        ("mariadb+mariadbconnector://root@h/app", {"mariadb": True,
                                                   "driver": "mariadbconnector"}),
        ("mysql+mariadbconnector://root@h/app", {"mariadb": False,
                                                 "driver": "mariadbconnector"}),
        ("postgresql://u@[::1]:5432/app", {"host": "::1", "port": 5432}),
        ("postgresql://u@[2001:db8::1]/app", {"host": "2001:db8::1", "port": None}),
        ("postgresql://u:p@ss@h/app", {"password": "p@ss", "host": "h"}),  # lenient: last @
        ("postgresql://u:a:b@h/app", {"password": "a:b", "host": "h"}),
        ("postgresql://u%40corp:p%2Fw@h/my%20app", {"username": "u@corp", "password": "p/w",
                                                   "database": "my app"}),
        ("postgresql://u@h/app?sslmode=require&application_name=my%20app&target=",
         {"query": (("sslmode", "require"), ("application_name", "my app"), ("target", ""))}),
        ("sqlite:///app.db?timeout=10&uri=true",
         {"query": (("timeout", "10"), ("uri", "true"))}),
    ],
)
def test_parse(url: str, expected: dict[str, Any]) -> None:
    parsed = DatabaseURL.parse(url)
    for name, value in expected.items():
        assert getattr(parsed, name) == value, name
    # What we render parses back to the same thing, and SQLAlchemy reads it the same way.
    assert DatabaseURL.parse(parsed.render()) == parsed
    if parsed.driver is not None:
        theirs = make_url(parsed.render())
        assert theirs.password == parsed.password
        assert theirs.host == parsed.host
        assert theirs.port == parsed.port
        assert theirs.database == parsed.database
        assert theirs.username == parsed.username


# --------------------------------------------------------------------------- SQLAlchemy spellings


@pytest.mark.parametrize(
    ("url", "sync", "asynchronous"),
    [
        ("postgresql://u@h:5432/db", "postgresql+psycopg://u@h:5432/db",
         "postgresql+asyncpg://u@h:5432/db"),
        ("postgres://u@h/db", "postgresql+psycopg://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db",
         "postgresql+asyncpg://u@h/db"),
        # A sync driver the user chose is kept; only the other side gets a default.
        ("postgresql+psycopg2://u@h/db", "postgresql+psycopg2://u@h/db",
         "postgresql+asyncpg://u@h/db"),
        ("postgresql+pg8000://u@h/db", "postgresql+pg8000://u@h/db",
         "postgresql+asyncpg://u@h/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+psycopg://u@h/db",
         "postgresql+asyncpg://u@h/db"),
        ("postgresql+psycopg_async://u@h/db", "postgresql+psycopg://u@h/db",
         "postgresql+psycopg_async://u@h/db"),
        ("sqlite:///app.db", "sqlite+pysqlite:///app.db", "sqlite+aiosqlite:///app.db"),
        ("sqlite+aiosqlite:////abs/app.db", "sqlite+pysqlite:////abs/app.db",
         "sqlite+aiosqlite:////abs/app.db"),
        ("sqlite://", "sqlite+pysqlite://", "sqlite+aiosqlite://"),
        ("sqlite:///:memory:", "sqlite+pysqlite:///:memory:", "sqlite+aiosqlite:///:memory:"),
        ("mysql://root@h:3306/db", "mysql+pymysql://root@h:3306/db",
         "mysql+aiomysql://root@h:3306/db"),
        ("mysql+mysqldb://root@h/db", "mysql+mysqldb://root@h/db", "mysql+aiomysql://root@h/db"),
        ("mysql+asyncmy://root@h/db", "mysql+pymysql://root@h/db", "mysql+asyncmy://root@h/db"),
        ("mariadb://root@h/db", "mariadb+pymysql://root@h/db", "mariadb+aiomysql://root@h/db"),
        ("mariadb+mariadbconnector://root@h/db", "mariadb+mariadbconnector://root@h/db",
         "mariadb+aiomysql://root@h/db"),
    ],
)
def test_sqlalchemy_spellings(url: str, sync: str, asynchronous: str) -> None:
    parsed = DatabaseURL.parse(url)
    assert parsed.sqlalchemy() == sync
    assert parsed.sqlalchemy(asynchronous=False) == sync
    assert parsed.sqlalchemy(asynchronous=True) == asynchronous
    # SQLAlchemy knows each spelling (resolving the dialect class imports no driver).
    for rendered in (sync, asynchronous):
        dialect = make_url(rendered).get_dialect()
        assert dialect.name == ("mariadb" if parsed.mariadb else parsed.dialect)
    assert make_url(asynchronous).get_dialect().is_async


@pytest.mark.parametrize("password", SPECIAL_PASSWORDS)
@pytest.mark.parametrize("asynchronous", [False, True])
def test_passwords_with_special_characters_round_trip_quoted(
    password: str, asynchronous: bool
) -> None:
    url = DatabaseURL(dialect="postgresql", username="app user", password=password,
                      host="db.example", port=5432, database="my app")
    rendered = url.sqlalchemy(asynchronous=asynchronous)
    # Quoted: the only "@" is the one before the host; nothing raw that ends the credentials.
    credentials = rendered.split("://", 1)[1].rsplit("@", 1)[0]
    assert not set(credentials) & set("@/?# ")
    assert rendered.count("@") == 1
    assert DatabaseURL.parse(rendered).password == password
    theirs = make_url(rendered)
    assert theirs.password == password
    assert theirs.username == "app user"
    assert theirs.host == "db.example"
    assert theirs.database == "my app"
    hidden = url.render(hide_password=True)
    assert "***" in hidden
    assert DatabaseURL.parse(hidden).host == "db.example"
    if len(password) > 2:
        assert password not in hidden
        assert password not in repr(url)


def test_a_password_without_a_user_is_kept() -> None:
    url = DatabaseURL.parse("postgresql://:secret@h/db")
    assert url.password == "secret"
    assert DatabaseURL.parse(url.render()).password == "secret"


def test_ipv6_hosts_keep_their_brackets() -> None:
    url = DatabaseURL.parse("postgresql+asyncpg://u:pw@[::1]:5433/db")
    assert url.sqlalchemy() == "postgresql+psycopg://u:pw@[::1]:5433/db"
    assert url.libpq() == "postgresql://u:pw@[::1]:5433/db"
    assert make_url(url.sqlalchemy()).host == "::1"
    assert make_url(url.sqlalchemy()).port == 5433
    assert DatabaseURL.parse("mysql://root@[fe80::1]/db").sqlalchemy() == (
        "mysql+pymysql://root@[fe80::1]/db"
    )


def test_query_strings_are_kept_everywhere() -> None:
    url = DatabaseURL.parse(
        "postgresql+asyncpg://u@h/db?sslmode=require&application_name=my%20app&options=-c%20x%3D1"
    )
    expected = (("sslmode", "require"), ("application_name", "my app"), ("options", "-c x=1"))
    assert url.query == expected
    for rendered in (url.sqlalchemy(), url.sqlalchemy(asynchronous=True), url.libpq()):
        assert DatabaseURL.parse(rendered).query == expected
        assert dict(make_url(rendered).query) == dict(expected)
    lite = DatabaseURL.parse("sqlite+aiosqlite:///app.db?timeout=3&check_same_thread=false")
    assert lite.sqlalchemy() == "sqlite+pysqlite:///app.db?timeout=3&check_same_thread=false"


def test_libpq_form() -> None:
    url = DatabaseURL.parse("postgresql+psycopg://u%40corp:p%40ss@h:5433/my%20db?sslmode=disable")
    assert url.libpq() == "postgresql://u%40corp:p%40ss@h:5433/my%20db?sslmode=disable"
    assert DatabaseURL.parse("postgres://u@h/db").libpq() == "postgresql://u@h/db"
    conninfo = psycopg.conninfo.conninfo_to_dict(url.libpq())
    assert conninfo["user"] == "u@corp"
    assert conninfo["password"] == "p@ss"
    assert conninfo["dbname"] == "my db"
    with pytest.raises(ConfigurationError, match="no libpq form"):
        DatabaseURL.parse("mysql://root@h/db").libpq()


def test_with_driver_and_database() -> None:
    url = DatabaseURL.parse("postgresql://u@h/db")
    assert url.with_driver("psycopg2").render() == "postgresql+psycopg2://u@h/db"
    assert url.with_driver(None).with_database("other").render() == "postgresql://u@h/other"
    with pytest.raises(ConfigurationError, match="unknown postgresql driver 'pymysql'"):
        url.with_driver("pymysql")


def test_paramstyle() -> None:
    assert DatabaseURL.parse("sqlite://").paramstyle == "qmark"
    assert DatabaseURL.parse("postgresql://u@h/db").paramstyle == "format"
    assert DatabaseURL.parse("mysql://u@h/db").paramstyle == "format"


# --------------------------------------------------------------------------- bad URLs


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("", "not a database URL"),
        ("nope", "not a database URL"),
        ("app.db", "not a database URL"),
        ("postgresql:/u:s3cret@h/db", "not a database URL"),
        ("oracle://u:s3cret@h/db", "'oracle' is not one of them"),
        ("mssql+pyodbc://u:s3cret@h/db", "'mssql' is not one of them"),
        ("postgresql+pg9000://u:s3cret@h/db", "unknown postgresql driver 'pg9000'"),
        ("sqlite+pymysql:///app.db", "unknown sqlite driver 'pymysql'"),
        ("mysql+psycopg://u:s3cret@h/db", "unknown mysql driver 'psycopg'"),
        ("postgresql://u:s3cret@h:99999/db", "bad port"),
        ("postgresql://u:s3cret@h:abc/db", "bad port"),
        ("postgresql://u:s3cr@et@h:abc/db", "bad port"),  # a raw @ in the password
        ("postgresql://u:s3cr/et@h:abc/db", "bad port"),  # a raw / in the password
        ("sqlite://somehost/app.db", "an SQLite URL has no host"),
        ("sqlite:app.db", "not a database URL"),
    ],
)
def test_bad_urls_name_the_problem_and_hide_the_password(url: str, problem: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        DatabaseURL.parse(url)
    message = info.value.message
    assert problem in message
    assert info.value.code == "configuration"
    for fragment in ("s3cret", "s3cr", "et@h"):
        assert fragment not in message


def test_not_a_string_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="not a database URL"):
        DatabaseURL.parse(5432)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:s3cret@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:s3@cr/et@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://u@h:5432/db", "postgresql://u@h:5432/db"),
        ("postgresql:/u:s3cret@h/db", "postgresql:***@h/db"),
        ("sqlite:///app.db", "sqlite:///app.db"),
        ("postgresql://u@h/db?sslmode=require&password=s3cret",
         "postgresql://u@h/db?sslmode=require&password=***"),
        ("postgresql://u@h/db?Password=s3cret&x=1", "postgresql://u@h/db?Password=***&x=1"),
    ],
)
def test_redact(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_a_password_in_the_query_is_hidden_too() -> None:
    url = DatabaseURL.parse("postgresql://u@h/db?password=s3cret&sslmode=require")
    assert url.libpq() == "postgresql://u@h/db?password=s3cret&sslmode=require"
    assert url.render(hide_password=True) == "postgresql://u@h/db?password=%2A%2A%2A&sslmode=require"
    with pytest.raises(ConfigurationError) as info:
        DatabaseURL.parse("postgresql://u@h:x/db?password=s3cret")
    assert "s3cret" not in info.value.message


@pytest.mark.parametrize(
    "query", ["timeout=abc", "timeout=-1", "timeout=0", "timeout=nan", "timeout=inf"]
)
def test_a_bad_sqlite_timeout_is_a_configuration_error(query: str) -> None:
    with pytest.raises(ConfigurationError, match="timeout"):
        DatabaseURL.parse(f"sqlite:///app.db?{query}").dbapi_connect()


@pytest.mark.parametrize("value", ["soon", "inf", "-3"])
def test_a_bad_connect_timeout_hides_the_password(value: str) -> None:
    url = DatabaseURL.parse(f"postgresql://u:s3cret@127.0.0.1:1/db?connect_timeout={value}")
    with pytest.raises(ConfigurationError, match="connect_timeout") as info:
        url.dbapi_connect()
    assert "s3cret" not in info.value.message


# --------------------------------------------------------------------------- real connections


def select_one(url: str) -> Any:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT 1")).scalar_one()
    finally:
        engine.dispose()


async def select_one_async(url: str) -> Any:
    engine = create_async_engine(url, poolclass=sa.NullPool)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(sa.text("SELECT 1"))).scalar_one()
    finally:
        await engine.dispose()


@pytest.mark.parametrize("path", ["rel.db", "data/rel.db"])
async def test_sqlite_relative_paths_connect_sync_and_async(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    url = DatabaseURL.parse(f"sqlite:///{path}")
    assert select_one(url.sqlalchemy()) == 1
    assert (tmp_path / path).exists()
    (tmp_path / path).unlink()
    assert await select_one_async(url.sqlalchemy(asynchronous=True)) == 1
    assert (tmp_path / path).exists()


async def test_sqlite_absolute_paths_connect_sync_and_async(tmp_path: Path) -> None:
    target = tmp_path / "dir with space" / "abs.db"
    target.parent.mkdir()
    url = DatabaseURL.parse(f"sqlite:///{target}")
    assert url.database == str(target)
    assert url.sqlalchemy() == f"sqlite+pysqlite:///{target}"
    assert select_one(url.sqlalchemy()) == 1
    assert target.exists()
    target.unlink()
    assert await select_one_async(url.sqlalchemy(asynchronous=True)) == 1
    assert target.exists()
    conn = url.dbapi_connect()
    try:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.isolation_level is None  # autocommit
    finally:
        conn.close()


@pytest.mark.parametrize("spelling", ["sqlite://", "sqlite:///:memory:"])
async def test_sqlite_memory_connects(spelling: str) -> None:
    url = DatabaseURL.parse(spelling)
    assert select_one(url.sqlalchemy()) == 1
    assert await select_one_async(url.sqlalchemy(asynchronous=True)) == 1
    conn = url.dbapi_connect()
    try:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        conn.close()


def test_postgres_sync_url_connects(pg_url: str) -> None:
    url = DatabaseURL.parse(pg_url)
    engine = sa.create_engine(url.sqlalchemy(), poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT current_database()")).scalar_one() == url.database
            assert engine.dialect.driver == "psycopg"
    finally:
        engine.dispose()
    with psycopg.connect(url.libpq()) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (url.database,)
    dbapi = url.dbapi_connect()
    try:
        assert dbapi.autocommit
    finally:
        dbapi.close()


async def test_postgres_async_url_connects(pg_url: str) -> None:
    url = DatabaseURL.parse(pg_url)
    engine = create_async_engine(url.sqlalchemy(asynchronous=True), poolclass=sa.NullPool)
    try:
        async with engine.connect() as conn:
            name = (await conn.execute(sa.text("SELECT current_database()"))).scalar_one()
            assert name == url.database
            assert engine.dialect.driver == "asyncpg"
    finally:
        await engine.dispose()


def test_mysql_sync_url_connects(mysql_url: str) -> None:
    url = DatabaseURL.parse(mysql_url)
    engine = sa.create_engine(url.sqlalchemy(), poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT DATABASE()")).scalar_one() == url.database
    finally:
        engine.dispose()
    dbapi = url.dbapi_connect()
    try:
        assert dbapi.get_autocommit()
    finally:
        dbapi.close()


@pytest.fixture
def pg_role(pg_server_url: str) -> Iterator[tuple[str, str]]:
    """A PostgreSQL role whose name and password both need quoting in a URL."""
    name = f"reality user@{secrets.token_hex(3)}:x/y"
    password = "p@ss:w/rd%?#& ü"
    admin = DatabaseURL.parse(pg_server_url).libpq()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            psycopg.sql.Identifier(name), psycopg.sql.Literal(password)))
    try:
        yield name, password
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("DROP ROLE {}").format(psycopg.sql.Identifier(name)))


async def test_postgres_user_and_password_needing_quotes_reach_the_server(
    pg_url: str, pg_role: tuple[str, str]
) -> None:
    user, password = pg_role
    base = DatabaseURL.parse(pg_url)
    url = DatabaseURL(dialect="postgresql", username=user, password=password, host=base.host,
                      port=base.port, database=base.database)
    query = sa.text("SELECT current_user, current_database()")
    engine = sa.create_engine(url.sqlalchemy(), poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            assert tuple(conn.execute(query).one()) == (user, base.database)
    finally:
        engine.dispose()
    async_engine = create_async_engine(url.sqlalchemy(asynchronous=True), poolclass=sa.NullPool)
    try:
        async with async_engine.connect() as conn:
            assert tuple((await conn.execute(query)).one()) == (user, base.database)
    finally:
        await async_engine.dispose()
    reader = DBAPIReader.from_url(url)
    try:
        assert password not in repr(reader)
    finally:
        reader.close()


@pytest.fixture
def mysql_user(mysql_url: str, request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """A MariaDB user whose password (the test's ``password`` parameter) needs quoting.
    MariaDB checks passwords, so a wrong one is refused."""
    name = f"reality_{secrets.token_hex(3)}"
    password: str = request.param
    database = DatabaseURL.parse(mysql_url).database
    admin = DatabaseURL.parse(mysql_url).dbapi_connect()
    try:
        with admin.cursor() as cur:
            for host in ("%", "localhost", "127.0.0.1"):
                cur.execute("CREATE USER %s@%s IDENTIFIED BY %s", (name, host, password))
                cur.execute(f"GRANT ALL ON `{database}`.* TO %s@%s", (name, host))
        yield name, password
    finally:
        with admin.cursor() as cur:
            for host in ("%", "localhost", "127.0.0.1"):
                cur.execute("DROP USER IF EXISTS %s@%s", (name, host))
        admin.close()


def mysql_url_for(mysql_url: str, user: str, password: str) -> DatabaseURL:
    base = DatabaseURL.parse(mysql_url)
    return DatabaseURL(dialect="mysql", username=user, password=password, host=base.host,
                       port=base.port, database=base.database)


@pytest.mark.parametrize("mysql_user", ["p@ss:w/rd%?#&= +"], indirect=True)
def test_mysql_password_needing_quotes_reaches_the_server(
    mysql_url: str, mysql_user: tuple[str, str]
) -> None:
    user, password = mysql_user
    url = mysql_url_for(mysql_url, user, password)
    assert select_one(url.sqlalchemy()) == 1
    url.dbapi_connect().close()
    wrong = mysql_url_for(mysql_url, user, password + "x")
    with pytest.raises(sa.exc.OperationalError, match="Access denied"):
        select_one(wrong.sqlalchemy())
    with pytest.raises(pymysql.err.OperationalError, match="Access denied"):
        wrong.dbapi_connect()


@pytest.mark.parametrize("mysql_user", ["ünïcødé-€"], indirect=True)
def test_mysql_non_ascii_password_reaches_the_server(
    mysql_url: str, mysql_user: tuple[str, str]
) -> None:
    # PyMySQL sends a str password as latin-1 bytes, which never match a password set over
    # a UTF-8 connection; the reader's own connections send UTF-8. (SQLAlchemy + PyMySQL
    # has the latin-1 problem; nothing a URL can fix.)
    user, password = mysql_user
    conn = mysql_url_for(mysql_url, user, password).dbapi_connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT CURRENT_USER()")
            assert cur.fetchone()[0].startswith(f"{user}@")
    finally:
        conn.close()
