"""Read-ahead for long paged reads: the next page is fetched while the caller works on this one.

A keyset-paged read alternates between waiting on the database (the query runs, rows travel and
are built) and working on the rows (decoding, hashing). psycopg releases the GIL while it waits
for PostgreSQL, so a thread that fetches page n+1 while the caller handles page n overlaps the
two. Not so on SQLite, whose driver builds its rows holding the GIL: there the two threads only
contend (a read measured 20 % slower), so SQLite reads page by page (``ahead=False``). Only
reads longer than one page pay for the thread: the first page is fetched by the caller itself,
and a short first page ends the read there.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator, Sequence
from typing import Any, TypeVar

Row = TypeVar("Row")

_END = object()
_PUT_POLL_S = 0.1  # how often a blocked reader looks whether the caller has gone


def paged(
    fetch: Callable[[Any], Sequence[Row]],
    next_key: Callable[[Row], Any],
    first_key: Any,
    page_size: int,
    *,
    ahead: bool = True,
) -> Generator[Row, None, None]:
    """Every row of a keyset-paged read, one page read ahead (unless ``ahead`` is false).

    ``fetch(key)`` returns the page after ``key`` (at most ``page_size`` rows); ``next_key(row)``
    the key after ``row``. The caller may stop early: the reader thread then stops too.
    """
    page = fetch(first_key)
    yield from page
    while not ahead:
        if len(page) < page_size:
            return
        page = fetch(next_key(page[-1]))
        yield from page
    if len(page) < page_size:
        return
    handed: queue.Queue[Any] = queue.Queue(maxsize=1)  # pages read, for the caller
    stop = threading.Event()

    def read(key: Any) -> None:
        try:
            while not stop.is_set():
                rows = fetch(key)
                if not _offer(handed, rows, stop) or len(rows) < page_size:
                    break
                key = next_key(rows[-1])
        except BaseException as exc:  # the caller raises it
            _offer(handed, exc, stop)
            return
        _offer(handed, _END, stop)

    reader = threading.Thread(
        target=read, args=(next_key(page[-1]),), name="events-read-ahead", daemon=True
    )
    reader.start()
    try:
        while True:
            item = handed.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield from item
    finally:
        stop.set()
        reader.join()


def _offer(handed: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    """Put ``item`` for the caller; False if the caller has gone meanwhile."""
    while not stop.is_set():
        try:
            handed.put(item, timeout=_PUT_POLL_S)
            return True
        except queue.Full:
            continue
    return False
