"""The thread-pool hop of the violation-reporting paths, with a limit of its own on PostgreSQL.

Every append on PostgreSQL takes the one append lock, held until its commit. With as many
reporting threads as AnyIO's pool allows (40), the lock's holder waits for the CPU and for its
own Python thread between its pipeline's statements (on 2 cores the lock was held about 4 ms
per append with 32 concurrent reports, under 2 ms with 8), and threads beyond the engine's kept
connections open and close one per few requests. So on PostgreSQL at most
``POSTGRES_REPORT_THREADS`` reports run at once; the others wait in the event loop, at no cost,
and every other route (the gate check, reads, operator commands) keeps AnyIO's pool as before.
SQLite keeps the pool too: its appends share commits (``GroupCommit``), so more threads make
larger groups.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

import anyio
from anyio import to_thread
from anyio.lowlevel import RunVar

from enforcement.bootstrap import Container

R = TypeVar("R")

POSTGRES_REPORT_THREADS = 8
_LIMITER = "report_limiter"


def install_report_limiter(container: Container) -> None:
    """Give the container's reporting paths their limit (PostgreSQL), or none (SQLite).

    An AnyIO limiter belongs to one event loop (its waiters are woken on it), and a container
    can serve from several (the test client runs its own), so the container holds a run
    variable and each event loop gets a limiter of its own, of ``POSTGRES_REPORT_THREADS``.
    """
    postgres = container.engine.dialect.name == "postgresql"
    container.extras[_LIMITER] = RunVar[anyio.CapacityLimiter](_LIMITER) if postgres else None


def _limiter(container: Container) -> anyio.CapacityLimiter | None:
    per_loop = cast(RunVar[anyio.CapacityLimiter] | None, container.extras.get(_LIMITER))
    if per_loop is None:
        return None
    limiter = per_loop.get(None)
    if limiter is None:
        limiter = anyio.CapacityLimiter(POSTGRES_REPORT_THREADS)
        per_loop.set(limiter)
    return limiter


async def run_report(container: Container, func: Callable[..., R], *args: Any) -> R:
    """``func(*args)`` in a worker thread, within the reporting paths' limit if they have one."""
    return await to_thread.run_sync(functools.partial(func, *args), limiter=_limiter(container))
