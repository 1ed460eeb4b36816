"""Keys for peewee's write queries: ``Insert``, ``Update`` and ``Delete`` on a tracked model.

A :class:`Plan` reads what the query object knows (values, the WHERE clause) and, where
that is not enough, what the database knows:

* **Row identities.** An INSERT's primary keys come from its values, from ``RETURNING``
  (PostgreSQL, where peewee asks for the primary key anyway) or from ``lastrowid`` (a
  single-row insert into an auto-increment table on SQLite/MySQL). An UPDATE/DELETE whose
  WHERE pins every primary-key column (``save()``, ``delete_instance()``, ``.where(Order.id
  == 42)``, ``Order.id.in_([...])``) names its rows.
* **Old values (I5).** peewee keeps no old values, so when the keys need columns the WHERE
  does not pin (template placeholders, link columns, or the primary key of a WHERE-based
  DELETE) the plan reads them first: ``SELECT ... WHERE <the same clause> FOR UPDATE`` in
  the same transaction, right before the statement. The lock (none needed on SQLite, whose
  writer holds the database) keeps those rows as read until the statement runs; a statement
  that then changes more rows than were read (a row inserted in between) escalates. Bulk
  reads are capped (:data:`PRESELECT_LIMIT` rows): beyond that, escalation is cheaper.
  MySQL reports *changed* rather than matched rows for an UPDATE, so that check cannot
  work there: a MySQL UPDATE is pre-read only when its WHERE names the rows by primary key.
* **Escalation (I4).** Whatever stays unknown escalates the key kind that needed it
  (``Declaration.keys_for_row`` with ``MISSING``): ``insert_from()``, ``REPLACE``, an
  upsert's old values, a WHERE the reader cannot pin.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Final

import peewee

from reality_core.catalog import Catalog
from reality_core.keys import MISSING, row_key

from ._declarations import Registry, Tracked, primary_key_fields, to_python

#: Rows a plan reads before an UPDATE/DELETE; more than this escalates instead.
PRESELECT_LIMIT: Final = 500
#: Row images a WHERE with several IN lists may expand to before it escalates instead.
MAX_IMAGES: Final = 1000

RunSelect = Callable[[peewee.Query], list[tuple[Any, ...]]]
Image = dict[str, Any]


class Plan:
    """Keys of one write statement: :meth:`before` runs ahead of it (inside the same
    transaction), :meth:`keys` after it, given its cursor."""

    def before(self, run_select: RunSelect) -> None:
        return None

    def keys(self, cursor: Any) -> set[str]:
        raise NotImplementedError


class _Escalate(Plan):
    def __init__(self, keys: set[str]) -> None:
        self._keys = keys

    def keys(self, cursor: Any) -> set[str]:
        return set(self._keys) if _rowcount(cursor) != 0 else set()


def plan_for(query: Any, registry: Registry, *, dialect: str, for_update: bool,
             covered: Callable[[], Collection[str]] = frozenset) -> Plan | None:
    """The plan for a write query on a tracked table, ``None`` for anything else.

    ``covered()`` gives the tables whose database triggers bump them (trigger mode): a
    write to one of them needs no plan, so no key work and no read of old values. It is
    called only for a write to a tracked table (it may cost a catalog query).

    Plans read peewee's query attributes (``_where``, ``_insert``, ``_on_conflict``...):
    peewee offers no public accessors for them, and they are the same in 3.17-4.x.
    """
    if not isinstance(query, (peewee.Insert, peewee.Update, peewee.Delete)):
        return None
    table = query.table
    if isinstance(table, type) and issubclass(table, peewee.Model):
        tracked = registry.for_model(table)
        if tracked is None or tracked.declaration.table in covered():
            return None
    elif isinstance(table, peewee.Table):
        # Table-level queries (peewee.Table("orders").update(...)) carry no fields to read
        # values through: every key derived from the table escalates.
        schema = getattr(table, "_schema", None)
        name = f"{schema}.{table.__name__}" if schema else table.__name__
        if registry.get(name) is None or name in covered():
            return None
        return _Escalate(registry.catalog.escalate(name))
    else:
        return None
    if isinstance(query, peewee.Insert):
        return _insert_plan(query, tracked, registry.catalog, dialect)
    return _WherePlan(query, tracked, registry.catalog, dialect=dialect, for_update=for_update)


def _python(field: Any, value: Any) -> Any:
    return field.python_value(value)


def _rowcount(cursor: Any) -> int | None:
    count = getattr(cursor, "rowcount", None)
    return count if isinstance(count, int) and count >= 0 else None


def _is_literal(value: Any) -> bool:
    return not isinstance(value, peewee.Node) or isinstance(value, (peewee.Model, peewee.Value))


# --- WHERE clauses ---------------------------------------------------------------------------

def _conjuncts(node: Any) -> Iterable[Any]:
    if isinstance(node, peewee.Expression) and node.op == peewee.OP.AND:
        yield from _conjuncts(node.lhs)
        yield from _conjuncts(node.rhs)
    elif node is not None:
        yield node


def where_constraints(where: Any, model: type[peewee.Model]) -> dict[peewee.Field, list[Any]]:
    """Values the WHERE pins for each column: ``col = v`` and ``col IN (...)`` conjuncts on
    ``model``'s own fields. Every other conjunct only narrows the rows, so it is ignored."""
    found: dict[peewee.Field, list[Any]] = {}
    for term in _conjuncts(where):
        if not isinstance(term, peewee.Expression) or term.op not in (peewee.OP.EQ,
                                                                       peewee.OP.IN):
            continue
        field, rhs = term.lhs, term.rhs
        if not isinstance(field, peewee.Field) or isinstance(field, peewee.MetaField):
            continue
        if field.model is not model:
            continue
        if term.op == peewee.OP.EQ:
            if not _is_literal(rhs) or rhs is None:
                continue
            raw = [rhs]
        else:
            if not isinstance(rhs, (list, tuple, set, frozenset)):
                continue
            raw = list(rhs)
            if not all(_is_literal(v) for v in raw):
                continue
        values: list[Any] = []
        for value in raw:
            converted = to_python(field, value)
            if converted is MISSING:
                break
            if converted not in values:
                values.append(converted)
        else:
            if field in found:  # col = 1 AND col IN (1, 2): both hold
                values = [v for v in found[field] if v in values]
            found[field] = values
    return found


