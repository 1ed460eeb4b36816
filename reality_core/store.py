"""The version store: the metadata tables, and the SQL that bumps and reads versions.

Two tables live in the application's own database::

    reality_versions(key_name, version, hash, updated_at)   one row per key ever bumped
    reality_meta(name, value)                                holds ("epoch", <uuid>)

``key_name`` compares bytewise on every dialect (``COLLATE "C"`` on PostgreSQL, UTF-8
bytes in a ``VARBINARY`` on MySQL/MariaDB, SQLite's default BINARY): keys are case-sensitive,
the sorted bump order is the same in Python and in the database, and the escalation markers
(``$esc:...``) are found with an index range scan.

A transaction's bump is a single multi-row upsert, rows in sorted key order, so writers that
share keys lock them in the same order (I6). Versions are per-key counters that only go up;
rows are never deleted, so a version is never reused (I8).
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from .errors import ConfigurationError, WritePathError
from .keys import ESCALATION_PREFIX

Dialect = Literal["postgresql", "sqlite", "mysql"]
DIALECTS: Final[tuple[Dialect, ...]] = ("postgresql", "sqlite", "mysql")
VERSIONS_TABLE: Final = "reality_versions"
META_TABLE: Final = "reality_meta"
#: Where ``reality migrate`` records its alembic revisions (never a user's alembic_version).
MIGRATE_VERSION_TABLE: Final = "reality_alembic_version"
#: Reality's own tables: never tracked (I10), never proposed for a drop by autogenerate.
OWN_TABLES: Final = frozenset({VERSIONS_TABLE, META_TABLE, MIGRATE_VERSION_TABLE})
#: Keys per bump statement; larger transactions send several statements, still sorted.
BUMP_CHUNK: Final = 500

Params = Sequence[Any] | Mapping[str, Any]


def normalize_dialect(name: str) -> Dialect:
    """Map a driver's dialect name (``postgresql``, ``mariadb``, ``sqlite``...) to ours."""
    lowered = name.lower()
    if lowered in ("postgresql", "postgres", "psycopg", "asyncpg"):
        return "postgresql"
    if lowered in ("sqlite", "sqlite3", "aiosqlite"):
        return "sqlite"
    if lowered in ("mysql", "mariadb"):
        return "mysql"
    raise ConfigurationError(
        f"Reality supports PostgreSQL, SQLite and MySQL/MariaDB; {name!r} is not one of them"
    )


def create_table_statements(dialect: Dialect) -> list[str]:
    """DDL for both tables, idempotent (``IF NOT EXISTS``)."""
    if dialect == "postgresql":
        key_type = 'VARCHAR(256) COLLATE "C"'
        suffix = ""
    elif dialect == "mysql":
        # Bytes, not a _bin collation: utf8mb4_bin pads with spaces, so 'room ' = 'room'.
        key_type = "VARBINARY(1024)"
        suffix = " ENGINE=InnoDB"
    else:
        key_type = "VARCHAR(256)"
        suffix = ""
    return [
        f"CREATE TABLE IF NOT EXISTS {VERSIONS_TABLE} ("
        f"key_name {key_type} NOT NULL, "
        "version BIGINT NOT NULL, "
        "hash VARCHAR(64) NOT NULL, "
        "updated_at BIGINT NOT NULL, "
        f"CONSTRAINT pk_{VERSIONS_TABLE} PRIMARY KEY (key_name)){suffix}",
        f"CREATE TABLE IF NOT EXISTS {META_TABLE} ("
        "name VARCHAR(64) NOT NULL, "
        "value VARCHAR(256) NOT NULL, "
        f"CONSTRAINT pk_{META_TABLE} PRIMARY KEY (name)){suffix}",
    ]


def new_epoch() -> str:
    return secrets.token_hex(16)


