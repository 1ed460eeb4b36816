"""Trigger mode (PostgreSQL): the database bumps a tracked table's keys itself.

Usage::

    reality_sqlalchemy.create_triggers(engine)     # or reality_peewee / reality_tortoise

creates, for every tracked table, one PL/pgSQL function and four statement-level triggers
(``AFTER INSERT/UPDATE/DELETE`` with transition tables, ``AFTER TRUNCATE``). Each write
statement then appends its table, row and template keys (old *and* new rows) to
``reality_log`` from inside the statement: no extra round trip before COMMIT, no key work in
Python, and writers outside the ORM (psql, other services, ``ON DELETE CASCADE``) are seen
too. Savepoints and rollbacks need nothing: the appended rows are part of the statement.

The plugins notice the triggers on each new database connection (one catalog query) and
stop computing keys for the tables they cover; tables without a trigger, or whose trigger
was made from another declaration (a *stale* trigger: it is logged), stay on the Python
path. Both paths may bump the same key in one transaction: every log row carries its
transaction id (``reality_log.txid``) and a key counts once per transaction, so a version
still rises by exactly one per committed transaction (I6).

Contract and limits:

* Key columns (primary key, template fields, link columns) must be ``smallint``,
  ``integer``, ``bigint``, ``text``, ``varchar`` or ``uuid``: types whose text form in
  PostgreSQL is the one Python's ``str()`` gives, so both paths make the same key.
  :func:`trigger_statements` refuses any other type, naming the column.
* Once a transaction has written more than ``max_keys`` rows of a table, its statements
  escalate the table instead (every derived key reads as changed), as the Python path does:
  a 100,000-row UPDATE appends a handful of log rows, not 100,000. Where every key column is
  NOT NULL, each statement's row count is read off its own log INSERT (``GET DIAGNOSTICS``)
  and at most ``max_keys + 1`` rows of an image are keyed; otherwise a count query does it.
  Keys the transaction's earlier statements appended one by one are deleted then (the
  markers cover them), so every key still moves by exactly one. The trigger counts rows,
  the Python path keys of a kind; both over-, never under-invalidate.
* Dropping a trigger by hand while processes run leaves those processes believing the table
  is covered until they reconnect: use ``drop_triggers()`` and restart the app processes.
* The triggers hold the declaration they were made from; change a declaration (a new
  template, another ``max_keys``) and run ``create_triggers`` again (it replaces them).
"""

from __future__ import annotations

import hashlib
import logging
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from .errors import ConfigurationError
from .keys import (
    ESCALATION_PREFIX,
    MAX_KEY_LENGTH,
    ROW_PREFIX,
    TABLE_PREFIX,
    Declaration,
    KeyTemplate,
)
from .store import CURRENT_TXID, LOG_TABLE, NOW_MS, as_text, wake_sql

log = logging.getLogger("reality.triggers")