def _expand(pinned: Mapping[peewee.Field, list[Any]]) -> list[dict[peewee.Field, Any]] | None:
    """Every combination of pinned values, or ``None`` when there would be too many."""
    fields = list(pinned)
    total = 1
    for f in fields:
        total *= len(pinned[f])
        if total > MAX_IMAGES:
            return None
    return [dict(zip(fields, combo, strict=True))
            for combo in itertools.product(*(pinned[f] for f in fields))]


class _WherePlan(Plan):
    """UPDATE and DELETE."""

    def __init__(self, query: Any, tracked: Tracked, catalog: Catalog, *, dialect: str,
                 for_update: bool) -> None:
        self.tracked = tracked
        self.catalog = catalog
        self.query = query
        self.is_delete = isinstance(query, peewee.Delete)
        model = tracked.model
        self.pinned = where_constraints(query._where, model)
        pk = primary_key_fields(model)
        self.by_pk = bool(pk) and all(f in self.pinned for f in pk)
        self.changes: dict[peewee.Field, Any] | None = {}
        if isinstance(query, peewee.Update):
            for target, value in (getattr(query, "_update", None) or {}).items():
                field = target if isinstance(target, peewee.Field) else tracked.field(
                    str(getattr(target, "name", target)))
                if field is None:
                    self.changes = None  # a column we cannot name: new values unknown
                    break
                self.changes[field] = to_python(field, value)
        needed = tracked.needed_fields()
        singles = {f for f, vs in self.pinned.items() if len(vs) == 1}
        pk_ids = {id(f) for f in pk}
        known = self.by_pk and all(f in singles or id(f) in pk_ids for f in needed)
        readable = (
            not getattr(query, "_from", None)
            and not getattr(query, "_limit", None)
            and not getattr(query, "_offset", None)
            and (self.by_pk or self.is_delete or dialect != "mysql")
        )
        self.preselect: peewee.Query | None = None
        if needed and not known and readable:
            select = model.select(*needed).where(query._where)
            if not self.by_pk:
                select = select.limit(PRESELECT_LIMIT + 1)
            if for_update:
                select = select.for_update()
            self.preselect = select.tuples()
        self.needed = needed
        self.read: list[tuple[Any, ...]] | None = None

    def before(self, run_select: RunSelect) -> None:
        if self.preselect is not None:
            self.read = run_select(self.preselect)

    def keys(self, cursor: Any) -> set[str]:
        count = None if self.query._returning else _rowcount(cursor)
        if count == 0:
            return set()
        decl = self.tracked.declaration
        keys: set[str] = set()
        read = self.read
        # A read by primary key is as long as the key list; a WHERE-based one is capped.
        if read is not None and (self.by_pk or len(read) <= PRESELECT_LIMIT):
            seen_pks: set[tuple[Any, ...]] = set()
            pk = primary_key_fields(self.tracked.model)
            for row in read:
                values = dict(zip(self.needed, row, strict=True))
                seen_pks.add(tuple(values[f] for f in pk))
                keys |= self._row_keys(values)
            named = _expand(self.pinned) if self.by_pk else None
            if self.by_pk and named is not None:
                for img in named:  # a row that appeared after the read (I4: escalate)
                    if tuple(img[f] for f in pk) not in seen_pks:
                        keys |= self._row_keys(img, complete=False)
            elif self.by_pk or count is None or count > len(read):
                keys |= self._unknown_rows()
        else:
            images = _expand(self.pinned)
            if images is None:
                keys |= self._unknown_rows(pinned=False)
            else:
                for img in images:
                    keys |= self._row_keys(img, complete=False)
        if self.is_delete:
            keys |= self.catalog.cascade_keys(decl.table)
        return keys

    def _row_keys(self, values: Mapping[peewee.Field, Any], *, complete: bool = True,
                  ) -> set[str]:
        """Keys of one row whose old values are ``values`` (all needed columns when
        ``complete``, else only the pinned ones: the rest is unknown)."""
        tracked = self.tracked
        old: Image = {}
        if not complete:
            for f in self.needed:
                old[f.name] = old[f.column_name] = MISSING
        old.update(tracked.image(values))
        if self.is_delete:
            return tracked.declaration.keys_for_row(None, old)
        new = dict(old)
        if self.changes is None:
            for name in new:
                new[name] = MISSING
        else:
            new.update(tracked.image(self.changes))
        return tracked.declaration.keys_for_row(new, old)

    def _unknown_rows(self, *, pinned: bool = True) -> set[str]:
        singles = {f: vs[0] for f, vs in self.pinned.items() if len(vs) == 1} if pinned else {}
        return self._row_keys(singles, complete=False)


