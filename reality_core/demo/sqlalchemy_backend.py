"""The demo chat on SQLAlchemy 2.x: the models, the Reality plugin, the queries.

This module is what a user of ``reality_sqlalchemy`` writes in their own app: two models,
one ``track`` per model, ``install`` on the sessionmaker, ``create_tables`` once. Nothing here
bumps a version by hand; the plugin bumps ``room:<id>`` in the same transaction that inserts
the message, so a client can never see the new version before the message is committed.

Imported only when the demo runs with ``--orm sqlalchemy`` (the core imports no ORM).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

try:
    import sqlalchemy as sa
    from sqlalchemy import event
    from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

    import reality_sqlalchemy
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"the demo needs SQLAlchemy 2.x: pip install 'reality-sync[demo]' ({exc})"
    ) from exc

from reality_core.errors import ConfigurationError, StoreUnavailable
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


class Base(DeclarativeBase):
    pass


# Table key $table:demo_rooms (the room list) and a row key per room.
@reality_sqlalchemy.track()
class Room(Base):
    __tablename__ = ROOMS_TABLE

    id: Mapped[str] = mapped_column(sa.String(MAX_ROOM_ID), primary_key=True)
    title: Mapped[str] = mapped_column(sa.String(MAX_TITLE))


# room:<room_id> moves with every message written to (or moved out of) the room. No row keys:
# nobody watches a single message, and each would add a row to the versions table.
@reality_sqlalchemy.track(rows=False, keys=[MESSAGE_KEY_TEMPLATE])
class Message(Base):
    __tablename__ = MESSAGES_TABLE

    id: Mapped[int] = mapped_column(primary_key=True)
    room_id: Mapped[str] = mapped_column(sa.ForeignKey(f"{ROOMS_TABLE}.id"), index=True)
    author: Mapped[str] = mapped_column(sa.String(MAX_AUTHOR))
    body: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))


def _declare() -> None:
    """Re-apply the declarations if the registry was cleared since import (test suites
    reset it between model sets); ``track`` is idempotent, so this is safe."""
    registry = reality_sqlalchemy.registry
    if registry.get(ROOMS_TABLE) is None:
        reality_sqlalchemy.track(Room)
    if registry.get(MESSAGES_TABLE) is None:
        reality_sqlalchemy.track(Message, rows=False, keys=[MESSAGE_KEY_TEMPLATE])


def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # WAL: the sync endpoint's reads never wait for a writer. foreign_keys: a message
        # for an unknown room fails on INSERT (post_message relies on it).
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=5000")
    finally:
        cursor.close()


def _out(message: Message) -> MessageOut:
    return MessageOut(message.id, message.room_id, message.author, message.body,
                      message.created_at)


class SQLAlchemyBackend:
    """The demo's :class:`~reality_core.demo.backend.Backend` on a synchronous engine.

    Example::

        backend = SQLAlchemyBackend("postgresql://app@localhost/chat")
        backend.post_message("general", "ada", "hello")
        backend.close()

    ``url`` is any URL :class:`~reality_core.urls.DatabaseURL` accepts; it is converted to
    the SQLAlchemy spelling (``postgresql+psycopg://``, ``sqlite+pysqlite://``...). Creates the
    tables (the demo's and Reality's) and the seed rooms when missing.
    """

    def __init__(self, url: str) -> None:
        parsed = DatabaseURL.parse(url)
        self.description = f"SQLAlchemy on {parsed.render(hide_password=True)}"
        try:
            self.engine = sa.create_engine(parsed.sqlalchemy())
        except ImportError as exc:
            extra = "postgres" if parsed.dialect == "postgresql" else parsed.dialect
            raise ConfigurationError(
                f"no {parsed.dialect} driver: pip install 'reality-sync[{extra}]' ({exc})"
            ) from exc
        if parsed.dialect == "sqlite":
            reality_sqlalchemy.enable_sqlite_savepoints(self.engine)
            event.listen(self.engine, "connect", _sqlite_pragmas)
        _declare()
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        reality_sqlalchemy.install(self.sessions)
        self._readers: list[DBAPIReader] = []
        self._lock = threading.Lock()
        try:
            with self._errors():
                Base.metadata.create_all(self.engine)
                reality_sqlalchemy.create_tables(self.engine)
                self._seed()
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"SQLAlchemyBackend({self.description})"

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Database errors a retry may cure become :class:`StoreUnavailable` (503)."""
        try:
            yield
        except sa.exc.OperationalError as exc:
            raise StoreUnavailable(f"{self.description}: {exc.orig}") from exc

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        with self._errors(), self.sessions.begin() as session:
            yield session

    def _seed(self) -> None:
        with self._transaction() as session:
            existing = set(session.scalars(sa.select(Room.id)))
            session.add_all(Room(id=room_id, title=title)
                            for room_id, title in SEED_ROOMS if room_id not in existing)

    def list_rooms(self) -> list[RoomOut]:
        with self._transaction() as session:
            rooms = session.scalars(sa.select(Room).order_by(Room.id))
            return [RoomOut(room.id, room.title) for room in rooms]

    def create_room(self, room_id: str, title: str) -> RoomOut:
        try:
            with self._transaction() as session:
                session.add(Room(id=room_id, title=title))
        except sa.exc.IntegrityError:
            raise RoomExists(room_id) from None
        return RoomOut(room_id, title)

    def list_messages(self, room_id: str, *, limit: int = PAGE_SIZE) -> list[MessageOut]:
        with self._transaction() as session:
            if session.get(Room, room_id) is None:
                raise RoomNotFound(room_id)
            newest = session.scalars(
                sa.select(Message).where(Message.room_id == room_id)
                .order_by(Message.id.desc()).limit(limit)
            ).all()
            return [_out(m) for m in reversed(newest)]

    def post_message(self, room_id: str, author: str, body: str) -> MessageOut:
        message = Message(room_id=room_id, author=author, body=body,
                          created_at=datetime.now(UTC))
        # Write first, with no read before it: the foreign key refuses an unknown room, and
        # SQLite never has to upgrade a read transaction to a write one (which fails at once,
        # without waiting, when another writer got there first).
        try:
            with self._transaction() as session:
                session.add(message)
        except sa.exc.IntegrityError:
            raise RoomNotFound(room_id) from None
        return _out(message)

    def make_reader(self) -> DBAPIReader:
        reader = reality_sqlalchemy.version_reader(self.engine)
        with self._lock:
            self._readers.append(reader)
        return reader

    def close(self) -> None:
        with self._lock:
            readers, self._readers = self._readers, []
        for reader in readers:
            reader.close()
        reality_sqlalchemy.uninstall(self.sessions)
        self.engine.dispose()
