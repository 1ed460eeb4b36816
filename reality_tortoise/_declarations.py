"""Declaring tracked models (``Meta.reality = Track(...)`` or ``track()``), and the catalog
of tracked tables each Reality client builds from Tortoise's app registry."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, TypeVar, overload

from tortoise.expressions import Expression
from tortoise.fields.base import Field, OnDelete
from tortoise.fields.relational import ForeignKeyFieldInstance, ManyToManyFieldInstance
from tortoise.models import Model

from reality_core.catalog import Catalog, RawSQLPolicy
from reality_core.errors import DeclarationError
from reality_core.keys import MISSING, Declaration, KeyTemplate, declare
from reality_core.rawsql import matches, written_tables
from reality_core.store import OWN_TABLES, Dialect

from . import _sql

M = TypeVar("M", bound=type[Model])
Image = dict[str, Any]

_CASCADING = (OnDelete.CASCADE, OnDelete.SET_NULL, OnDelete.SET_DEFAULT)


@dataclass(frozen=True, slots=True, kw_only=True)
class Track:
    """Which keys writes to a model affect. Put it in the model's ``Meta``::

        class Message(Model):
            id = fields.IntField(primary_key=True)
            room = fields.ForeignKeyField("models.Room")
            text = fields.TextField()

            class Meta:
                reality = Track(keys=["room:{room_id}"])

    ``table``: bump ``$table:<table>`` on every write. ``rows``: bump ``$row:<table>:<pk>``
    for each written row. ``keys``: templates filled from *field names* (a foreign key's
    ``room_id``, not ``room``), from the row before and after the write.
    """

    table: bool = True
    rows: bool = True
    keys: Sequence[str] = ()

    def __post_init__(self) -> None:
        if isinstance(self.keys, str):
            raise DeclarationError(
                f"Track(keys=...) takes a list of templates, e.g. keys=['room:{{room_id}}'], "
                f"not the single string {self.keys!r}"
            )
        object.__setattr__(self, "keys", tuple(self.keys))
        # The fields are not known yet (Meta is read before them): check all but the names
        # now, so a malformed template fails at import, not at the first write.
        for pattern in self.keys:
            KeyTemplate.parse(pattern, owner="Track", columns=None)


_EXPLICIT: weakref.WeakKeyDictionary[type[Model], Track] = weakref.WeakKeyDictionary()
#: Bumped by track()/untrack(), so clients rebuild their catalogs on their next statement.
_generation = [0]


def generation() -> int:
    return _generation[0]


def _table_name(model: type[Model]) -> str:
    meta = model._meta
    return f"{meta.schema}.{meta.db_table}" if meta.schema else meta.db_table


def _class_columns(model: type[Model]) -> dict[str, str]:
    """Field names a template may use, as far as they are known before Tortoise.init, and
    their database columns: data fields, and ``<fk>_id`` for each foreign key (created by
    Tortoise.init)."""
    meta = model._meta
    names = {n: f.source_field or n for n, f in meta.fields_map.items() if f.has_db_field}
    for name in (*meta.fk_fields, *meta.o2o_fields):
        source = getattr(meta.fields_map[name], "source_field", None)
        column = source if source and source in meta.fields_map else f"{name}_id"
        names.setdefault(column, column)
    return names


@overload
def track(model: M, /, *, table: bool = ..., rows: bool = ...,
          keys: Iterable[str] = ...) -> M: ...
@overload
def track(model: None = ..., /, *, table: bool = ..., rows: bool = ...,
          keys: Iterable[str] = ...) -> Callable[[M], M]: ...


def track(
    model: M | None = None,
    /,
    *,
    table: bool = True,
    rows: bool = True,
    keys: Iterable[str] = (),
) -> M | Callable[[M], M]:
    """Track a model you cannot (or prefer not to) give a ``Meta.reality``; the same
    semantics as :class:`Track`. As a decorator or a call::

        @reality_tortoise.track(keys=["room:{room_id}"])
        class Message(Model): ...

        reality_tortoise.track(User)          # a model from another package

    A template naming a field the model lacks is refused here. Takes effect from the next
    statement on.
    """
    spec = Track(table=table, rows=rows, keys=keys if isinstance(keys, str) else tuple(keys))

    def apply(cls: M) -> M:
        if not (isinstance(cls, type) and issubclass(cls, Model)):
            raise DeclarationError(f"track() needs a Tortoise model class, not {cls!r}")
        if cls._meta.abstract:
            raise DeclarationError(f"{cls.__name__} is abstract: track its concrete models")
        if cls._meta.db_table in OWN_TABLES:
            raise DeclarationError(f"{cls.__name__}: Reality's own tables are never tracked")
        # Validate what can be checked before Tortoise.init (the real check repeats there).
        columns = _class_columns(cls)
        declare(owner=cls.__name__, table=cls._meta.db_table or cls.__name__.lower(),
                columns=columns, primary_key=[cls._meta.pk_attr or "id"],
                table_key=spec.table, row_keys=spec.rows, keys=spec.keys, sql_names=columns)
        _EXPLICIT[cls] = spec
        _generation[0] += 1
        return cls

    if model is None:
        return apply
    return apply(model)


def untrack(model: type[Model]) -> None:
    """Forget a :func:`track` declaration (``Meta.reality`` stays: it is part of the class)."""
    if _EXPLICIT.pop(model, None) is not None:
        _generation[0] += 1


def spec_for(model: type[Model]) -> Track | None:
    spec = _EXPLICIT.get(model)
    if spec is not None:
        return spec
    meta = model.__dict__.get("Meta")
    value = getattr(meta, "reality", None) if meta is not None else None
    if value is None:
        return None
    if not isinstance(value, Track):
        raise DeclarationError(
            f"{model.__name__}.Meta.reality must be reality_tortoise.Track(...), not {value!r}"
        )
    return value


def _normalize(f: Field[Any], value: Any, instance: Model | None) -> Any:
    """A value as the database stores it, read back as Python: the same for a value set on
    an instance and one sent as a statement parameter, so both render the same key."""
    if isinstance(value, Expression):
        return MISSING  # computed by the database (F("total") + 1)
    if value is MISSING or value is None:
        return value
    try:
        if instance is not None:
            value = f.to_db_value(value, instance)
        return f.to_python_value(value)
    except Exception:  # a value the field cannot convert: treat it as unknown (escalate)
        return MISSING


@dataclass(frozen=True, slots=True)
class TrackedTable:
    """A declaration plus the mapping between database columns and model fields."""

    declaration: Declaration
    model: type[Model] | None = None
    #: database column -> field name (model tables only)
    fields_by_column: Mapping[str, str] = field(default_factory=dict)
    #: the primary key's database columns
    pk_columns: tuple[str, ...] = ()

    def from_columns(self, image: Image | None) -> Image | None:
        """A statement's column image, in field names with Python values."""
        if image is None or self.model is None:
            return image
        fields_map = self.model._meta.fields_map
        out: Image = {}
        for column, value in image.items():
            name = self.fields_by_column.get(column)
            if name is not None:
                out[name] = _normalize(fields_map[name], value, None)
        return out

    def from_values(self, values: Mapping[str, Any]) -> Image:
        """Field values read through the ORM (``QuerySet.values()``)."""
        assert self.model is not None
        fields_map = self.model._meta.fields_map
        return {n: _normalize(fields_map[n], v, None) for n, v in values.items()
                if n in fields_map}

    def from_instance(self, instance: Model, names: Iterable[str] | None = None) -> Image:
        assert self.model is not None
        fields_map = self.model._meta.fields_map
        wanted = self.declaration.columns if names is None else names
        return {n: _normalize(fields_map[n], getattr(instance, n, MISSING), instance)
                for n in wanted if n in fields_map}

    @property
    def needs_old_values(self) -> bool:
        """Whether keys depend on more than the primary key (templates, links)."""
        return bool(self.declaration.templates or self.declaration.links)