# --- INSERT ----------------------------------------------------------------------------------

def _insert_plan(query: Any, tracked: Tracked, catalog: Catalog, dialect: str) -> Plan:
    decl = tracked.declaration
    conflict = query._on_conflict
    action = str(conflict._action or "").lower() if conflict is not None else ""
    if action == "replace":
        # REPLACE deletes whichever rows conflict on any unique key: unknowable here.
        return _Escalate(catalog.escalate(decl.table))
    insert = query._insert
    if isinstance(insert, (peewee.SelectQuery, peewee.SQL)):
        return _Escalate(catalog.escalate(decl.table))  # insert_from(): rows unknowable
    if isinstance(insert, Mapping) and not query._columns:
        rows: list[Any] = [insert]
    elif isinstance(insert, (list, tuple)):
        rows = list(insert)
    elif isinstance(insert, Iterable):
        # bulk_create() and many callers pass a generator, which peewee consumes while it
        # writes the SQL. Materialise it once, for both of us, so the rows can be read.
        rows = list(insert)
        query._insert = rows
    else:
        return _Escalate(catalog.escalate(decl.table))
    upsert = conflict is not None and action not in ("ignore", "nothing")
    return _InsertPlan(query, tracked, rows, dialect=dialect, upsert=upsert,
                       conflict_on_pk=_conflict_on_pk(query, tracked, dialect))


def _conflict_on_pk(query: Any, tracked: Tracked, dialect: str) -> bool:
    """Whether a conflict can only be on the primary key (so the row keys are exact)."""
    conflict = query._on_conflict
    if conflict is None or dialect == "mysql":  # ON DUPLICATE KEY: any unique key
        return conflict is None
    target: set[int] = set()
    for item in conflict._conflict_target or ():
        field = item if isinstance(item, peewee.Field) else tracked.field(str(item))
        if field is None:
            return False
        target.add(id(field))
    pk = {id(f) for f in primary_key_fields(tracked.model)}
    return bool(pk) and target == pk


