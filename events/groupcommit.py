"""Group commit: the calls of many threads share one flush (one transaction, one fsync).

A thread that submits while no flush is running leads: it flushes everything pending, its own
item included. Threads that submit meanwhile wait; when the flush ends, the leader hands the
lead to the first of them, which flushes all that gathered in the meantime. Nothing waits for a
timer: alone, a call is flushed at once; under load, the batch is whatever arrived during the
previous flush. No thread leads twice in a row for others, so none is held back for long.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _Slot(Generic[T, R]):
    __slots__ = ("error", "finished", "item", "result", "wake")

    def __init__(self, item: T):
        self.item = item
        self.wake = threading.Event()
        self.finished = False
        self.result: R | None = None
        self.error: BaseException | None = None


class GroupCommit(Generic[T, R]):
    """``submit(item)`` returns ``flush([..., item, ...])``'s result for that item.

    ``flush`` gets the pending items in submission order and returns one result per item; if it
    raises, every item of that batch raises the same error.
    """

    def __init__(self, flush: Callable[[Sequence[T]], Sequence[R]]):
        self._flush = flush
        self._lock = threading.Lock()
        self._pending: list[_Slot[T, R]] = []
        self._busy = False

    def submit(self, item: T) -> R:
        slot: _Slot[T, R] = _Slot(item)
        with self._lock:
            self._pending.append(slot)
            lead = not self._busy
            self._busy = True
        if not lead:
            slot.wake.wait()
        if not slot.finished:  # leading, or handed the lead: this slot is still pending
            self._lead()
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]  # set with finished

    def _lead(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        try:
            results = self._flush([s.item for s in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"flush returned {len(results)} results for {len(batch)} items")
        except BaseException as exc:
            for slot in batch:
                slot.error = exc
        else:
            for slot, result in zip(batch, results, strict=True):
                slot.result = result
        finally:
            for slot in batch:
                slot.finished = True
                slot.wake.set()
            with self._lock:
                if self._pending:
                    self._pending[0].wake.set()  # hand the lead over
                else:
                    self._busy = False
