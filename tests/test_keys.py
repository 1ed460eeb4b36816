"""Key rules, key templates, declarations (reality_core.keys) and the per-transaction key
buffer's savepoint semantics (reality_core.buffer, I2/I3)."""

from __future__ import annotations

from typing import Any

import pytest

from reality_core import DeclarationError, InvalidKeyError, KeyBuffer, validate_key
from reality_core.keys import (
    MISSING,
    Declaration,
    KeyTemplate,
    declare,
    escalation_key,
    key_problem,
    row_key,
    table_key,
)

COLUMNS = ("id", "room_id", "author_id", "title")


def orders(**overrides: Any) -> Declaration:
    options: dict[str, Any] = {"owner": "Order", "table": "orders", "columns": COLUMNS,
                               "primary_key": ["id"], "keys": ["room:{room_id}"]}
    options.update(overrides)
    return declare(**options)


# --------------------------------------------------------------------------- key rules


@pytest.mark.parametrize(
    "key",
    ["room:7", "a", "k" * 256, "ключ:ü", "emoji:\U0001f600", "with space", "quote'\"%s",
     "nbsp:\xa0", "$table:orders"],
)
def test_valid_keys(key: str) -> None:
    assert key_problem(key) is None


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        (None, "must be a string, not NoneType"),
        (7, "must be a string, not int"),
        (b"room", "must be a string, not bytes"),
        ("", "must not be empty"),
        ("k" * 257, "at most 256 characters; this one has 257"),
        ("k" * 10_240, "at most 256 characters"),
        ("room\x00", "control characters"),
        ("room\n7", "control characters"),
        ("room\t7", "control characters"),
        ("room\x1f", "control characters"),
        ("room\x7f", "control characters"),
        ("room\x85", "control characters"),
        ("room\x9f", "control characters"),
    ],
)
def test_invalid_keys(key: object, problem: str) -> None:
    message = key_problem(key)
    assert message is not None
    assert problem in message
    with pytest.raises(InvalidKeyError, match="a key"):
        validate_key(key)


def test_reserved_prefix_is_only_for_reality() -> None:
    with pytest.raises(InvalidKeyError, match="reserved"):
        validate_key("$table:orders")
    assert validate_key("$table:orders", allow_reserved=True) == "$table:orders"
    assert validate_key("feed:global") == "feed:global"


def test_default_keys() -> None:
    assert table_key("orders") == "$table:orders"
    assert row_key("orders", [42]) == "$row:orders:42"
    assert row_key("order_items", [42, "a"]) == "$row:order_items:42:a"
    assert escalation_key("room:") == "$esc:room:"


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ((["a:b"],), (["a", "b"],)),  # a ":" inside a part is not a separator
        ((["a%3Ab"],), (["a:b"],)),  # and "%" is encoded, so no spelling collides
        (([1, 2],), (["1:2"],)),
        ((["x"],), (["x", ""],)),
    ],
)
def test_row_keys_never_collide(one: tuple[list[object]], other: tuple[list[object]]) -> None:
    assert row_key("t", one[0]) != row_key("t", other[0])


def test_default_kinds_never_collide_with_each_other_or_user_keys() -> None:
    # Table "x:1" and row 1 of table "x" differ by their prefixes.
    assert table_key("x:1") != row_key("x", [1])
    assert not table_key("orders").startswith("$row:")
    for template in ("table:{id}", "row:{id}", "esc:{id}"):
        parsed = KeyTemplate.parse(template, owner="M", columns=["id"])
        assert not parsed.render({"id": 1}).startswith("$")  # type: ignore[union-attr]


# --------------------------------------------------------------------------- templates


def test_template_renders_and_knows_its_prefix() -> None:
    t = KeyTemplate.parse("chat:room:{room_id}:by:{author_id}", owner="Order", columns=COLUMNS)
    assert t.fields == ("room_id", "author_id")
    assert t.prefix == "chat:room:"
    assert t.escalation == "$esc:chat:room:"
    assert t.render({"room_id": 7, "author_id": "ann", "title": "x"}) == "chat:room:7:by:ann"


def test_a_null_value_gives_no_key() -> None:
    t = KeyTemplate.parse("room:{room_id}", owner="Order", columns=COLUMNS)
    assert t.render({"room_id": None}) is None


