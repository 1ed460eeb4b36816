"""The per-transaction key buffer, shared by every plugin.

One buffer belongs to one database transaction (one connection). Savepoints push a frame;
releasing one merges it into its parent (I3: a release publishes nothing); rolling one back
drops it with everything its children merged into it. Only the outermost COMMIT drains the
buffer, and every other way out of the transaction clears it (I2).
"""

from __future__ import annotations

from collections.abc import Iterable


class KeyBuffer:
    """Keys a transaction has touched, organised by savepoint depth."""

    __slots__ = ("_frames",)

    def __init__(self) -> None:
        self._frames: list[set[str]] = [set()]

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

    def savepoint(self) -> None:
        self._frames.append(set())

    def release(self) -> None:
        # A release we did not see begin (tracking started inside it) keeps its keys in the
        # outer frame: over-invalidating is allowed, losing keys is not.
        if len(self._frames) > 1:
            top = self._frames.pop()
            self._frames[-1] |= top

    def rollback_savepoint(self) -> None:
        if len(self._frames) > 1:
            self._frames.pop()

    def drain(self) -> list[str]:
        """Every pending key, sorted (I6: bumps lock rows in key order), and reset."""
        keys: set[str] = set().union(*self._frames)
        self.clear()
        return sorted(keys)

    def clear(self) -> None:
        self._frames = [set()]
