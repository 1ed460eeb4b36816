"""Which tables a raw SQL string writes to.

ORMs cannot see inside ``text("UPDATE orders ...")`` or ``execute_sql``; this module can,
well enough to bump the right table keys. It strips comments and string literals, then looks
for the statements that change rows: INSERT, UPDATE, DELETE, MERGE, REPLACE, TRUNCATE and
COPY ... FROM, anywhere in the string (CTEs and multi-statement strings included).

:func:`written_tables` returns the set of table names written, or ``None`` when the string
holds a data-changing statement whose target it cannot read (``DO`` blocks, ``CALL``,
MySQL's multi-table ``DELETE a, b FROM``...). Plugins then bump conservatively or fail,
as configured; they never skip silently. Writes hidden inside functions or triggers called
from a plain ``SELECT`` are not visible here (a stated limitation).
"""

from __future__ import annotations

import re
from typing import Final

_QUICK: Final = re.compile(
    r"\b(insert|update|delete|merge|replace|truncate|copy|do|call)\b", re.IGNORECASE
)
_TOKEN: Final = re.compile(
    r"""
      (?P<ws>\s+)
    | (?P<line_comment>--[^\n]*)
    | (?P<block_comment>/\*.*?(?:\*/|\Z))
    | (?P<string>[eEbBxXnN]?'(?:[^']|'')*(?:'|\Z))
    | (?P<dollar>\$(?P<tag>[A-Za-z_][A-Za-z0-9_]*)?\$.*?(?:\$(?P=tag)?\$|\Z))
    | (?P<qident>"(?:[^"]|"")*"|`(?:[^`]|``)*`|\[[^\]]*\])
    | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
    | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)

# Words that may sit between the verb and the table name.
_MODIFIERS: Final = frozenset({"LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "IGNORE", "QUICK",
                               "ONLY", "TABLE"})
# UPDATE/DELETE preceded by these is a clause, not a statement (ON CONFLICT DO UPDATE,
# SELECT ... FOR UPDATE, ON DUPLICATE KEY UPDATE, FOR NO KEY UPDATE, ON DELETE CASCADE).
_CLAUSE_PREDECESSORS: Final = frozenset({"DO", "FOR", "KEY", "ON"})


class _Unreadable(Exception):
    pass


def _tokens(sql: str) -> list[tuple[str, str]]:
    """(kind, text) pairs: kind is 'word' (upper-cased), 'ident' (a name) or 'punct'."""
    out: list[tuple[str, str]] = []
    for m in _TOKEN.finditer(sql):
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


def _name_at(tokens: list[tuple[str, str]], i: int) -> tuple[str, int]:
    """Read ``name`` or ``schema.name`` at ``i``; return the table name and the next index."""
    parts: list[str] = []
    while True:
        if i >= len(tokens) or tokens[i][0] not in ("word", "qident"):
            raise _Unreadable
        kind, text = tokens[i]
        parts.append(text.lower() if kind == "word" else text)
        i += 1
        if i < len(tokens) and tokens[i] == ("punct", "."):
            i += 1
            continue
        return ".".join(parts), i


def _skip_modifiers(tokens: list[tuple[str, str]], i: int) -> int:
    while i < len(tokens) and tokens[i][0] == "word" and tokens[i][1].upper() in _MODIFIERS:
        i += 1
    return i


def written_tables(sql: str) -> set[str] | None:
    """Tables ``sql`` writes to (lower-cased unless quoted; ``schema.table`` when qualified),
    or ``None`` if it changes data in a way this parser cannot attribute to tables."""
    if not _QUICK.search(sql):
        return set()
    tokens = _tokens(sql)
    found: set[str] = set()
    statement_start = True
    try:
        for i, (kind, text) in enumerate(tokens):
            if kind == "punct":
                statement_start = text == ";"
                continue
            if kind != "word":
                statement_start = False
                continue
            word = text.upper()
            at_start = statement_start
            statement_start = False
            prev = tokens[i - 1][1].upper() if i and tokens[i - 1][0] == "word" else ""
            nxt = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
            if word in ("DO", "CALL") and at_start:
                return None
            if nxt == ("punct", "("):
                continue  # a function such as replace(...), not a statement
            if word == "INSERT" or (word == "REPLACE" and prev != "OR"):
                j = _skip_modifiers(tokens, i + 1)
                if j < len(tokens) and tokens[j][1].upper() == "OR":  # SQLite INSERT OR IGNORE
                    j += 2
                if j < len(tokens) and tokens[j][1].upper() == "INTO":
                    j += 1
                found.add(_name_at(tokens, j)[0])
            elif word == "UPDATE" and prev not in _CLAUSE_PREDECESSORS:
                name, j = _name_at(tokens, _skip_modifiers(tokens, i + 1))
                found.add(name)
                # MySQL multi-table UPDATE a JOIN b ... SET: every joined table may change.
                while j < len(tokens) and tokens[j][1].upper() != "SET":
                    if tokens[j][1].upper() == "JOIN" or tokens[j] == ("punct", ","):
                        found.add(_name_at(tokens, j + 1)[0])
                    j += 1
            elif word == "DELETE" and prev not in _CLAUSE_PREDECESSORS:
                j = _skip_modifiers(tokens, i + 1)
                if j >= len(tokens) or tokens[j][1].upper() != "FROM":
                    return None  # MySQL's DELETE t1, t2 FROM ...
                found.add(_name_at(tokens, _skip_modifiers(tokens, j + 1))[0])
            elif word == "MERGE":
                j = i + 1
                if j < len(tokens) and tokens[j][1].upper() == "INTO":
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
                rest = {t[1].upper() for t in tokens[j:] if t[0] == "word"}
                if "FROM" in rest:
                    found.add(name)
    except _Unreadable:
        return None
    return found


def matches(written: str, table: str, schema: str | None = None) -> bool:
    """Whether a name from :func:`written_tables` denotes ``table`` (in ``schema``)."""
    if "." in written:
        w_schema, _, w_table = written.rpartition(".")
        return w_table in (table, table.lower()) and (schema is None or w_schema == schema
                                                       or w_schema == schema.lower())
    return written in (table, table.lower())
