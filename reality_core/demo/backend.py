"""What the demo chat needs from an ORM, and the rules every backend shares.

The HTTP app (:mod:`reality_core.demo.app`) and the page know nothing about ORMs: they talk
to a :class:`Backend`. A backend for another ORM (peewee, Tortoise) implements the same
protocol, declares the same keys, and the app, the API and the page work unchanged:

==============================  =====================================================
key                             moves when
==============================  =====================================================
``$table:demo_rooms``           a room is created, renamed or deleted (the room list)
``room:<room id>``              a message is posted to (or moved out of) that room
==============================  =====================================================

The keys are declared on the models (``track(keys=["room:{room_id}"])``), so they are bumped
by the ORM plugin inside the transaction that writes the row — the demo never bumps by hand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from reality_core.keys import table_key
from reality_core.reader import VersionReader

ROOMS_TABLE: Final = "demo_rooms"
MESSAGES_TABLE: Final = "demo_messages"

#: The key of the room list: the table key of the rooms table.
ROOMS_KEY: Final = table_key(ROOMS_TABLE)
ROOM_KEY_PREFIX: Final = "room:"
#: The template every backend declares on its message model.
MESSAGE_KEY_TEMPLATE: Final = ROOM_KEY_PREFIX + "{room_id}"

SEED_ROOMS: Final = (("general", "General"), ("random", "Random"))

MAX_ROOM_ID: Final = 40
MAX_TITLE: Final = 60
MAX_AUTHOR: Final = 40
MAX_TEXT: Final = 2000
#: How many of the newest messages ``list_messages`` returns.
PAGE_SIZE: Final = 100

ROOM_ID_RE: Final = re.compile(rf"[a-z0-9](?:[a-z0-9-]{{0,{MAX_ROOM_ID - 2}}}[a-z0-9])?")


def room_key(room_id: str) -> str:
    """The key of one room's messages (what ``MESSAGE_KEY_TEMPLATE`` renders to)."""
    return ROOM_KEY_PREFIX + room_id


def slugify(title: str) -> str:
    """A room id from a title: ``"Python 3.14!"`` -> ``"python-3-14"`` ("" if none left)."""
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    return slug[:MAX_ROOM_ID].rstrip("-")


def utc(moment: datetime) -> datetime:
    """Some databases (SQLite) hand back naive datetimes; the demo stores UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class RoomNotFound(LookupError):
    """No room with this id."""


class RoomExists(ValueError):
    """A room with this id already exists."""


@dataclass(frozen=True, slots=True)
class RoomOut:
    id: str
    title: str

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "key": room_key(self.id)}


@dataclass(frozen=True, slots=True)
class MessageOut:
    id: int
    room_id: str
    author: str
    body: str
    created_at: datetime

    def as_json(self) -> dict[str, Any]:
        stamp = utc(self.created_at).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return {"id": self.id, "room": self.room_id, "author": self.author, "body": self.body,
                "createdAt": stamp}


class Backend(Protocol):
    """The demo's storage, one implementation per ORM. Methods are synchronous (the app
    calls them in a worker thread); each one is a single transaction.

    A backend must declare :data:`ROOMS_KEY` (its rooms table's table key) and
    :data:`MESSAGE_KEY_TEMPLATE` on its models through its ORM plugin, create its tables and
    Reality's on construction, and seed :data:`SEED_ROOMS` when missing. A database error a
    retry may cure (unreachable, locked) is raised as
    :class:`~reality_core.errors.StoreUnavailable`; the app answers 503 to it.
    """

    #: Human-readable, password-free: "SQLAlchemy on sqlite+pysqlite:///reality-demo.db".
    description: str

    def list_rooms(self) -> list[RoomOut]:
        """All rooms, ordered by id."""
        ...

    def create_room(self, room_id: str, title: str) -> RoomOut:
        """Raises :class:`RoomExists` if the id is taken."""
        ...

    def list_messages(self, room_id: str, *, limit: int = PAGE_SIZE) -> list[MessageOut]:
        """The newest ``limit`` messages of the room, oldest first; raises
        :class:`RoomNotFound`."""
        ...

    def post_message(self, room_id: str, author: str, body: str) -> MessageOut:
        """Raises :class:`RoomNotFound`."""
        ...

    def make_reader(self) -> VersionReader:
        """A version reader over the same database, for the sync endpoint."""
        ...

    def close(self) -> None:
        """Release connections and remove the ORM plugin's listeners."""
        ...
