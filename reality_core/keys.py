"""Keys, key templates and model declarations.

A *key* names something a client shows. Writes to a tracked table produce three kinds:

==============  ==========================  ==========================================
kind            example                     bumped by
==============  ==========================  ==========================================
table key       ``$table:orders``           every write to the table
row key         ``$row:orders:42``          writes to the row with primary key 42
template key    ``room:7``                  writes to a row whose ``room_id`` was or is 7
==============  ==========================  ==========================================

Keys starting with ``$`` are reserved for the defaults above (and for Reality's own
bookkeeping), so a user template or a manual bump can never collide with them. Composite
primary keys join their parts with ``:``; a ``%`` or ``:`` inside a part is
percent-encoded so two different keys never produce the same string.

Escalation
----------
Where the rows a statement touched are unknowable (``UPDATE orders WHERE total > 10``) the
plugin bumps *escalation markers* instead: ``$esc:$row:orders:`` for every row key of the
table and ``$esc:room:`` for every key made from the template ``room:{room_id}``. A key's
reported version is its own version plus the versions of every marker whose prefix it starts
with, so each derived key reads as changed (I4), and versions stay strictly increasing.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from .errors import DeclarationError, InvalidKeyError

MAX_KEY_LENGTH: Final = 256
RESERVED_PREFIX: Final = "$"
TABLE_PREFIX: Final = "$table:"
ROW_PREFIX: Final = "$row:"
ESCALATION_PREFIX: Final = "$esc:"


class _Missing:
    """Marks a column value the plugin could not learn (unloaded, not in the statement)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()


CONTROL_CHARACTERS: Final = re.compile("[\x00-\x1f\x7f-\x9f]")


def key_problem(key: object) -> str | None:
    """Say what is wrong with ``key``, or ``None`` if it is a valid key."""
    if not isinstance(key, str):
        return f"a key must be a string, not {type(key).__name__}"
    if not key:
        return "a key must not be empty"
    if len(key) > MAX_KEY_LENGTH:
        return f"a key is at most {MAX_KEY_LENGTH} characters; this one has {len(key)}"
    control = CONTROL_CHARACTERS.search(key)  # a regex: the sync endpoint checks every key it gets
    if control is not None:
        return f"a key must not contain control characters (found {control.group()!r})"
    if not key.isascii():
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            return "a key must be valid Unicode text (it holds a lone surrogate)"
    return None


def validate_key(key: object, *, allow_reserved: bool = False) -> str:
    """Return ``key`` if it is a valid key, else raise :class:`InvalidKeyError`."""
    problem = key_problem(key)
    if problem is not None:
        raise InvalidKeyError(f"{problem}: {key!r:.80}")
    assert isinstance(key, str)
    if not allow_reserved and key.startswith(RESERVED_PREFIX):
        raise InvalidKeyError(
            f"keys starting with {RESERVED_PREFIX!r} are reserved for Reality's table and row "
            f"keys; pick another name than {key!r:.80}"
        )
    return key


def _encode_part(value: object) -> str:
    return str(value).replace("%", "%25").replace(":", "%3A")


def table_key(table: str) -> str:
    return f"{TABLE_PREFIX}{table}"


def row_key(table: str, pk: Sequence[object]) -> str:
    return f"{ROW_PREFIX}{table}:" + ":".join(_encode_part(v) for v in pk)


def escalation_key(prefix: str) -> str:
    return f"{ESCALATION_PREFIX}{prefix}"