class _InsertPlan(Plan):
    def __init__(self, query: Any, tracked: Tracked, rows: Sequence[Any], *,
                 dialect: str, upsert: bool, conflict_on_pk: bool) -> None:
        self.query = query
        self.tracked = tracked
        self.dialect = dialect
        self.upsert = upsert
        self.conflict_on_pk = conflict_on_pk
        self.images = [self._image(row) for row in rows]

    def _columns(self) -> list[peewee.Field] | None:
        columns = self.query._columns
        if not columns:
            default = self.query.get_default_columns()
            return list(default) if default else None
        out: list[peewee.Field] = []
        for column in columns:
            field = column if isinstance(column, peewee.Field) else self.tracked.field(
                str(getattr(column, "name", column)))
            if field is None:
                return None
            out.append(field)
        return out

    def _image(self, row: Any) -> dict[peewee.Field, Any]:
        model = self.tracked.model
        values: dict[peewee.Field, Any] = {}
        if isinstance(row, Mapping):
            for key, value in row.items():
                field = key if isinstance(key, peewee.Field) else self.tracked.field(str(key))
                if field is not None:
                    values[field] = value
        else:
            columns = self._columns()
            if columns is None:
                return {}
            values.update(zip(columns, row, strict=False))
        defaults = model._meta.defaults
        out: dict[peewee.Field, Any] = {}
        for field in self.tracked.needed_fields():
            if field in values:
                out[field] = to_python(field, values[field])
            elif field in defaults:
                default = defaults[field]
                # A callable default is evaluated by peewee as it writes the SQL: unknown.
                out[field] = MISSING if callable(default) else to_python(field, default)
            elif field.null and not field.primary_key:
                out[field] = None
            else:
                out[field] = MISSING
        return out

    def keys(self, cursor: Any) -> set[str]:
        query = self.query
        if not query._returning and _rowcount(cursor) == 0:
            return set()  # nothing inserted (INSERT OR IGNORE / ON CONFLICT DO NOTHING)
        tracked = self.tracked
        decl = tracked.declaration
        pk = primary_key_fields(tracked.model)
        returned = self._returned_keys(cursor, pk)
        keys: set[str] = set()
        if returned is not None:
            # The statement reported the rows it wrote (inserted or, for an upsert, updated):
            # their row keys are exact, whatever the values said; none means none written.
            if not returned:
                return set()
            if decl.row_keys and decl.primary_key:
                keys |= {row_key(decl.table, list(values)) for values in returned}
            decl = replace(decl, row_keys=False)
        images = self.images
        if returned is None and len(images) == 1 and not self.upsert and pk:
            lastrowid = getattr(cursor, "lastrowid", None)
            if (self.dialect != "postgresql" and tracked.model._meta.auto_increment
                    and isinstance(lastrowid, int) and lastrowid > 0
                    and images[0].get(pk[0]) in (MISSING, None)):
                images = [{**images[0], pk[0]: lastrowid}]
        exact_pk = self.conflict_on_pk and returned is None
        for values in images:
            new = tracked.image(values)
            if not self.upsert:
                keys |= decl.keys_for_row(new)
                continue
            # An upsert may update an existing row whose old values nobody read (I5): they
            # escalate; its primary key is the new one when the conflict is on the key.
            old = dict.fromkeys(new, MISSING)
            if exact_pk:
                old.update(tracked.image({f: values.get(f, MISSING) for f in pk}))
            keys |= decl.keys_for_row(new, old)
        return keys

    def _returned_keys(self, cursor: Any, pk: tuple[peewee.Field, ...],
                       ) -> list[tuple[Any, ...]] | None:
        """Primary keys from peewee's implicit ``RETURNING <pk>`` (PostgreSQL), read
        without taking them from peewee: the client-side cursor is rewound afterwards."""
        query = self.query
        returning = query._returning
        if not returning or query._return_cursor or not pk:
            return None
        if len(returning) != len(pk) or any(r is not f for r, f in zip(returning, pk,
                                                                        strict=True)):
            return None
        if getattr(cursor, "name", None) or not callable(getattr(cursor, "scroll", None)):
            return None
        rows = cursor.fetchall()
        if rows:  # (psycopg refuses to scroll an empty result)
            cursor.scroll(0, mode="absolute")
        return [tuple(_python(f, v) for f, v in zip(pk, row, strict=True)) for row in rows]

