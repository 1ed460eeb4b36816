"""The per-transaction key buffer, shared by every plugin.

One buffer belongs to one database transaction (one connection). Savepoints push a frame;
releasing one merges it into its parent (I3: a release publishes nothing); rolling one back
drops it with everything its children merged into it. Only the outermost COMMIT drains the
buffer, and every other way out of the transaction clears it (I2).

Frames may carry the savepoint's name, for plugins that see savepoints as SQL
(``SAVEPOINT s1`` ... ``ROLLBACK TO SAVEPOINT s1``): a named release or rollback then acts
on that savepoint and everything opened after it, as the database does.
"""

from __future__ import annotations

from collections.abc import Iterable


class KeyBuffer:
    """Keys a transaction has touched, organised by savepoint depth."""

    __slots__ = ("_frames", "_names")

    def __init__(self) -> None:
        self._frames: list[set[str]] = [set()]
        self._names: list[str | None] = [None]

    def __repr__(self) -> str:
        return f"KeyBuffer(depth={self.depth}, pending={len(self)})"

    def __len__(self) -> int:
        return sum(len(f) for f in self._frames)

    def __bool__(self) -> bool:
        return any(self._frames)

    @property
    def depth(self) -> int:
        """Open savepoints (0 outside any savepoint)."""
        return len(self._frames) - 1

    def add(self, keys: Iterable[str]) -> None:
        self._frames[-1].update(keys)

    def savepoint(self, name: str | None = None) -> None:
        self._frames.append(set())
        self._names.append(name)

    def _frame_of(self, name: str | None) -> int | None:
        """Index of the savepoint ``name`` (the innermost one when ``None``), or ``None``."""
        if name is None:
            return len(self._frames) - 1 if len(self._frames) > 1 else None
        for i in range(len(self._names) - 1, 0, -1):
            if self._names[i] == name:
                return i
        return None

    def release(self, name: str | None = None) -> None:
        # A release we did not see begin (tracking started inside it) keeps its keys in the
        # outer frame: over-invalidating is allowed, losing keys is not.
        i = self._frame_of(name)
        if i is not None:
            merged = self._frames[i - 1]
            for frame in self._frames[i:]:
                merged |= frame
            del self._frames[i:], self._names[i:]

    def rollback_savepoint(self, name: str | None = None) -> None:
        """Drop the keys of the savepoint (and of every savepoint opened inside it).

        Unnamed, the savepoint ends here. Named, it stays open, empty, as ``ROLLBACK TO
        SAVEPOINT`` leaves it in SQL. An unknown name drops nothing (over-invalidation).
        """
        i = self._frame_of(name)
        if i is None:
            return
        if name is None:
            del self._frames[i:], self._names[i:]
        else:
            del self._frames[i + 1 :], self._names[i + 1 :]
            self._frames[i] = set()

    def drain(self) -> list[str]:
        """Every pending key, sorted (I6: bumps lock rows in key order), and reset."""
        keys: set[str] = set().union(*self._frames)
        self.clear()
        return sorted(keys)

    def clear(self) -> None:
        self._frames = [set()]
        self._names = [None]
