"""Trigger mode (PostgreSQL) over every shape a declaration can take: with or without the
table key and row keys, templates over NOT NULL and nullable columns, field-less templates,
columns named like the trigger function's own variables, with and without ``max_keys``.

For each shape, a few committed transactions (single- and multi-row INSERT, UPDATE of one
row and of every row, DELETE) must leave in the log exactly the keys the Python path
computes for the same rows (``Declaration.keys_for_row`` of the old and new images): no
key missing, none extra. A shape whose generated SQL PostgreSQL refuses fails here, at
``create``, rather than in a user's ``create_triggers``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from reality_core.keys import Declaration, declare
from reality_core.store import LOG_TABLE
from reality_core.triggers import TriggerSpec, trigger_statements
from reality_core.urls import DatabaseURL
from tests import dbs

pytestmark = pytest.mark.postgres

#: Column -> SQL type. ``b`` is nullable; the reality_* and n/ms/key columns share names
#: with words a PL/pgSQL function uses for its variables.
COLUMNS = {
    "id": "integer PRIMARY KEY",
    "a": "integer NOT NULL",
    "b": "integer",
    "n": "integer NOT NULL",
    "ms": "bigint NOT NULL",
    "key": "text NOT NULL",
    "reality_ms": "bigint NOT NULL",
    "reality_txid": "bigint NOT NULL",
    "reality_n": "integer NOT NULL",
    "reality_rows": "integer NOT NULL",
    "reality_void": "text NOT NULL",
}
TYPES = {"id": "int4", "a": "int4", "b": "int4", "n": "int4", "ms": "int8", "key": "text",
         "reality_ms": "int8", "reality_txid": "int8", "reality_n": "int4",
         "reality_rows": "int4", "reality_void": "text"}
NOT_NULL = {c for c, t in COLUMNS.items() if "NOT NULL" in t or "PRIMARY KEY" in t}

SHAPES: dict[str, dict[str, Any]] = {
    "table-only": {"table_key": True, "row_keys": False},
    "rows-only": {"table_key": False, "row_keys": True},
    "table-and-rows": {},
    "not-null-template-only": {"table_key": False, "row_keys": False, "keys": ["a:{a}"]},
    "nullable-template-only": {"table_key": False, "row_keys": False, "keys": ["b:{b}"]},
    "mixed-templates": {"keys": ["a:{a}", "b:{b}", "ab:{a}:{b}"]},
    "field-less-template": {"table_key": False, "keys": ["everything"]},
    "variable-named-columns": {"keys": [
        "m:{ms}", "n:{n}", "k:{key}", "rm:{reality_ms}", "rt:{reality_txid}",
        "rn:{reality_n}", "rr:{reality_rows}", "rv:{reality_void}"]},
}


def row(i: int, a: int, b: int | None) -> dict[str, Any]:
    return {"id": i, "a": a, "b": b, "n": i * 10, "ms": i * 100, "key": f"k{i}",
            "reality_ms": i + 1, "reality_txid": i + 2, "reality_n": i + 3,
            "reality_rows": i + 4, "reality_void": f"v{i}"}


@pytest.fixture
def db(pg_server_url: str) -> Iterator[str]:
    url = dbs.create_pg_database(pg_server_url)
    libpq = DatabaseURL.parse(url).libpq()
    with psycopg.connect(libpq, autocommit=True) as conn:
        dbs.create_reality_tables(conn, "postgresql", "pyformat")
    try:
        yield libpq
    finally:
        dbs.drop_pg_database(url, pg_server_url)


def logged(conn: psycopg.Connection[Any], txid: int) -> set[str]:
    rows = conn.execute(f"SELECT DISTINCT key_name FROM {LOG_TABLE} WHERE txid = %s",
                        (txid,)).fetchall()
    return {r[0] for r in rows}


def expected(decl: Declaration, changes: list[tuple[dict[str, Any] | None,
                                                    dict[str, Any] | None]]) -> set[str]:
    keys: set[str] = set()
    for old, new in changes:
        keys |= decl.keys_for_row(new, old)
    return keys


@pytest.mark.parametrize("max_keys", [1000, None], ids=["max_keys", "no-max_keys"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_declaration_shape_logs_exactly_the_python_keys(
        db: str, shape: str, max_keys: int | None) -> None:
    decl = declare(owner="T", table="t", columns=list(COLUMNS), primary_key=["id"],
                   **SHAPES[shape])
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (" + ", ".join(f'"{c}" {t}' for c, t in COLUMNS.items())
                     + ")")
        for ddl in trigger_statements(TriggerSpec(decl, max_keys), TYPES, NOT_NULL):
            conn.execute(ddl)
    rows: dict[int, dict[str, Any]] = {}
    cols = list(COLUMNS)
    names = ", ".join(f'"{c}"' for c in cols)
    one = "(" + ", ".join(["%s"] * len(cols)) + ")"

    def transaction(work: Any) -> None:
        with psycopg.connect(db) as conn:
            changes = work(conn)
            txid = conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()
            assert txid is not None
            conn.commit()
            got = logged(conn, txid[0])
        assert got == expected(decl, changes), shape

    def insert_rows(*new: dict[str, Any]) -> Any:
        def work(conn: psycopg.Connection[Any]) -> list[Any]:
            # One statement for all of them: the trigger sees a multi-row image.
            conn.execute(f"INSERT INTO t ({names}) VALUES " + ", ".join([one] * len(new)),
                         [r[c] for r in new for c in cols])
            rows.update({r["id"]: r for r in new})
            return [(None, r) for r in new]
        return work

    def update_one(conn: psycopg.Connection[Any]) -> list[Any]:
        old = rows[1]
        new = {**old, "a": 7, "b": None}
        conn.execute("UPDATE t SET a = 7, b = NULL WHERE id = 1")
        rows[1] = new
        return [(old, new)]

    def update_all(conn: psycopg.Connection[Any]) -> list[Any]:
        changes = []
        for i, old in sorted(rows.items()):
            new = {**old, "a": old["a"] + 1}
            changes.append((old, new))
            rows[i] = new
        conn.execute("UPDATE t SET a = a + 1")
        return changes

    def delete_one(conn: psycopg.Connection[Any]) -> list[Any]:
        old = rows.pop(2)
        conn.execute("DELETE FROM t WHERE id = 2")
        return [(old, None)]

    transaction(insert_rows(row(1, 5, 6)))
    transaction(insert_rows(row(2, 5, None), row(3, 8, 9), row(4, 1, 1)))
    transaction(update_one)
    transaction(update_all)
    transaction(delete_one)