@dataclass(frozen=True, slots=True)
class KeyTemplate:
    """A key built from column values, e.g. ``room:{room_id}``."""

    pattern: str
    fields: tuple[str, ...]
    prefix: str

    @classmethod
    def parse(
        cls, pattern: str, *, owner: str, columns: Iterable[str] | None
    ) -> KeyTemplate:
        """Parse and check ``pattern``. ``columns=None`` checks everything but the column
        names (for ORMs that declare keys before their model's fields are known)."""
        if not isinstance(pattern, str):
            raise DeclarationError(
                f"{owner}: a key template must be a string like 'room:{{room_id}}', "
                f"not {type(pattern).__name__}"
            )
        known = set(columns) if columns is not None else None
        fields: list[str] = []
        prefix: str | None = None
        try:
            parsed = list(string.Formatter().parse(pattern))
        except ValueError as exc:
            raise DeclarationError(
                f"{owner}: key template {pattern!r} is malformed: {exc}"
            ) from exc
        literal_so_far = ""
        for literal, name, spec, conversion in parsed:
            literal_so_far += literal
            if name is None:
                continue
            if prefix is None:
                prefix = literal_so_far
            if not name.isidentifier():
                raise DeclarationError(
                    f"{owner}: key template {pattern!r} uses {{{name}}}; placeholders must be "
                    "plain column names such as {room_id}"
                )
            if spec or conversion:
                raise DeclarationError(
                    f"{owner}: key template {pattern!r} uses a format spec or conversion on "
                    f"{{{name}}}; only plain {{column}} placeholders are supported"
                )
            if known is not None and name not in known:
                raise DeclarationError(
                    f"{owner}: key template {pattern!r} names column {name!r}, which {owner} "
                    f"does not have (columns: {', '.join(sorted(known or ()))})"
                )
            if name not in fields:
                fields.append(name)
        if prefix is None:
            prefix = literal_so_far
        if not prefix:
            raise DeclarationError(
                f"{owner}: key template {pattern!r} must start with literal text, e.g. "
                "'room:{room_id}', so that it cannot collide with other keys"
            )
        problem = key_problem(literal_so_far or prefix)
        if problem is not None:
            raise DeclarationError(f"{owner}: key template {pattern!r}: {problem}")
        if prefix.startswith(RESERVED_PREFIX):
            raise DeclarationError(
                f"{owner}: key template {pattern!r} starts with {RESERVED_PREFIX!r}, which is "
                "reserved for Reality's table and row keys"
            )
        return cls(pattern=pattern, fields=tuple(fields), prefix=prefix)

    def render(self, values: Mapping[str, Any]) -> str | None:
        """The key for ``values``; ``None`` when a field is NULL (no key for "no room")."""
        parts: dict[str, object] = {}
        for name in self.fields:
            value = values[name]
            if value is None:
                return None
            parts[name] = value
        key = self.pattern.format(**parts)
        problem = key_problem(key)
        if problem is not None:
            raise InvalidKeyError(f"template {self.pattern!r} produced a bad key: {problem}")
        return key

    @property
    def escalation(self) -> str:
        return escalation_key(self.prefix) if self.fields else self.pattern


