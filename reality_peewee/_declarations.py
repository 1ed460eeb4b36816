"""``track()``: which keys a peewee model's writes affect."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import peewee

from reality_core.catalog import Catalog
from reality_core.errors import DeclarationError
from reality_core.keys import MISSING, Declaration, declare
from reality_core.store import OWN_TABLES

M = TypeVar("M", bound=type[peewee.Model])

_CASCADING = ("CASCADE", "SET NULL", "SET DEFAULT")


def table_name(model: type[peewee.Model]) -> str:
    meta = model._meta
    return f"{meta.schema}.{meta.table_name}" if meta.schema else str(meta.table_name)


def primary_key_fields(model: type[peewee.Model]) -> tuple[peewee.Field, ...]:
    pk = model._meta.primary_key
    if pk is False or pk is None:
        return ()
    if isinstance(pk, peewee.CompositeKey):
        return tuple(model._meta.fields[name] for name in pk.field_names)
    return (pk,)


def to_python(field: Any, value: Any) -> Any:
    """``value`` as peewee would read it back from the database, or ``MISSING`` when it is
    an SQL expression (``F('total') + 1``, a subquery) whose result only the database knows.

    Keys must render alike whether a value came from the application (``Order(room_id=7)``,
    a model instance for a foreign key) or from a row read back, so both go through the
    field's own conversions.
    """
    if isinstance(value, peewee.Value) and not isinstance(value.value, peewee.Node):
        value = value.value
    if isinstance(value, peewee.Node) and not isinstance(value, peewee.Model):
        return MISSING
    if value is None:
        return None
    try:
        return field.python_value(field.db_value(value))
    except Exception:  # a value the field cannot convert: unknowable here, so escalate
        return MISSING


@dataclass(frozen=True, slots=True)
class Tracked:
    """A declaration plus the peewee model behind it."""

    declaration: Declaration
    model: type[peewee.Model]
    explicit: bool = True

    @property
    def primary_key(self) -> tuple[peewee.Field, ...]:
        return primary_key_fields(self.model)

    def field(self, name: str) -> peewee.Field | None:
        """The concrete field called ``name`` (its field name or its column name)."""
        meta = self.model._meta
        found = meta.fields.get(name)
        if isinstance(found, peewee.Field) and not isinstance(found, peewee.MetaField):
            return found
        found = meta.columns.get(name)
        return found if isinstance(found, peewee.Field) else None

    def needed_fields(self) -> tuple[peewee.Field, ...]:
        """The fields a written row's keys are computed from (primary key, template
        placeholders, link columns), in a stable order."""
        decl = self.declaration
        names = [f.name for f in self.primary_key]
        names += sorted(decl.template_columns)
        names += [column for column, _, _ in decl.links]
        out: list[peewee.Field] = []
        for name in names:
            field = self.field(name)
            # Identity, not ``in``: a peewee Field's == builds a (truthy) SQL expression.
            if field is not None and all(field is not f for f in out):
                out.append(field)
        return tuple(out)

    def image(self, values: Mapping[peewee.Field, Any]) -> dict[str, Any]:
        """A row image for :meth:`Declaration.keys_for_row`: each value under both the
        field name and the column name, so templates may use either."""
        out: dict[str, Any] = {}
        for field, value in values.items():
            out[field.name] = value
            out[field.column_name] = value
        return out


class Registry:
    """The peewee side of the core :class:`Catalog`: the model behind each declaration,
    and many-to-many fields whose through model is not resolved yet."""

    def __init__(self) -> None:
        self.catalog = Catalog()
        self._tracked: dict[str, Tracked] = {}
        self._pending: list[peewee.ManyToManyField] = []
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._tracked)

    def get(self, name: str) -> Tracked | None:
        return self._tracked.get(name)

    def for_model(self, model: type[peewee.Model]) -> Tracked | None:
        tracked = self._tracked.get(table_name(model))
        if tracked is None and self._pending:
            self.resolve_pending()
            tracked = self._tracked.get(table_name(model))
        return tracked

    def add(self, tracked: Tracked) -> None:
        name = tracked.declaration.table
        with self._lock:
            existing = self._tracked.get(name)
            if existing is not None and existing.explicit and not tracked.explicit:
                return  # an explicit declaration wins over an implied link table
            self.catalog.add(tracked.declaration)
            self._tracked[name] = tracked

    def defer(self, field: peewee.ManyToManyField) -> None:
        with self._lock:
            if all(field is not f for f in self._pending):
                self._pending.append(field)

    def resolve_pending(self) -> None:
        """Track the through models of ``DeferredThroughModel`` fields resolved since."""
        if not self._pending:  # the usual case, on every raw statement: no lock taken
            return
        with self._lock:
            pending, self._pending = self._pending, []
            for field in pending:
                through = field.through_model
                if isinstance(through, type) and issubclass(through, peewee.Model):
                    _track_link_model(through)
                else:
                    self._pending.append(field)

    def clear(self) -> None:
        """Forget every declaration (tests use this between model sets)."""
        with self._lock:
            self.catalog.clear()
            self._tracked.clear()
            self._pending.clear()


registry = Registry()


def _check_model(candidate: object) -> type[peewee.Model]:
    if not (isinstance(candidate, type) and issubclass(candidate, peewee.Model)):
        raise DeclarationError(f"track() takes a peewee Model class, not {candidate!r}")
    model: type[peewee.Model] = candidate
    if model._meta.table_name in OWN_TABLES:
        raise DeclarationError(
            f"{model.__name__}: Reality's own table {model._meta.table_name} is never tracked "
            "(I10)"
        )
    return model


def _columns(model: type[peewee.Model]) -> set[str]:
    names: set[str] = set()
    for field in model._meta.sorted_fields:
        names.add(field.name)
        names.add(field.column_name)
    return names


def _cascades_from(model: type[peewee.Model]) -> list[str]:
    return [
        table_name(fk.rel_model)
        for fk in model._meta.refs
        if str(fk.on_delete or "").upper() in _CASCADING
    ]


def _links(model: type[peewee.Model]) -> list[tuple[str, str, str]]:
    """Foreign keys to a single-column primary key: (column, other table, other column)."""
    out: list[tuple[str, str, str]] = []
    for fk in model._meta.refs:
        target = fk.rel_model
        pk = primary_key_fields(target)
        if len(pk) == 1 and pk[0] is fk.rel_field:
            out.append((fk.column_name, table_name(target), fk.rel_field.column_name))
    return out


def _declare(model: type[peewee.Model], *, owner: str, table: bool, rows: bool,
             keys: Iterable[str], links: bool) -> Declaration:
    pk = [f.column_name for f in primary_key_fields(model)]
    return declare(
        owner=owner, table=table_name(model), columns=_columns(model), primary_key=pk,
        table_key=table, row_keys=rows and bool(pk) and not links, keys=keys,
        links=_links(model) if links else (), cascades_from=_cascades_from(model),
        sql_names=_sql_names(model),
    )


def _sql_names(model: type[peewee.Model]) -> dict[str, str]:
    """Field name -> column name (``room = ForeignKeyField(Room)`` is column ``room_id``):
    a template may name either, and trigger mode writes SQL, which knows only columns."""
    return {f.name: f.column_name for f in model._meta.sorted_fields}


def _track_link_model(through: type[peewee.Model]) -> None:
    if registry.get(table_name(through)) is not None:
        return
    decl = _declare(through, owner=f"link model {through.__name__}", table=True, rows=False,
                    keys=(), links=True)
    registry.add(Tracked(decl, through, explicit=False))


def _track_many_to_many(model: type[peewee.Model]) -> None:
    for field in model._meta.manytomany.values():
        _track_link_model(field.through_model)
    # A field whose through model is a DeferredThroughModel is not bound (not in
    # _meta.manytomany) until set_model(); it still sits in the class body.
    for value in vars(model).values():
        if isinstance(value, peewee.ManyToManyField) and isinstance(
                getattr(value, "_through_model", None), peewee.DeferredThroughModel):
            registry.defer(value)


@overload
def track(model: M, /, *, table: bool = ..., rows: bool = ..., keys: Iterable[str] = ...,
          links: bool | None = ...) -> M: ...
@overload
def track(model: None = ..., /, *, table: bool = ..., rows: bool = ...,
          keys: Iterable[str] = ..., links: bool | None = ...) -> Callable[[M], M]: ...


def track(
    model: M | None = None,
    /,
    *,
    table: bool = True,
    rows: bool = True,
    keys: Iterable[str] = (),
    links: bool | None = None,
) -> M | Callable[[M], M]:
    """Declare which keys writes to a peewee model affect.

    Example::

        @reality_peewee.track(keys=["room:{room_id}"])
        class Message(BaseModel):
            room = ForeignKeyField(Room)      # column room_id
            body = TextField()

    or, next to a model you do not want to decorate, ``reality_peewee.track(Message, ...)``.

    ``table``: bump ``$table:message`` on every write. ``rows``: bump ``$row:message:<pk>``
    for each written row. ``keys``: templates filled from column values, before *and* after
    the write (moving a message between rooms bumps both rooms). A placeholder names a
    field or its column (``{room}`` and ``{room_id}`` both give the room's id); a name the
    model lacks is refused here. ``links`` (default: when every primary-key column is a
    foreign key) makes each written row bump the row keys it points to, as for a
    many-to-many through model. The through models of the model's ``ManyToManyField``\\ s
    are tracked as link tables automatically.
    """

    def apply(cls: M) -> M:
        checked = _check_model(cls)
        pk = primary_key_fields(checked)
        is_link = links
        if is_link is None:
            fks = {fk.name for fk in checked._meta.refs}
            is_link = not pk or all(f.name in fks for f in pk)
        decl = _declare(checked, owner=checked.__name__, table=table, rows=rows, keys=keys,
                        links=is_link)
        registry.add(Tracked(decl, checked))
        _track_many_to_many(checked)
        return cls

    if model is None:
        return apply
    return apply(model)
