"""An in-process copy of the version store, so a sync request does no database work.

Each server process keeps every key's version in memory and refreshes it on its own
schedule (every ``interval`` seconds, 0.055 by default: 18 refresh queries a second
per process, however many clients ask). A sync request is answered from memory.

Refresh, and why it never loses a change (DESIGN §6): a refresh is *one* statement, so one
snapshot (:func:`~reality_core.store.refresh_statement`). It reads

* the whole log, counted per key — the log holds only what was committed since the last
  fold (folding runs every second), so this is short;
* the folded rows stamped with a fold sequence number above the last one this cache saw.
  Folds are serialised on the ``fold_seq`` row and stamp what they change, so they become
  visible in sequence order: a fold that commits after this snapshot has a higher number
  and is read next time. No id or clock assigned before COMMIT is used as a cursor, so a
  transaction that commits late is never skipped (C11);
* the epoch and the current fold sequence.

A key's version is its folded count plus its log rows, both from that one snapshot, so it
is exact as of the snapshot; the cache swaps the new state in under a lock, so a request sees
one refresh or the next, never a mix. Versions therefore never go back or repeat (a fold
moves rows from the log to the counts inside one snapshot). When the epoch changes
(``reality reset-epoch``) or the fold sequence goes back (a restored backup), the cache
reloads everything.

The first load reads the folded counts in pages (key order), then one refresh from the fold
sequence read *before* the pages: whatever a page read that later folds changed is read again
by that refresh, so the loaded state is exactly the refresh's snapshot.

Staleness: when no refresh has succeeded for ``max_staleness`` seconds (database down,
locked, unreachable), reads raise :class:`~reality_core.errors.StoreUnavailable` (the
endpoint answers 503 with ``Retry-After``) rather than serve versions that may be old; the
refresh keeps retrying and service resumes by itself.

Memory: the first load is kept packed (:class:`_Cold`: about 35 bytes a key); keys clients
ask about, and keys changed since, move to a dict (about 140 bytes a key). So memory follows
the keys in use, not every key ever written.
"""

from __future__ import annotations

import logging
import threading
import time
from array import array
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, Final

from .errors import ConfigurationError, StoreError, StoreUnavailable, positive_number
from .keys import ESCALATION_PREFIX
from .reader import DBAPIReader
from .store import (
    Snapshot,
    VersionInfo,
    as_text,
    key_hash,
    no_epoch_error,
    page_statement,
    refresh_statement,
)
from .wakeups import Listener

log = logging.getLogger("reality.cache")

PAGE: Final = 10_000
#: 18 refreshes a second, plus at most one fold: within 20 statements a second per process.
DEFAULT_INTERVAL: Final = 0.06
#: Seconds between polls while a LISTEN connection brings wake-ups (PostgreSQL).
DEFAULT_IDLE_INTERVAL: Final = 0.25
#: Refreshes that may follow each other at once after a quiet spell (token bucket).
BURST: Final = 3.0
#: One statement of a refresh running this long is stuck (a connection that went silent: no
#: reply, no reset; reads time out after 3 s on the server, which cannot help when the reply
#: never arrives). A new refresh thread takes over; the stuck one is abandoned and its result
#: ignored. Measured per statement, so a first load of many pages is never "stuck".
STUCK_AFTER: Final = 10.0
_MARKER: Final = ESCALATION_PREFIX.encode()
# Versions and update times (ms) share one int: one object per key instead of a tuple of two.
_TIME_BITS: Final = 42
_TIME_MASK: Final = (1 << _TIME_BITS) - 1


def _pack(version: int, updated_ms: int) -> int:
    return (version << _TIME_BITS) | (min(max(updated_ms, 0), _TIME_MASK))


