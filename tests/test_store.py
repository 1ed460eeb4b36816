"""The version store's SQL (reality_core.store) on real PostgreSQL, SQLite and MariaDB."""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from reality_core import ConfigurationError, StoreError, WritePathError
from reality_core.store import (
    BUMP_CHUNK,
    Placeholders,
    Snapshot,
    bump_statements,
    create_table_statements,
    insert_epoch_statement,
    normalize_dialect,
    read_statement,
    run_bump,
    snapshot_from_rows,
)
from tests.test_endpoint import Store, open_store

#: Keys that break naive SQL: quotes, placeholders, percent signs, unicode, SQL.
AWKWARD_KEYS = [
    "it's", 'say "hi"', "100%", "%s", "%%", "%(k)s", "?", ":k", ":1", "$1", "back\\slash",
    "ключ", "emoji:\U0001f600", "a;DROP TABLE reality_versions;--", "`tick`", "tab\u00a0nbsp",
    "k" * 256,
]


@pytest.fixture(scope="module", params=["postgresql", "sqlite", "mysql"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Store]:
    yield from open_store(request, tmp_path_factory.mktemp("store"), request.param)


@pytest.fixture
def ns() -> str:
    return f"t{secrets.token_hex(5)}:"


def version_rows(store: Store, prefix: str) -> dict[str, int]:
    """Every key under ``prefix`` that was ever bumped, with its version."""
    rows = store.query(
        "SELECT key_name FROM reality_log UNION SELECT key_name FROM reality_versions"
    )
    names = [n.decode() if isinstance(n, bytes) else n for (n,) in rows]  # VARBINARY
    keys = sorted(n for n in names if n.startswith(prefix))
    return {k: v.version for k, v in read(store, keys).versions.items()}


def read(store: Store, keys: list[str]) -> Snapshot:
    sql, params = read_statement(keys, store.paramstyle)
    cur = store._conn.cursor()
    try:
        cur.execute(sql, params)
        rows = list(cur.fetchall())
    finally:
        cur.close()
    return snapshot_from_rows(keys, rows)


# --------------------------------------------------------------------------- bumps


def test_one_statement_per_chunk_of_keys(store: Store, ns: str) -> None:
    keys = sorted(f"{ns}{i:05d}" for i in range(2 * BUMP_CHUNK + 1))
    statements = bump_statements(store.dialect, keys, store.paramstyle)
    assert len(statements) == 3
    wanted = set(keys)
    sent: list[Any] = []
    for _, params in statements:
        assert isinstance(params, list)
        chunk = [p for p in params if p in wanted]
        assert len(chunk) <= BUMP_CHUNK
        sent.extend(chunk)
    assert sent == keys  # in the caller's (sorted) order, each once
    assert len(bump_statements(store.dialect, keys[:BUMP_CHUNK], store.paramstyle)) == 1
    assert bump_statements(store.dialect, [], store.paramstyle) == []
    store.bump(*keys)
    assert version_rows(store, ns) == dict.fromkeys(keys, 1)


def test_each_bump_adds_one(store: Store, ns: str) -> None:
    a, b = f"{ns}a", f"{ns}b"
    store.bump(a)
    store.bump(a, b)
    store.bump(a)
    assert version_rows(store, ns) == {a: 3, b: 1}
    before = read(store, [a]).versions[a].hash
    store.bump(a)
    after = read(store, [a]).versions[a].hash
    assert after != before


def test_awkward_keys_round_trip_as_parameters(store: Store, ns: str) -> None:
    keys = sorted(ns + k[: 256 - len(ns)] for k in AWKWARD_KEYS)
    for sql, _ in bump_statements(store.dialect, keys, store.paramstyle):
        for key in keys:
            assert key not in sql  # travelled as a parameter, never inlined
    store.bump(*keys)
    store.bump(*keys)
    assert version_rows(store, ns) == dict.fromkeys(keys, 2)
    assert read(store, keys).versions.keys() == set(keys)


def test_keys_are_case_sensitive(store: Store, ns: str) -> None:
    upper, lower = f"{ns}Room", f"{ns}room"
    store.bump(upper)
    store.bump(upper)
    store.bump(lower)
    assert version_rows(store, ns) == {upper: 2, lower: 1}
    snapshot = read(store, [upper, lower, f"{ns}ROOM"])
    assert snapshot.version(upper) == 2
    assert snapshot.version(lower) == 1
    assert snapshot.version(f"{ns}ROOM") == 0


@pytest.mark.parametrize("other", ["room ", "room\u00a0"])
def test_keys_differing_only_in_trailing_space_are_distinct(
    store: Store, ns: str, other: str, request: pytest.FixtureRequest
) -> None:
    plain, spaced = f"{ns}room", f"{ns}{other}"
    store.bump(plain)
    store.bump(spaced)
    store.bump(spaced)
    snapshot = read(store, [plain, spaced])
    assert (snapshot.version(plain), snapshot.version(spaced)) == (1, 2)


def test_python_and_database_sort_keys_alike(store: Store, ns: str) -> None:
    """I6: writers lock rows in sorted order; that order must be the database's own."""
    keys = [ns + k for k in ["B", "a", "Z", "é", "e", "_", "~", "$esc:", "中", "a b", "ab",
                             "\U0001f600", "\uffee"]]
    store.bump(*keys)
    rows = store.query(
        f"SELECT key_name FROM reality_log WHERE key_name >= '{ns}' "
        f"AND key_name < '{ns[:-1]};' ORDER BY key_name"
    )
    names = [r[0].decode() if isinstance(r[0], bytes) else r[0] for r in rows]  # VARBINARY
    assert names == sorted(keys)


def test_concurrent_bumps_of_one_key_all_land(store: Store, ns: str) -> None:
    """I8: bumps racing on one key from several connections are all counted."""
    key = f"{ns}hot"
    writers = [Store(str(store.url)) for _ in range(4)]

    def write(writer: Store) -> None:
        for _ in range(10):
            writer.bump(key, f"{ns}other")

    try:
        with ThreadPoolExecutor(len(writers)) as pool:
            list(pool.map(write, writers))
    finally:
        for writer in writers:
            writer.close()
    assert version_rows(store, ns) == {key: 40, f"{ns}other": 40}


def test_run_bump_inside_a_transaction_and_rollback(store: Store, ns: str) -> None:
    conn = store.url.dbapi_connect()
    try:
        cur = conn.cursor()
        cur.execute("BEGIN")
        run_bump(conn, store.dialect, [f"{ns}a"], store.paramstyle)
        cur.execute("ROLLBACK")
        assert version_rows(store, ns) == {}  # nothing for rolled-back work (I2)
        cur.execute("BEGIN")
        run_bump(conn, store.dialect, [f"{ns}a"], store.paramstyle)
        cur.execute("COMMIT")
        cur.close()
    finally:
        conn.close()
    assert version_rows(store, ns) == {f"{ns}a": 1}


def test_a_bump_without_tables_fails_with_a_hint(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "empty.db")
    try:
        with pytest.raises(WritePathError, match="reality migrate") as info:
            run_bump(conn, "sqlite", ["a"], "qmark")
        assert "rolled back" in info.value.message
    finally:
        conn.close()


# --------------------------------------------------------------------------- reads


def test_snapshot_sums_escalation_markers(store: Store, ns: str) -> None:
    room7, room8, rx = f"{ns}room:7", f"{ns}room:8", f"{ns}rx"
    store.bump(room7)
    store.bump(room7)
    first = read(store, [room7])
    for _ in range(3):
        store.bump(f"$esc:{ns}room:")
    store.bump(f"$esc:{ns}ro")
    snapshot = read(store, [room7, room8, rx])
    assert snapshot.version(room7) == 2 + 3 + 1
    assert snapshot.version(room8) == 3 + 1
    assert snapshot.version(rx) == 0
    assert rx not in snapshot.versions
    assert snapshot.versions[room7].hash != first.versions[room7].hash
    assert snapshot.versions[room7].updated_at >= first.versions[room7].updated_at
    assert snapshot.epoch == store.epoch


def test_versions_only_grow_whatever_is_bumped(store: Store, ns: str) -> None:
    key = f"{ns}room:1"
    seen = [read(store, [key]).version(key)]
    for bump in [key, f"$esc:{ns}room:", key, f"$esc:{ns}", f"$esc:{ns}room:1"]:
        store.bump(bump)
        seen.append(read(store, [key]).version(key))
    assert seen == sorted(set(seen))  # strictly increasing
    assert seen[-1] == 5


def test_read_many_keys_in_one_statement(store: Store, ns: str) -> None:
    keys = [f"{ns}{i}" for i in range(1000)]
    store.bump(*keys[::7])
    snapshot = read(store, keys)
    assert set(snapshot.versions) == set(keys[::7])


def test_the_epoch_is_created_once(store: Store) -> None:
    epoch = store.epoch
    sql, params = insert_epoch_statement(store.dialect, store.paramstyle)
    cur = store._conn.cursor()
    try:
        for statement in create_table_statements(store.dialect):
            cur.execute(statement)  # idempotent
        cur.execute(sql, params)
    finally:
        cur.close()
    # The epoch and the fold sequence, each once.
    assert store.query("SELECT count(*) FROM reality_meta")[0][0] == 2
    assert store.epoch == epoch
    assert len(epoch) == 32


@pytest.mark.parametrize("paramstyle", ["qmark", "named", "numeric"])
def test_read_statement_in_every_sqlite_paramstyle(tmp_path: Path, paramstyle: str) -> None:
    store = Store(f"sqlite:///{tmp_path}/p.db")
    try:
        store.bump("a", "$esc:b")
        sql, params = read_statement(["a", "b:1", "c"], paramstyle)
        rows = store._conn.execute(sql, params).fetchall()
        snapshot = snapshot_from_rows(["a", "b:1", "c"], rows)
        assert {k: v.version for k, v in snapshot.versions.items()} == {"a": 1, "b:1": 1}
        for sql, params in bump_statements("sqlite", ["a", "c"], paramstyle):
            store._conn.execute(sql, params)
        assert version_rows(store, "") == {"$esc:b": 1, "a": 2, "c": 1}
    finally:
        store.close()


@pytest.mark.parametrize("store", ["postgresql", "mysql"], indirect=True)
def test_pyformat_on_servers(store: Store, ns: str) -> None:
    keys = sorted([f"{ns}%(x)s", f"{ns}%s"])
    cur = store._conn.cursor()
    try:
        for sql, params in bump_statements(store.dialect, keys, "pyformat"):
            assert isinstance(params, dict)
            cur.execute(sql, params)
        sql, params = read_statement(keys, "pyformat")
        cur.execute(sql, params)
        snapshot = snapshot_from_rows(keys, cur.fetchall())
    finally:
        cur.close()
    assert {k: v.version for k, v in snapshot.versions.items()} == dict.fromkeys(keys, 1)


# --------------------------------------------------------------------------- pure functions


def test_snapshot_needs_the_epoch_row() -> None:
    with pytest.raises(StoreError, match="no epoch row"):
        snapshot_from_rows(["a"], [(0, "a", 1, 5)])


def test_snapshot_from_rows_by_hand() -> None:
    # (source, key, count, updated): 0 folded counts, 2 log counts, 1 the epoch
    rows = [(1, "e1", 0, 0), (0, "room:7", 3, 10), (2, "room:7", 1, 5), (0, "$esc:room:", 2, 30),
            (0, "$esc:r", 1, 20)]
    snapshot = snapshot_from_rows(["room:7", "room:8", "x"], rows)
    assert snapshot.epoch == "e1"
    seven, eight = snapshot.versions["room:7"], snapshot.versions["room:8"]
    assert (seven.version, seven.updated_at) == (7, 30)
    assert (eight.version, eight.updated_at) == (3, 30)
    assert seven.hash != eight.hash
    assert len(seven.hash) == 16
    assert "x" not in snapshot.versions
    assert seven.as_json() == {"key": "room:7", "version": 7, "hash": seven.hash,
                               "updatedAt": 30}


@pytest.mark.parametrize(
    ("style", "placeholders", "params"),
    [
        ("qmark", ["?", "?"], ["a", "b"]),
        ("format", ["%s", "%s"], ["a", "b"]),
        ("numeric", [":1", ":2"], ["a", "b"]),
        ("numeric_dollar", ["$1", "$2"], ["a", "b"]),
        ("named", [":k_0", ":k_1"], {"k_0": "a", "k_1": "b"}),
        ("pyformat", ["%(k_0)s", "%(k_1)s"], {"k_0": "a", "k_1": "b"}),
    ],
)
def test_placeholders(style: str, placeholders: list[str], params: Any) -> None:
    ph = Placeholders(style)
    assert [ph.next("k", "a"), ph.next("k", "b")] == placeholders
    assert ph.params == params


def test_an_unknown_paramstyle_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="paramstyle"):
        Placeholders("dollar")


@pytest.mark.parametrize(
    ("name", "dialect"),
    [("postgresql", "postgresql"), ("postgres", "postgresql"), ("PostgreSQL", "postgresql"),
     ("sqlite", "sqlite"), ("mysql", "mysql"), ("mariadb", "mysql")],
)
def test_normalize_dialect(name: str, dialect: str) -> None:
    assert normalize_dialect(name) == dialect


def test_normalize_dialect_refuses_others() -> None:
    with pytest.raises(ConfigurationError, match="'oracle' is not one of them"):
        normalize_dialect("oracle")
