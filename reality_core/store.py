"""The version store: the metadata tables, and the SQL that bumps, reads and folds versions.

Three tables live in the application's own database::

    reality_log(id, key_name, created_at, txid)             one row per key per commit
    reality_versions(key_name, version, hash, updated_at)   folded counts, one row per key
    reality_meta(name, value)                                holds ("epoch", <uuid>)

``key_name`` compares bytewise on every dialect (``COLLATE "C"`` on PostgreSQL, UTF-8
bytes in a ``VARBINARY`` on MySQL/MariaDB, SQLite's default BINARY): keys are case-sensitive,
the sorted bump order is the same in Python and in the database, and the escalation markers
(``$esc:...``) are found with an index range scan.

Writing: a transaction's bump *appends* one log row per key (sorted, one statement). No
writer updates a shared row, so a hot key (every insert bumps its table key) is not a lock
that writers queue on until COMMIT: appends of concurrent transactions never wait for each
other. This is what keeps 32 writers on one table from serialising (see the README's
Performance section for the figures and the alternatives that lost).

Reading: a key's version is its folded count plus the number of its log rows, read in one
statement (one snapshot). Every committed transaction that touched the key added exactly
one row, so versions rise by one per commit, and a transaction that commits late is still
counted (no cursor to skip it).

Folding (:func:`fold`) moves log rows into ``reality_versions`` in one transaction: delete a
batch of log rows and add their counts, atomically. Readers see either the rows or the
counts, never both or neither, so no version goes backwards or repeats; folded rows never
come back, so a version is never reused (I8). Folding takes row locks only on
``reality_versions`` rows, which writers never touch, and skips log rows another folder
holds. It keeps the log, and so storage, bounded by the folding interval.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from .errors import ConfigurationError, StoreError, WritePathError
from .keys import ESCALATION_PREFIX

Dialect = Literal["postgresql", "sqlite", "mysql"]
DIALECTS: Final[tuple[Dialect, ...]] = ("postgresql", "sqlite", "mysql")
VERSIONS_TABLE: Final = "reality_versions"
LOG_TABLE: Final = "reality_log"
META_TABLE: Final = "reality_meta"
#: Where ``reality migrate`` records its alembic revisions (never a user's alembic_version).
MIGRATE_VERSION_TABLE: Final = "reality_alembic_version"
#: Reality's own tables: never tracked (I10), never proposed for a drop by autogenerate.
OWN_TABLES: Final = frozenset({VERSIONS_TABLE, LOG_TABLE, META_TABLE, MIGRATE_VERSION_TABLE})
#: Log rows moved per fold transaction: enough for a second of a busy log, so each fold
#: rewrites a key's count row once (every rewrite is a dead row until VACUUM).
FOLD_BATCH: Final = 100_000
#: Keys per bump statement; larger transactions send several statements, still sorted.
BUMP_CHUNK: Final = 500

Params = Sequence[Any] | Mapping[str, Any]
#: PostgreSQL: a bump also sends ``NOTIFY reality`` so server caches refresh at once
#: (:mod:`reality_core.wakeups`). A notifying transaction holds a database-wide lock through
#: its COMMIT, which serialises every notifying commit (measured here: 8 writers kept 71 %
#: of their throughput, 32 kept 51 %), so a bump notifies only when it wins an advisory lock
#: at once: one lock per WAKE_GAP_MS time slot, so at most one notifying transaction per
#: slot (measured: no loss), and a transaction that won one and then sits open holds back
#: only its own slot. A commit that sent nothing is seen by the cache's next refresh: it
#: refreshes once more shortly after each wake-up while its budget allows, and polls anyway.
#: Wake-ups are a latency aid; the caches' polling never depends on them.
#: ``wake_sql(ms)``: the condition and the action, given an SQL expression for the current
#: time in milliseconds.
WAKE_CHANNEL: Final = "reality"
WAKE_LOCK: Final = 0x5245  # pg_try_advisory_xact_lock(21061, <time slot>): "RE"
WAKE_GAP_MS: Final = 5
NOW_MS: Final = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"


def wake_sql(ms: str) -> tuple[str, str]:
    slot = f"mod(({ms}) / {WAKE_GAP_MS}, 2147483647)::int"  # (no '%': drivers read it)
    return (f"pg_try_advisory_xact_lock({WAKE_LOCK}, {slot})",
            f"pg_notify('{WAKE_CHANNEL}', '')")


#: The writing transaction's id, as reality_log.txid's default on PostgreSQL: trigger-mode
#: bumps and Python bumps of one transaction share it, and a key counts once per txid.
CURRENT_TXID: Final = "pg_current_xact_id()::text::bigint"
#: Log rows of one key counted as transactions: rows sharing a txid are one bump (I6); rows
#: without one (SQLite, MySQL, rows from before reality_0003) are each their own.
LOG_COUNT: Final = "COUNT(DISTINCT txid) + SUM(CASE WHEN txid IS NULL THEN 1 ELSE 0 END)"


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
    """DDL for the three tables, idempotent (``IF NOT EXISTS``)."""
    if dialect == "postgresql":
        key_type = 'VARCHAR(256) COLLATE "C"'
        suffix = ""
        log_id = "BIGSERIAL"
        txid = f"txid BIGINT DEFAULT ({CURRENT_TXID}), "
    elif dialect == "mysql":
        # Bytes, not a _bin collation: utf8mb4_bin pads with spaces, so 'room ' = 'room'.
        key_type = "VARBINARY(1024)"
        suffix = " ENGINE=InnoDB"
        log_id = "BIGINT NOT NULL AUTO_INCREMENT"
        txid = "txid BIGINT, "
    else:
        key_type = "VARCHAR(256)"
        suffix = ""
        log_id = "INTEGER NOT NULL"
        txid = "txid BIGINT, "
    return [
        f"CREATE TABLE IF NOT EXISTS {LOG_TABLE} ("
        f"id {log_id}, "
        f"key_name {key_type} NOT NULL, "
        "created_at BIGINT NOT NULL"
        + ", " + txid.rstrip(", ")
        # No index on key_name: every commit would pay for it, and the log is short (folded
        # every second); caches read it whole. On PostgreSQL not even a primary key: folds go
        # by txid, and a log without an index is a bare heap that VACUUM truncates to nothing
        # once folded, where an index would keep the size of the log's peak for good.
        + ("" if dialect == "postgresql" else f", CONSTRAINT pk_{LOG_TABLE} PRIMARY KEY (id)")
        + f"){suffix}",
        # Deletes from a table without a key need a replica identity if the database
        # publishes all tables for logical replication.
        *([f"ALTER TABLE {LOG_TABLE} REPLICA IDENTITY FULL"] if dialect == "postgresql"
          else []),
        f"CREATE TABLE IF NOT EXISTS {VERSIONS_TABLE} ("
        f"key_name {key_type} NOT NULL, "
        "version BIGINT NOT NULL, "
        "hash VARCHAR(64) NOT NULL, "
        "updated_at BIGINT NOT NULL, "
        "fold_seq BIGINT NOT NULL DEFAULT 0, "
        + (f"INDEX ix_{VERSIONS_TABLE}_fold_seq (fold_seq), " if dialect == "mysql" else "")
        + f"CONSTRAINT pk_{VERSIONS_TABLE} PRIMARY KEY (key_name)){suffix}",
        *([] if dialect == "mysql" else
          [f"CREATE INDEX IF NOT EXISTS ix_{VERSIONS_TABLE}_fold_seq "
           f"ON {VERSIONS_TABLE} (fold_seq)"]),
        f"CREATE TABLE IF NOT EXISTS {META_TABLE} ("
        "name VARCHAR(64) NOT NULL, "
        "value VARCHAR(256) NOT NULL, "
        f"CONSTRAINT pk_{META_TABLE} PRIMARY KEY (name)){suffix}",
    ]


def new_epoch() -> str:
    return secrets.token_hex(16)


def insert_epoch_statement(dialect: Dialect, paramstyle: str) -> tuple[str, Params]:
    """Insert the ``epoch`` and ``fold_seq`` rows of ``reality_meta`` where missing (safe to
    run twice; an existing epoch is kept, so clients never drop what they know)."""
    ph = Placeholders(paramstyle)
    value = ph.next("epoch", new_epoch())
    rows = f"(SELECT 'epoch' AS n, {value} AS v UNION ALL SELECT 'fold_seq', '0') AS m"
    # MySQL refuses a subquery on the table being inserted into without a derived table.
    existing = (f"(SELECT name FROM {META_TABLE}) AS e" if dialect == "mysql"
                else f"{META_TABLE} AS e")
    sql = (f"INSERT INTO {META_TABLE} (name, value) SELECT n, v FROM {rows} "
           f"WHERE NOT EXISTS (SELECT 1 FROM {existing} WHERE e.name = m.n)")
    return sql, ph.params


def reset_epoch_statement(paramstyle: str) -> tuple[str, Params]:
    """Give the store a new epoch: every client drops what it knows at its next sync. Run it
    after restoring a backup, when versions may have gone back."""
    ph = Placeholders(paramstyle)
    return (f"UPDATE {META_TABLE} SET value = {ph.next('epoch', new_epoch())} "
            "WHERE name = 'epoch'", ph.params)


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
    """The statements that bump ``keys`` (already sorted and unique) by one each: appends
    to the log. Everything travels as parameters, so the statement text depends only on the
    number of keys and drivers can reuse prepared statements across transactions."""
    now_ms = int(time.time() * 1000)
    out: list[tuple[str, Params]] = []
    for start in range(0, len(keys), BUMP_CHUNK):
        ph = Placeholders(paramstyle)
        rows = ", ".join(
            f"({ph.next('k', k)}, {ph.next('t', now_ms)})"
            for k in keys[start : start + BUMP_CHUNK]
        )
        sql = f"INSERT INTO {LOG_TABLE} (key_name, created_at) VALUES {rows}"
        if dialect == "postgresql" and start == 0:
            # An uncorrelated scalar subquery runs once per statement (an InitPlan).
            gate, notify = wake_sql(NOW_MS)
            sql += f" RETURNING (SELECT CASE WHEN {gate} THEN {notify}::text END)"
        out.append((sql, ph.params))
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
    """One statement, one snapshot: folded counts and log counts of ``keys`` and of every
    escalation marker, plus the epoch. The key list and the marker range are separate
    branches so each is an index lookup (``IN (...) OR range`` makes PostgreSQL scan the
    whole table); ``UNION`` drops the duplicate when a requested key is itself a marker."""
    ph = Placeholders(paramstyle)

    def in_list() -> str:
        return ", ".join(ph.next("k", k) for k in keys) if keys else "NULL"

    def markers() -> str:
        lo = ph.next("lo", ESCALATION_PREFIX)
        hi = ph.next("hi", ESCALATION_PREFIX[:-1] + chr(ord(ESCALATION_PREFIX[-1]) + 1))
        return f"key_name >= {lo} AND key_name < {hi}"

    sql = (
        f"SELECT 0, key_name, version, updated_at FROM {VERSIONS_TABLE} "
        f"WHERE key_name IN ({in_list()}) "
        f"UNION SELECT 0, key_name, version, updated_at FROM {VERSIONS_TABLE} WHERE {markers()} "
        f"UNION SELECT 2, key_name, {LOG_COUNT}, MAX(created_at) FROM {LOG_TABLE} "
        f"WHERE key_name IN ({in_list()}) GROUP BY key_name "
        f"UNION SELECT 2, key_name, {LOG_COUNT}, MAX(created_at) FROM {LOG_TABLE} "
        f"WHERE {markers()} GROUP BY key_name "
        f"UNION SELECT 1, value, 0, 0 FROM {META_TABLE} WHERE name = 'epoch'"
    )
    return sql, ph.params


def fold(dbapi_conn: Any, dialect: Dialect, paramstyle: str, batch: int = FOLD_BATCH) -> int:
    """Fold up to ``batch`` log rows into ``reality_versions``, in a transaction of its own
    on ``dbapi_conn`` (in autocommit mode: this function sends BEGIN itself); returns the
    number of rows folded. Safe to run from several processes at once.

    Folds are serialised by the ``fold_seq`` row of ``reality_meta``: a fold locks it, moves
    its batch, stamps every ``reality_versions`` row it changed with the next sequence number
    and commits, so folds commit in sequence order and a reader that has seen sequence *n*
    finds every later change with ``fold_seq > n`` (see :func:`refresh_statement`). A folder
    that finds the row locked returns 0 at once instead of waiting: another one is folding.
    """
    cur = dbapi_conn.cursor()
    try:
        if dialect == "mysql":
            # READ COMMITTED takes no gap locks, so the fold's locking reads and DELETE never
            # block (or deadlock with) writers appending to the log under REPEATABLE READ.
            cur.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        if dialect != "postgresql" or getattr(dbapi_conn, "autocommit", False):
            # (A PostgreSQL driver outside autocommit has begun a transaction already.)
            cur.execute({"sqlite": "BEGIN IMMEDIATE", "mysql": "START TRANSACTION"}.get(
                dialect, "BEGIN"))
        skip = "" if dialect == "sqlite" else " FOR UPDATE SKIP LOCKED"
        cur.execute(f"SELECT value FROM {META_TABLE} WHERE name = 'fold_seq'{skip}")
        row = cur.fetchone()
        if row is None:
            dbapi_conn.rollback()
            _ensure_fold_seq_row(cur, dialect)
            return 0
        seq = int(as_text(row[0])) + 1
        if dialect == "postgresql":
            moved = _fold_postgresql(cur, paramstyle, batch, seq)
        else:
            moved = _fold_locking_read(cur, dialect, paramstyle, batch, seq)
        if not moved:
            dbapi_conn.rollback()
            return 0
        ph = Placeholders(paramstyle)
        cur.execute(f"UPDATE {META_TABLE} SET value = {ph.next('s', str(seq))} "
                    "WHERE name = 'fold_seq'", ph.params)
        dbapi_conn.commit()
        return moved
    except BaseException:
        with contextlib.suppress(Exception):
            dbapi_conn.rollback()
        raise
    finally:
        cur.close()


def _ensure_fold_seq_row(cur: Any, dialect: Dialect) -> None:
    """Add the ``fold_seq`` row to a store made before it existed (autocommit: no lock is
    held; a concurrent folder adding it too is not an error)."""
    cur.execute(f"SELECT 1 FROM {META_TABLE} WHERE name = 'fold_seq'")
    if cur.fetchone() is not None:
        return  # it exists: another folder holds it
    ignore = {"postgresql": ("", " ON CONFLICT DO NOTHING"), "sqlite": (" OR IGNORE", ""),
              "mysql": (" IGNORE", "")}[dialect]
    cur.execute(f"INSERT{ignore[0]} INTO {META_TABLE} (name, value) "
                f"VALUES ('fold_seq', '0'){ignore[1]}")


def _fold_postgresql(cur: Any, paramstyle: str, batch: int, seq: int) -> int:
    # One statement: the rows deleted are exactly the rows counted. The batch ends on a
    # transaction boundary (every row of each txid <= the bound), so a transaction's rows of
    # one key are never split between two folds and counted twice. Folds are serialised on
    # the fold_seq row, and writers never touch log rows, so nothing here waits on a lock.
    ph = Placeholders(paramstyle)
    limit = ph.next("n", batch)
    stamp = ph.next("s", seq)
    cur.execute(
        f"WITH bound AS (SELECT MAX(txid) AS b FROM (SELECT txid FROM {LOG_TABLE} "
        f"WHERE txid IS NOT NULL ORDER BY txid LIMIT {limit}) f), "
        f"moved AS (DELETE FROM {LOG_TABLE} WHERE txid IS NULL OR txid <= (SELECT b FROM bound) "
        "RETURNING key_name, created_at, txid), "
        "counted AS (SELECT key_name, COUNT(DISTINCT txid) + COUNT(*) FILTER "
        "(WHERE txid IS NULL) AS n, MAX(created_at) AS t FROM moved "
        "GROUP BY key_name ORDER BY key_name), "
        f"applied AS (INSERT INTO {VERSIONS_TABLE} (key_name, version, hash, updated_at, "
        f"fold_seq) SELECT key_name, n, '', t, {stamp} FROM counted "
        "ON CONFLICT (key_name) DO UPDATE SET "
        f"version = {VERSIONS_TABLE}.version + excluded.version, "
        f"updated_at = GREATEST({VERSIONS_TABLE}.updated_at, excluded.updated_at), "
        "fold_seq = excluded.fold_seq "
        "RETURNING 1) SELECT COALESCE(SUM(n), 0) FROM counted",
        ph.params,
    )
    (moved,) = cur.fetchone()
    return int(moved)


def _fold_locking_read(cur: Any, dialect: Dialect, paramstyle: str, batch: int,
                       seq: int) -> int:
    # SQLite (one writer at a time) and MySQL/MariaDB (locking reads): read the batch with
    # locks, apply the counts, delete exactly those rows, all in the caller's transaction.
    ph = Placeholders(paramstyle)
    limit = ph.next("n", batch)
    lock = " FOR UPDATE SKIP LOCKED" if dialect == "mysql" else ""
    cur.execute(
        f"SELECT id, key_name, created_at, txid FROM {LOG_TABLE} ORDER BY id "
        f"LIMIT {limit}{lock}",
        ph.params,
    )
    rows = cur.fetchall()
    if not rows:
        return 0
    counts: dict[Any, list[int]] = {}
    seen: set[tuple[Any, int]] = set()
    for _, key, created, txid in rows:
        # (No triggers here, so txid is NULL and every row is a transaction's one bump.)
        if txid is not None:
            if (key, txid) in seen:
                continue
            seen.add((key, txid))
        entry = counts.setdefault(key, [0, 0])
        entry[0] += 1
        entry[1] = max(entry[1], int(created))
    for key in sorted(counts):
        n, t = counts[key]
        ph = Placeholders(paramstyle)
        k, v, u = ph.next("k", key), ph.next("v", n), ph.next("u", t)
        s = ph.next("s", seq)
        if dialect == "mysql":
            sql = (f"INSERT INTO {VERSIONS_TABLE} (key_name, version, hash, updated_at, "
                   f"fold_seq) VALUES ({k}, {v}, '', {u}, {s}) ON DUPLICATE KEY UPDATE "
                   "version = version + VALUES(version), "
                   "updated_at = GREATEST(updated_at, VALUES(updated_at)), "
                   "fold_seq = VALUES(fold_seq)")
        else:
            sql = (f"INSERT INTO {VERSIONS_TABLE} (key_name, version, hash, updated_at, "
                   f"fold_seq) VALUES ({k}, {v}, '', {u}, {s}) ON CONFLICT (key_name) "
                   f"DO UPDATE SET version = {VERSIONS_TABLE}.version + excluded.version, "
                   f"updated_at = MAX({VERSIONS_TABLE}.updated_at, excluded.updated_at), "
                   "fold_seq = excluded.fold_seq")
        cur.execute(sql, ph.params)
    for start in range(0, len(rows), BUMP_CHUNK):
        ph = Placeholders(paramstyle)
        ids = ", ".join(ph.next("i", r[0]) for r in rows[start : start + BUMP_CHUNK])
        cur.execute(f"DELETE FROM {LOG_TABLE} WHERE id IN ({ids})", ph.params)
    return len(rows)


def refresh_statement(cursor: int, paramstyle: str) -> tuple[str, Params]:
    """One statement, one snapshot, for a cache that has seen folds up to ``cursor``: the
    folded rows changed since (``fold_seq > cursor``), the whole log counted per key (short:
    folding keeps it so), the epoch (source 1) and the current ``fold_seq`` (source 3).
    Rows are ``(source, key_name, version, updated_at)``; source 0 folded, 2 log."""
    ph = Placeholders(paramstyle)
    after = ph.next("c", cursor)
    sql = (
        f"SELECT 0, key_name, version, updated_at FROM {VERSIONS_TABLE} "
        f"WHERE fold_seq > {after} "
        f"UNION ALL SELECT 2, key_name, {LOG_COUNT}, MAX(created_at) FROM {LOG_TABLE} "
        "GROUP BY key_name "
        f"UNION ALL SELECT 1, value, 0, 0 FROM {META_TABLE} WHERE name = 'epoch' "
        f"UNION ALL SELECT 3, value, 0, 0 FROM {META_TABLE} WHERE name = 'fold_seq'"
    )
    return sql, ph.params


def page_statement(after: str | None, limit: int, paramstyle: str) -> tuple[str, Params]:
    """A page of folded counts in key order (a cache's full load): ``(key_name, version,
    updated_at)`` of up to ``limit`` keys after ``after``."""
    ph = Placeholders(paramstyle)
    where = "" if after is None else f"WHERE key_name > {ph.next('a', after)} "
    sql = (f"SELECT key_name, version, updated_at FROM {VERSIONS_TABLE} {where}"
           f"ORDER BY key_name LIMIT {ph.next('n', limit)}")
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
    #: Log rows (not yet folded) this read counted: a hint that folding is due.
    pending: int = 0

    def version(self, key: str) -> int:
        info = self.versions.get(key)
        return info.version if info is not None else 0


def key_hash(epoch: str, key: str, version: int) -> str:
    """The protocol's opaque hash: changes whenever the version does."""
    return hashlib.sha1(f"{epoch}|{key}|{version}".encode()).hexdigest()[:16]


