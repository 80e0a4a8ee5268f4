"""One worker thread that runs an event loop's jobs one at a time: the report queue's.

``ReportQueue`` (``coalesce.py``) never has more than one job in a thread at once (a lone
report, or a drain), so it needs one thread, not a pool. Handing a job to this thread costs about
half what AnyIO's ``to_thread.run_sync`` does (about 100 against 200 µs for an empty job, waking
the thread and then the loop included, on the 2-core machines of ``benchmarks/``), and a
violation report alone on an idle server pays that hand-off twice per request.

``run`` behaves as ``to_thread.run_sync`` does when its task is cancelled natively (by
``Task.cancel``, as the end of ``asyncio.run`` does): the job runs in a copy of the caller's
context (its request id, for log lines), and a caller cancelled meanwhile stops waiting while
the job runs to its end. ``submit`` is the same without the waiting: an ``asyncio.Future`` the
job settles.

The thread starts on the first job, and ends after ``idle_s`` without one (a test's event loop,
with its queue, may be gone for good); the next job starts another.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple[contextvars.Context, Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]


class SerialThread:
    """A worker thread for one event loop's jobs, run in the order given (see the module)."""

    def __init__(self, name: str, idle_s: float = 30.0) -> None:
        self._name = name
        self._idle_s = idle_s
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running = False

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run ``fn(*args)`` in the thread; its outcome settles the returned future."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._jobs.put((contextvars.copy_context(), fn, args, future))
            if not self._running:
                self._running = True
                threading.Thread(target=self._work, name=self._name, daemon=True).start()
        return future

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the thread: its result, or its exception raised here. A caller
        cancelled meanwhile stops waiting at once; the job still runs to its end."""
        return await asyncio.shield(self.submit(fn, *args))

    def _work(self) -> None:
        while True:
            try:
                context, fn, args, future = self._jobs.get(timeout=self._idle_s)
            except queue.Empty:
                with self._lock:
                    if self._jobs.empty():
                        self._running = False
                        return
                continue
            try:
                outcome: Any = context.run(fn, *args)
                failed = False
            except BaseException as exc:  # handed to the caller, whatever it is
                outcome, failed = exc, True
            _settle_from_thread(future, outcome, failed)
            del context, fn, args, future, outcome


def _settle_from_thread(future: asyncio.Future[Any], outcome: Any, failed: bool) -> None:
    # RuntimeError: the event loop is closed, and nobody is waiting any more.
    with contextlib.suppress(RuntimeError):
        future.get_loop().call_soon_threadsafe(_settle, future, outcome, failed)


def _settle(future: asyncio.Future[Any], outcome: Any, failed: bool) -> None:
    if future.done():
        return
    if failed:
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