def insert_epoch_statement(dialect: Dialect, paramstyle: str) -> tuple[str, Params]:
    """Insert the epoch row unless one exists (safe to run twice)."""
    ph = Placeholders(paramstyle)
    value = ph.next("epoch", new_epoch())
    sql = (
        f"INSERT INTO {META_TABLE} (name, value) SELECT 'epoch', {value} "
        f"WHERE NOT EXISTS (SELECT 1 FROM {META_TABLE} WHERE name = 'epoch')"
    )
    if dialect == "mysql":
        # MySQL refuses a subquery on the table being inserted into without a derived table.
        sql = (
            f"INSERT INTO {META_TABLE} (name, value) SELECT 'epoch', {value} FROM DUAL "
            f"WHERE NOT EXISTS (SELECT 1 FROM (SELECT name FROM {META_TABLE}) AS m "
            "WHERE m.name = 'epoch')"
        )
    return sql, ph.params


class Placeholders:
    """Builds bind placeholders for any DB-API paramstyle, collecting the values."""

    __slots__ = ("_named", "_positional", "paramstyle")

    def __init__(self, paramstyle: str) -> None:
        if paramstyle not in ("qmark", "numeric", "named", "format", "pyformat", "numeric_dollar"):
            raise ConfigurationError(f"unsupported DB-API paramstyle {paramstyle!r}")
        self.paramstyle = paramstyle
        self._positional: list[Any] = []
        self._named: dict[str, Any] = {}

    def next(self, name: str, value: Any) -> str:
        style = self.paramstyle
        if style in ("named", "pyformat"):
            name = f"{name}_{len(self._named)}"
            self._named[name] = value
            return f":{name}" if style == "named" else f"%({name})s"
        self._positional.append(value)
        n = len(self._positional)
        if style == "qmark":
            return "?"
        if style == "format":
            return "%s"
        if style == "numeric":
            return f":{n}"
        return f"${n}"

    @property
    def params(self) -> Params:
        if self.paramstyle in ("named", "pyformat"):
            return self._named
        return self._positional


def bump_statements(
    dialect: Dialect, keys: Sequence[str], paramstyle: str
) -> list[tuple[str, Params]]:
    """The statements that bump ``keys`` (already sorted and unique) by one each.

    Everything travels as parameters, so the statement text depends only on the number of
    keys and drivers can reuse prepared statements across transactions.
    """
    token = secrets.token_hex(8)
    now_ms = int(time.time() * 1000)
    out: list[tuple[str, Params]] = []
    for start in range(0, len(keys), BUMP_CHUNK):
        ph = Placeholders(paramstyle)
        rows = ", ".join(
            f"({ph.next('k', k)}, 1, {ph.next('h', token)}, {ph.next('t', now_ms)})"
            for k in keys[start : start + BUMP_CHUNK]
        )
        head = f"INSERT INTO {VERSIONS_TABLE} (key_name, version, hash, updated_at) VALUES {rows} "
        if dialect == "mysql":
            tail = (
                "ON DUPLICATE KEY UPDATE version = version + 1, hash = VALUES(hash), "
                "updated_at = VALUES(updated_at)"
            )
        else:
            tail = (
                f"ON CONFLICT (key_name) DO UPDATE SET version = {VERSIONS_TABLE}.version + 1, "
                "hash = excluded.hash, updated_at = excluded.updated_at"
            )
        out.append((head + tail, ph.params))
    return out


def run_bump(dbapi_conn: Any, dialect: Dialect, keys: Sequence[str], paramstyle: str) -> None:
    """Execute the bump of ``keys`` on a DB-API connection inside its open transaction.

    On failure the transaction is rolled back (so none of it can commit) and
    :class:`~reality_core.errors.WritePathError` is raised with a hint when the tables are
    missing. Plugins call this right before they let COMMIT through.
    """
    try:
        cursor = dbapi_conn.cursor()
        try:
            for sql, params in bump_statements(dialect, keys, paramstyle):
                cursor.execute(sql, params)
        finally:
            cursor.close()
    except Exception as exc:
        # The original error is the one worth reporting, not a failing rollback.
        with contextlib.suppress(Exception):
            dbapi_conn.rollback()
        raise bump_failed(exc, len(keys)) from exc


