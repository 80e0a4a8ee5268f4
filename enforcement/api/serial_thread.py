"""One worker thread that runs an event loop's jobs one at a time: the report queue's.

``ReportQueue`` (``coalesce.py``) never has more than one job in a thread at once (a lone
report, or a drain), so it needs one thread, not a pool. The round trip of a job to this thread
and back costs about two thirds of AnyIO's ``to_thread.run_sync`` (about 110 against 160 µs for
an empty job, waking the thread and then the loop included, on the 2-core machines of
``benchmarks/``: ``bench_handoff.py``), and every violation report alone on an idle server
makes one.

``run`` behaves as ``to_thread.run_sync`` does when its task is cancelled natively (by
``Task.cancel``, as the end of ``asyncio.run`` does): the job runs in a copy of the caller's
context (its request id, for log lines), and a caller cancelled meanwhile stops waiting while
the job runs to its end. ``submit`` is the same without the waiting: an ``asyncio.Future`` the
job settles.

The thread starts on the first job and ends when it has none and its event loop has stopped (or
after ``idle_s`` without one); the next job starts another. It is not a daemon: as with AnyIO's
workers, the interpreter waits at exit for a job in progress, so a report a drain has taken is
still recorded when the server stops without waiting for its requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple[contextvars.Context, Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]
_POLL_S = 0.25  # how often an idle thread looks whether its event loop still runs


class SerialThread:
    """A worker thread for one event loop's jobs, run in the order given (see the module)."""

    def __init__(self, name: str, idle_s: float = 30.0) -> None:
        self._name = name
        self._idle_s = idle_s
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running = False
        self._loop: asyncio.AbstractEventLoop | None = None  # the last job's

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run ``fn(*args)`` in the thread; its outcome settles the returned future."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if not self._running:
                # Started before the job is queued: a thread that cannot start (RuntimeError)
                # leaves nothing queued that no thread would run.
                threading.Thread(target=self._work, name=self._name).start()
                self._running = True
            self._loop = loop
            self._jobs.put((contextvars.copy_context(), fn, args, future))
        return future

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the thread: its result, or its exception raised here. A caller
        cancelled meanwhile stops waiting at once; the job still runs to its end."""
        return await asyncio.shield(self.submit(fn, *args))

    def _work(self) -> None:
        idle_since = time.monotonic()
        while True:
            try:
                context, fn, args, future = self._jobs.get(timeout=min(self._idle_s, _POLL_S))
            except queue.Empty:
                with self._lock:  # a job queued meanwhile is seen here, or starts a thread
                    loop = self._loop
                    if self._jobs.empty() and (
                        time.monotonic() - idle_since >= self._idle_s
                        or loop is None
                        or not loop.is_running()
                    ):
                        self._running = False
                        self._loop = None
                        return
                continue
            try:
                outcome: Any = context.run(fn, *args)
                failed = False
            except BaseException as exc:  # handed to the caller, whatever it is
                outcome, failed = exc, True
            settle_from_thread(future, outcome, failed)
            del context, fn, args, future, outcome
            idle_since = time.monotonic()


def settle_from_thread(future: asyncio.Future[Any], outcome: Any, failed: bool = False) -> None:
    """``settle(future, outcome, failed)`` in the future's event loop, from another thread; if
    that loop is closed, nobody waits any more and nothing happens."""
    # RuntimeError: the event loop is closed.
    with contextlib.suppress(RuntimeError):
        future.get_loop().call_soon_threadsafe(settle, future, outcome, failed)


def settle(future: asyncio.Future[Any], outcome: Any, failed: bool = False) -> None:
    """Give ``future`` its result ``outcome`` (its exception, if ``failed``) unless it is done."""
    if future.done():
        return
    if failed:
        if isinstance(outcome, StopIteration):  # a future refuses it: as AnyIO does
            error = RuntimeError("the job raised StopIteration")
            error.__cause__ = outcome
            outcome = error
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
