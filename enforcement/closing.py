"""Closing a client only once the threads that use it have ended.

A Redis client or a SQLAlchemy engine closed while a thread still uses it does not fail that
thread: redis-py and the engine's pool silently connect again, and the new connection stays
open (a leak, or an error logged at exit). The workers' stop waits a bounded time for its
threads; what a thread still busy then uses is closed here, after it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence


def close_after(threads: Sequence[threading.Thread], close: Callable[[], None]) -> None:
    """``close`` once ``threads`` have ended, however long that takes."""
    for thread in threads:
        thread.join()
    close()


def close_once_ended(
    threads: Sequence[threading.Thread], close: Callable[[], None], name: str
) -> None:
    """``close`` now if none of ``threads`` runs, else from a daemon thread called ``name`` once
    they have ended: the caller does not wait for them."""
    busy = [thread for thread in threads if thread.is_alive()]
    if not busy:
        close()
        return
    threading.Thread(target=close_after, args=(busy, close), name=name, daemon=True).start()
