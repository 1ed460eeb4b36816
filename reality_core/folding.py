"""Background folding of the version log (see :mod:`reality_core.store`).

Writers only append to ``reality_log``; something has to fold those rows into
``reality_versions`` so the log stays short. Three things do, and running several at once is
safe (folders take different batches):

* every :class:`~reality_core.reader.DBAPIReader` folds in a one-shot background thread when
  a read counts at least ``fold_threshold`` unfolded rows;
* ``reality serve`` runs a :class:`Folder` (``SyncService(fold_interval=...)``) that folds
  every second;
* ``reality fold --database-url URL`` folds once, for a scheduled job in apps that serve no
  sync requests for a while.
"""

from __future__ import annotations

import logging
import threading

from .errors import StoreError, positive_number
from .reader import DBAPIReader

log = logging.getLogger("reality.folding")


class Folder:
    """Folds every ``interval`` seconds in a daemon thread until :meth:`stop`."""

    def __init__(self, reader: DBAPIReader, *, interval: float = 1.0) -> None:
        self.reader = reader
        self.interval = positive_number("fold interval", interval)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.folded = 0

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="reality-folder",
                                                daemon=True)
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.folded += self.reader.fold_and_vacuum()
            except StoreError as exc:
                log.warning("folding the version log failed (will retry): %s", exc.message)
            except Exception:
                log.exception("folding the version log failed (will retry)")