def as_text(value: Any) -> str:
    """A key or meta value as read: MySQL/MariaDB return ``key_name`` (VARBINARY), and text
    UNIONed with it, as bytes."""
    return value.decode() if isinstance(value, bytes | bytearray) else str(value)


def no_epoch_error() -> StoreError:
    return StoreError(
        f"the {META_TABLE} table has no epoch row; create the tables with create_tables() "
        'or run "reality migrate" (alembic upgrade reality@head)'
    )


def snapshot_from_rows(keys: Iterable[str], rows: Iterable[Sequence[Any]]) -> Snapshot:
    """Turn the rows of :func:`read_statement` into a :class:`Snapshot`.

    A key's version is its folded count plus its log rows plus the same for every
    escalation marker it starts with. Every part only grows, so the sum grows whenever one
    does and never repeats.
    """
    own: dict[str, list[int]] = {}
    epoch = ""
    pending = 0
    for src, raw_name, version, updated in rows:
        if int(src) == 1:
            epoch = as_text(raw_name)
            continue
        if int(src) == 2:
            pending += int(version)
        name = as_text(raw_name)
        entry = own.setdefault(name, [0, 0])
        entry[0] += int(version)
        entry[1] = max(entry[1], int(updated or 0))
    if not epoch:
        raise no_epoch_error()
    markers = [(name[len(ESCALATION_PREFIX):], v, t) for name, (v, t) in own.items()
               if name.startswith(ESCALATION_PREFIX)]
    result: dict[str, VersionInfo] = {}
    for key in keys:
        version, updated = own.get(key, (0, 0))
        for prefix, m_version, m_updated in markers:
            if key.startswith(prefix):
                version += m_version
                updated = max(updated, m_updated)
        if version:
            result[key] = VersionInfo(key, version, key_hash(epoch, key, version), updated)
    return Snapshot(epoch=epoch, versions=result, pending=pending)
