"""``reality demo``: a small multi-user chat that shows Reality at work.

Usage
-----
::

    reality demo                                   # SQLite file ./reality-demo.db
    reality demo --database-url postgresql://postgres@127.0.0.1/chat
    reality demo --host 0.0.0.0 --port 8080

Open the printed URL in two browser windows. Post in one; click, type or switch to the
other: its next sync (``POST /reality/sync``) reports the room's key as changed and the page
fetches the new message. There is no WebSocket, no server push and no polling timer — a
page syncs when it mounts, regains focus or visibility, after the user interacts, and right
after its own writes.

Layout
------
``backend.py``
    the :class:`~reality_core.demo.backend.Backend` protocol and the keys every backend
    declares (ORM-free);
``app.py``
    the ASGI app: router, JSON API, the page, the sync endpoint at ``/reality`` (ORM-free);
``sqlalchemy_backend.py``
    the models and queries on SQLAlchemy, imported only when chosen;
``static/``
    the page, and ``reality-client.js``, a small reusable client of the sync protocol.

A backend for another ORM implements the same protocol and is added to :data:`BACKENDS`;
the API and the page stay as they are.
"""

from __future__ import annotations

import sys
from importlib import import_module
from pathlib import Path
from typing import Final

from reality_core.errors import ConfigurationError
from reality_core.urls import DatabaseURL

from .backend import Backend

#: ``--orm`` name -> "module:class" of its backend, imported only when chosen.
BACKENDS: Final = {
    "sqlalchemy": "reality_core.demo.sqlalchemy_backend:SQLAlchemyBackend",
    "tortoise": "reality_core.demo.tortoise_backend:TortoiseBackend",
    "peewee": "reality_core.demo.peewee_backend:PeeweeBackend",
}
ORMS: Final = tuple(BACKENDS)
DEFAULT_DATABASE_FILE: Final = "reality-demo.db"

__all__ = ["BACKENDS", "DEFAULT_DATABASE_FILE", "ORMS", "default_database_url", "open_backend",
           "run"]


def default_database_url(directory: Path | None = None) -> str:
    """``sqlite:///<directory>/reality-demo.db`` (the current directory by default)."""
    path = (directory or Path.cwd()).resolve() / DEFAULT_DATABASE_FILE
    return f"sqlite:///{path}"


def open_backend(orm: str, database_url: str) -> Backend:
    """The demo backend for ``orm`` on ``database_url`` (tables created, rooms seeded)."""
    target = BACKENDS.get(orm)
    if target is None:
        raise ConfigurationError(f"unknown ORM {orm!r}; the demo supports: {', '.join(ORMS)}")
    parsed = DatabaseURL.parse(database_url)
    if parsed.dialect == "sqlite" and parsed.database in (None, "", ":memory:"):
        # Each connection would see its own empty database; the demo uses several threads.
        raise ConfigurationError(
            "the demo needs an SQLite file, not an in-memory database: "
            "e.g. --database-url sqlite:///chat.db"
        )
    module_name, _, class_name = target.partition(":")
    try:
        module = import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"the demo with --orm {orm} needs {orm}: pip install 'reality-sync[demo]' ({exc})"
        ) from exc
    backend: Backend = getattr(module, class_name)(database_url)
    return backend


def _say(message: str) -> None:
    print(f"reality demo: {message}", file=sys.stderr, flush=True)


def run(*, host: str, port: int, database_url: str | None, orm: str) -> int:
    """Serve the demo until interrupted; returns the process exit code.

    ``database_url`` ``None`` means an SQLite file ``reality-demo.db`` in the current
    directory. Raises :class:`~reality_core.errors.RealityError` (the CLI prints it) when
    the database cannot be reached or the ORM is not installed.
    """
    try:
        import uvicorn
    except ImportError:
        _say("needs uvicorn: pip install 'reality-sync[demo]'")
        return 2
    from .app import DemoApp

    default = database_url is None
    backend = open_backend(orm, database_url or default_database_url())
    try:
        if default:
            _say(f"database: SQLite file {default_database_url().removeprefix('sqlite:///')} "
                 "(the default; --database-url postgresql://... uses PostgreSQL)")
        else:
            _say(f"database: {backend.description}")
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        shown = f"[{shown}]" if ":" in shown else shown
        _say(f"open http://{shown}:{port}/ in two browser windows; post in one, then click "
             "in the other (Ctrl+C stops)")
        uvicorn.run(DemoApp(backend), host=host, port=port, log_level="info")
    finally:
        backend.close()
    return 0