@dataclass(frozen=True, slots=True)
class Declaration:
    """Which keys a write to one table affects. Build it with :func:`declare`."""

    owner: str
    table: str
    primary_key: tuple[str, ...]
    columns: frozenset[str]
    table_key: bool = True
    row_keys: bool = True
    templates: tuple[KeyTemplate, ...] = ()
    #: Tables this one links (many-to-many): a link row bumps the row keys on both sides.
    links: tuple[tuple[str, str, str], ...] = field(default=())
    #: Tables whose deletes the database cascades into this one (ON DELETE CASCADE/SET NULL).
    cascades_from: tuple[str, ...] = field(default=())
    #: (declared name, SQL column name) where the two differ (trigger mode writes SQL).
    sql_names: tuple[tuple[str, str], ...] = field(default=())

    def sql_name(self, column: str) -> str:
        """The database column behind the declared column ``column``."""
        for declared, sql in self.sql_names:
            if declared == column:
                return sql
        return column

    @property
    def template_columns(self) -> frozenset[str]:
        return frozenset(f for t in self.templates for f in t.fields)

    def keys_for_row(
        self,
        new: Mapping[str, Any] | None,
        old: Mapping[str, Any] | None = None,
    ) -> set[str]:
        """Keys for one written row. ``new``/``old`` map column names to values, and
        ``MISSING`` (or an absent name) where the value is unknown.

        ``new`` is ``None`` for a delete; ``old`` is ``None`` for an insert. An unknown value
        escalates the key kind that needed it, so nothing is under-invalidated (I4, I5).
        """
        keys: set[str] = set()
        if self.table_key:
            keys.add(table_key(self.table))
        images = [img for img in (old, new) if img is not None]
        if self.row_keys and self.primary_key:
            for img in images:
                pk = [img.get(c, MISSING) for c in self.primary_key]
                if any(v is MISSING or v is None for v in pk):
                    keys.add(self.row_escalation)
                else:
                    keys.add(row_key(self.table, pk))
        for template in self.templates:
            for img in images:
                if any(img.get(f, MISSING) is MISSING for f in template.fields):
                    keys.add(template.escalation)
                    continue
                rendered = template.render(img)
                if rendered is not None:
                    keys.add(rendered)
        for column, other_table, _other_column in self.links:
            for img in images:
                value = img.get(column, MISSING)
                if value is MISSING:
                    keys.add(escalation_key(f"{ROW_PREFIX}{other_table}:"))
                elif value is not None:
                    keys.add(row_key(other_table, [value]))
        return keys

    @property
    def row_escalation(self) -> str:
        return escalation_key(f"{ROW_PREFIX}{self.table}:")

    def escalation_keys(self) -> set[str]:
        """Keys that make every key derived from this table read as changed."""
        keys: set[str] = set()
        if self.table_key:
            keys.add(table_key(self.table))
        if self.row_keys and self.primary_key:
            keys.add(self.row_escalation)
        keys.update(t.escalation for t in self.templates)
        keys.update(escalation_key(f"{ROW_PREFIX}{other}:") for _, other, _ in self.links)
        return keys


def declare(
    *,
    owner: str,
    table: str,
    columns: Iterable[str],
    primary_key: Sequence[str],
    table_key: bool = True,
    row_keys: bool = True,
    keys: Iterable[str] = (),
    links: Iterable[tuple[str, str, str]] = (),
    cascades_from: Iterable[str] = (),
    sql_names: Mapping[str, str] | None = None,
) -> Declaration:
    """Validate a declaration; every plugin's ``track`` ends here.

    ``owner`` names the model in error messages. A template naming a column the model lacks
    is refused here, at declaration time, not at the first write. ``links`` lists
    ``(column, other_table, other_column)`` for link tables: a written link row bumps the row
    key of the row it points to. ``cascades_from`` names parent tables whose deletes the
    database cascades into this table. ``sql_names`` maps declared column names to database
    column names where they differ (an ORM attribute named apart from its column).
    """
    if isinstance(keys, str):
        raise DeclarationError(
            f"{owner}: keys= takes a list of templates, e.g. keys=['room:{{room_id}}'], "
            f"not the single string {keys!r}"
        )
    for flag, name in ((table_key, "table"), (row_keys, "rows")):
        if not isinstance(flag, bool):
            raise DeclarationError(f"{owner}: {name}= must be True or False, not {flag!r}")
    cols = frozenset(columns)
    templates = tuple(KeyTemplate.parse(p, owner=owner, columns=cols) for p in keys)
    if not (table_key or row_keys or templates):
        raise DeclarationError(
            f"{owner}: the declaration produces no key at all; keep table=True, rows=True or "
            "give keys=[...]"
        )
    pk = tuple(primary_key)
    if row_keys and not pk:
        raise DeclarationError(
            f"{owner}: row keys need a primary key, and {table} has none; pass rows=False"
        )
    return Declaration(
        owner=owner,
        table=table,
        primary_key=pk,
        columns=cols,
        table_key=table_key,
        row_keys=row_keys,
        templates=templates,
        links=tuple(links),
        cascades_from=tuple(cascades_from),
        sql_names=tuple(sorted((k, v) for k, v in (sql_names or {}).items() if k != v)),
    )