def _model_table(model: type[Model], spec: Track) -> TrackedTable:
    meta = model._meta
    data_fields = list(meta.fields_db_projection)
    cascades = [
        _table_name(f.related_model)
        for name in (*meta.fk_fields, *meta.o2o_fields)
        if isinstance(f := meta.fields_map[name], ForeignKeyFieldInstance)
        and f.db_constraint and f.on_delete in _CASCADING
    ]
    decl = declare(
        owner=model.__name__, table=_table_name(model), columns=data_fields,
        primary_key=[meta.pk_attr], table_key=spec.table, row_keys=spec.rows, keys=spec.keys,
        cascades_from=cascades,
        # Declared names are field names; the triggers read columns (source_field).
        sql_names=dict(meta.fields_db_projection),
    )
    return TrackedTable(decl, model, dict(meta.fields_db_projection_reverse),
                        (meta.db_pk_column,))


def _link_table(model: type[Model], f: ManyToManyFieldInstance[Any]) -> TrackedTable:
    through = f"{f.through_schema}.{f.through}" if f.through_schema else f.through
    other = f.related_model
    links = [
        (f.backward_key, _table_name(model), model._meta.db_pk_column),
        (f.forward_key, _table_name(other), other._meta.db_pk_column),
    ]
    cascades = [_table_name(model), _table_name(other)] if f.on_delete in _CASCADING else []
    decl = declare(
        owner=f"link table {through}", table=through, columns=[f.backward_key, f.forward_key],
        primary_key=(), row_keys=False, links=links, cascades_from=cascades,
        # A link table has no model: its declared names are its database columns.
        sql_names={f.backward_key: f.backward_key, f.forward_key: f.forward_key},
    )
    return TrackedTable(decl)


