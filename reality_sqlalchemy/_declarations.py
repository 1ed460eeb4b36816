"""``track()``: which keys a model's (or a Core table's) writes affect."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Mapper, RelationshipProperty

from reality_core.catalog import Catalog
from reality_core.errors import DeclarationError
from reality_core.keys import Declaration, declare
from reality_core.store import OWN_TABLES

T = TypeVar("T")


def table_name(table: sa.Table) -> str:
    return f"{table.schema}.{table.name}" if table.schema else table.name


@dataclass(frozen=True, slots=True)
class Tracked:
    """A declaration plus what the plugin needs to read values from ORM objects."""

    declaration: Declaration
    table: sa.Table
    #: column key -> mapped attribute key, for the columns keys are made of
    attributes: tuple[tuple[str, str], ...] = ()
    explicit: bool = True
    #: True for a mapped class's table: unit-of-work writes are seen by mapper events
    mapped: bool = False


class Registry:
    """SQLAlchemy-side view of the core :class:`Catalog`: the ``Table`` and the mapped
    attributes behind each declaration."""

    def __init__(self) -> None:
        self.catalog = Catalog()
        self._tracked: dict[str, Tracked] = {}

    def get(self, name: str) -> Tracked | None:
        return self._tracked.get(name)

    def add(self, tracked: Tracked) -> None:
        name = tracked.declaration.table
        existing = self._tracked.get(name)
        if existing is not None and existing.explicit and not tracked.explicit:
            return  # an explicit declaration wins over an implied link table
        self.catalog.add(tracked.declaration)
        self._tracked[name] = tracked

    def remember_undo(self, fn: Callable[[], None]) -> None:
        self.catalog.on_clear(fn)

    def clear(self) -> None:
        """Forget every declaration (tests use this between model sets)."""
        self.catalog.clear()
        self._tracked.clear()


registry = Registry()


def _refuse_own(table: sa.Table, owner: str) -> None:
    if table.name in OWN_TABLES:
        raise DeclarationError(f"{owner}: Reality's own table {table.name} is never tracked (I10)")


def _links(table: sa.Table) -> list[tuple[str, str, str]]:
    """For a link (association) table: FK column -> referenced single-column primary key."""
    out: list[tuple[str, str, str]] = []
    for fk in table.foreign_keys:
        target = fk.column.table
        if len(target.primary_key.columns) == 1 and fk.column.primary_key:
            out.append((fk.parent.key, table_name(target), fk.column.key))
    return out


def _cascades_from(table: sa.Table) -> list[str]:
    return [
        fk.target_fullname.rpartition(".")[0]
        for fk in table.foreign_keys
        if (fk.ondelete or "").upper() in ("CASCADE", "SET NULL", "SET DEFAULT")
    ]


def track_table(
    table: sa.Table,
    *,
    rows: bool = True,
    keys: Iterable[str] = (),
    table_key: bool = True,
    links: bool | None = None,
) -> sa.Table:
    """Track a Core table (one without a mapped class, e.g. a many-to-many link table).

    ``links`` (default: True when the table has no primary key of its own or every primary
    key column is a foreign key) makes each written row also bump the row keys it points to.
    """
    if not isinstance(table, sa.Table):
        raise DeclarationError(f"track_table() takes a sqlalchemy.Table, not {table!r}")
    owner = f"table {table_name(table)}"
    _refuse_own(table, owner)
    pk = [c.key for c in table.primary_key.columns]
    if links is None:
        links = not pk or all(c.foreign_keys for c in table.primary_key.columns)
    decl = declare(
        owner=owner, table=table_name(table), columns=[c.key for c in table.columns],
        primary_key=pk, table_key=table_key, row_keys=rows and bool(pk) and not links,
        keys=keys, links=_links(table) if links else (), cascades_from=_cascades_from(table),
        sql_names=_sql_names(table),
    )
    registry.add(Tracked(decl, table))
    return table


@overload
def track(model: type[T], /, *, table: bool = ..., rows: bool = ...,
          keys: Iterable[str] = ...) -> type[T]: ...
@overload
def track(model: None = ..., /, *, table: bool = ..., rows: bool = ...,
          keys: Iterable[str] = ...) -> Callable[[type[T]], type[T]]: ...


def track(
    model: type[T] | None = None,
    /,
    *,
    table: bool = True,
    rows: bool = True,
    keys: Iterable[str] = (),
) -> type[T] | Callable[[type[T]], type[T]]:
    """Declare which keys writes to a mapped class affect.

    Example::

        @reality_sqlalchemy.track(keys=["room:{room_id}"])
        class Message(Base):
            __tablename__ = "messages"
            ...

    or, next to a model you do not want to decorate, ``track(Message, keys=[...])``.

    ``table``: bump ``$table:messages`` on every write. ``rows``: bump
    ``$row:messages:<pk>`` for each written row. ``keys``: templates filled from column
    values, before and after the write (moving a message between rooms bumps both rooms).
    Templates name *column keys* of the mapped table; a name the table lacks is refused here.
    Many-to-many link tables of the class's relationships are tracked as well.
    """

    def apply(cls: type[T]) -> type[T]:
        try:
            mapper: Mapper[Any] = sa.inspect(cls)
        except sa.exc.NoInspectionAvailable:
            raise DeclarationError(
                f"track() needs a mapped class; {cls!r} is not mapped by SQLAlchemy"
            ) from None
        local = mapper.local_table
        if not isinstance(local, sa.Table):
            raise DeclarationError(f"{cls.__name__}: track() supports classes mapped to a Table")
        _refuse_own(local, cls.__name__)
        decl = declare(
            owner=cls.__name__, table=table_name(local), columns=[c.key for c in local.columns],
            primary_key=[c.key for c in local.primary_key.columns], table_key=table,
            row_keys=rows, keys=keys, cascades_from=_cascades_from(local),
            sql_names=_sql_names(local),
        )
        # Only the columns keys are made of: reading history is the per-row cost of a flush.
        needed = set(decl.primary_key) | decl.template_columns
        attrs: list[tuple[str, str]] = []
        for column in local.columns:
            if column.key not in needed:
                continue
            try:
                prop = mapper.get_property_by_column(column)
            except sa.orm.exc.UnmappedColumnError:
                continue
            attrs.append((column.key, prop.key))
        registry.add(Tracked(decl, local, tuple(attrs), mapped=True))
        # Old values of template columns are needed on update (I5): ask SQLAlchemy to load
        # them when the attribute is set, through its documented active_history flag.
        by_column = dict(attrs)
        for name in decl.template_columns:
            attr = getattr(cls, by_column[name], None)
            if attr is not None:
                event.listen(attr, "set", _keep_old_value, active_history=True, propagate=True)
                registry.remember_undo(
                    lambda a=attr: event.remove(a, "set", _keep_old_value)  # type: ignore[misc]
                )
        _track_link_tables(mapper)
        return cls

    if model is None:
        return apply
    return apply(model)


def _sql_names(table: sa.Table) -> dict[str, str]:
    """Column key -> column name (``Column("room", key="room_id")``): triggers write SQL."""
    return {c.key: c.name for c in table.columns}


def _keep_old_value(target: Any, value: Any, oldvalue: Any, initiator: Any) -> Any:
    return value


def _track_link_tables(mapper: Mapper[Any]) -> None:
    def link(m: Mapper[Any], _cls: Any = None) -> None:
        for prop in m.relationships:
            secondary = prop.secondary if isinstance(prop, RelationshipProperty) else None
            if isinstance(secondary, sa.Table) and registry.get(table_name(secondary)) is None:
                decl = declare(
                    owner=f"link table {table_name(secondary)}",
                    table=table_name(secondary),
                    columns=[c.key for c in secondary.columns],
                    primary_key=[c.key for c in secondary.primary_key.columns],
                    row_keys=False, links=_links(secondary),
                    cascades_from=_cascades_from(secondary), sql_names=_sql_names(secondary),
                )
                registry.add(Tracked(decl, secondary, explicit=False))

    if mapper.configured:
        link(mapper)
    else:
        event.listen(mapper, "mapper_configured", link, once=True)
