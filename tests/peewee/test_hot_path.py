"""The plugin's per-statement shortcuts (issue goal G1), on each database: a statement that
needs no keys (a SELECT, a write to an untracked model) skips the planner, and a raw SQL
string is parsed once per catalog generation. The trigger-mode side (covered tables) is in
``test_triggers.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import peewee
import pytest

import reality_peewee
from reality_peewee import _tracker
from reality_peewee._api import tracker_of
from tests.peewee.conftest import R, T, Watch
from tests.peewee.models import Message, Plain, Room

Start = Callable[..., Watch]


def test_selects_and_untracked_writes_build_no_plan(
        db: peewee.Database, watch: Start, monkeypatch: pytest.MonkeyPatch) -> None:
    Room.create(id=1)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("planned a statement that needs no keys")

    monkeypatch.setattr(_tracker, "plan_for", refuse)
    w = watch(T("plain"), T("room"), R("room", 1))
    with db.atomic():
        Plain.create(name="x")
        Plain.update(name="y").execute()
        Plain.delete().where(Plain.name == "y").execute()
        assert [r.id for r in Room.select()] == [1]
        assert Room.get_by_id(1).id == 1
        assert Message.select().count() == 0
    assert w.moved() == set()
    monkeypatch.undo()
    w = watch(T("room"), R("room", 2))
    Room.create(id=2)  # a tracked write still takes the full path
    assert w.moved() == {T("room"), R("room", 2)}


def test_the_shortcut_agrees_with_the_full_path(db: peewee.Database) -> None:
    """``passthrough()`` says yes exactly where the planner finds nothing to do and the SQL
    text needs no reading."""
    tracker = tracker_of(db)
    assert tracker is not None
    st = tracker.state()
    table = peewee.Table("message").bind(db)
    cte = Message.update(score=7).returning(Message.id).cte("changed")
    queries: list[Any] = [
        Room.select(), Message.select().where(Message.id == 1), Plain.insert(name="x"),
        Plain.update(name="y"), Plain.delete(), Room.insert(name="x"),
        Room.update(name="y").where(Room.id == 1), Room.delete(),
        Message.insert_many([{"id": 1, "room": None}]),
        table.update({table.c.score: 4}), table.select(),
        peewee.Select(columns=[cte.c.id]).from_(cte).with_cte(cte),
        Room.raw("UPDATE room SET name = 'x'"), peewee.SQL("DELETE FROM room"),
        Plain.insert(name="x").with_cte(cte),
    ]
    for query in queries:
        plan = _tracker.plan_for(query, reality_peewee.registry, dialect=tracker.dialect,
                                 for_update=False, covered=tracker.covered)
        full = plan is None and not _tracker._sql_may_write(query)
        assert tracker.passthrough(query, st) is full, query


def test_a_raw_sql_string_is_parsed_once(
        db: peewee.Database, watch: Start, monkeypatch: pytest.MonkeyPatch) -> None:
    Room.create(id=1)
    catalog = reality_peewee.registry.catalog
    parsed: list[str] = []
    real = catalog.raw_sql_keys

    def spy(sql: str, *args: Any, **kwargs: Any) -> set[str]:
        parsed.append(sql)
        return real(sql, *args, **kwargs)

    monkeypatch.setattr(catalog, "raw_sql_keys", spy)
    sql = "UPDATE room SET name = 'x' WHERE id = 1"
    for _ in range(3):
        w = watch(T("room"), R("room", 1), T("plain"))
        with db.atomic():
            db.execute_sql(sql)
        assert w.moved() == {T("room"), R("room", 1)}  # each time: the keys are copies
    select = "SELECT id FROM room"
    for _ in range(3):
        db.execute_sql(select).fetchall()
    assert parsed == [sql, select]


def test_remembered_raw_sql_keys_follow_new_declarations(
        db: peewee.Database, watch: Start) -> None:
    sql = "DELETE FROM plain WHERE name = 'x'"
    w = watch(T("plain"))
    db.execute_sql(sql)
    assert w.moved() == set()  # untracked
    reality_peewee.track(Plain)  # a new catalog generation: the string is read again
    w = watch(T("plain"))
    db.execute_sql(sql)
    assert w.moved() == {T("plain")}


def test_the_raw_sql_memory_is_bounded(db: peewee.Database, watch: Start) -> None:
    tracker = tracker_of(db)
    assert tracker is not None
    Room.create(id=1)
    for i in range(_tracker.RAW_CACHE_SIZE + 10):
        db.execute_sql(f"SELECT {i}").fetchall()
    assert len(tracker._raw) <= _tracker.RAW_CACHE_SIZE
    long = "SELECT 1" + " " * _tracker.RAW_CACHE_MAX_CHARS
    db.execute_sql(long).fetchall()
    assert long not in tracker._raw
    w = watch(T("room"))
    db.execute_sql("UPDATE room SET name = 'y'" + " " * _tracker.RAW_CACHE_MAX_CHARS)
    assert w.moved() == {T("room")}  # not remembered, still bumped
