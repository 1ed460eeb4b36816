"""Which tables a raw SQL string writes to.

ORMs cannot see inside ``text("UPDATE orders ...")`` or ``execute_sql``; this module can,
well enough to bump the right table keys. It skips comments and string literals (by the
quoting rules of the dialect, or of every dialect when none is given), then looks for the
statements that change rows: INSERT, UPDATE, DELETE, MERGE, REPLACE, TRUNCATE, COPY ... FROM
and LOAD DATA, anywhere in the string (CTEs and multi-statement strings included). Clauses
that only look like writes (``SELECT ... FOR UPDATE``, ``ON CONFLICT DO UPDATE``, ``ON
DUPLICATE KEY UPDATE``, ``ON DELETE CASCADE``, ``GRANT UPDATE``) are not statements.

:func:`written_tables` returns the set of table names written, or ``None`` when the string
holds a data-changing statement whose target it cannot read (``DO`` blocks, ``CALL``,
``EXECUTE`` of a prepared statement, MySQL's multi-table ``DELETE a, b FROM``...). Plugins
then bump conservatively or fail, as configured; they never skip silently. Writes hidden
inside functions or triggers called from a plain ``SELECT`` are not visible here (a stated
limitation).
"""

from __future__ import annotations

import re
from typing import Final, Literal

from .store import normalize_dialect

_QUICK: Final = re.compile(
    r"\b(insert|update|delete|merge|replace|truncate|copy|do|call|execute|load)\b", re.IGNORECASE
)


def _token_pattern(dialect: str) -> re.Pattern[str]:
    r"""The tokenizer for one dialect's quoting and comment rules.

    This is where dialects disagree: PostgreSQL and SQLite end ``'C:\'`` at the second quote
    (only PostgreSQL's ``E'...'`` knows backslash escapes), MySQL reads ``\'`` as an escaped
    quote, ``"..."`` as a string and ``#`` as a comment; SQLite quotes names in ``[...]``;
    only PostgreSQL has ``$tag$`` strings. Read with the wrong rules, a string or comment can
    swallow the statement after it.
    """
    comment = r"--[^\n]*"
    dollar = ""
    if dialect == "mysql":
        # A MySQL double-quoted string sits where a name never does; reading it as a name
        # keeps INSERT INTO "orders" (ANSI_QUOTES) readable.
        string = r"(?:_[A-Za-z0-9]+|[nNxXbB])?'(?:[^'\\]|''|\\.)*(?:'|\Z)"
        qident = r'"(?:[^"\\]|""|\\.)*"|`(?:[^`]|``)*`'
        comment = r"(?:--(?=\s|\Z)|\#)[^\n]*"
    else:
        string = r"[eE]'(?:[^'\\]|''|\\.)*(?:'|\Z)|[bBxXnNuU]?&?'(?:[^']|'')*(?:'|\Z)"
        qident = r'"(?:[^"]|"")*"|`(?:[^`]|``)*`'
        if dialect == "sqlite":
            qident += r"|\[[^\]]*\]"
        else:
            dollar = r"| (?P<dollar>\$(?P<tag>[A-Za-z_]\w*)?\$.*?(?:(?(tag)\$(?P=tag)\$|\$\$)|\Z))"
    return re.compile(
        rf"""
          (?P<ws>\s+)
        | (?P<line_comment>{comment})
        | (?P<block_comment>/\*.*?(?:\*/|\Z))
        | (?P<string>{string})
        {dollar}
        | (?P<qident>{qident})
        | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
        | (?P<other>.)
        """,
        re.VERBOSE | re.DOTALL,
    )


_PATTERNS: Final = {d: _token_pattern(d) for d in ("postgresql", "sqlite", "mysql")}

# Words that may sit between the verb and the table name.
_MODIFIERS: Final = frozenset({"LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "IGNORE", "QUICK",
                               "ONLY", "TABLE"})
