"""The demo chat on peewee: the models, the Reality plugin, the queries.

This module is what a user of ``reality_peewee`` writes in their own app: two models, one
``track`` per model, ``install`` on the database, ``create_tables`` once. Nothing here bumps
a version by hand; the plugin bumps ``room:<id>`` in the same transaction that inserts the
message, so a client can never see the new version before the message is committed.

Imported only when the demo runs with ``--orm peewee`` (the core imports no ORM).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

try:
    import peewee
    from playhouse.pool import (
        PooledMySQLDatabase,
        PooledPostgresqlDatabase,
        PooledSqliteDatabase,
    )

    import reality_peewee
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"the demo on peewee needs peewee 3.17+: pip install 'reality-sync[peewee]' ({exc})"
    ) from exc

from reality_core.errors import StoreUnavailable
from reality_core.reader import DBAPIReader
from reality_core.urls import DatabaseURL

from .backend import (
    MAX_AUTHOR,
    MAX_ROOM_ID,
    MAX_TITLE,
    MESSAGE_KEY_TEMPLATE,
    MESSAGES_TABLE,
    PAGE_SIZE,
    ROOMS_TABLE,
    SEED_ROOMS,
    MessageOut,
    RoomExists,
    RoomNotFound,
    RoomOut,
)

# peewee 3 ships no type information (peewee 4 has stubs): with the base typed Any on
# both, one ignore serves either version.
_Model: Any = peewee.Model


class Room(_Model):  # type: ignore[misc]
    id = peewee.CharField(max_length=MAX_ROOM_ID, primary_key=True)
    title = peewee.CharField(max_length=MAX_TITLE)

    class Meta:
        table_name = ROOMS_TABLE


class Message(_Model):  # type: ignore[misc]
    id = peewee.AutoField()
    room = peewee.ForeignKeyField(Room, index=True)  # column room_id
    author = peewee.CharField(max_length=MAX_AUTHOR)
    body = peewee.TextField()
    created_at = peewee.DateTimeField()  # naive, UTC

    class Meta:
        table_name = MESSAGES_TABLE


MODELS: list[Any] = [Room, Message]


def _declare() -> None:
    """Table key $table:demo_rooms (the room list) and a row key per room; room:<room_id>
    with every message written to (or moved out of) the room, and no row keys for
    messages: nobody watches a single message, and each would add a row to the versions
    table. Re-applied on every backend (test suites clear the registry between model
    sets); ``track`` replaces an existing declaration, so this is safe."""
    reality_peewee.track(Room)
    reality_peewee.track(Message, rows=False, keys=[MESSAGE_KEY_TEMPLATE])


def _database(parsed: DatabaseURL) -> peewee.Database:
    """A pooled peewee database: the app calls the backend from worker threads, and each
    call checks its connection back in."""
    db: peewee.Database
    if parsed.dialect == "sqlite":
        # WAL: the sync endpoint's reads never wait for a writer. foreign_keys: a message
        # for an unknown room fails on INSERT (post_message relies on it).
        db = PooledSqliteDatabase(
            parsed.database, check_same_thread=False, max_connections=16,
            pragmas={"journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 5000})
        return db
    params: dict[str, Any] = {"host": parsed.host or "localhost", "max_connections": 16}
    if parsed.port:
        params["port"] = parsed.port
    if parsed.username:
        params["user"] = parsed.username
    if parsed.password:
        params["password"] = parsed.password
    if parsed.dialect == "postgresql":
        db = PooledPostgresqlDatabase(parsed.database, **params)
    else:
        db = PooledMySQLDatabase(parsed.database, charset="utf8mb4", **params)
    return db


def _out(message: Any) -> MessageOut:
    return MessageOut(message.id, message.room_id, message.author, message.body,
                      message.created_at)


class PeeweeBackend:
    """The demo's :class:`~reality_core.demo.backend.Backend` on a pooled peewee database.

    Example::

        backend = PeeweeBackend("postgresql://app@localhost/chat")
        backend.post_message("general", "ada", "hello")
        backend.close()

    ``url`` is any URL :class:`~reality_core.urls.DatabaseURL` accepts. Creates the tables
    (the demo's and Reality's) and the seed rooms when missing.
    """

    def __init__(self, url: str) -> None:
        parsed = DatabaseURL.parse(url)
        self.description = f"peewee on {parsed.render(hide_password=True)}"
        self.db: Any = _database(parsed)
        self.db.bind(MODELS)
        _declare()
        reality_peewee.install(self.db)
        self._readers: list[DBAPIReader] = []
        self._lock = threading.Lock()
        try:
            with self._errors():
                with self.db.connection_context():
                    self.db.create_tables(MODELS)
                reality_peewee.create_tables(self.db)
                self._seed()
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"PeeweeBackend({self.description})"

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Database errors a retry may cure become :class:`StoreUnavailable` (503)."""
        try:
            yield
        except peewee.OperationalError as exc:
            raise StoreUnavailable(f"{self.description}: {exc}") from exc

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._errors(), self.db.connection_context(), self.db.atomic():
            yield

    def _seed(self) -> None:
        with self._transaction():
            existing = {room.id for room in Room.select(Room.id)}
            missing = [{"id": room_id, "title": title}
                       for room_id, title in SEED_ROOMS if room_id not in existing]
            if missing:
                Room.insert_many(missing).execute()

    def list_rooms(self) -> list[RoomOut]:
        with self._transaction():
            return [RoomOut(room.id, room.title) for room in Room.select().order_by(Room.id)]

    def create_room(self, room_id: str, title: str) -> RoomOut:
        try:
            with self._transaction():
                Room.create(id=room_id, title=title)
        except peewee.IntegrityError:
            raise RoomExists(room_id) from None
        return RoomOut(room_id, title)

    def list_messages(self, room_id: str, *, limit: int = PAGE_SIZE) -> list[MessageOut]:
        with self._transaction():
            if not Room.select().where(Room.id == room_id).exists():
                raise RoomNotFound(room_id)
            newest = list(Message.select().where(Message.room == room_id)
                          .order_by(Message.id.desc()).limit(limit))
            return [_out(m) for m in reversed(newest)]

    def post_message(self, room_id: str, author: str, body: str) -> MessageOut:
        # Write first, with no read before it: the foreign key refuses an unknown room, and
        # SQLite never has to upgrade a read transaction to a write one.
        try:
            with self._transaction():
                message = Message.create(room=room_id, author=author, body=body,
                                         created_at=datetime.now(UTC).replace(tzinfo=None))
        except peewee.IntegrityError:
            raise RoomNotFound(room_id) from None
        return _out(message)

    def make_reader(self) -> DBAPIReader:
        reader = reality_peewee.version_reader(self.db)
        with self._lock:
            self._readers.append(reader)
        return reader

    def close(self) -> None:
        with self._lock:
            readers, self._readers = self._readers, []
        for reader in readers:
            reader.close()
        reality_peewee.uninstall(self.db)
        self.db.close_all()
