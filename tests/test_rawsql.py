"""C09 — which tables a raw SQL string writes to (reality_core.rawsql)."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from reality_core import ConfigurationError
from reality_core.rawsql import matches, written_tables

WRITES: list[tuple[str, set[str]]] = [
    # the plain statements
    ("UPDATE orders SET total = 1 WHERE id = 42", {"orders"}),
    ("update Orders set total = 1", {"orders"}),
    ("INSERT INTO orders (id, room_id) VALUES (1, 7)", {"orders"}),
    ("INSERT INTO orders(id) VALUES (1)", {"orders"}),
    ("INSERT INTO orders DEFAULT VALUES", {"orders"}),
    ("INSERT INTO archive SELECT * FROM orders", {"archive"}),
    ("DELETE FROM orders WHERE id = 1", {"orders"}),
    ("DELETE FROM ONLY orders", {"orders"}),
    ("DELETE LOW_PRIORITY QUICK IGNORE FROM orders", {"orders"}),
    ("UPDATE ONLY orders SET a = 1", {"orders"}),
    ("UPDATE LOW_PRIORITY IGNORE orders SET a = 1", {"orders"}),
    ("INSERT IGNORE INTO orders VALUES (1)", {"orders"}),
    ("REPLACE INTO orders VALUES (1)", {"orders"}),
    ("MERGE INTO orders o USING src s ON o.id = s.id "
     "WHEN MATCHED THEN UPDATE SET total = s.total, room_id = 5 "
     "WHEN MATCHED AND s.gone THEN DELETE "
     "WHEN NOT MATCHED THEN INSERT (id, total) VALUES (s.id, s.total)", {"orders"}),
    ("MERGE orders USING src ON true WHEN MATCHED THEN DELETE", {"orders"}),
    ("TRUNCATE orders", {"orders"}),
    ("TRUNCATE TABLE orders, rooms RESTART IDENTITY", {"orders", "rooms"}),
    ("TRUNCATE ONLY orders", {"orders"}),
    ("COPY orders FROM STDIN", {"orders"}),
    ("COPY orders (id, total) FROM '/tmp/x.csv' WITH (FORMAT csv)", {"orders"}),
    ("LOAD DATA INFILE '/tmp/x.csv' INTO TABLE orders", {"orders"}),
    ("LOAD DATA LOCAL INFILE 'x' REPLACE INTO TABLE `shop`.`orders`", {"shop.orders"}),
    # CTEs and several statements
    ("WITH moved AS (UPDATE orders SET room_id = 8 WHERE room_id = 7 RETURNING *) "
     "SELECT count(*) FROM moved", {"orders"}),
    ("WITH gone AS (DELETE FROM orders RETURNING id) INSERT INTO audit SELECT id FROM gone",
     {"orders", "audit"}),
    ("WITH x AS (SELECT 1) UPDATE orders SET a = 1", {"orders"}),
    ("SELECT 1; UPDATE orders SET a = 1; DELETE FROM rooms", {"orders", "rooms"}),
    ("EXPLAIN ANALYZE UPDATE orders SET a = 1", {"orders"}),
    # upserts: the target is written, the clause is not a second statement
    ("INSERT INTO orders (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET total = excluded.total",
     {"orders"}),
    ("INSERT INTO orders (id) VALUES (1) ON CONFLICT ON CONSTRAINT pk DO UPDATE SET a = 1",
     {"orders"}),
    ("INSERT INTO orders (id) VALUES (1) ON CONFLICT DO NOTHING", {"orders"}),
    ("INSERT INTO orders (id) VALUES (1) ON DUPLICATE KEY UPDATE total = VALUES(total)",
     {"orders"}),
    ("INSERT INTO orders (id) VALUES (1) AS new ON DUPLICATE KEY UPDATE total = new.total",
     {"orders"}),
    ("INSERT OR REPLACE INTO orders VALUES (1)", {"orders"}),
    ("INSERT OR IGNORE INTO orders VALUES (1)", {"orders"}),
    ("UPDATE OR IGNORE orders SET a = 1", {"orders"}),
    ("UPDATE OR REPLACE orders SET a = 1", {"orders"}),
    # multi-table UPDATE: every joined table may change
    ("UPDATE orders JOIN rooms ON rooms.id = orders.room_id SET rooms.n = 1", {"orders", "rooms"}),
    ("UPDATE orders o, rooms r SET r.n = 1 WHERE r.id = o.room_id", {"orders", "rooms"}),
    ("UPDATE orders JOIN (SELECT id, 5 AS n FROM rooms) r ON r.id = orders.room_id SET a = r.n",
     {"orders"}),
    ("UPDATE orders SET a = (SELECT max(x) FROM rooms, tags) FROM other WHERE true", {"orders"}),
    # quoted and schema-qualified names
    ('UPDATE "Orders" SET a = 1', {"Orders"}),
    ('UPDATE "we""ird" SET a = 1', {'we"ird'}),
    ('INSERT INTO "my schema"."Orders" VALUES (1)', {"my schema.Orders"}),
    ("UPDATE public.orders SET a = 1", {"public.orders"}),
    ("UPDATE Public . Orders SET a = 1", {"public.orders"}),
    ("DELETE FROM `shop`.`orders`", {"shop.orders"}),
    ("INSERT INTO `we``ird` VALUES (1)", {"we`ird"}),
    # what strings and comments hide stays hidden, and what follows them is still seen
    ("SELECT 'it''s; UPDATE x SET a = 1' AS s; UPDATE orders SET note = 'DELETE FROM y'",
     {"orders"}),
    ("/* UPDATE x */ UPDATE orders SET a = 1 -- DELETE FROM y", {"orders"}),
    # Without a dialect, "#" may be a MySQL comment or a PostgreSQL operator: both readings.
    ("UPDATE orders SET a = 1 # DELETE FROM y", {"orders", "y"}),
    # MySQL backslash escapes: 'a\'' is one string, then a statement
    ("SELECT 'a\\''; UPDATE orders SET x = 1", {"orders"}),
    # PostgreSQL: 'C:\' ends at its second quote (standard strings)
    ("SELECT 'C:\\'; UPDATE orders SET x = 'y'", {"orders"}),
    ("SELECT E'it\\'s'; UPDATE orders SET x = 1", {"orders"}),
    ('SELECT "a\\""; UPDATE orders SET x = "y"', {"orders"}),
    # dollar quotes end only at their own tag
    ("SELECT $fn$ a $$ b $fn$; UPDATE orders SET a = 1", {"orders"}),
    ("SELECT $$ UPDATE x SET a = 1 $$; DELETE FROM orders", {"orders"}),
    ("UPDATE orders SET a = $1 WHERE b = $2", {"orders"}),
    # SQLite [names]
    ("SELECT a[1] FROM t; UPDATE orders SET a = 1", {"orders"}),
]

NOTHING: list[str] = [
    "SELECT updated_at, created_at FROM orders",
    "SELECT deleted, inserted_at, update_count FROM orders",
    "SELECT * FROM orders WHERE id = 1 FOR UPDATE",
    "SELECT * FROM orders FOR UPDATE OF orders SKIP LOCKED",
    "SELECT * FROM orders FOR NO KEY UPDATE",
    "SELECT 'UPDATE orders SET a = 1'",
    "SELECT 1 -- UPDATE orders SET a = 1",
    "SELECT 1 /* DELETE FROM orders */",
    "SELECT replace(name, 'a', 'b') FROM orders",
    "SELECT REPLACE (name, 'a', 'b') FROM orders",
    "CREATE FUNCTION f() RETURNS void AS $$ UPDATE orders SET a = 1 $$ LANGUAGE sql",
    "CREATE FUNCTION f() RETURNS void AS $body$ BEGIN DELETE FROM orders; END $body$ "
    "LANGUAGE plpgsql",
    "CREATE OR REPLACE VIEW v AS SELECT * FROM orders",
    "CREATE TABLE t (a INT REFERENCES orders ON DELETE CASCADE ON UPDATE CASCADE)",
    "CREATE TABLE t (a INT UNIQUE ON CONFLICT REPLACE)",
    "CREATE TRIGGER tr AFTER INSERT OR UPDATE OF total ON orders BEGIN SELECT 1; END",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON orders TO app",
    "REVOKE UPDATE ON orders FROM app",
    "COPY orders TO STDOUT",
    "COPY orders TO STDOUT; SELECT a FROM b",
    "COPY (SELECT * FROM orders) TO STDOUT",
    "LOCK TABLE orders IN ROW EXCLUSIVE MODE",
    "SELECT nextval('orders_id_seq')",
    "",
]

OPAQUE: list[str] = [
    "DO $$ BEGIN UPDATE orders SET a = 1; END $$",
    "do $$ begin perform 1; end $$",
    "SELECT 1; DO $$ BEGIN NULL; END $$",
    "CALL refresh_orders()",
    "call p(1)",
    "EXECUTE update_plan(1)",
    "DELETE a, b FROM a JOIN b ON a.id = b.id",
    "DELETE orders FROM orders JOIN rooms ON rooms.id = orders.room_id",
    "UPDATE SET a = 1",
    "INSERT INTO 'orders' VALUES (1)",
    "LOAD DATA INFILE 'x'",
    'UPDATE "" SET a = 1',
]


@pytest.mark.parametrize(("sql", "tables"), WRITES, ids=[w[0][:60] for w in WRITES])
def test_writes(sql: str, tables: set[str]) -> None:
    assert written_tables(sql) == tables


@pytest.mark.parametrize("sql", NOTHING, ids=[s[:60] for s in NOTHING])
def test_nothing_written(sql: str) -> None:
    assert written_tables(sql) == set()


@pytest.mark.parametrize("sql", OPAQUE, ids=[s[:60] for s in OPAQUE])
def test_writes_that_cannot_be_attributed_are_none(sql: str) -> None:
    assert written_tables(sql) is None


@pytest.mark.parametrize(
    ("sql", "dialect", "tables"),
    [
        # Each dialect's own quoting rules, where they disagree.
        ("INSERT INTO [orders] VALUES (1)", "sqlite", {"orders"}),
        ("SELECT 'a\\''; UPDATE orders SET x = 1", "mysql", {"orders"}),
        ("SELECT 'a\\''; UPDATE orders SET x = 1", "postgresql", set()),  # one string in PG
        ("SELECT 'C:\\'; UPDATE orders SET x = 'y'", "postgresql", {"orders"}),
        ("SELECT 'C:\\'; UPDATE orders SET x = 'y'", "mysql", set()),  # one string in MySQL
        ("SELECT 1 # x\nUPDATE orders SET a = 1", "mysql", {"orders"}),
        ("UPDATE orders SET a = 1 # DELETE FROM y", "mysql", {"orders"}),
        ("UPDATE orders SET a = b # c; DELETE FROM y", "postgresql", {"orders", "y"}),
        ('INSERT INTO "orders" VALUES (1)', "mysql", {"orders"}),  # ANSI_QUOTES
        ("SELECT $a$ x $a$; UPDATE orders SET a = 1", "mariadb", {"orders"}),
        ("UPDATE orders SET a = 1", "psycopg", {"orders"}),
    ],
)
def test_a_known_dialect_uses_its_own_rules(sql: str, dialect: str, tables: set[str]) -> None:
    assert written_tables(sql, dialect=dialect) == tables


def test_without_a_dialect_bracket_names_are_unattributable() -> None:
    # PostgreSQL and MySQL cannot read "[orders]" as a name; conservative without a dialect.
    assert written_tables("INSERT INTO [orders] VALUES (1)") is None


def test_an_unknown_dialect_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="oracle"):
        written_tables("UPDATE orders SET a = 1", dialect="oracle")


@pytest.mark.parametrize(
    ("written", "table", "schema", "expected"),
    [
        ("orders", "orders", None, True),
        ("orders", "Orders", None, True),
        ("Orders", "Orders", None, True),
        ("orders", "rooms", None, False),
        ("public.orders", "orders", None, True),
        ("public.orders", "orders", "public", True),
        ("public.orders", "Orders", "Public", True),
        ("shop.orders", "orders", "public", False),
        ("a.b.orders", "orders", "b", False),
    ],
)
def test_matches(written: str, table: str, schema: str | None, expected: bool) -> None:
    assert matches(written, table, schema) is expected


_FRAGMENTS = st.sampled_from([
    "UPDATE", "INSERT", "INTO", "DELETE", "FROM", "MERGE", "REPLACE", "TRUNCATE", "COPY",
    "LOAD", "DATA", "TABLE", "SET", "OR", "ON", "DO", "CALL", "EXECUTE", "GRANT", "THEN",
    "JOIN", "orders", '"Orders"', "`t`", "[t]", "s.t", "(", ")", ",", ";", ".", "'", "''",
    "\\", '"', "$$", "$a$", "--", "#", "/*", "*/", "\n", "E'", "x", "1", "?", "%s",
])
_SQL = st.lists(_FRAGMENTS, max_size=25).map(" ".join) | st.text(max_size=200)


@settings(max_examples=400, deadline=None, database=None)
@given(sql=_SQL)
@example(sql='UPDATE "" SET a = 1')
def test_any_text_gives_tables_or_none_and_never_raises(sql: str) -> None:
    found = written_tables(sql)
    assert found is None or all(isinstance(t, str) and t for t in found)
    for dialect in ("postgresql", "sqlite", "mysql"):
        own = written_tables(sql, dialect=dialect)
        assert own is None or all(isinstance(t, str) and t for t in own)
        # Without a dialect the reading is never narrower than PostgreSQL's own.
        if dialect == "postgresql" and found is not None:
            assert own is not None
            assert own <= found