# INSERT/UPDATE/DELETE preceded by these is a clause, not a statement: ON CONFLICT DO UPDATE,
# SELECT ... FOR UPDATE, FOR NO KEY UPDATE, ON DUPLICATE KEY UPDATE, ON DELETE CASCADE,
# MERGE's WHEN MATCHED THEN UPDATE, a trigger's AFTER INSERT OR UPDATE OF col.
_CLAUSE_PREDECESSORS: Final = frozenset({"DO", "FOR", "KEY", "ON", "THEN", "BEFORE", "AFTER",
                                         "OF", "OR"})
# REPLACE preceded by these is no statement: CREATE OR REPLACE, SQLite's ON CONFLICT REPLACE.
_REPLACE_PREDECESSORS: Final = frozenset({"OR", "CONFLICT"})
# Statements that change data in ways no table name in them reveals.
_OPAQUE_STATEMENTS: Final = frozenset({"DO", "CALL", "EXECUTE"})

Token = tuple[str, str]


class _Unreadable(Exception):
    pass


def _tokens(sql: str, pattern: re.Pattern[str]) -> list[Token]:
    """(kind, text) pairs: kind is 'word', 'qident' (a quoted name), 'punct' or 'literal'."""
    out: list[Token] = []
    for m in pattern.finditer(sql):
        kind = m.lastgroup
        text = m.group()
        if kind == "word":
            out.append(("word", text))
        elif kind == "qident":
            inner = text[1:-1]
            inner = inner.replace('""', '"') if text[0] == '"' else inner.replace("``", "`")
            out.append(("qident", inner))
        elif kind == "other":
            out.append(("punct", text))
        elif kind in ("string", "dollar"):
            out.append(("literal", ""))
    return out


def _name_at(tokens: list[Token], i: int) -> tuple[str, int]:
    """Read ``name`` or ``schema.name`` at ``i``; return the table name and the next index."""
    parts: list[str] = []
    while True:
        if i >= len(tokens) or tokens[i][0] not in ("word", "qident") or not tokens[i][1]:
            raise _Unreadable
        kind, text = tokens[i]
        parts.append(text.lower() if kind == "word" else text)
        i += 1
        if i < len(tokens) and tokens[i] == ("punct", "."):
            i += 1
            continue
        return ".".join(parts), i


def _skip_modifiers(tokens: list[Token], i: int) -> int:
    while i < len(tokens) and tokens[i][0] == "word" and tokens[i][1].upper() in _MODIFIERS:
        i += 1
    return i


def _upper(tokens: list[Token], i: int) -> str:
    return tokens[i][1].upper() if i < len(tokens) and tokens[i][0] == "word" else ""


def written_tables(sql: str, *, dialect: str | None = None) -> set[str] | None:
    """Tables ``sql`` writes to (lower-cased unless quoted; ``schema.table`` when qualified),
    or ``None`` if it changes data in a way this parser cannot attribute to tables.

    ``dialect`` (``postgresql``, ``sqlite``, ``mysql``/``mariadb``) picks that dialect's
    quoting rules. Without it the SQL is read under every dialect's rules that could change
    the reading, and the findings are united: never fewer tables than the true dialect's
    reading, and ``None`` when any reading cannot attribute a write.
    """
    if not _QUICK.search(sql):
        return set()
    if dialect is not None:
        patterns = [_PATTERNS[normalize_dialect(dialect)]]
    else:
        patterns = [_PATTERNS["postgresql"]]
        if "[" in sql:
            patterns.append(_PATTERNS["sqlite"])
        if any(c in sql for c in ("\\", '"', "#", "--")):
            patterns.append(_PATTERNS["mysql"])
    found: set[str] = set()
    for pattern in patterns:
        tables = _scan(_tokens(sql, pattern))
        if tables is None:
            return None
        found |= tables
    return found


