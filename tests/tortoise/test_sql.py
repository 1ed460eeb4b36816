"""The statement shapes reality_tortoise reads exactly, and those it leaves to escalation."""

from __future__ import annotations

import pytest

from reality_core.keys import MISSING
from reality_tortoise._sql import Const, Param, Shape, images, parse

STYLES = {"numeric_dollar": "$", "format": "%s", "qmark": "?"}


def sql(template: str, style: str) -> str:
    """``template`` with ``{}`` placeholders written in ``style``."""
    if style == "numeric_dollar":
        parts = template.split("{}")
        return "".join(p + (f"${i + 1}" if i < len(parts) - 1 else "")
                       for i, p in enumerate(parts))
    return template.replace("{}", STYLES[style])


@pytest.mark.parametrize("style", list(STYLES))
def test_tortoise_insert_of_several_rows(style: str) -> None:
    shape = parse(sql('INSERT INTO "post_tags" ("tag_id","post_id") VALUES ({},{}),({},{})',
                      style), style)
    assert shape is not None
    assert (shape.kind, shape.table) == ("insert", "post_tags")
    assert list(images(shape, [1, 10, 2, 10], ())) == [
        ({"tag_id": 1, "post_id": 10}, None), ({"tag_id": 2, "post_id": 10}, None)]


@pytest.mark.parametrize("style", list(STYLES))
def test_delete_pins_the_columns_of_its_conjuncts(style: str) -> None:
    shape = parse(sql('DELETE FROM "post_tags" WHERE "post_id"={} AND "tag_id" IN ({},{})',
                      style), style)
    assert shape is not None
    assert list(images(shape, [10, 1, 2], ())) == [
        (None, {"post_id": 10, "tag_id": 1}), (None, {"post_id": 10, "tag_id": 2})]


@pytest.mark.parametrize("style", list(STYLES))
def test_update_with_computed_values_and_narrowing_conjuncts(style: str) -> None:
    text = sql('UPDATE "orders" SET "total"="total"+{},"room_id"={} WHERE "total">={} '
               'AND "id"={}', style)
    shape = parse(text, style)
    assert shape is not None
    assert list(images(shape, [1, 8, 5, 42], ())) == [
        ({"id": 42, "total": MISSING, "room_id": 8}, {"id": 42})]


def test_bulk_update_case_expression_is_unknown_but_rows_are_pinned() -> None:
    text = ('UPDATE "orders" SET "total"=CASE WHEN "id"=$1 THEN CAST($2 AS INT) WHEN "id"=$3 '
            'THEN CAST($4 AS INT) END WHERE "id" IN ($5,$6)')
    shape = parse(text, "numeric_dollar")
    assert shape is not None
    assert [old for _, old in images(shape, [2, 9, 3, 9, 2, 3], ())] == [{"id": 2}, {"id": 3}]
    assert all(new is not None and new["total"] is MISSING
               for new, _ in images(shape, [2, 9, 3, 9, 2, 3], ()))


def test_upsert_on_the_primary_key_knows_the_old_rows_key_only() -> None:
    text = ('INSERT INTO "orders" ("id","room_id","total") VALUES (?,?,?) ON CONFLICT ("id") '
            'DO UPDATE SET "room_id"=EXCLUDED."room_id","total"=EXCLUDED."total"')
    shape = parse(text, "qmark")
    assert shape == Shape("insert", "orders", rows=((("id", Param(0)), ("room_id", Param(1)),
                                                      ("total", Param(2))),),
                          conflict="update", conflict_target=("id",))
    assert list(images(shape, [1, 5, 50], ("id",))) == [
        ({"id": 1, "room_id": 5, "total": 50}, {"id": 1})]
    # another conflict target: the old row could be any row
    assert list(images(shape, [1, 5, 50], ("uuid",))) == [
        ({"id": 1, "room_id": 5, "total": 50}, {})]


def test_literals_unquoted_names_and_returning() -> None:
    shape = parse("update Orders set total = 3, note = 'it''s' where id = 7 returning *",
                  "qmark")
    assert shape is not None
    assert shape.table == "orders"
    assert shape.sets == (("total", Const(3)), ("note", Const("it's")))
    assert list(images(shape, [], ())) == [
        ({"id": 7, "total": 3, "note": "it's"}, {"id": 7})]


def test_is_null_pins_none_and_qualified_columns_are_read() -> None:
    shape = parse('DELETE FROM "orders" WHERE "orders"."room_id" IS NULL', "qmark")
    assert shape is not None
    assert list(images(shape, [], ())) == [(None, {"room_id": None})]


def test_or_at_the_top_level_pins_nothing() -> None:
    shape = parse('DELETE FROM "orders" WHERE "id"=$1 OR "id"=$2', "numeric_dollar")
    assert shape is not None
    assert list(images(shape, [1, 2], ())) == [(None, {})]


def test_positional_placeholders_after_skipped_expressions_stay_aligned() -> None:
    shape = parse('UPDATE "t" SET "a"=coalesce(%s, %s) WHERE "b">%s AND "id"=%s', "format")
    assert shape is not None
    assert list(images(shape, [1, 2, 3, 4], ())) == [({"id": 4, "a": MISSING}, {"id": 4})]


@pytest.mark.parametrize("text", [
    "WITH x AS (UPDATE orders SET total = 0 RETURNING *) SELECT count(*) FROM x",
    "UPDATE orders SET total = 1; DELETE FROM posts",
    "UPDATE orders SET total = 1 -- a comment",
    "UPDATE orders SET total = (SELECT max(total) FROM orders)",
    "UPDATE orders SET total = 1 FROM posts WHERE posts.id = orders.id",
    "DELETE FROM orders WHERE id BETWEEN 1 AND 5 AND room_id = 7",
    "INSERT INTO orders (id) SELECT id FROM posts",
    "INSERT INTO orders DEFAULT VALUES",
    "INSERT INTO orders (id, total) VALUES (1)",
    "DELETE FROM orders USING posts WHERE posts.id = orders.id",
    "SELECT * FROM orders",
    "UPDATE orders SET total = $$x$$",
])
def test_what_is_not_a_shape(text: str) -> None:
    assert parse(text, "numeric_dollar") is None


def test_many_in_lists_give_up_pinning() -> None:
    values = ", ".join("?" for _ in range(100))
    shape = parse(f"DELETE FROM t WHERE a IN ({values}) AND b IN ({values})", "qmark")
    assert shape is not None
    got = list(images(shape, list(range(100)) * 2, ()))
    assert got[-1] == (None, {})


def test_written_tables_are_read_once_per_statement_string(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Tortoise sends the same parameterised strings over and over: each is read once
    (strings with many inlined values are read every time, not kept)."""
    from reality_tortoise import _declarations

    seen: list[str] = []
    real = _declarations.written_tables

    def counting(sql: str, *, dialect: str | None = None) -> set[str] | None:
        seen.append(sql)
        return real(sql, dialect=dialect)

    monkeypatch.setattr(_declarations, "written_tables", counting)
    _declarations._written_cached.cache_clear()
    try:
        short = 'UPDATE "orders" SET "total"=$1 WHERE "id"=$2'
        for _ in range(3):
            assert _declarations._written(short, "postgresql") == {"orders"}
        assert seen == [short]
        long = "INSERT INTO orders (id) VALUES " + ",".join(f"({i})" for i in range(2000))
        for _ in range(2):
            assert _declarations._written(long, "postgresql") == {"orders"}
        assert seen == [short, long, long]
    finally:
        _declarations._written_cached.cache_clear()