def bump_failed(exc: BaseException, count: int) -> WritePathError:
    hint = ""
    text = str(exc).lower()
    if VERSIONS_TABLE in text or "no such table" in text or "does not exist" in text:
        hint = ' Create the tables: run "reality migrate" or the plugin\'s create_tables().'
    return WritePathError(
        f"bumping {count} key(s) failed, so the transaction was rolled back: {exc}.{hint}"
    )


def read_statement(keys: Collection[str], paramstyle: str) -> tuple[str, Params]:
    """One statement, one snapshot: the rows of ``keys``, every escalation marker, the epoch."""
    ph = Placeholders(paramstyle)
    in_list = ", ".join(ph.next("k", k) for k in keys) if keys else "NULL"
    lo = ph.next("lo", ESCALATION_PREFIX)
    hi = ph.next("hi", ESCALATION_PREFIX[:-1] + chr(ord(ESCALATION_PREFIX[-1]) + 1))
    sql = (
        f"SELECT 0, key_name, version, hash, updated_at FROM {VERSIONS_TABLE} "
        f"WHERE key_name IN ({in_list}) OR (key_name >= {lo} AND key_name < {hi}) "
        f"UNION ALL SELECT 1, name, 0, value, 0 FROM {META_TABLE} WHERE name = 'epoch'"
    )
    return sql, ph.params


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """What the protocol reports for a key: version 0 means never written."""

    key: str
    version: int
    hash: str
    updated_at: int

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "version": self.version, "hash": self.hash,
                "updatedAt": self.updated_at}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Versions of the requested keys, escalations applied, plus the store's epoch."""

    epoch: str
    versions: Mapping[str, VersionInfo]

    def version(self, key: str) -> int:
        info = self.versions.get(key)
        return info.version if info is not None else 0


def snapshot_from_rows(keys: Iterable[str], rows: Iterable[Sequence[Any]]) -> Snapshot:
    """Turn the rows of :func:`read_statement` into a :class:`Snapshot`.

    A key's version is its own counter plus every escalation marker it starts with. Both
    only grow, so the sum grows whenever either does and never repeats.
    """
    own: dict[str, tuple[int, str, int]] = {}
    markers: list[tuple[str, int, str, int]] = []
    epoch = ""
    for src, raw_name, version, hash_, updated in rows:
        # MySQL/MariaDB keep keys as VARBINARY: decode them to compare with the request.
        name = raw_name.decode() if isinstance(raw_name, bytes | bytearray) else raw_name
        if int(src) == 1:
            epoch = str(hash_)
        elif name.startswith(ESCALATION_PREFIX):
            markers.append((name[len(ESCALATION_PREFIX) :], int(version), hash_, int(updated)))
            own[name] = (int(version), hash_, int(updated))
        else:
            own[name] = (int(version), hash_, int(updated))
    if not epoch:
        from .errors import StoreError

        raise StoreError(
            f"the {META_TABLE} table has no epoch row; create the tables with create_tables() "
            'or run "reality migrate" (alembic upgrade reality@head)'
        )
    result: dict[str, VersionInfo] = {}
    for key in keys:
        version, hash_, updated = own.get(key, (0, "", 0))
        hashes = [hash_]
        for prefix, m_version, m_hash, m_updated in markers:
            if key.startswith(prefix):
                version += m_version
                hashes.append(m_hash)
                updated = max(updated, m_updated)
        if version == 0:
            continue
        if len(hashes) > 1:
            hash_ = hashlib.sha1("|".join(hashes).encode()).hexdigest()[:16]
        result[key] = VersionInfo(key, version, hash_, updated)
    return Snapshot(epoch=epoch, versions=result)