def _scan(tokens: list[Token]) -> set[str] | None:
    found: set[str] = set()
    statement_start = True
    # Inside GRANT/REVOKE, INSERT and UPDATE are privilege names; inside LOAD DATA (read
    # whole at its first word), REPLACE is an option.
    skip_statement = False
    try:
        for i, (kind, text) in enumerate(tokens):
            if kind == "punct":
                statement_start = text == ";"
                if statement_start:
                    skip_statement = False
                continue
            if kind != "word":
                statement_start = False
                continue
            word = text.upper()
            at_start = statement_start
            statement_start = False
            prev = tokens[i - 1][1].upper() if i and tokens[i - 1][0] == "word" else ""
            nxt = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
            if at_start and word in _OPAQUE_STATEMENTS:
                return None
            if skip_statement or nxt == ("punct", "("):
                continue  # see skip_statement, or a function such as replace(...)
            if word in ("GRANT", "REVOKE"):
                skip_statement = True
            if (word == "INSERT" and prev not in _CLAUSE_PREDECESSORS) or (
                word == "REPLACE" and prev not in _REPLACE_PREDECESSORS
            ):
                j = _skip_modifiers(tokens, i + 1)
                if _upper(tokens, j) == "OR":  # SQLite INSERT OR IGNORE / OR REPLACE
                    j += 2
                if _upper(tokens, j) == "INTO":
                    j += 1
                found.add(_name_at(tokens, j)[0])
            elif word == "UPDATE" and prev not in _CLAUSE_PREDECESSORS:
                j = _skip_modifiers(tokens, i + 1)
                if _upper(tokens, j) == "OR":  # SQLite UPDATE OR IGNORE / OR REPLACE ...
                    j += 2
                if _upper(tokens, j) == "SET":
                    return None  # UPDATE SET: a clause of some statement we do not know
                name, j = _name_at(tokens, j)
                found.add(name)
                found |= _joined_tables(tokens, j)
            elif word == "DELETE" and prev not in _CLAUSE_PREDECESSORS:
                j = _skip_modifiers(tokens, i + 1)
                if _upper(tokens, j) != "FROM":
                    return None  # MySQL's DELETE t1, t2 FROM ...
                found.add(_name_at(tokens, _skip_modifiers(tokens, j + 1))[0])
            elif word == "MERGE":
                j = i + 1
                if _upper(tokens, j) == "INTO":
                    j += 1
                found.add(_name_at(tokens, j)[0])
            elif word == "TRUNCATE":
                j = _skip_modifiers(tokens, i + 1)
                while True:
                    name, j = _name_at(tokens, _skip_modifiers(tokens, j))
                    found.add(name)
                    if j < len(tokens) and tokens[j] == ("punct", ","):
                        j += 1
                        continue
                    break
            elif word == "COPY" and at_start:
                if nxt[0] not in ("word", "qident"):
                    continue  # COPY (SELECT ...) TO: a read
                name, j = _name_at(tokens, i + 1)
                if "FROM" in _statement_words(tokens, j):
                    found.add(name)
            elif word == "LOAD" and at_start and _upper(tokens, i + 1) in ("DATA", "XML"):
                # MySQL LOAD DATA [LOCAL] INFILE 'f' [REPLACE|IGNORE] INTO TABLE name
                words = _statement_words(tokens, i + 1)
                if "INTO" not in words:
                    return None
                j = i + 1
                while _upper(tokens, j) != "INTO":
                    j += 1
                j += 1
                if _upper(tokens, j) == "TABLE":
                    j += 1
                found.add(_name_at(tokens, j)[0])
                skip_statement = True
    except _Unreadable:
        return None
    return found


def _joined_tables(tokens: list[Token], j: int) -> set[str]:
    """MySQL's multi-table ``UPDATE a JOIN b ... SET`` / ``UPDATE a, b SET``: every joined
    table may change. Reads up to SET, outside parentheses (a joined subquery is no table)."""
    found: set[str] = set()
    depth = 0
    while j < len(tokens) and tokens[j] != ("punct", ";"):
        token = tokens[j]
        if token == ("punct", "("):
            depth += 1
        elif token == ("punct", ")"):
            depth -= 1
        elif depth == 0:
            word = _upper(tokens, j)
            if word == "SET":
                break
            if (word == "JOIN" or token == ("punct", ",")) and tokens[j + 1 : j + 2] != [
                ("punct", "(")
            ]:
                found.add(_name_at(tokens, j + 1)[0])
        j += 1
    return found


def _statement_words(tokens: list[Token], j: int) -> set[str]:
    """The upper-cased words from ``j`` to the end of the statement."""
    words: set[str] = set()
    while j < len(tokens) and tokens[j] != ("punct", ";"):
        if tokens[j][0] == "word":
            words.add(tokens[j][1].upper())
        j += 1
    return words


