"""Group commit: the calls of many threads share one flush (one transaction, one fsync).

A thread that submits while no flush is running leads: it flushes everything pending, its own
item included. Threads that submit meanwhile wait; when the flush ends, the leader hands the
lead to the first of them, which flushes all that gathered in the meantime. Nothing waits for a
timer: alone, a call is flushed at once; under load, the batch is whatever arrived during the
previous flush. No thread leads twice in a row for others, so none is held back for long.

A thread interrupted while it waits or leads (a time limit, ``KeyboardInterrupt``) withdraws its
item if it was not written yet and passes the lead on: the others never hang. If the leader is
interrupted during a flush, the outcome of that batch is unknown to the others: they get
``FlushInterrupted``, never the leader's interruption as if it were theirs. When a flush raises,
every thread of its batch raises a copy of that error of its own (same type and attributes),
so their tracebacks do not mix.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class FlushInterrupted(RuntimeError):
    """The thread writing this item's batch was interrupted: the item may have been written."""


class _Slot(Generic[T, R]):
    __slots__ = ("error", "finished", "item", "result", "wake")

    def __init__(self, item: T):
        self.item = item
        self.wake: threading.Event | None = None  # a thread that waits has one (``submit``)
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
        self._leading: _Slot[T, R] | None = None  # the slot whose thread leads or must lead next

    def submit(self, item: T) -> R:
        slot: _Slot[T, R] = _Slot(item)
        with self._lock:
            self._pending.append(slot)
            lead = not self._busy
            self._busy = True
            if lead:
                self._leading = slot
            else:
                slot.wake = threading.Event()
        try:
            if slot.wake is not None:
                slot.wake.wait()
            if not slot.finished:  # leading, or handed the lead: this slot is still pending
                self._lead(slot)
        except BaseException:
            self._withdraw(slot)
            raise
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]  # set with finished

    def _withdraw(self, slot: _Slot[T, R]) -> None:
        """An interrupted caller: drop its item if still pending, and pass the lead on if it
        was this slot's to take or it led and had not handed over yet."""
        with self._lock:
            if slot in self._pending:
                self._pending.remove(slot)
            if self._leading is slot:
                self._hand_over()

    def _hand_over(self) -> None:
        """With ``_lock`` held: wake the next leader, or go idle."""
        if self._pending:
            self._leading = self._pending[0]
            assert self._leading.wake is not None  # pending behind a flush: a waiter
            self._leading.wake.set()
        else:
            self._leading = None
            self._busy = False

    def _lead(self, own: _Slot[T, R]) -> None:
        with self._lock:
            # ``_leading`` stays ``own`` until the hand-over: interrupted before it, this
            # thread's ``_withdraw`` still passes the lead on.
            batch, self._pending = self._pending, []
        try:
            results = self._flush([s.item for s in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"flush returned {len(results)} results for {len(batch)} items")
        except Exception as exc:
            for slot in batch:
                slot.error = exc if slot is own else own_copy(exc)
        except BaseException as exc:
            interrupted = FlushInterrupted("the flush of this batch was interrupted")
            for slot in batch:
                slot.error = exc if slot is own else interrupted
        else:
            for slot, result in zip(batch, results, strict=True):
                slot.result = result
        finally:
            for slot in batch:
                slot.finished = True
                if slot.wake is not None:
                    slot.wake.set()
            with self._lock:
                self._hand_over()


def own_copy(exc: Exception) -> Exception:
    """``exc`` for another thread to raise: a copy of its own (same type, arguments, attributes,
    cause, context and traceback so far), so that each thread's raise extends its own traceback
    instead of all of them rewriting one; ``exc`` itself if it cannot be copied that way."""
    try:
        clone = copy.copy(exc)  # ``__reduce__``: keeps what built-in errors hold in C slots
    except Exception:
        cls = type(exc)
        try:  # an ``__init__`` that does not take ``args`` back: rebuild without running it
            clone = cls.__new__(cls, *exc.args)
            clone.args = exc.args
            if hasattr(exc, "__dict__"):
                clone.__dict__.update(exc.__dict__)
        except Exception:
            return exc
    clone.__cause__, clone.__context__ = exc.__cause__, exc.__context__
    clone.__suppress_context__ = exc.__suppress_context__
    return clone.with_traceback(exc.__traceback__)
