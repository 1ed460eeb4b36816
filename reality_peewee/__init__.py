"""Reality for peewee 3.17+ and 4.x: bump key versions in the same transaction as your writes.

Usage
-----
::

    import peewee
    import reality_peewee as reality

    db = peewee.PostgresqlDatabase("app", user="app", host="localhost")

    class BaseModel(peewee.Model):
        class Meta:
            database = db

    @reality.track(keys=["room:{room_id}"])
    class Message(BaseModel):
        room_id = peewee.IntegerField()
        body = peewee.TextField()

    reality.install(db)                  # wraps this Database object's methods
    reality.create_tables(db)            # or: reality migrate

    with db.atomic():
        Message.create(room_id=7, body="hi")
    # committed together: $table:message, $row:message:1 and room:7 moved by one

    Message.create(room_id=8, body="yo")   # outside atomic(): a transaction of its own

Declaring keys
--------------
``@track`` on the model class (or ``track(Model, ...)`` next to it): ``table=`` bumps the
table key ``$table:<table>`` on every write, ``rows=`` the row key ``$row:<table>:<pk>``
(composite keys join their parts with ``:``), ``keys=[...]`` templates whose placeholders
name a field or its column (``{room}`` or ``{room_id}`` for ``room = ForeignKeyField(Room)``).
A template is rendered from the row's values before *and* after the write. The through
models of the model's ``ManyToManyField``\\ s are tracked as link tables: a link row bumps
the link table's key and the row keys of both sides. Keys starting with ``$`` are reserved
for these defaults, so they never collide with yours. ``links=True`` makes any model a
link table (the default for a model whose primary key is made of foreign keys, or that has
none). A subclass of a tracked model has its own table and is not tracked unless you track
it too.

What is tracked
---------------
Everything that runs through the installed ``Database`` object:

* ``save()``, ``create()``, ``delete_instance()`` (its ``recursive=`` deletes too),
  ``get_or_create()``, ``bulk_create()``, ``bulk_update()``;
* ``update().where()``, ``delete().where()``, ``insert()``, ``insert_many()``,
  ``insert_from()``, ``replace()``, ``on_conflict_ignore()``, ``on_conflict(...)`` upserts;
* ``ManyToManyField`` ``add()``, ``remove()``, ``clear()`` and assignment;
* ``db.execute_sql(...)``, ``Model.raw(...)`` and ``db.execute(SQL(...))`` on tracked
  tables (table names read from the SQL text: ``raw_sql=`` below);
* transactions: ``atomic()`` (nested: savepoints), ``transaction()``, ``savepoint()``,
  ``manual_commit()`` with ``begin()``/``commit()``/``rollback()``, ``with db:``,
  ``session_start()``/``session_commit()``/``session_rollback()``, and SQL text (``BEGIN``,
  ``SAVEPOINT s``, ``RELEASE``, ``ROLLBACK TO``, ``COMMIT``) through ``execute_sql``.

Keys are exact where peewee's query says which rows it writes: values of inserts (and the
ids PostgreSQL returns, or ``lastrowid``), a WHERE that pins the primary key (``save()``,
``delete_instance()``, ``.where(Order.id == 42)``, ``.in_([...])``). Old values of template
and link columns (I5) are read right before an UPDATE/DELETE by ``SELECT ... FOR UPDATE``
with the statement's own WHERE, in the same transaction (one extra round trip, only for
models that have templates or links, or when a DELETE's or UPDATE's WHERE does not pin the
primary key; a WHERE-based read is capped at 500 rows, and on MySQL, which reports changed
rather than matched rows, an UPDATE is pre-read only by primary key). Everything else
escalates: every key derived from the table reads as changed (``insert_from()``,
``replace()``, an upsert's old values, a bulk UPDATE on MySQL, a table-level
``peewee.Table`` query). A statement that changed no row (row count 0) bumps nothing.

Transactions
------------
The bump is written right before COMMIT on the same connection, as one statement with the
keys in sorted order. Releasing a savepoint publishes nothing; rolling one back forgets
its keys; ``rollback()``, ``close()``, a pool check-in and a failed COMMIT leave nothing
behind. ``close()`` on a connection whose transaction was begun by hand (``db.begin()``)
rolls that transaction back first, as peewee 4's pools do at check-in (peewee 3's psycopg2
and SQLite pools would hand it on, still open, to the next user). A write outside any
transaction (peewee's autocommit mode) runs as ``BEGIN; <write>; <bump>; COMMIT`` so its
bump can never be lost or seen before the data; that costs three round trips more than
the lone autocommitted statement (``bench/write_path.py --orms peewee-autocommit``
measures it): group writes in ``db.atomic()`` when it matters. If the bump fails, the
transaction is rolled back and :class:`~reality_core.errors.WritePathError` is raised.

Configuration
-------------
``install(db, raw_sql="conservative", max_keys=1000)``. ``raw_sql="conservative"`` bumps
every tracked table when raw SQL changes data in a way the parser cannot attribute (``DO``
blocks, ``CALL``); ``"strict"`` raises
:class:`~reality_core.errors.UnsupportedStatementError` instead. ``max_keys``: past this
many keys of one kind in one transaction (row keys of a table, keys of a template) the kind
escalates to its marker, so a bulk write stays one short bump (``None``: never). Settings
are per database; changing them needs :func:`uninstall` first. Reading versions for the
sync endpoint: ``SyncService(reality_peewee.version_reader(db))`` (connections of its own,
never the application's pool). SQLite pools shared between threads need
``check_same_thread=False``, as peewee's pool documentation says.

Trigger mode (PostgreSQL)
-------------------------
``reality_peewee.create_triggers(db)`` (after the tables exist) makes the database bump
each tracked table from inside every statement, writers outside peewee included; the
plugin notices the triggers on each new connection (one catalog query) and stops all key
work for those tables: no keys, no ``SELECT ... FOR UPDATE`` of old values, no bump at
COMMIT unless another table or :func:`bump` left keys. ``drop_triggers(db)`` undoes it.
:mod:`reality_core.triggers` has the contract and its limits (key column types,
``max_keys`` per statement, stale triggers after a declaration changes).

API
---
:func:`track`, :func:`install`, :func:`uninstall`, :func:`installed`, :func:`bump`,
:func:`create_tables`, :func:`create_triggers`, :func:`drop_triggers`,
:func:`version_reader`, :data:`registry`.

What is not tracked (the gaps)
------------------------------
* peewee's asyncio databases (``playhouse.pwasyncio``): :func:`install` refuses them.
* Writes made on the raw DB-API connection (``db.connection().cursor()``), by another
  ``Database`` object you did not install on, inside stored procedures, functions or
  triggers, or by other programs: bump those keys yourself (:func:`bump`), or, on
  PostgreSQL, use trigger mode (above), which sees them all.
* ``ON DELETE CASCADE`` that the database performs is escalated only when the foreign key
  declares it in peewee (``ForeignKeyField(..., on_delete="CASCADE")``).
* A ``SAVEPOINT`` issued as SQL outside any transaction (SQLite then opens one) is not
  followed; use ``atomic()``.
* Template values computed by the database (``update(room=Order.room + 1)``, callable
  defaults on ``insert_many``) escalate that template rather than being read back.
"""

from __future__ import annotations

try:
    import peewee as _peewee
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "reality_peewee needs peewee 3.17 or newer: pip install 'reality-sync[peewee]'"
    ) from exc

_MIN_PEEWEE = (3, 17)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:2] if p.isdigit())


_PEEWEE_VERSION: str = getattr(_peewee, "__version__", "0")

if _version(_PEEWEE_VERSION) < _MIN_PEEWEE:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"reality_peewee needs peewee 3.17 or newer, found {_PEEWEE_VERSION}: "
        "pip install -U 'reality-sync[peewee]'"
    )

from ._api import bump, install, installed, uninstall  # noqa: E402
from ._declarations import registry, track  # noqa: E402
from ._schema import (  # noqa: E402
    create_tables,
    create_triggers,
    drop_triggers,
    version_reader,
)

__all__ = [
    "bump",
    "create_tables",
    "create_triggers",
    "drop_triggers",
    "install",
    "installed",
    "registry",
    "track",
    "uninstall",
    "version_reader",
]
