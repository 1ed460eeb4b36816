"""The demo chat on Tortoise ORM: the models, the Reality plugin, the queries.

This module is what a user of ``reality_tortoise`` writes in their own app: two models with
a ``Meta.reality`` each, the config passed through ``reality_tortoise.install``, and
``generate_schemas()`` (which creates Reality's tables too). Nothing here bumps a version by
hand; the plugin bumps ``room:<id>`` in the same transaction that inserts the message.

Tortoise is async and the demo's :class:`~reality_core.demo.backend.Backend` is called from
worker threads, so the backend runs Tortoise on an event loop of its own, in one thread, and
hands each call to it. Imported only when the demo runs with ``--orm tortoise``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

try:
    from tortoise import fields
    from tortoise.context import TortoiseContext
    from tortoise.exceptions import DBConnectionError, IntegrityError, OperationalError
    from tortoise.models import Model
    from tortoise.transactions import in_transaction

    import reality_tortoise
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"the demo with --orm tortoise needs Tortoise ORM: pip install 'reality-sync[demo]' "
        f"({exc})"
    ) from exc

from reality_core.errors import StoreUnavailable
from reality_core.reader import DBAPIReader
from reality_core.urls import DatabaseURL

from . import backend as demo
from .backend import MessageOut, RoomExists, RoomNotFound, RoomOut

T = TypeVar("T")


class Room(Model):
    """Table key ``$table:demo_rooms`` (the room list) and a row key per room."""

    id = fields.CharField(max_length=demo.MAX_ROOM_ID, primary_key=True)
    title = fields.CharField(max_length=demo.MAX_TITLE)

    class Meta:
        table = demo.ROOMS_TABLE
        reality = reality_tortoise.Track()


class Message(Model):
    """``room:<room_id>`` moves with every message written to (or moved out of) the room. No
    row keys: nobody watches a single message."""

    id = fields.IntField(primary_key=True)
    room: fields.ForeignKeyRelation[Room] = fields.ForeignKeyField(
        "models.Room", related_name="messages", db_index=True)
    author = fields.CharField(max_length=demo.MAX_AUTHOR)
    body = fields.TextField()
    created_at = fields.DatetimeField()

    class Meta:
        table = demo.MESSAGES_TABLE
        reality = reality_tortoise.Track(rows=False, keys=[demo.MESSAGE_KEY_TEMPLATE])


def _out(message: Message) -> MessageOut:
    return MessageOut(message.id, message.room_id, message.author,  # type: ignore[attr-defined]
                      message.body, message.created_at)


class TortoiseBackend:
    """The demo's :class:`~reality_core.demo.backend.Backend` on Tortoise ORM.

    Example::

        backend = TortoiseBackend("sqlite:///chat.db")
        backend.post_message("general", "ada", "hello")
        backend.close()

    ``url`` is any URL :class:`~reality_core.urls.DatabaseURL` accepts
    (``postgresql://`` runs on asyncpg, ``postgresql+psycopg://`` on psycopg).
    """

    def __init__(self, url: str) -> None:
        parsed = DatabaseURL.parse(url)
        self.description = f"Tortoise ORM on {parsed.render(hide_password=True)}"
        connection = reality_tortoise.connection_config(parsed)
        # Named after its driver: Tortoise caches each model's SQL per connection name for
        # the whole process, and one driver's placeholders are not the other's.
        alias = str(connection["engine"]).rpartition(".")[2]
        self._config = {
            "connections": {alias: connection},
            "apps": {"models": {"models": [__name__], "default_connection": alias}},
        }
        self._loop = asyncio.new_event_loop()
        self._calls: asyncio.Queue[tuple[Callable[[], Awaitable[Any]],
                                         concurrent.futures.Future[Any]] | None] | None = None
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._readers: list[DBAPIReader] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop.run_until_complete,
                                        args=(self._serve(),), name="reality-demo-tortoise",
                                        daemon=True)
        self._thread.start()
        try:
            self._ready.result()
        except BaseException:
            self._thread.join()
            self._loop.close()
            raise

    def __repr__(self) -> str:
        return f"TortoiseBackend({self.description})"

    async def _serve(self) -> None:
        """The loop thread: one Tortoise context, every call a task inside it (so each sees
        the context, and a transaction stays in its task)."""
        self._calls = asyncio.Queue()
        try:
            async with TortoiseContext() as ctx:
                await self._errors(ctx.init(config=self._config))
                await self._errors(ctx.generate_schemas())
                await self._errors(self._seed())
                self._ready.set_result(None)
                running: set[asyncio.Task[Any]] = set()
                while (call := await self._calls.get()) is not None:
                    fn, future = call
                    task = asyncio.create_task(self._errors(fn()))
                    running.add(task)
                    task.add_done_callback(running.discard)
                    task.add_done_callback(lambda t, f=future: _settle(t, f))  # type: ignore[misc]
                await asyncio.gather(*running, return_exceptions=True)
        except BaseException as exc:
            if not self._ready.done():
                self._ready.set_exception(exc)
            else:
                raise

    async def _errors(self, work: Awaitable[T]) -> T:
        """Database errors a retry may cure become :class:`StoreUnavailable` (503)."""
        try:
            return await work
        except (DBConnectionError, OperationalError, OSError) as exc:
            raise StoreUnavailable(f"{self.description}: {exc}") from exc

    def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        calls = self._calls
        assert calls is not None
        self._loop.call_soon_threadsafe(calls.put_nowait, (fn, future))
        return future.result()

    async def _seed(self) -> None:
        async with in_transaction():
            existing = {str(i) for i in await Room.all().values_list("id", flat=True)}
            for room_id, title in demo.SEED_ROOMS:
                if room_id not in existing:
                    await Room.create(id=room_id, title=title)

    def list_rooms(self) -> list[RoomOut]:
        async def rooms() -> list[RoomOut]:
            return [RoomOut(r.id, r.title) for r in await Room.all().order_by("id")]

        return self._call(rooms)

    def create_room(self, room_id: str, title: str) -> RoomOut:
        async def create() -> RoomOut:
            try:
                await Room.create(id=room_id, title=title)
            except IntegrityError:
                raise RoomExists(room_id) from None
            return RoomOut(room_id, title)

        return self._call(create)

    def list_messages(self, room_id: str, *, limit: int = demo.PAGE_SIZE) -> list[MessageOut]:
        async def messages() -> list[MessageOut]:
            async with in_transaction():
                if not await Room.exists(id=room_id):
                    raise RoomNotFound(room_id)
                newest = await Message.filter(room_id=room_id).order_by("-id").limit(limit)
            return [_out(m) for m in reversed(newest)]

        return self._call(messages)

    def post_message(self, room_id: str, author: str, body: str) -> MessageOut:
        async def post() -> MessageOut:
            # Write first, with no read before it: the foreign key refuses an unknown room.
            try:
                message = await Message.create(room_id=room_id, author=author, body=body,
                                               created_at=datetime.now(UTC))
            except IntegrityError:
                raise RoomNotFound(room_id) from None
            return _out(message)

        return self._call(post)

    def make_reader(self) -> DBAPIReader:
        async def reader() -> DBAPIReader:
            return reality_tortoise.version_reader()

        made = self._call(reader)
        with self._lock:
            self._readers.append(made)
        return made

    def close(self) -> None:
        with self._lock:
            readers, self._readers = self._readers, []
        for reader in readers:
            reader.close()
        if self._thread.is_alive() and self._calls is not None:
            self._loop.call_soon_threadsafe(self._calls.put_nowait, None)
            self._thread.join()
        if not self._loop.is_closed():
            self._loop.close()


def _settle(task: asyncio.Task[Any], future: concurrent.futures.Future[Any]) -> None:
    if task.cancelled():
        future.cancel()
    elif (exc := task.exception()) is not None:
        future.set_exception(exc)
    else:
        future.set_result(task.result())
