"""Wake-ups for the version cache: ``LISTEN reality`` on PostgreSQL.

Every bump on PostgreSQL may send ``NOTIFY reality`` (the Python path's bump statement and
the trigger-mode triggers both do, gated so that notifying never serialises writers: see
:func:`reality_core.store.wake_sql`). A :class:`Listener` holds one connection that listens,
and calls ``on_wake`` for each notification, so a cache refreshes right after a commit
instead of at its next poll.

Wake-ups are never relied on for correctness: a notification can be skipped by the gate,
lost while the connection is down, or never sent by a writer that does not notify. The
cache keeps polling; while the listener is not connected it polls at its full rate.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from .store import WAKE_CHANNEL

log = logging.getLogger("reality.wakeups")

#: Seconds between reconnect attempts after the listening connection failed.
RETRY_AFTER = 1.0
#: Seconds one wait for notifications lasts (how soon close() is noticed).
WAIT = 0.5


class Listener:
    """``LISTEN`` on a connection of its own, in a daemon thread, until :meth:`close`."""

    def __init__(self, connect: Callable[[], Any], on_wake: Callable[[], None],
                 on_connect: Callable[[], None] | None = None) -> None:
        self._connect = connect
        self._on_wake = on_wake
        self._on_connect = on_connect
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Any = None
        #: True while LISTEN is in effect: notifications sent now will arrive.
        self.listening = False
        self.wakeups = 0  # notifications received (tests, benchmarks)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="reality-listen",
                                            daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self.listening = False
        conn = self._conn
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already broken: nothing to release
                log.debug("closing the listening connection failed", exc_info=True)

    def _run(self) -> None:
        warned = False
        while not self._stop.is_set():
            try:
                self._conn = conn = self._connect()
                conn.execute(f"LISTEN {WAKE_CHANNEL}")
                self.listening = True
                warned = False
                if self._on_connect is not None:
                    # Commits made while we were not listening sent nothing we saw.
                    self._on_connect()
                while not self._stop.is_set():
                    for _ in conn.notifies(timeout=WAIT):
                        self.wakeups += 1
                        self._on_wake()
            except Exception as exc:
                self.listening = False
                if self._stop.is_set():
                    return
                if not warned:
                    log.warning("listening for version changes failed (polling meanwhile; "
                                "retrying every %.0f s): %s", RETRY_AFTER, exc)
                    warned = True
                self._close_quietly()
                self._stop.wait(RETRY_AFTER)
        self._close_quietly()

    def _close_quietly(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                log.debug("closing the listening connection failed", exc_info=True)

    def __repr__(self) -> str:
        return f"Listener(listening={self.listening}, wakeups={self.wakeups})"