#: Bumped when the generated SQL changes shape: older triggers then read as stale.
FORMAT: Final = 3
TRIGGER_PREFIX: Final = "reality_bump"
#: (trigger name suffix, event, REFERENCING clause)
EVENTS: Final = (
    ("ins", "INSERT", "REFERENCING NEW TABLE AS reality_new"),
    ("upd", "UPDATE", "REFERENCING OLD TABLE AS reality_old NEW TABLE AS reality_new"),
    ("del", "DELETE", "REFERENCING OLD TABLE AS reality_old"),
    ("trn", "TRUNCATE", ""),
)
#: PostgreSQL types whose ``::text`` equals Python's ``str()`` of the driver's value.
TEXT_SAFE: Final = frozenset({"int2", "int4", "int8", "text", "varchar", "uuid"})
_TEXTUAL: Final = frozenset({"text", "varchar"})
_COMMENT_PREFIX: Final = "reality trigger "
#: The transaction-local row count once a table has escalated (far above any max_keys).
ESCALATED: Final = 1 << 60
#: The function's block label. PL/pgSQL refuses a statement in which a name could be a
#: variable or a column, and a tracked table may have a column of any name: inside SQL the
#: function names its variables through the label (``reality_fn.reality_ms``), and
#: ``#variable_conflict use_column`` makes every unqualified name a column.
_LABEL: Final = "reality_fn"
_SELECTED: Final = f"{_LABEL}.reality_ms, {_LABEL}.reality_txid"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_table(table: str) -> str:
    schema, _, bare = table.rpartition(".")
    return f"{quote_ident(schema)}.{quote_ident(bare)}" if schema else quote_ident(bare)


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def function_name(table: str) -> str:
    """The trigger function of ``table``, in the table's schema. Table names are cut to fit
    PostgreSQL's 63-byte identifiers, with a hash so two long names never share one."""
    schema, _, bare = table.rpartition(".")
    name = f"{TRIGGER_PREFIX}_{bare}"
    if len(name.encode()) > 63:
        digest = hashlib.sha1(bare.encode()).hexdigest()[:8]
        name = f"{TRIGGER_PREFIX}_{bare.encode()[:40].decode(errors='ignore')}_{digest}"
    return f"{quote_ident(schema)}.{quote_ident(name)}" if schema else quote_ident(name)


@dataclass(frozen=True, slots=True)
class TriggerSpec:
    """What one table's triggers compute: its declaration, the escalation limit and the keys
    its deletes cascade into. Equal specs make equal triggers (see :attr:`signature`)."""

    declaration: Declaration
    max_keys: int | None
    cascade_keys: tuple[str, ...] = ()

    @property
    def table(self) -> str:
        return self.declaration.table

    @property
    def key_columns(self) -> tuple[str, ...]:
        """The declared columns the keys are made of (primary key, templates, links)."""
        d = self.declaration
        cols = list(d.primary_key) if d.row_keys else []
        cols += [f for t in d.templates for f in t.fields]
        cols += [c for c, _, _ in d.links]
        return tuple(dict.fromkeys(cols))

    @property
    def signature(self) -> str:
        d = self.declaration
        parts = [
            str(FORMAT), d.table, str(d.table_key), str(d.row_keys),
            ",".join(f"{c}={d.sql_name(c)}" for c in d.primary_key),
            "|".join(t.pattern for t in d.templates),
            ";".join(f"{c}={d.sql_name(c)}" for t in d.templates for c in t.fields),
            ";".join(f"{c}={d.sql_name(c)}>{o}" for c, o, _ in d.links),
            str(self.max_keys), "|".join(self.cascade_keys),
        ]
        return hashlib.sha1("\x1f".join(parts).encode()).hexdigest()[:20]


def specs_for(declarations: Iterable[Declaration], max_keys: int | None,
              cascade_keys: Any) -> list[TriggerSpec]:
    """One spec per declaration; ``cascade_keys(table)`` is the catalog's."""
    return [TriggerSpec(d, max_keys, tuple(sorted(cascade_keys(d.table))))
            for d in declarations]


def column_types_statement(table: str) -> str:
    """``(column name, type name, NOT NULL)`` of ``table``'s columns (``typname``, e.g.
    ``int4``); no rows when the table does not exist."""
    return ("SELECT a.attname, t.typname, a.attnotnull FROM pg_attribute a JOIN pg_type t "
            "ON t.oid = a.atttypid WHERE a.attrelid = "
            f"to_regclass({quote_literal(quote_table(table))}) AND a.attnum > 0 "
            "AND NOT a.attisdropped")


def _part(column_sql: str) -> str:
    # Python's keys._encode_part: '%' first, then ':'. (E'\\x25' is '%': DB-API drivers
    # given no parameters may still read a bare percent sign as a placeholder.)
    return (f"replace(replace({column_sql}::text, E'\\x25', E'\\x2525'), ':', "
            "E'\\x253A')")