class _Cold:
    """The folded counts of the first load, packed: one bytes blob of the keys in key order,
    their offsets, versions and update times in arrays (about 35 bytes a key instead of
    ~140 in a dict). Looked up by binary search; a key found is promoted to the dict, so
    keys clients ask about are then a dict lookup away. Never changed after the load:
    later changes go to the dict, which takes precedence."""

    __slots__ = ("blob", "last", "offsets", "times", "versions")

    def __init__(self) -> None:
        self.blob = bytearray()
        self.offsets = array("Q", [0])
        self.versions = array("q")
        self.times = array("q")
        self.last = b""

    def append(self, key: bytes, version: int, updated: int) -> bool:
        """Add the next key; False if it is out of order (the caller keeps it elsewhere)."""
        if key <= self.last and self.versions:
            return False
        self.blob += key
        self.offsets.append(len(self.blob))
        self.versions.append(version)
        self.times.append(updated)
        self.last = key
        return True

    def get(self, key: str) -> int | None:
        """The packed (version, updated_at) of ``key``, or None."""
        wanted = key.encode()
        blob, offsets = self.blob, self.offsets
        lo, hi = 0, len(self.versions)
        while lo < hi:
            mid = (lo + hi) // 2
            if blob[offsets[mid]:offsets[mid + 1]] < wanted:
                lo = mid + 1
            else:
                hi = mid
        if lo < len(self.versions) and blob[offsets[lo]:offsets[lo + 1]] == wanted:
            return _pack(self.versions[lo], self.times[lo])
        return None


class _State:
    """One consistent view: folded counts, log counts and escalation markers."""

    __slots__ = ("cold", "epoch", "folded", "logged", "markers", "seq")

    def __init__(self, epoch: str, seq: int, folded: dict[str, int], cold: _Cold) -> None:
        self.epoch = epoch
        self.seq = seq
        self.folded = folded  # key -> packed (version, updated_at); wins over ``cold``
        self.cold = cold
        self.logged: dict[str, tuple[int, int]] = {}
        self.markers: tuple[tuple[str, int, int], ...] = ()

    def packed(self, key: str) -> int:
        """Folded (version, updated_at) of ``key``, promoting it from the cold store."""
        packed = self.folded.get(key)
        if packed is None:
            packed = self.cold.get(key)
            if packed is None:
                return 0
            self.folded[key] = packed
        return packed

    def own(self, key: str) -> tuple[int, int]:
        """Folded plus logged (version, updated_at) of ``key``, markers aside."""
        packed = self.packed(key)
        version, updated = packed >> _TIME_BITS, packed & _TIME_MASK
        pending = self.logged.get(key)
        if pending is not None:
            version += pending[0]
            updated = max(updated, pending[1])
        return version, updated

    def version(self, key: str) -> tuple[int, int]:
        version, updated = self.own(key)
        for prefix, m_version, m_updated in self.markers:
            if key.startswith(prefix):
                version += m_version
                updated = max(updated, m_updated)
        return version, updated

    def rebuild_markers(self, touched: Iterable[str], *, force: bool = False) -> None:
        """Escalation markers (``$esc:<prefix>``) add their count to every key with that
        prefix; recompute the short list when one of them changed (or on a new load)."""
        if not force and not any(k.startswith(ESCALATION_PREFIX) for k in touched):
            return
        names = {k for k in self.folded if k.startswith(ESCALATION_PREFIX)}
        names.update(k for k in self.logged if k.startswith(ESCALATION_PREFIX))
        # (Markers never sit in the cold store: the first load keeps them in the dict.)
        self.markers = tuple((name[len(ESCALATION_PREFIX):], *self.own(name))
                             for name in sorted(names))


