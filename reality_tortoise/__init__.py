"""Reality for Tortoise ORM: bump key versions in the same transaction as your writes.

Tested with Tortoise ORM 1.1.9 (the lowest version tested; 1.1 is the lowest accepted) on
PostgreSQL through asyncpg and psycopg, and on SQLite. MySQL is not supported yet.

Usage
-----
Declare keys on your models, pass your config through :func:`install`, and write as usual::

    from tortoise import Tortoise, fields
    from tortoise.models import Model
    from tortoise.transactions import in_transaction
    import reality_tortoise

    class Message(Model):
        id = fields.IntField(primary_key=True)
        room = fields.ForeignKeyField("models.Room")
        body = fields.TextField()

        class Meta:
            reality = reality_tortoise.Track(keys=["room:{room_id}"])

    TORTOISE_ORM = reality_tortoise.install({
        "connections": {"default": "postgres://app@localhost/app"},
        "apps": {"models": {"models": ["app.models"]}},
    })
    await Tortoise.init(config=TORTOISE_ORM)
    await Tortoise.generate_schemas()      # creates Reality's tables too

    async with in_transaction():
        await Message.create(room_id=7, body="hi")
    # committed together: $table:message, $row:message:1 and room:7 moved by one

FastAPI: ``register_tortoise(app, config=TORTOISE_ORM)`` (or ``RegisterTortoise``) with the
installed config; the sync endpoint reads through :func:`version_reader`.

Keys
----
``Track(table=True, rows=True, keys=())`` (or :func:`track` for a model you cannot give a
``Meta``): ``$table:<table>`` on every write, ``$row:<table>:<pk>`` per row, and templates
filled from *field names* (a foreign key's ``room_id``) of the row before and after the
write: moving a message from room 7 to room 8 bumps both. Many-to-many link tables of a
tracked model are tracked too (``$table:<through>`` and the row keys of both sides). Where
the rows a write touched are unknowable (``filter(total__gte=10).update(...)``, a raw
``UPDATE``, a database ``ON DELETE CASCADE``), every key derived from the table reads as
changed (escalation, see :mod:`reality_core.keys`).

Configuration
-------------
:func:`install` swaps each connection's ``engine`` for Reality's (``tortoise.backends.asyncpg``
-> ``reality_tortoise.backends.asyncpg``, likewise ``psycopg`` and ``sqlite``), Tortoise's own
extension point for client classes; naming those engines in a config by hand works the same.
:func:`connection_config` builds a connection entry from a database URL. ``raw_sql=``
(``"conservative"`` or ``"strict"``) decides what happens to raw SQL whose written tables
cannot be read (a ``DO`` block, ``CALL``): bump every tracked table, or fail the transaction.

Reality's tables: ``Tortoise.generate_schemas()`` on a Reality connection, or
``await create_tables()``, or Tortoise's migrations with a :class:`CreateRealityTables`
operation (``tortoise makemigrations --empty <app>``, then list it in ``operations``). All
three create exactly the schema of the alembic branch ``reality``.

Transactions
------------
The bump is one statement, written on the transaction's own connection right before the
outermost COMMIT; if it fails, the transaction is rolled back and
:class:`~reality_core.errors.WritePathError` raised. A nested ``in_transaction()`` (a
savepoint) publishes nothing when released; its keys are dropped when it rolls back. A write
outside any transaction runs in a transaction of its own, with its bump, so neither is ever
visible without the other. Concurrent tasks never share keys: each transaction keeps its own.
A task spawned inside ``in_transaction()`` writes in that transaction while it is open; once
it has ended, the task's writes run as writes outside any transaction (Tortoise would run
them on a connection already given back to the pool). Exception: in trigger mode with every
tracked table covered, transactions take Tortoise's own path (``IdleTransaction``), and such
a late write goes where Tortoise sends it; the trigger bumps its keys in whichever
transaction the write lands in, so they still move with the data.

What it changes in Tortoise (both to keep the guarantee): on SQLite, ``execute_script``
inside a transaction runs statement by statement (Python's ``executescript`` would COMMIT the
transaction first), and a transaction left open by an abandoned wrapper is rolled back, not
committed, by the next ``BEGIN``; a failed COMMIT (deferred foreign key) is rolled back.

Trigger mode (PostgreSQL)
-------------------------
``await create_triggers()`` (after the tables exist) lets the database bump tracked tables
itself, from statement-level triggers: writes to them cost no key work in Python and no
bump statement at COMMIT, and writes from outside Tortoise (psql, other services) bump too.
The plugin reads which tables are covered once per connection; other tables keep the Python
path. :mod:`reality_core.triggers` has the contract and limits; :func:`drop_triggers` undoes it.

What is not tracked
-------------------
Writes inside stored procedures, triggers or functions called from a ``SELECT``; writes by
other programs; ``ON UPDATE CASCADE`` of primary keys. Bump those with :func:`bump`. Costs to
know: ``save()``/``delete()`` of a model with templates reads the row's current values first
(``SELECT ... FOR UPDATE``, so a concurrent writer cannot move it in between); a write
outside a transaction becomes BEGIN, write, bump, COMMIT; ``bulk_create`` of rows whose keys
the database generates, ``ManyToManyRelation.clear()``, bulk ``update()``/``delete()`` and
upserts escalate the keys they cannot pin. Tortoise 1.1.9's own migrations do not run on
psycopg (its migration recorder writes asyncpg placeholders), with or without Reality.

API
---
:class:`Track`, :func:`track`, :func:`untrack`, :func:`install`, :func:`uninstall`,
:func:`installed`, :func:`connection_config`, :class:`Settings`,
:func:`bump`, :func:`create_tables`, :class:`CreateRealityTables`, :func:`create_triggers`,
:func:`drop_triggers`, :func:`version_reader`.
"""

from __future__ import annotations

try:
    import tortoise as _tortoise
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "reality_tortoise needs Tortoise ORM 1.1 or newer: pip install 'reality-sync[tortoise]'"
    ) from exc

if tuple(int(p) for p in _tortoise.__version__.split(".")[:2] if p.isdigit()) < (1, 1):
    raise ImportError(  # pragma: no cover - depends on the environment
        f"reality_tortoise needs Tortoise ORM 1.1 or newer, found {_tortoise.__version__}: "
        "pip install -U 'reality-sync[tortoise]'"
    )

from reality_core.catalog import Settings

from ._api import bump, version_reader
from ._config import connection_config, install, installed, uninstall
from ._declarations import Track, track, untrack
from ._schema import CreateRealityTables, create_tables
from ._triggers import create_triggers, drop_triggers

__all__ = [
    "CreateRealityTables",
    "Settings",
    "Track",
    "bump",
    "connection_config",
    "create_tables",
    "create_triggers",
    "drop_triggers",
    "install",
    "installed",
    "track",
    "uninstall",
    "untrack",
    "version_reader",
]