def _template_sql(template: KeyTemplate, d: Declaration) -> str:
    pieces: list[str] = []
    for literal, name, _, _ in string.Formatter().parse(template.pattern):
        if literal:
            pieces.append(quote_literal(literal))
        if name is not None:
            pieces.append(f"{quote_ident(d.sql_name(name))}::text")
    return " || ".join(pieces) if pieces else quote_literal(template.pattern)


def _row_keys(spec: TriggerSpec,
              not_null: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """(expression, NULL-check) pairs of the keys one row yields, over the columns of a
    transition table. A NULL field gives no key (``render`` -> None). Field-less templates
    are the same for every row: they are among the statement's fixed keys instead.

    With ``not_null`` (the SQL columns declared NOT NULL when the triggers are made), a key
    over such columns has no NULL check: every row yields exactly one key per expression,
    which lets the trigger count rows from the log rows it inserted (see
    :func:`_exact_counting`). Should a column lose its NOT NULL later, a NULL falls back to
    the marker of its key kind (every key of that kind reads as changed): over-, never
    under-invalidation, and never a failed write."""
    d = spec.declaration
    out: list[tuple[str, str]] = []
    if d.row_keys and d.primary_key:
        expr = quote_literal(f"{ROW_PREFIX}{d.table}:") + " || " + " || ':' || ".join(
            _part(quote_ident(d.sql_name(c))) for c in d.primary_key)
        out.append((expr, ""))
    for template in d.templates:
        if template.fields:
            columns = [d.sql_name(f) for f in template.fields]
            if all(c in not_null for c in columns):
                out.append((f"COALESCE({_template_sql(template, d)}, "
                            f"{quote_literal(template.escalation)})", ""))
                continue
            nulls = " AND ".join(f"{quote_ident(c)} IS NOT NULL" for c in columns)
            out.append((_template_sql(template, d), nulls))
    for column, other, _ in d.links:
        sql_name = d.sql_name(column)
        col = quote_ident(sql_name)
        expr = quote_literal(f"{ROW_PREFIX}{other}:") + f" || {_part(col)}"
        if sql_name in not_null:
            marker = quote_literal(f"{ESCALATION_PREFIX}{ROW_PREFIX}{other}:")
            out.append((f"COALESCE({expr}, {marker})", ""))
        else:
            out.append((expr, f"{col} IS NOT NULL"))
    return out


def _exact_counting(row_keys: Sequence[tuple[str, str]]) -> bool:
    """Every row yields exactly one key per expression (no NULL checks): the number of log
    rows a statement inserted tells its row count, and no separate count query is needed."""
    return bool(row_keys) and all(not notnull for _, notnull in row_keys)


def _selects(spec: TriggerSpec, images: Sequence[str], fixed: Iterable[str],
             row_keys: Sequence[tuple[str, str]] | None = None, cap: int | None = None) -> str:
    """One SELECT of ``(key, reality_ms, reality_txid)``: the ``fixed`` keys and every
    key of each image (of at most ``cap`` rows of each image, when given)."""
    branches = [f"SELECT {quote_literal(k)}, {_SELECTED}" for k in sorted(fixed)]
    if row_keys is None:
        row_keys = _row_keys(spec)
    for image in images if row_keys else ():  # (none: only fixed keys, e.g. a table key)
        source = image if cap is None else f"(SELECT * FROM {image} LIMIT {cap}) AS {image}"
        if len(row_keys) == 1:
            expr, notnull = row_keys[0]
            where = f" WHERE {notnull}" if notnull else ""
            branches.append(f"SELECT {expr}, {_SELECTED} FROM {source}{where}")
            continue
        # One scan of the image for all its keys (a branch per key scanned it once per key:
        # ~2 us of every write). A key expression is NULL exactly when one of its fields is
        # (|| and ::text keep NULL), so "IS NOT NULL" on the key is the fields' NULL check.
        values = ", ".join(f"({expr})" for expr, _ in row_keys)
        where = (" WHERE reality_key.key IS NOT NULL"
                 if any(notnull for _, notnull in row_keys) else "")
        branches.append(f"SELECT reality_key.key, {_SELECTED} FROM {source} CROSS JOIN "
                        f"LATERAL (VALUES {values}) AS reality_key(key){where}")
    # UNION ALL: a key twice in one statement is counted once anyway (once per txid), and
    # UNION's de-duplication was measured at ~10 us of every write.
    return " UNION ALL ".join(branches)


def _insert(select: str) -> str:
    # txid given once per statement rather than by the column default once per row.
    return f"INSERT INTO {LOG_TABLE} (key_name, created_at, txid) {select};"


def function_body(spec: TriggerSpec, column_types: Mapping[str, str],
                  not_null: Iterable[str] = ()) -> str:
    """The PL/pgSQL body of ``spec``'s trigger function. ``column_types`` maps SQL column
    names to ``typname``; a key column of another type than :data:`TEXT_SAFE` is refused.
    ``not_null``: the SQL columns declared NOT NULL (see :func:`_row_keys`)."""
    d = spec.declaration
    for column in spec.key_columns:
        sql_name = d.sql_name(column)
        typ = column_types.get(sql_name)
        if typ is None:
            raise ConfigurationError(
                f"{d.owner}: table {d.table} has no column {sql_name!r} in the database; "
                "create the table (run your migrations) before its triggers")
        if typ not in TEXT_SAFE:
            raise ConfigurationError(
                f"{d.owner}: column {d.table}.{sql_name} is {typ}; trigger mode makes keys "
                f"only from {', '.join(sorted(TEXT_SAFE))} columns (their text form is the "
                "same in PostgreSQL and Python). Leave this table out of create_triggers("
                "tables=...): the plugin keeps bumping it from Python")
    textual = [d.sql_name(c) for c in spec.key_columns if column_types[d.sql_name(c)] in _TEXTUAL]
    fixed = {f"{TABLE_PREFIX}{d.table}"} if d.table_key else set()
    fixed |= {t.pattern for t in d.templates if not t.fields}
    escalation = d.escalation_keys() | fixed
    limit = spec.max_keys
    row_keys = _row_keys(spec, frozenset(not_null))
    counter = quote_literal("reality.rows_" + hashlib.sha1(d.table.encode()).hexdigest()[:16])
    lines = [
        "#variable_conflict use_column",
        f"<<{_LABEL}>>",
        "DECLARE",
        f"  reality_ms bigint := {NOW_MS};",
        f"  reality_txid bigint := {CURRENT_TXID};",
        "  reality_n bigint;",
        "  reality_rows bigint;",
        "  reality_void text;",
        "BEGIN",
    ]
    # The wake-up gate on every statement. (Remembering the slot a session last tried, in a
    # session setting, halved the gate's cost with psycopg, but asyncpg's pool runs RESET
    # ALL on every release, which forgets it: there it cost more than it saved.)
    gate, notify = wake_sql("reality_ms")
    lines.append(f"  IF {gate} THEN  -- see store.wake_sql")
    lines.append(f"    PERFORM {notify};")
    lines.append("  END IF;")
    lines.append("  IF TG_OP = 'TRUNCATE' THEN")
    lines.append("    " + _insert(_selects(spec, [], set(escalation) | set(spec.cascade_keys))))
    lines.append("    RETURN NULL;")
    lines.append("  END IF;")
    for op, images in (("INSERT", ["reality_new"]), ("UPDATE", ["reality_old", "reality_new"]),
                       ("DELETE", ["reality_old"])):
        always = set(fixed) | (set(spec.cascade_keys) if op == "DELETE" else set())
        lines.append(f"  IF TG_OP = '{op}' THEN")
        if textual:
            # Python refuses such keys (validate_key); so does the trigger (I7).
            cond = " OR ".join(f"{quote_ident(c)} ~ '[\\x01-\\x1f\\x7f-\\x9f]'"
                               for c in textual)
            table = d.table.replace(chr(39), chr(39) * 2)
            longest = " OR ".join(f"length({expr}) > {MAX_KEY_LENGTH}"
                                  for expr, _ in _row_keys(spec))  # (NULL: no key)
            for image in images:
                lines.append(f"    IF EXISTS (SELECT 1 FROM {image} WHERE {cond}) THEN")
                lines.append(f"      RAISE EXCEPTION 'reality: a key column of {table} holds "
                             "a control character; keys must not contain control "
                             "characters' USING ERRCODE = '22023';")
                lines.append("    END IF;")
                lines.append(f"    IF EXISTS (SELECT 1 FROM {image} WHERE {longest}) THEN")
                lines.append(f"      RAISE EXCEPTION 'reality: a row of {table} makes a key "
                             f"longer than {MAX_KEY_LENGTH} characters (the key rules); "
                             "shorten the value or the template' USING ERRCODE = '22001';")
                lines.append("    END IF;")
        exact = False
        if limit is not None and row_keys:
            # Rows this transaction has written to the table so far, this statement's
            # included, kept in a transaction-local setting (a rolled-back savepoint takes its
            # share back). (Not PostgreSQL's pg_stat_get_xact_* counters: they also hold
            # earlier transactions' counts until the backend flushes its statistics, so busy
            # single-row writers escalated.) Past max_keys the transaction's keys of the
            # table are taken back and its markers appended, as the Python path's compaction
            # does at COMMIT, and the count becomes ESCALATED: later statements append
            # nothing more, their markers being in the log already (a key counts once per
            # transaction).
            exact = _exact_counting(row_keys)
            current = f"COALESCE(NULLIF(current_setting({counter}, true), ''), '0')::bigint"
            if exact:
                lines.append(f"    reality_n := {current};")
            else:  # a row may lack some key (a NULL field): count the rows with a query
                lines.append(f"    reality_n := set_config({counter}, ({current} + (SELECT "
                             f"count(*) FROM (SELECT 1 FROM {images[-1]} LIMIT {limit + 1}) "
                             "AS reality_count))::text, true)::bigint;")
            lines.append(f"    IF reality_n >= {ESCALATED} THEN")
            if op == "DELETE" and spec.cascade_keys:
                lines.append("      " + _insert(_selects(spec, [], set(spec.cascade_keys))))
            lines.append("      RETURN NULL;")
            lines.append("    END IF;")
            markers = set(escalation) | always
            if exact:
                # Every row yields one key per expression: the statement's rows are read off
                # the number of log rows its INSERT appended (GET DIAGNOSTICS; a count query
                # was ~10 us of every write). Each image is keyed up to max_keys + 1 rows: a
                # larger statement escalates anyway, and appends (then takes back) at most
                # that many keys, not one per row. Its fixed keys are in the log already.
                lines.append("    " + _insert(_selects(spec, images, always, row_keys,
                                                        cap=limit + 1)))
                lines.append("    GET DIAGNOSTICS reality_rows = ROW_COUNT;")
                lines.append(f"    reality_n := reality_n + (reality_rows - {len(always)}) / "
                             f"{len(row_keys) * len(images)};")
                markers -= always
            lines.append(f"    IF reality_n > {limit} THEN")
            lines += _escalation_lines(spec, escalation, markers, counter)
            lines.append("    END IF;")
            if exact:
                # An assignment, not PERFORM: a plain expression skips the executor (~2 us).
                lines.append(f"    reality_void := set_config({counter}, reality_n::text, true);")
        if not exact:
            lines.append("    " + _insert(_selects(spec, images, always, row_keys)))
        lines.append("  END IF;")
    lines.append("  RETURN NULL;")
    lines.append("END")
    return "\n".join(lines)


def _escalation_lines(spec: TriggerSpec, escalation: set[str], markers: set[str],
                      counter: str) -> list[str]:
    """What a statement that takes its transaction past max_keys runs: take back the keys of
    the kinds the markers cover (earlier statements appended them one by one: each must
    still move by one, not two), append ``markers``, mark the count ESCALATED."""
    prefixes = sorted(k[len(ESCALATION_PREFIX):] for k in escalation
                      if k.startswith(ESCALATION_PREFIX))
    out = []
    if prefixes:
        covered = " OR ".join(f"starts_with(key_name::text, {quote_literal(p)})"
                              for p in prefixes)
        out.append(f"      DELETE FROM {LOG_TABLE} WHERE txid = {_LABEL}.reality_txid "
                   f"AND ({covered});")
    if markers:
        out.append("      " + _insert(_selects(spec, [], markers)))
    out.append(f"      reality_void := set_config({counter}, '{ESCALATED}', true);")
    out.append("      RETURN NULL;")
    return out


def trigger_statements(spec: TriggerSpec, column_types: Mapping[str, str],
                       not_null: Iterable[str] = ()) -> list[str]:
    """DDL that creates (or replaces) ``spec``'s function and its four triggers."""
    table = quote_table(spec.table)
    fn = function_name(spec.table)
    body = function_body(spec, column_types, not_null)
    tag, n = "$reality$", 0
    while tag in body:  # a template could hold the quote tag; pick one it does not
        n += 1
        tag = f"$reality{n}$"
    out = [
        f"CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS "
        f"{tag}\n{body}\n{tag}",
        f"COMMENT ON FUNCTION {fn}() IS {quote_literal(_COMMENT_PREFIX + spec.signature)}",
    ]
    for suffix, event, referencing in EVENTS:
        name = quote_ident(f"{TRIGGER_PREFIX}_{suffix}")
        out.append(f"DROP TRIGGER IF EXISTS {name} ON {table}")
        out.append(f"CREATE TRIGGER {name} AFTER {event} ON {table} {referencing} "
                   f"FOR EACH STATEMENT EXECUTE FUNCTION {fn}()")
    return out


def drop_statements(table: str) -> list[str]:
    """DDL that removes ``table``'s Reality triggers and function (safe when absent)."""
    quoted = quote_table(table)
    out = [f"DROP TRIGGER IF EXISTS {quote_ident(f'{TRIGGER_PREFIX}_{s}')} ON {quoted}"
           for s, _, _ in EVENTS]
    out.append(f"DROP FUNCTION IF EXISTS {function_name(table)}()")
    return out


#: Tables with all four Reality triggers enabled, and their function's comment.
FOUND_STATEMENT: Final = (
    "SELECT n.nspname, c.relname, obj_description(p.oid, 'pg_proc') "
    "FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
    "JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_proc p ON p.oid = t.tgfoid "
    "WHERE t.tgname IN ("
    + ", ".join(quote_literal(f"{TRIGGER_PREFIX}_{s}") for s, _, _ in EVENTS) + ") "
    "AND NOT t.tgisinternal AND t.tgenabled <> 'D' "
    "GROUP BY n.nspname, c.relname, p.oid "
    f"HAVING COUNT(*) = {len(EVENTS)}"
)


def covered_tables(dbapi_conn: Any, specs: Iterable[TriggerSpec]) -> frozenset[str]:
    """:func:`covered_from_rows` of :data:`FOUND_STATEMENT` run on a DB-API connection
    (PostgreSQL, inside whatever transaction it has)."""
    specs = list(specs)
    if not specs:
        return frozenset()
    cur = dbapi_conn.cursor()
    try:
        cur.execute(FOUND_STATEMENT)
        rows = cur.fetchall()
    finally:
        cur.close()
    return covered_from_rows(rows, specs)


def covered_from_rows(rows: Iterable[Sequence[Any]],
                      specs: Iterable[TriggerSpec]) -> frozenset[str]:
    """The tables of ``specs`` whose triggers exist, are enabled and match their spec, from
    the rows of :data:`FOUND_STATEMENT`. A table whose trigger was made from another spec is
    logged as stale and left to the Python path."""
    found: dict[str, str] = {}
    for schema, name, comment in rows:
        text = as_text(comment) if comment is not None else ""
        found[f"{as_text(schema)}.{as_text(name)}"] = text
        found.setdefault(as_text(name), text)  # unqualified declarations: search_path's
    covered = set()
    for spec in specs:
        comment = found.get(spec.table)
        if comment is None:
            continue
        if comment == _COMMENT_PREFIX + spec.signature:
            covered.add(spec.table)
        else:
            log.warning(
                "the Reality trigger on %s was made from another declaration; the plugin "
                "bumps the table from Python until create_triggers() runs again", spec.table)
    return frozenset(covered)


def create_plan(specs: Sequence[TriggerSpec], tables: Iterable[str] | None,
                column_types: Callable[[str], Iterable[Sequence[Any]]]) -> list[str]:
    """The DDL that creates the triggers of ``specs`` (all, or those of ``tables``).
    ``column_types(sql)`` runs :func:`column_types_statement` and returns its rows. Every
    table is checked before any DDL is returned, so a refused column changes nothing.
    Plugins run the statements in one transaction of their own."""
    statements: list[str] = []
    log_columns = {as_text(row[0]) for row in column_types(column_types_statement(LOG_TABLE))}
    if "txid" not in log_columns:
        raise ConfigurationError(
            (f"Reality's tables are missing ({LOG_TABLE} does not exist)" if not log_columns
             else f"{LOG_TABLE} has no txid column (a store made by an older release)")
            + ": run the plugin's create_tables() or \"reality migrate\" (alembic upgrade "
            "reality@head) before create_triggers(); triggers without it would fail every "
            "write to the tracked tables")
    problems: list[str] = []
    for spec in pick(specs, tables):
        rows = list(column_types(column_types_statement(spec.table)))
        types = {as_text(row[0]): as_text(row[1]) for row in rows}
        not_null = {as_text(row[0]) for row in rows if len(row) > 2 and _true(row[2])}
        if not types:
            problems.append(f"{spec.declaration.owner}: table {spec.table} does not exist; "
                            "create it (run your migrations) before its triggers")
            continue
        try:
            statements += trigger_statements(spec, types, not_null)
        except ConfigurationError as exc:
            problems.append(exc.message)
    if problems:  # every table's problem at once, not one per attempt
        raise ConfigurationError("; ".join(problems))
    return statements


def _true(value: Any) -> bool:
    """A boolean as a driver returns it (``True``, or ``'t'`` from drivers that leave
    values as text)."""
    return value is True or (isinstance(value, str | bytes) and as_text(value) in ("t", "true"))


def drop_targets(specs: Sequence[TriggerSpec], tables: Iterable[str] | None) -> list[str]:
    """The tables :func:`drop_plan` acts on: every tracked table, or the names in ``tables``
    — tracked or not, so triggers left on a table whose declaration is gone can be removed."""
    return [s.table for s in specs] if tables is None else _table_names(tables)


def drop_plan(specs: Sequence[TriggerSpec], tables: Iterable[str] | None) -> list[str]:
    """The DDL that drops the triggers of every tracked table, or of the tables named in
    ``tables`` (safe where there are none)."""
    return [sql for table in drop_targets(specs, tables) for sql in drop_statements(table)]


def _table_names(tables: Iterable[str]) -> list[str]:
    if isinstance(tables, str):
        raise ConfigurationError(
            f"tables= takes a list of table names, not the single string {tables!r}")
    names = list(tables)
    for name in names:
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"tables= takes table names (strings), not {name!r}")
    return names


def pick(specs: Sequence[TriggerSpec], tables: Iterable[str] | None) -> list[TriggerSpec]:
    """The specs of ``tables`` (every spec when ``None``); an untracked name is refused."""
    if tables is None:
        return list(specs)
    by_table = {s.table: s for s in specs}
    out = []
    for name in _table_names(tables):
        spec = by_table.get(name)
        if spec is None:
            raise ConfigurationError(
                f"{name!r} is not a tracked table (tracked: {', '.join(sorted(by_table))})")
        out.append(spec)
    return out
