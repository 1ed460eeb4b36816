"""The catalog of tracked tables, and key computations every plugin shares.

Each plugin turns its ORM's model metadata into :class:`~reality_core.keys.Declaration`
objects and adds them to a :class:`Catalog`. The catalog answers the questions that do not
depend on the ORM: which keys a raw SQL string touches, which tables a delete cascades
into, what "escalate everything" means.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from .errors import ConfigurationError, UnsupportedStatementError
from .keys import ROW_PREFIX, Declaration, escalation_key
from .rawsql import matches, written_tables
from .store import OWN_TABLES
from .triggers import TriggerSpec, specs_for

RawSQLPolicy = Literal["conservative", "strict"]


def check_raw_sql_policy(policy: object) -> RawSQLPolicy:
    if policy not in ("conservative", "strict"):
        raise ConfigurationError(f"raw_sql must be 'conservative' or 'strict', not {policy!r}")
    return policy


def check_max_keys(value: object) -> int | None:
    """The ``max_keys`` setting of every plugin (see :meth:`Catalog.compact`)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"max_keys must be a positive int or None, not {value!r}")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Write-path settings every plugin takes at install.

    ``raw_sql``: what to do with raw SQL that changes data in a way the parser cannot
    attribute to tables (``DO`` blocks, ``CALL``...): ``"conservative"`` bumps every tracked
    table's keys, ``"strict"`` raises :class:`~reality_core.errors.UnsupportedStatementError`,
    failing the transaction. Neither skips silently.

    ``max_keys``: past this many keys of one kind in one transaction (row keys of a table,
    keys of a template), the kind escalates to its marker instead (``None``: never); see
    :meth:`Catalog.compact`.
    """

    raw_sql: RawSQLPolicy = "conservative"
    max_keys: int | None = 1000

    def __post_init__(self) -> None:
        check_raw_sql_policy(self.raw_sql)
        check_max_keys(self.max_keys)

    def as_dict(self) -> dict[str, Any]:
        return {"raw_sql": self.raw_sql, "max_keys": self.max_keys}


class Catalog:
    """Declarations by table name (``schema.table`` when qualified)."""

    def __init__(self) -> None:
        self._decls: dict[str, Declaration] = {}
        self._lock = threading.Lock()
        self._cascades: dict[str, tuple[Declaration, ...]] | None = None
        self._undo: list[Callable[[], None]] = []
        #: Changes with every add/clear: caches of derived data (trigger specs) compare it.
        self.generation = 0
        self._specs: tuple[int, int | None, list[TriggerSpec]] | None = None

    def __len__(self) -> int:
        return len(self._decls)

    def get(self, table: str) -> Declaration | None:
        return self._decls.get(table)

    def declarations(self) -> list[Declaration]:
        return list(self._decls.values())

    def add(self, decl: Declaration, *, replace: bool = True) -> None:
        if decl.table.rpartition(".")[2] in OWN_TABLES:
            from .errors import DeclarationError

            raise DeclarationError(f"{decl.owner}: Reality's own tables are never tracked (I10)")
        with self._lock:
            if not replace and decl.table in self._decls:
                return
            self._decls[decl.table] = decl
            self._cascades = None
            self.generation += 1

    def on_clear(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` when the catalog is cleared (undo a listener a declaration added)."""
        self._undo.append(fn)

    def clear(self) -> None:
        with self._lock:
            for fn in reversed(self._undo):
                fn()
            self._undo.clear()
            self._decls.clear()
            self._cascades = None
            self.generation += 1

    def trigger_specs(self, max_keys: int | None) -> list[TriggerSpec]:
        """What each tracked table's trigger computes (trigger mode, PostgreSQL)."""
        cached = self._specs
        if cached is not None and cached[0] == self.generation and cached[1] == max_keys:
            return cached[2]
        specs = specs_for(self.declarations(), max_keys, self.cascade_keys)
        self._specs = (self.generation, max_keys, specs)
        return specs

    def cascade_keys(self, table: str, skip: Collection[str] = ()) -> set[str]:
        """Keys of tracked tables the database changes when rows of ``table`` are deleted
        (``ON DELETE CASCADE / SET NULL / SET DEFAULT``): their rows are unknowable, so
        everything derived from them escalates."""
        cache = self._cascades
        if cache is None:
            built: dict[str, list[Declaration]] = {}
            for decl in self._decls.values():
                for parent in decl.cascades_from:
                    built.setdefault(parent, []).append(decl)
            cache = {k: tuple(v) for k, v in built.items()}
            self._cascades = cache
        keys: set[str] = set()
        for decl in cache.get(table, ()):
            if decl.table not in skip:
                keys |= decl.escalation_keys()
        return keys

    def compact(self, keys: Iterable[str], limit: int | None) -> list[str]:
        """Sorted keys, where more than ``limit`` keys of one kind (row keys of one table,
        keys of one template) are replaced by that kind's escalation marker.

        A transaction that writes 100,000 rows would otherwise append 100,000 log rows; past
        the limit every key of the kind reads as changed instead (I4 allows over-, never
        under-invalidation), and the bump stays one short statement.
        """
        ordered = sorted(set(keys))
        if limit is None or len(ordered) <= limit:
            return ordered
        groups: dict[str, list[str]] = {}
        prefixes = self._template_prefixes()
        for key in ordered:
            marker = _marker_for(key, prefixes)
            if marker is not None:
                groups.setdefault(marker, []).append(key)
        out = set(ordered)
        for marker, members in groups.items():
            if len(members) > limit:
                out.difference_update(members)
                out.add(marker)
        return sorted(out)

    def _template_prefixes(self) -> list[tuple[str, str]]:
        """(literal prefix, escalation marker) of every template, longest prefix first."""
        found = {(t.prefix, t.escalation) for d in self._decls.values() for t in d.templates
                 if t.fields}
        return sorted(found, key=lambda p: -len(p[0]))

    def escalate(self, table: str) -> set[str]:
        """Every key derived from ``table`` (and what its deletes cascade into)."""
        decl = self._decls.get(table)
        if decl is None:
            return set()
        return decl.escalation_keys() | self.cascade_keys(table)

    def raw_sql_keys(
        self, sql: str, policy: RawSQLPolicy, dialect: str | None = None,
        covered: Collection[str] = (),
    ) -> set[str]:
        """Keys for a raw SQL string: every tracked table it writes escalates. A string
        whose writes cannot be attributed escalates every table (``conservative``) or
        raises :class:`UnsupportedStatementError` (``strict``). Tables in ``covered`` have
        database triggers that bump them from inside the statement: they are left out."""
        if not self._decls:
            return set()
        written = written_tables(sql, dialect=dialect)
        keys: set[str] = set()
        if written is None:
            uncovered = [d for t, d in self._decls.items() if t not in covered]
            if not uncovered:
                return keys  # every tracked table bumps itself, whatever the statement did
            if policy == "strict":
                raise UnsupportedStatementError(
                    "Reality cannot tell which tables this statement writes: "
                    f"{sql[:200]!r}. Bump the affected keys by hand, or use "
                    "raw_sql='conservative' to bump every tracked table"
                )
            for decl in uncovered:
                keys |= decl.escalation_keys()
            return keys
        for name in written:
            for table in self._decls:
                if table in covered:
                    continue
                schema, _, bare = table.rpartition(".")
                if matches(name, bare, schema or None):
                    keys |= self.escalate(table)
        return keys | self.cascades_of_untracked(written, covered)

    def cascades_of_untracked(self, written: Iterable[str],
                              covered: Collection[str] = ()) -> set[str]:
        """Keys of tracked tables the database changes when rows of *untracked* tables
        among ``written`` are deleted (``ON DELETE CASCADE/SET NULL``); a tracked table's own
        cascades come with :meth:`escalate`. A ``covered`` child's trigger sees the cascade."""
        keys: set[str] = set()
        written = list(written)
        if not written:  # the common case (a SELECT): no work on the statement path
            return keys
        parents = {p for decl in self._decls.values() for p in decl.cascades_from}
        for name in written:
            if any(matches(name, *_bare(t)) for t in self._decls):
                continue
            for parent in parents:
                if matches(name, *_bare(parent)):
                    keys |= self.cascade_keys(parent, skip=covered)
        return keys


def _marker_for(key: str, template_prefixes: list[tuple[str, str]]) -> str | None:
    if key.startswith(ROW_PREFIX):
        table, sep, _ = key[len(ROW_PREFIX):].partition(":")
        return escalation_key(f"{ROW_PREFIX}{table}:") if sep else None
    for prefix, marker in template_prefixes:
        if key.startswith(prefix):
            return marker
    return None


def _bare(table: str) -> tuple[str, str | None]:
    """``schema.table`` -> (table, schema); an unqualified name has no schema."""
    schema, _, bare = table.rpartition(".")
    return bare, schema or None