def matches(written: str, table: str, schema: str | None = None) -> bool:
    """Whether a name from :func:`written_tables` denotes ``table`` (in ``schema``)."""
    if "." in written:
        w_schema, _, w_table = written.rpartition(".")
        return w_table in (table, table.lower()) and (schema is None or w_schema == schema
                                                       or w_schema == schema.lower())
    return written in (table, table.lower())


#: What :func:`transaction_control` reports: the verb, and the savepoint's name if any.
TransactionControl = tuple[
    Literal["begin", "commit", "rollback", "savepoint", "release", "rollback_to"], str | None
]
_CONTROL_QUICK: Final = re.compile(
    r"\A[\s;]*(?:(?:/\*.*?\*/|--[^\n]*)[\s;]*)*"
    r"(?:begin|start|commit|end|rollback|abort|savepoint|release)\b",
    re.IGNORECASE | re.DOTALL,
)
_TXN_NOISE: Final = frozenset({"WORK", "TRANSACTION"})


def transaction_control(sql: str) -> TransactionControl | None:
    """Read ``sql`` as one transaction-control statement, or return ``None``.

    Plugins that see savepoints and transactions only as SQL text (peewee's ``atomic()``
    runs ``SAVEPOINT "s1"`` through ``execute_sql``) use this to keep the key buffer in step:
    ``BEGIN``/``START TRANSACTION`` -> ``("begin", None)``; ``COMMIT``/``END`` ->
    ``("commit", None)``; ``ROLLBACK``/``ABORT`` -> ``("rollback", None)``; ``SAVEPOINT s1``,
    ``RELEASE [SAVEPOINT] s1`` and ``ROLLBACK [WORK] TO [SAVEPOINT] s1`` -> ``("savepoint",
    "s1")``, ``("release", "s1")``, ``("rollback_to", "s1")``. A savepoint name is
    lower-cased unless quoted. A string holding more than one statement, or a block that
    merely starts with BEGIN (MariaDB's ``BEGIN NOT ATOMIC``), is not a control statement.
    """
    if not _CONTROL_QUICK.match(sql):
        return None
    tokens = _tokens(sql, _PATTERNS["postgresql"])
    while tokens and tokens[-1] == ("punct", ";"):
        tokens.pop()
    while tokens and tokens[0] == ("punct", ";"):
        tokens.pop(0)
    if not tokens or ("punct", ";") in tokens or tokens[0][0] != "word":
        return None
    verb = tokens[0][1].upper()
    rest = tokens[1:]
    words = [text.upper() for kind, text in rest if kind == "word"]
    if verb == "BEGIN" or (verb == "START" and words[:1] == ["TRANSACTION"]):
        if words[:1] == ["NOT"] or any(kind != "word" and text != "," for kind, text in rest):
            return None
        return ("begin", None)
    if verb in ("COMMIT", "END"):
        return ("commit", None) if len(words) == len(rest) else None
    if verb == "SAVEPOINT" or verb == "RELEASE":
        if verb == "RELEASE" and words[:1] == ["SAVEPOINT"]:
            rest = rest[1:]
        name = _savepoint_name(rest)
        if name is None:
            return None
        return ("savepoint" if verb == "SAVEPOINT" else "release", name)
    if verb in ("ROLLBACK", "ABORT"):
        if rest and rest[0][0] == "word" and rest[0][1].upper() in _TXN_NOISE:
            rest = rest[1:]
        if not rest or _upper(rest, 0) != "TO":
            return ("rollback", None) if len(words) == len(rest) else None
        rest = rest[1:]
        if _upper(rest, 0) == "SAVEPOINT":
            rest = rest[1:]
        name = _savepoint_name(rest)
        return None if name is None else ("rollback_to", name)
    return None


def _savepoint_name(tokens: list[Token]) -> str | None:
    if len(tokens) != 1 or tokens[0][0] not in ("word", "qident"):
        return None
    kind, text = tokens[0]
    return text.lower() if kind == "word" else text
