"""The test-database provisioning itself works (tests/dbs.py)."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import psycopg
import pymysql
import pytest
import sqlalchemy as sa

from tests import dbs


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def test_pg_url_is_a_fresh_empty_database(pg_url: str) -> None:
    assert pg_url.startswith("postgresql+psycopg://")
    name = urlsplit(pg_url).path.lstrip("/")
    assert name.startswith("reality_test_")
    engine = sa.create_engine(pg_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT current_database()")).scalar_one() == name
            assert sa.inspect(conn).get_table_names(schema="public") == []
    finally:
        engine.dispose()


def test_postgres_server_url_is_cached(pg_server_url: str) -> None:
    assert dbs.postgres_server_url() == pg_server_url
    assert dbs.postgres_server_url() is dbs.postgres_server_url()


def test_each_new_pg_database_is_distinct_and_dropped(pg_server_url: str) -> None:
    first = dbs.create_pg_database(pg_server_url)
    second = dbs.create_pg_database(pg_server_url)
    try:
        assert first != second
        for url in (first, second):
            with psycopg.connect(_libpq(url)) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        dbs.drop_pg_database(first, pg_server_url)
        dbs.drop_pg_database(second, pg_server_url)
    names = {urlsplit(u).path.lstrip("/") for u in (first, second)}
    with psycopg.connect(_libpq(pg_server_url)) as conn:
        rows = conn.execute("SELECT datname FROM pg_database").fetchall()
    assert names.isdisjoint(r[0] for r in rows)


@pytest.mark.slow
def test_local_throwaway_cluster_starts_serves_and_cleans_up() -> None:
    cluster = dbs.start_local_cluster()
    try:
        assert cluster.datadir.is_dir()
        db_url = dbs.create_pg_database(cluster.url)
        with psycopg.connect(_libpq(db_url)) as conn:
            assert conn.execute("SHOW fsync").fetchone() == ("off",)
            assert conn.execute("SHOW server_encoding").fetchone() == ("UTF8",)
            conn.execute("CREATE TABLE t (x int)")
            conn.execute("INSERT INTO t VALUES (1)")
            assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
        dbs.drop_pg_database(db_url, cluster.url)
    finally:
        cluster.stop()
    assert not cluster.datadir.exists()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", cluster.port)) != 0


def test_mysql_url_is_a_fresh_utf8mb4_database(mysql_url: str) -> None:
    parts = urlsplit(mysql_url)
    assert parts.scheme == "mysql+pymysql"
    name = parts.path.lstrip("/")
    assert name.startswith("reality_test_")
    conn = pymysql.connect(
        host=parts.hostname,
        port=parts.port or 3306,
        user=parts.username or "root",
        password=parts.password or "",
        database=name,
    )
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW TABLES")
            assert cur.fetchall() == ()
            cur.execute("SELECT @@character_set_database")
            assert cur.fetchone() == ("utf8mb4",)
    finally:
        conn.close()


def test_sqlite_url_is_a_file_in_tmp_path(sqlite_url: str, tmp_path: object) -> None:
    assert sqlite_url == f"sqlite:///{tmp_path}/test.db"
    engine = sa.create_engine(sqlite_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE t (x INTEGER)"))
    finally:
        engine.dispose()