class VersionCache:
    """Versions of every key, in memory, refreshed from ``source`` in a daemon thread.

    Example::

        cache = VersionCache(DBAPIReader.from_url(url))
        service = SyncService(cache)          # answers from memory
        ...
        cache.close()

    ``interval``: seconds between refreshes (one query each). ``max_staleness``: seconds
    without a successful refresh after which reads fail with ``StoreUnavailable``.
    The refresh thread starts with the first read, or with :meth:`start`.

    ``replica`` (PostgreSQL only): a reader on a streaming replica of ``source``'s database;
    refreshes then read there and the primary sees only folds and, per ``mutation`` request,
    one ``pg_current_wal_insert_lsn()``: such a request waits until the replica has replayed
    past the primary's WAL position at its arrival, so the client still sees its own write.
    Versions served are then as old as the replica's lag plus one interval.
    """

    def __init__(
        self, source: DBAPIReader, *, interval: float = DEFAULT_INTERVAL,
        max_staleness: float = 2.0,
        replica: DBAPIReader | None = None,
        listen: bool = True,
        idle_interval: float = DEFAULT_IDLE_INTERVAL,
    ) -> None:
        if not isinstance(source, DBAPIReader):
            raise ConfigurationError(f"source must be a DBAPIReader, not {source!r}")
        if replica is not None and not (
            isinstance(replica, DBAPIReader) and replica.dialect == "postgresql"
            and source.dialect == "postgresql"
        ):
            raise ConfigurationError(
                "replica must be a DBAPIReader on a PostgreSQL streaming replica of a "
                f"PostgreSQL source, not {replica!r}")
        interval = positive_number("interval", interval)
        max_staleness = positive_number("max_staleness", max_staleness)
        idle_interval = positive_number("idle_interval", idle_interval)
        if not isinstance(listen, bool):
            raise ConfigurationError(f"listen must be True or False, not {listen!r}")
        if max_staleness <= interval:
            raise ConfigurationError(
                f"max_staleness ({max_staleness}) must be longer than interval ({interval})")
        self.source = source
        self.replica = replica
        self._reads = replica if replica is not None else source
        self._replayed = -1  # WAL position the replica had replayed at the last refresh
        self.interval = float(interval)
        self.max_staleness = float(max_staleness)
        self.refreshes = 0  # successful refreshes (for tests and benchmarks)
        #: Fold the log every this many seconds from the refresh thread (SyncService sets it).
        self.fold_interval: float | None = None
        self._state: _State | None = None
        self._lock = threading.Lock()  # guards _state's contents while a refresh applies
        self._fresh = threading.Condition()
        self._last_ok = float("-inf")  # monotonic start time of the last good refresh
        self._last_fail = float("-inf")  # monotonic time the last refresh failed
        self._last_error: StoreError | None = None
        self._busy_since: float | None = None  # when the running refresh began
        self._generation = 0  # bumped when a stuck refresh thread is replaced
        self._replica_is_primary = False
        self.stuck_after = STUCK_AFTER
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        #: Set by a wake-up (a NOTIFY, a mutation request): refresh now, tokens permitting.
        self._wake = threading.Event()
        self._follow_up = False  # the last refresh was woken: poll once more at interval
        self.idle_interval = max(idle_interval, self.interval)
        self.listener: Listener | None = None
        if listen and source.dialect == "postgresql":
            # Notifications come from the primary, also when refreshes read a replica.
            self.listener = Listener(source.connect, self._wake.set, self._wake.set)

    def __repr__(self) -> str:
        return f"VersionCache({self.source!r}, interval={self.interval})"

    # --------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        with self._start_lock:
            if self._stop.is_set():
                return
            busy = self._busy_since
            stuck = busy is not None and time.monotonic() - busy > self.stuck_after
            if self._thread is None or stuck:
                if stuck:
                    log.warning("version cache refresh stuck for %.0f s (a silent database "
                                "connection?); starting a new refresh thread", self.stuck_after)
                    self._busy_since = None
                self._generation += 1
                self._thread = threading.Thread(target=self._run, args=(self._generation,),
                                                name="reality-cache", daemon=True)
                self._thread.start()
            if self.listener is not None:
                self.listener.start()

    def close(self) -> None:
        """Stop refreshing and close the source's connections."""
        self._stop.set()
        self._wake.set()
        if self.listener is not None:
            self.listener.close()
        with self._start_lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout=0.2)  # a daemon; a stuck one must not hold up shutdown
        self.source.close()
        if self.replica is not None:
            self.replica.close()

    def wait_ready(self, timeout: float) -> bool:
        """Start if needed and wait until the first load is done (or ``timeout``)."""
        self.start()
        asked = time.monotonic()
        if self._failing:
            return False  # the latest attempt failed: answer 503 now, not after a timeout
        with self._fresh:
            # A failed attempt after the call ends the wait: callers answer 503 at once.
            return self._fresh.wait_for(
                lambda: self._state is not None or self._last_fail >= asked, timeout
            ) and self._state is not None

    def wait_fresh(self, timeout: float | None = None) -> None:
        """Wait for a refresh that *starts* after this call, so everything committed before
        the call is visible (a client's own mutation). Raises ``StoreUnavailable`` when none
        succeeds within ``timeout`` (default: ``max_staleness``)."""
        self.start()
        asked = time.monotonic()
        self._wake.set()  # refresh now rather than at the next (idle) poll
        limit = self.max_staleness if timeout is None else timeout
        if self._failing or (self._state is not None and not self.ready):
            raise self._unavailable()  # known to be failing: no point waiting
        if self.replica is not None and not self._replica_is_primary:
            # What the client committed lies before the primary's WAL insert position now
            # (the write position can lag behind it with synchronous_commit off).
            rows = self.source.query("SELECT CAST(pg_current_wal_insert_lsn() AS TEXT)", ())
            needed = _lsn(rows[0][0])
            with self._fresh:
                self._fresh.wait_for(
                    lambda: self._replayed >= needed or self._last_fail >= asked, limit)
                if self._replayed < needed:
                    raise StoreUnavailable(
                        "the read replica did not replay the primary's commits"
                        + (" (its refresh failed)" if self._last_fail >= asked
                           else f" within {limit} s"))
            return
        with self._fresh:
            self._fresh.wait_for(
                lambda: self._last_ok >= asked or self._last_fail >= asked, limit)
            if self._last_ok < asked:
                raise self._unavailable()

    # -------------------------------------------------------------------------------- reads

    @property
    def _failing(self) -> bool:
        """The latest refresh attempt failed."""
        return self._last_fail > self._last_ok

    @property
    def loaded(self) -> bool:
        """The first load is done (it may have gone stale since)."""
        return self._state is not None

    @property
    def ready(self) -> bool:
        """Loaded and refreshed recently enough to answer from memory."""
        return self._state is not None and \
            time.monotonic() - self._last_ok <= self.max_staleness

    def _current(self) -> _State:
        self.start()
        state = self._state
        if state is None or time.monotonic() - self._last_ok > self.max_staleness:
            raise self._unavailable()
        return state

    def _unavailable(self) -> StoreError:
        if self._last_error is not None and not isinstance(self._last_error, StoreUnavailable):
            return self._last_error  # e.g. missing tables: say so, not "unavailable"
        if self._state is None:
            return StoreUnavailable("the version cache has not loaded yet")
        return StoreUnavailable(
            "the version cache is stale: no refresh succeeded for "
            f"{time.monotonic() - self._last_ok:.1f} s"
            + (f" ({self._last_error.message})" if self._last_error else ""))

    def changed(self, known: Mapping[str, int]) -> tuple[str, dict[str, dict[str, Any]]]:
        """The epoch, and the protocol entries of the keys whose version is not the one the
        client knows. The hot path of a sync request: no database, no hashing of keys that
        did not change."""
        state = self._current()
        stale: list[tuple[str, int, int]] = []
        with self._lock:
            epoch = state.epoch
            folded, logged = state.folded.get, state.logged
            if not logged and not state.markers:
                # The usual case, inlined: nothing pending, no escalation.
                for key, client_version in known.items():
                    packed = folded(key)
                    if packed is None:
                        packed = state.packed(key)
                    if packed >> _TIME_BITS != client_version:
                        stale.append((key, packed >> _TIME_BITS, packed & _TIME_MASK))
            else:
                for key, client_version in known.items():
                    version, updated = state.version(key)
                    if version != client_version:
                        stale.append((key, version, updated))
        return epoch, {key: {"key": key, "version": version,
                             "hash": key_hash(epoch, key, version) if version else "",
                             "updatedAt": updated}
                       for key, version, updated in stale}

    def read(self, keys: Collection[str]) -> Snapshot:
        """The :class:`~reality_core.reader.VersionReader` interface, from memory."""
        state = self._current()
        result: dict[str, VersionInfo] = {}
        with self._lock:
            epoch = state.epoch
            found = [(key, *state.version(key)) for key in keys]
        for key, version, updated in found:
            if version:
                result[key] = VersionInfo(key, version, key_hash(epoch, key, version), updated)
        return Snapshot(epoch=epoch, versions=result)

    def ping(self) -> None:
        self._current()

    # ------------------------------------------------------------------------------ refresh

    def _wait_turn(self, last: float, tokens: float) -> float:
        """Wait until the next refresh may start: a wake-up or the poll deadline (the idle
        interval while the listener is connected, else ``interval``), then a token (one
        per ``interval``, ``BURST`` at most), so wake-ups make refreshes come sooner but
        never more often than one per ``interval`` on average. Returns the tokens left.

        After a woken refresh comes one more, an interval later, when the budget has room
        (two tokens: a wake-up must never wait for a follow-up's token): only one commit per
        store.WAKE_GAP_MS slot notifies, so one just after a notifying one, or one whose
        transaction tried the gate in a slot already taken, sent nothing."""
        listening = self.listener is not None and self.listener.listening
        follow_up = listening and self._follow_up
        poll = self.interval if not listening or follow_up else self.idle_interval
        woken = self._wake.wait(max(0.0, last + poll - time.monotonic()))
        now = time.monotonic()
        tokens = min(BURST, tokens + (now - last) / self.interval)
        if follow_up and not woken and tokens < 2.0:
            woken = self._wake.wait(max(0.0, last + self.idle_interval - now))
            now = time.monotonic()
            tokens = min(BURST, tokens + (now - last) / self.interval)
        self._follow_up = woken
        if tokens < 1.0:
            self._stop.wait((1.0 - tokens) * self.interval)
            tokens = 1.0
        # Cleared before the refresh: a commit during it wakes the next one.
        self._wake.clear()
        return tokens - 1.0

    def _run(self, generation: int) -> None:
        next_fold = time.monotonic()
        tokens, last = BURST, float("-inf")
        while not self._stop.is_set() and generation == self._generation:
            if last > float("-inf"):
                tokens = self._wait_turn(last, tokens)
                if self._stop.is_set() or generation != self._generation:
                    return
            began = last = time.monotonic()
            self._busy_since = began
            try:
                self.refresh(generation)
                state = self._state
                if self.fold_interval is not None and began >= next_fold and \
                        state is not None and state.logged:
                    # Only while the log has rows, and at most once per fold_interval: the
                    # default interval leaves room for it within 20 statements a second.
                    next_fold = began + self.fold_interval
                    self._fold()
            except Exception as exc:
                if not isinstance(exc, StoreError):
                    log.exception("version cache refresh failed (will retry)")
                else:
                    if self._last_error is None or exc.message != self._last_error.message:
                        log.warning("version cache refresh failed (will retry): %s",
                                    exc.message)
                    self._last_error = exc
                with self._fresh:
                    self._last_fail = time.monotonic()
                    self._fresh.notify_all()
            finally:
                if generation == self._generation:
                    self._busy_since = None

    def _fold(self) -> None:
        """Fold (and maybe VACUUM) after a refresh. A failure here is not a failed refresh:
        the versions just read are good; the next fold retries."""
        try:
            self.source.fold_and_vacuum()
        except StoreError as exc:
            log.warning("folding the version log failed (will retry): %s", exc.message)

    def refresh(self, generation: int | None = None) -> None:
        """One refresh now (the thread calls this; tests may too). A refresh of a thread
        that has been replaced (``generation`` no longer current) changes nothing."""
        began = time.monotonic()
        state = self._state
        if state is None:
            replayed = self._replay_position()
            state, rows = self._load(generation)
        else:
            replayed = self._replay_position()
            rows = self._query(*refresh_statement(state.seq, self._reads.paramstyle))
            epoch, seq = _meta(rows)
            if epoch != state.epoch or seq < state.seq:
                # A new epoch (reset-epoch) or a fold sequence gone back (a restored backup):
                # nothing known is trustworthy; load everything again.
                log.info("version store epoch or fold sequence changed; reloading the cache")
                state, _ = self._load(generation)
            elif not self._superseded(generation):
                self._apply(state, seq, rows)
        if self._superseded(generation):
            return
        self.refreshes += 1
        self._last_error = None
        with self._fresh:
            self._last_ok = began
            self._replayed = max(self._replayed, replayed)
            self._fresh.notify_all()
        if self.source.fold_threshold is not None and \
                sum(n for n, _ in state.logged.values()) >= self.source.fold_threshold:
            self.source.fold_soon()

    def _query(self, sql: str, params: Any) -> list[Any]:
        self._busy_since = time.monotonic()
        return self._reads.query(sql, params)

    def _superseded(self, generation: int | None) -> bool:
        return generation is not None and generation != self._generation

    def _replay_position(self) -> int:
        """How far the replica has replayed, read *before* the refresh's snapshot is taken
        (so the snapshot holds at least that much; the position only grows)."""
        if self.replica is None:
            return -1
        rows = self.replica.query("SELECT CAST(pg_last_wal_replay_lsn() AS TEXT)", ())
        if rows and rows[0][0] is not None:
            return _lsn(rows[0][0])
        if not self._replica_is_primary:
            # Not in recovery: the "replica" is a primary (misconfigured, or promoted after a
            # failover). Reads are still right; mutation requests fall back to waiting for a
            # refresh, as without a replica.
            log.warning("the read replica is not a standby (pg_last_wal_replay_lsn() is "
                        "NULL): reading it like a primary")
            self._replica_is_primary = True
        return -1

    def _load(self, generation: int | None = None) -> tuple[_State, Sequence[Sequence[Any]]]:
        """Everything, in pages, then one refresh to make it one snapshot (see the module
        docstring). Built aside and swapped in whole."""
        paramstyle = self._reads.paramstyle
        _, seq = _meta(self._query(*refresh_statement(2**62, paramstyle)))
        folded: dict[str, int] = {}
        cold = _Cold()
        after: str | None = None
        while True:
            rows = self._query(*page_statement(after, PAGE, paramstyle))
            for name, version, updated in rows:
                raw = name if isinstance(name, bytes) else str(name).encode()
                # Markers stay in the dict (rebuild_markers scans it); so does any key the
                # database sorted differently from Python's bytes order (never expected).
                if raw.startswith(_MARKER) or not cold.append(raw, int(version), int(updated)):
                    folded[as_text(name)] = _pack(int(version), int(updated))
            if len(rows) < PAGE:
                break
            after = as_text(rows[-1][0])
        rows = self._query(*refresh_statement(seq, paramstyle))
        epoch, now_seq = _meta(rows)
        state = _State(epoch, seq, folded, cold)
        self._apply(state, now_seq, rows, new=not self._superseded(generation))
        return state, rows

    def _apply(self, state: _State, seq: int, rows: Sequence[Sequence[Any]],
               *, new: bool = False) -> None:
        changed: dict[str, int] = {}
        logged: dict[str, tuple[int, int]] = {}
        for src, name, version, updated in rows:
            source = int(src)
            if source == 0:
                changed[as_text(name)] = _pack(int(version), int(updated or 0))
            elif source == 2:
                logged[as_text(name)] = (int(version), int(updated or 0))
        touched = [*changed, *logged, *state.logged]
        with self._lock:
            state.folded.update(changed)
            state.logged = logged
            state.seq = seq
            state.rebuild_markers(touched, force=new)
            if new:
                self._state = state


def _lsn(text: Any) -> int:
    """A PostgreSQL WAL position (``16/B374D848``) as a number."""
    high, low = as_text(text).split("/")
    return (int(high, 16) << 32) | int(low, 16)


def _meta(rows: Sequence[Sequence[Any]]) -> tuple[str, int]:
    epoch: str | None = None
    seq = 0  # a store made before the fold sequence existed has no row until it folds
    for src, name, _, _ in rows:
        if int(src) == 1:
            epoch = as_text(name)
        elif int(src) == 3:
            seq = int(as_text(name))
    if epoch is None:
        raise no_epoch_error()
    return epoch, seq