def test_a_rendered_key_must_obey_the_key_rules() -> None:
    t = KeyTemplate.parse("room:{title}", owner="Order", columns=COLUMNS)
    with pytest.raises(InvalidKeyError, match="room:\\{title\\}"):
        t.render({"title": "x" * 300})
    with pytest.raises(InvalidKeyError, match="control"):
        t.render({"title": "a\nb"})


def test_a_template_without_placeholders_is_a_constant_key() -> None:
    t = KeyTemplate.parse("feed:global", owner="Order", columns=COLUMNS)
    assert t.fields == ()
    assert t.render({}) == "feed:global"
    assert t.escalation == "feed:global"  # escalating a constant key is bumping it


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("room:{rom_id}", "names column 'rom_id', which Order does not have"),
        ("{room_id}", "must start with literal text"),
        ("{room_id}:messages", "must start with literal text"),
        ("$room:{room_id}", "reserved"),
        ("$table:{id}", "reserved"),
        ("room:{room_id!r}", "format spec or conversion"),
        ("room:{room_id:>5}", "format spec or conversion"),
        ("room:{0}", "plain column names"),
        ("room:{}", "plain column names"),
        ("room:{room.id}", "plain column names"),
        ("room:{room_id", "malformed"),
        ("room:}", "malformed"),
        ("ro\nom:{room_id}", "control characters"),
        ("", "must start with literal text"),
    ],
)
def test_template_errors_name_the_model_and_the_problem(template: str, problem: str) -> None:
    with pytest.raises(DeclarationError) as info:
        orders(keys=[template])
    assert info.value.message.startswith("Order: ")
    assert problem in info.value.message


def test_an_unknown_column_error_lists_the_columns() -> None:
    with pytest.raises(DeclarationError, match="columns: author_id, id, room_id, title"):
        orders(keys=["room:{rom_id}"])


def test_declaration_errors() -> None:
    with pytest.raises(DeclarationError, match="takes a list of templates"):
        orders(keys="room:{room_id}")
    with pytest.raises(DeclarationError, match="must be a string"):
        orders(keys=[7])
    with pytest.raises(DeclarationError, match="produces no key at all"):
        orders(table_key=False, row_keys=False, keys=[])
    with pytest.raises(DeclarationError, match="row keys need a primary key"):
        orders(primary_key=[])
    with pytest.raises(DeclarationError, match="table= must be True or False"):
        orders(table_key=1)
    with pytest.raises(DeclarationError, match="rows= must be True or False"):
        orders(row_keys="yes")
    assert orders(primary_key=[], row_keys=False).primary_key == ()


# --------------------------------------------------------------------------- keys of a write


def test_insert_update_delete_keys() -> None:
    d = orders()
    assert d.keys_for_row({"id": 1, "room_id": 7}) == {"$table:orders", "$row:orders:1", "room:7"}
    # Old and new values (I5): moving a message from room 7 to room 8 bumps both rooms.
    assert d.keys_for_row({"id": 1, "room_id": 8}, {"id": 1, "room_id": 7}) == {
        "$table:orders", "$row:orders:1", "room:7", "room:8",
    }
    assert d.keys_for_row(None, {"id": 1, "room_id": 7}) == {
        "$table:orders", "$row:orders:1", "room:7",
    }


def test_none_values_give_no_template_key() -> None:
    d = orders()
    assert d.keys_for_row({"id": 1, "room_id": None}) == {"$table:orders", "$row:orders:1"}
    assert d.keys_for_row({"id": 1, "room_id": 7}, {"id": 1, "room_id": None}) == {
        "$table:orders", "$row:orders:1", "room:7",
    }


@pytest.mark.parametrize("old", [{"id": 1, "room_id": MISSING}, {"id": 1}])
def test_missing_old_values_escalate(old: dict[str, Any]) -> None:
    d = orders()
    keys = d.keys_for_row({"id": 1, "room_id": 8}, old)
    assert keys == {"$table:orders", "$row:orders:1", "room:8", "$esc:room:"}


def test_a_missing_primary_key_escalates_the_row_keys() -> None:
    d = orders()
    assert d.keys_for_row({"id": MISSING, "room_id": 7}) == {
        "$table:orders", "$esc:$row:orders:", "room:7",
    }
    assert "$esc:$row:orders:" in d.keys_for_row({"room_id": 7})
    assert "$esc:$row:orders:" in d.keys_for_row({"id": None, "room_id": 7})