class TortoiseCatalog:
    """The tracked tables of one Tortoise context, and the keys of each write."""

    def __init__(self, models: Iterable[type[Model]]) -> None:
        self.core = Catalog()
        self.tables: dict[str, TrackedTable] = {}
        self.models: dict[type[Model], TrackedTable] = {}
        for model in models:
            spec = spec_for(model)
            if spec is None or model._meta.abstract:
                continue
            tracked = _model_table(model, spec)
            self._add(tracked)
            self.models[model] = tracked
            for name in model._meta.m2m_fields:
                m2m = model._meta.fields_map[name]
                if isinstance(m2m, ManyToManyFieldInstance):
                    link = _link_table(model, m2m)
                    if link.declaration.table not in self.tables:
                        self._add(link)

    def _add(self, tracked: TrackedTable) -> None:
        self.core.add(tracked.declaration)
        self.tables[tracked.declaration.table] = tracked

    def __len__(self) -> int:
        return len(self.tables)

    def table(self, name: str) -> TrackedTable | None:
        found = self.tables.get(name)
        if found is not None:
            return found
        for table, tracked in self.tables.items():
            if matches(name, *_bare(table)):
                return tracked
        return None

    def row_keys(self, tracked: TrackedTable, new: Image | None, old: Image | None,
                 *, delete: bool = False, covered: Collection[str] = ()) -> set[str]:
        keys = tracked.declaration.keys_for_row(new, old)
        if delete:  # a covered child's own trigger sees the cascade
            keys |= self.core.cascade_keys(tracked.declaration.table, skip=covered)
        return keys

    def statement_keys(self, sql: str, params: Any, *, many: bool, dialect: Dialect,
                       paramstyle: _sql.Paramstyle, policy: RawSQLPolicy,
                       covered: Collection[str] = ()) -> set[str]:
        """Keys for one execution of ``sql`` (``params`` is a list of parameter lists when
        ``many``). Tables in ``covered`` have database triggers (trigger mode) that bump
        them from inside the statement: they give no keys here. Raises
        :class:`~reality_core.errors.UnsupportedStatementError` for an unreadable write
        under the ``strict`` policy."""
        if not self.tables:
            return set()
        written = _written(sql, dialect)
        if written is None:  # a write this reader cannot attribute: escalate, or fail
            return self.core.raw_sql_keys(sql, policy, covered=covered)
        if not written:
            return set()
        shape = _sql.parse(sql, paramstyle) if len(written) == 1 else None
        if shape is None:
            return self.core.raw_sql_keys(sql, policy, covered=covered)
        tracked = self.table(shape.table)
        if tracked is None:  # untracked, but its deletes may cascade into tracked tables
            return (self.core.cascades_of_untracked({shape.table}, covered)
                    if shape.kind == "delete" else set())
        if tracked.declaration.table in covered:
            return set()
        keys: set[str] = set()
        runs: Sequence[Any] = params if many else [params]
        for run in runs:
            for new, old in _sql.images(shape, run, tracked.pk_columns):
                keys |= self.row_keys(tracked, tracked.from_columns(new),
                                      tracked.from_columns(old),
                                      delete=shape.kind == "delete", covered=covered)
        return keys


@lru_cache(maxsize=2048)
def _bare(table: str) -> tuple[str, str | None]:
    schema, _, bare = table.rpartition(".")
    return bare, schema or None


#: Longer SQL strings (inlined values) are read afresh each time rather than cached.
_CACHED_SQL_LENGTH = 4096


@lru_cache(maxsize=2048)
def _written_cached(sql: str, dialect: Dialect) -> frozenset[str] | None:
    found = written_tables(sql, dialect=dialect)
    return None if found is None else frozenset(found)


def _written(sql: str, dialect: Dialect) -> frozenset[str] | None:
    """The tables ``sql`` writes (see :func:`~reality_core.rawsql.written_tables`): Tortoise
    sends the same parameterised strings again and again, so short ones are read once."""
    if len(sql) > _CACHED_SQL_LENGTH:
        return _written_cached.__wrapped__(sql, dialect)
    return _written_cached(sql, dialect)
