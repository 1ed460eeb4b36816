"""Reading the row images out of the DML statements Tortoise sends.

Tortoise hands its client only SQL strings and parameter lists: many-to-many ``add`` and
``remove``, ``bulk_create``, ``bulk_update``, ``QuerySet.update()``/``.delete()`` and raw
SQL all arrive as ``INSERT INTO "t" ("a","b") VALUES ($1,$2)``, ``UPDATE "t" SET ... WHERE
"id" IN (...)`` or ``DELETE FROM "t" WHERE "a"=$1 AND "b"=$2``. :func:`parse` recognises
exactly these single-statement shapes (with placeholders or plain literals) and nothing
else; :func:`images` binds a recognised shape to one execution's parameters and yields the
``(new, old)`` column images that :meth:`reality_core.keys.Declaration.keys_for_row` turns
into keys. A column the statement does not pin reads as ``MISSING``, so its keys escalate.

What a shape tells:

* ``INSERT ... VALUES``: every new row, column by column.
* ``ON CONFLICT (pk) DO UPDATE`` / ``ON DUPLICATE KEY UPDATE``: the new row, and of the old
  row only its primary key (when the conflict target is the primary key): the old template
  values are unknown and escalate (I5).
* ``UPDATE``/``DELETE ... WHERE``: the columns pinned by the top-level ``AND`` conjuncts
  ``col = value``, ``col IN (values)`` and ``col IS NULL`` describe every affected row
  (other conjuncts only narrow the set further). An ``OR`` at the top level pins nothing.

Anything else -- comments, CTEs, several statements, ``INSERT ... SELECT``, ``UPDATE ...
FROM``, ``BETWEEN``/``CASE`` in a ``WHERE`` -- is not a shape: the plugin falls back to
:meth:`reality_core.catalog.Catalog.raw_sql_keys`, which escalates every tracked table the
statement writes.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final, Literal

from reality_core.keys import MISSING

Paramstyle = Literal["numeric_dollar", "format", "qmark"]
Image = dict[str, Any]

#: More images than this from ``IN`` lists (a cartesian product) pins nothing instead.
MAX_IMAGES: Final = 5000

_PLACEHOLDER: Final[dict[str, str]] = {
    "numeric_dollar": r"\$\d+",
    "format": r"%s",
    "qmark": r"\?",
}


def _token_pattern(paramstyle: str) -> re.Pattern[str]:
    return re.compile(
        rf"""
          (?P<ws>\s+)
        | (?P<param>{_PLACEHOLDER[paramstyle]})
        | (?P<string>'(?:[^']|'')*')
        | (?P<number>\d+(?:\.\d+)?(?![A-Za-z_]))
        | (?P<qident>"(?:[^"]|"")*"|`(?:[^`]|``)*`)
        | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
        | (?P<punct>>=|<=|<>|!=|::|.)
        """,
        re.VERBOSE | re.DOTALL,
    )


_PATTERNS: Final = {style: _token_pattern(style) for style in _PLACEHOLDER}
# Anything that changes how the rest of the string reads: give up rather than guess.
_UNSAFE: Final = re.compile(r"--|/\*|#|\\|\$\$|\$[A-Za-z_]")


@dataclass(frozen=True, slots=True)
class Param:
    """The ``index``-th (0-based) parameter of an execution."""

    index: int


@dataclass(frozen=True, slots=True)
class Const:
    value: Any


class _Unknown:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNKNOWN"


#: A value the statement computes (``"total"+1``, ``CASE ...``): unknown before it runs.
UNKNOWN: Final = _Unknown()

ValueRef = Param | Const | _Unknown
Pairs = tuple[tuple[str, ValueRef], ...]


@dataclass(frozen=True, slots=True)
class Shape:
    """One recognised DML statement."""

    kind: Literal["insert", "update", "delete"]
    table: str
    #: INSERT: one entry per VALUES tuple.
    rows: tuple[Pairs, ...] = ()
    #: INSERT: None, "nothing" (DO NOTHING / IGNORE) or "update" (an upsert).
    conflict: str | None = None
    #: INSERT ... ON CONFLICT (cols): the conflict target, when given.
    conflict_target: tuple[str, ...] | None = None
    #: UPDATE: SET column -> value (UNKNOWN when computed).
    sets: Pairs = ()
    #: UPDATE/DELETE: ``col = value`` / ``col IS NULL`` conjuncts.
    where_eq: Pairs = ()
    #: UPDATE/DELETE: ``col IN (...)`` conjuncts.
    where_in: tuple[tuple[str, tuple[ValueRef, ...]], ...] = ()


Token = tuple[str, str]


class _NoShape(Exception):
    pass


class _Reader:
    """A cursor over the tokens of one statement."""

    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.i = 0
        self.params = 0

    def peek(self, offset: int = 0) -> Token:
        j = self.i + offset
        return self.tokens[j] if j < len(self.tokens) else ("end", "")

    def word(self, offset: int = 0) -> str:
        kind, text = self.peek(offset)
        return text.upper() if kind == "word" else ""

    def take(self) -> Token:
        token = self.peek()
        if token[0] == "end":
            raise _NoShape
        self.i += 1
        return token

    def expect_word(self, *words: str) -> str:
        word = self.word()
        if word not in words:
            raise _NoShape
        self.i += 1
        return word

    def expect(self, punct: str) -> None:
        if self.peek() != ("punct", punct):
            raise _NoShape
        self.i += 1

    def at_end(self) -> bool:
        return self.peek()[0] == "end" or (
            self.peek() == ("punct", ";") and self.peek(1)[0] == "end"
        )

    def name(self) -> str:
        kind, text = self.take()
        if kind == "qident":
            return text
        if kind == "word":
            return text.lower()
        raise _NoShape


def _tokens(sql: str, paramstyle: str) -> list[Token]:
    out: list[Token] = []
    for m in _PATTERNS[paramstyle].finditer(sql):
        kind = m.lastgroup or "punct"
        text = m.group()
        if kind == "ws":
            continue
        if kind == "qident":
            quote = text[0]
            text = text[1:-1].replace(quote * 2, quote)
        out.append((kind, text))
    return out


def _value(r: _Reader, paramstyle: str) -> ValueRef:
    """A single-token value, else UNKNOWN (the expression is skipped by the caller)."""
    kind, text = r.peek()
    if kind == "param":
        r.i += 1
        if paramstyle == "numeric_dollar":
            return Param(int(text[1:]) - 1)
        r.params += 1
        return Param(r.params - 1)
    if kind == "string":
        r.i += 1
        return Const(text[1:-1].replace("''", "'"))
    if kind == "number":
        r.i += 1
        return Const(float(text) if "." in text else int(text))
    if kind == "word" and text.upper() in ("NULL", "TRUE", "FALSE"):
        r.i += 1
        return Const({"NULL": None, "TRUE": True, "FALSE": False}[text.upper()])
    return UNKNOWN


def _skip_expression(r: _Reader, paramstyle: str, stop: frozenset[str]) -> None:
    """Skip to the next top-level ``,``, ``)``, ``;`` or stop word, counting the
    placeholders passed so positional paramstyles stay aligned."""
    depth = 0
    while True:
        kind, text = r.peek()
        if kind == "end":
            return
        if depth == 0 and (
            (kind == "punct" and text in (",", ")", ";"))
            or (kind == "word" and text.upper() in stop)
        ):
            return
        if kind == "punct" and text == "(":
            depth += 1
        elif kind == "punct" and text == ")":
            depth -= 1
        elif kind == "param" and paramstyle != "numeric_dollar":
            r.params += 1
        elif kind == "word" and text.upper() in ("SELECT", "WITH"):
            raise _NoShape  # a subquery: leave it to the raw SQL reader
        r.i += 1


def _expression(r: _Reader, paramstyle: str, stop: frozenset[str]) -> ValueRef:
    start = r.i
    value = _value(r, paramstyle)
    if value is not UNKNOWN:
        kind, text = r.peek()
        ends = (kind == "end" or (kind == "punct" and text in (",", ")", ";"))
                or (kind == "word" and text.upper() in stop))
        if ends:
            return value
        # A value followed by more (``$1::int``, ``1 + "x"``): computed. Re-read it whole.
        r.i = start
        if isinstance(value, Param) and paramstyle != "numeric_dollar":
            r.params -= 1
    _skip_expression(r, paramstyle, stop)
    return UNKNOWN


def _column(r: _Reader, table: str, alias: str | None) -> str:
    name = r.name()
    if r.peek() == ("punct", "."):
        if name not in (table, alias, table.rpartition(".")[2]):
            raise _NoShape
        r.i += 1
        name = r.name()
    return name


def _table(r: _Reader) -> tuple[str, str | None]:
    table = r.name()
    if r.peek() == ("punct", "."):
        r.i += 1
        table = f"{table}.{r.name()}"
    alias = None
    if r.word() == "AS":
        r.i += 1
        alias = r.name()
    return table, alias


_WHERE_STOP: Final = frozenset({"AND", "OR", "RETURNING", "ORDER", "LIMIT"})


def _where(r: _Reader, paramstyle: str, table: str, alias: str | None,
           ) -> tuple[Pairs, tuple[tuple[str, tuple[ValueRef, ...]], ...]]:
    """Top-level ``AND`` conjuncts of a WHERE clause that pin column values."""
    eq: list[tuple[str, ValueRef]] = []
    ins: list[tuple[str, tuple[ValueRef, ...]]] = []
    pinned = True
    while not r.at_end() and r.word() not in ("RETURNING", "ORDER", "LIMIT"):
        start, counted = r.i, r.params
        got = _conjunct(r, paramstyle, table, alias)
        if got is None:
            r.i, r.params = start, counted
            _skip_conjunct(r, paramstyle)
        elif isinstance(got[1], tuple):
            ins.append((got[0], got[1]))
        else:
            eq.append((got[0], got[1]))
        word = r.word()
        if word == "AND":
            r.i += 1
        elif word == "OR":
            r.i += 1
            pinned = False
        elif not (r.at_end() or word in ("RETURNING", "ORDER", "LIMIT")):
            raise _NoShape
    if not pinned:
        return (), ()
    return tuple(eq), tuple(ins)


def _optional_where(r: _Reader, paramstyle: str, table: str, alias: str | None,
                    ) -> tuple[Pairs, tuple[tuple[str, tuple[ValueRef, ...]], ...]]:
    if r.word() != "WHERE":
        return (), ()
    r.i += 1
    return _where(r, paramstyle, table, alias)


def _skip_conjunct(r: _Reader, paramstyle: str) -> None:
    depth = 0
    while True:
        kind, text = r.peek()
        upper = text.upper() if kind == "word" else ""
        if kind == "end" or (depth == 0 and (upper in _WHERE_STOP or (kind, text) == ("punct",
                                                                                      ";"))):
            return
        if upper in ("BETWEEN", "CASE", "SELECT", "WITH"):
            raise _NoShape  # their own AND / subqueries: not a plain conjunction
        if (kind, text) == ("punct", "("):
            depth += 1
        elif (kind, text) == ("punct", ")"):
            depth -= 1
        elif kind == "param" and paramstyle != "numeric_dollar":
            r.params += 1
        r.i += 1


def _conjunct(r: _Reader, paramstyle: str, table: str, alias: str | None,
              ) -> tuple[str, ValueRef | tuple[ValueRef, ...]] | None:
    if r.peek()[0] not in ("word", "qident") or r.word() in ("NOT", "EXISTS"):
        return None
    try:
        column = _column(r, table, alias)
    except _NoShape:
        return None
    kind, text = r.peek()
    if (kind, text) == ("punct", "="):
        r.i += 1
        value = _value(r, paramstyle)
        if value is UNKNOWN or not (r.at_end() or r.word() in _WHERE_STOP):
            return None
        return column, value
    if r.word() == "IS" and r.word(1) == "NULL":
        r.i += 2
        return column, Const(None)
    if r.word() == "IN" and r.peek(1) == ("punct", "("):
        r.i += 2
        values: list[ValueRef] = []
        while True:
            value = _value(r, paramstyle)
            if value is UNKNOWN:
                return None
            values.append(value)
            if r.peek() == ("punct", ","):
                r.i += 1
                continue
            r.expect(")")
            break
        if not (r.at_end() or r.word() in _WHERE_STOP):
            return None
        return column, tuple(values)
    return None


def _insert(r: _Reader, paramstyle: str) -> Shape:
    r.expect_word("INTO")
    table, alias = _table(r)
    r.expect("(")
    columns = [r.name()]
    while r.peek() == ("punct", ","):
        r.i += 1
        columns.append(r.name())
    r.expect(")")
    r.expect_word("VALUES")
    rows: list[Pairs] = []
    while True:
        r.expect("(")
        values: list[ValueRef] = []
        while True:
            values.append(_expression(r, paramstyle, frozenset()))
            if r.peek() == ("punct", ","):
                r.i += 1
                continue
            r.expect(")")
            break
        if len(values) != len(columns):
            raise _NoShape
        rows.append(tuple(zip(columns, values, strict=True)))
        if r.peek() == ("punct", ","):
            r.i += 1
            continue
        break
    conflict: str | None = None
    target: tuple[str, ...] | None = None
    if r.word() == "ON" and r.word(1) == "CONFLICT":
        r.i += 2
        if r.peek() == ("punct", "("):
            r.i += 1
            names = [r.name()]
            while r.peek() == ("punct", ","):
                r.i += 1
                names.append(r.name())
            r.expect(")")
            target = tuple(names)
        r.expect_word("DO")
        conflict = "nothing" if r.expect_word("NOTHING", "UPDATE") == "NOTHING" else "update"
    elif r.word() == "ON" and r.word(1) == "DUPLICATE":
        conflict = "update"
        r.i += 2
    del alias  # DO UPDATE SET may name it; it writes this table only
    return Shape("insert", table, rows=tuple(rows), conflict=conflict, conflict_target=target)


def _update(r: _Reader, paramstyle: str) -> Shape:
    table, alias = _table(r)
    r.expect_word("SET")
    sets: list[tuple[str, ValueRef]] = []
    stop = frozenset({"WHERE", "RETURNING", "FROM", "ORDER", "LIMIT"})
    while True:
        column = _column(r, table, alias)
        r.expect("=")
        sets.append((column, _expression(r, paramstyle, stop)))
        if r.peek() == ("punct", ","):
            r.i += 1
            continue
        break
    if r.word() == "FROM":
        raise _NoShape
    eq, ins = _optional_where(r, paramstyle, table, alias)
    return Shape("update", table, sets=tuple(sets), where_eq=eq, where_in=ins)


def _delete(r: _Reader, paramstyle: str) -> Shape:
    r.expect_word("FROM")
    table, alias = _table(r)
    if r.word() == "USING":
        raise _NoShape
    eq, ins = _optional_where(r, paramstyle, table, alias)
    return Shape("delete", table, where_eq=eq, where_in=ins)


@lru_cache(maxsize=2048)
def parse(sql: str, paramstyle: Paramstyle) -> Shape | None:
    """The shape of ``sql``, or ``None`` when it is not one this module reads."""
    if _UNSAFE.search(sql):
        return None
    try:
        r = _Reader(_tokens(sql, paramstyle))
        verb = r.expect_word("INSERT", "UPDATE", "DELETE")
        if verb == "INSERT":
            shape = _insert(r, paramstyle)
        elif verb == "UPDATE":
            shape = _update(r, paramstyle)
        else:
            shape = _delete(r, paramstyle)
        # What may follow (ON CONFLICT ... DO UPDATE SET, RETURNING, ORDER BY, LIMIT) writes
        # nothing else, unless it holds a subquery or a second statement.
        while not r.at_end():
            if r.word() in ("SELECT", "WITH") or r.peek() == ("punct", ";"):
                return None
            r.i += 1
    except (_NoShape, ValueError):
        return None
    return shape


def _bind(ref: ValueRef, params: Sequence[Any]) -> Any:
    if isinstance(ref, Param):
        return params[ref.index] if 0 <= ref.index < len(params) else MISSING
    if isinstance(ref, Const):
        return ref.value
    return MISSING


def images(shape: Shape, params: Sequence[Any] | Mapping[str, Any] | None,
           primary_key: Sequence[str]) -> Iterator[tuple[Image | None, Image | None]]:
    """``(new, old)`` images (by column name) of the rows one execution writes.

    ``primary_key`` names the table's primary-key columns: an upsert whose conflict target
    is the primary key tells the old row's key. A statement that pins no column yields one
    image of nothing but ``MISSING``, which escalates every key of the table.
    """
    values: Sequence[Any] = params if isinstance(params, Sequence) else ()
    if shape.kind == "insert":
        for row in shape.rows:
            new = {column: _bind(ref, values) for column, ref in row}
            old: Image | None = None
            if shape.conflict == "update":
                pk = tuple(primary_key)
                pinned = pk and shape.conflict_target is not None and (
                    set(shape.conflict_target) == set(pk))
                old = {c: new.get(c, MISSING) for c in pk} if pinned else {}
            yield new, old
        return
    base = {column: _bind(ref, values) for column, ref in shape.where_eq}
    lists = [(column, [_bind(ref, values) for ref in refs]) for column, refs in shape.where_in]
    combos = itertools.product(*(vals for _, vals in lists))
    for n, combo in enumerate(combos):
        if n >= MAX_IMAGES:
            yield None, {}
            return
        old = dict(base)
        old.update(zip((column for column, _ in lists), combo, strict=True))
        if shape.kind == "delete":
            yield None, old
        else:
            new = dict(old)
            new.update((column, _bind(ref, values)) for column, ref in shape.sets)
            yield new, old