def test_composite_primary_keys() -> None:
    d = orders(primary_key=["id", "title"], keys=[])
    assert d.keys_for_row({"id": 1, "title": "a:b"}) == {"$table:orders", "$row:orders:1:a%3Ab"}


def test_switching_kinds_off() -> None:
    d = orders(table_key=False, row_keys=False)
    assert d.keys_for_row({"id": 1, "room_id": 7}) == {"room:7"}
    assert d.escalation_keys() == {"$esc:room:"}


def test_link_tables_bump_both_sides() -> None:
    d = declare(owner="post_tags", table="post_tags", columns=["post_id", "tag_id"],
                primary_key=["post_id", "tag_id"],
                links=[("post_id", "posts", "id"), ("tag_id", "tags", "id")])
    assert d.keys_for_row({"post_id": 1, "tag_id": 2}) == {
        "$table:post_tags", "$row:post_tags:1:2", "$row:posts:1", "$row:tags:2",
    }
    assert d.keys_for_row(None, {"post_id": 1, "tag_id": MISSING}) == {
        "$table:post_tags", "$esc:$row:post_tags:", "$row:posts:1", "$esc:$row:tags:",
    }
    assert d.escalation_keys() == {
        "$table:post_tags", "$esc:$row:post_tags:", "$esc:$row:posts:", "$esc:$row:tags:",
    }


def test_escalation_keys_cover_every_derived_key() -> None:
    d = orders(keys=["room:{room_id}", "author:{author_id}:orders", "feed:global"])
    assert d.escalation_keys() == {
        "$table:orders", "$esc:$row:orders:", "$esc:room:", "$esc:author:", "feed:global",
    }
    markers = [e.removeprefix("$esc:") for e in d.escalation_keys() if e.startswith("$esc:")]
    plain = d.escalation_keys() - {f"$esc:{m}" for m in markers}
    for key in d.keys_for_row({"id": 5, "room_id": 7, "author_id": 3}):
        assert key in plain or any(key.startswith(m) for m in markers), key


# --------------------------------------------------------------------------- the key buffer


def test_buffer_drains_sorted_unique_keys_and_resets() -> None:
    buf = KeyBuffer()
    assert not buf
    buf.add(["b", "a"])
    buf.add(["a", "C"])
    assert len(buf) == 3
    assert buf.drain() == ["C", "a", "b"]
    assert not buf
    assert buf.drain() == []


def test_a_released_savepoint_merges_into_its_parent() -> None:
    buf = KeyBuffer()
    buf.add(["outer"])
    buf.savepoint()
    buf.add(["inner"])
    assert buf.depth == 1
    buf.release()
    assert buf.depth == 0
    assert buf.drain() == ["inner", "outer"]


def test_a_rolled_back_savepoint_is_forgotten_with_its_children() -> None:
    buf = KeyBuffer()
    buf.add(["order:1"])
    buf.savepoint()  # level 1: rolled back
    buf.add(["order:2"])
    buf.savepoint()  # level 2: released into level 1, so rolled back with it
    buf.add(["room:7"])
    buf.release()
    buf.rollback_savepoint()
    buf.savepoint()  # a sibling that is released survives
    buf.add(["order:3"])
    buf.release()
    assert buf.drain() == ["order:1", "order:3"]


def test_three_levels_middle_rolled_back() -> None:
    buf = KeyBuffer()
    buf.add(["a"])
    buf.savepoint()
    buf.add(["b"])
    buf.savepoint()
    buf.add(["c"])
    buf.savepoint()
    buf.add(["d"])
    buf.release()  # d into c's level
    buf.rollback_savepoint()  # drops c and d
    buf.release()  # b into the outer level
    assert buf.drain() == ["a", "b"]


def test_unbalanced_savepoint_events_never_lose_keys() -> None:
    buf = KeyBuffer()
    buf.add(["a"])
    buf.release()  # a release we did not see begin keeps the keys
    buf.rollback_savepoint()  # likewise a rollback: over-invalidating beats losing a key
    assert buf.depth == 0
    assert buf.drain() == ["a"]


def test_clear_drops_everything_at_every_depth() -> None:
    buf = KeyBuffer()
    buf.add(["a"])
    buf.savepoint()
    buf.add(["b"])
    buf.clear()
    assert buf.depth == 0
    assert len(buf) == 0
    assert buf.drain() == []
    assert repr(buf) == "KeyBuffer(depth=0, pending=0)"
