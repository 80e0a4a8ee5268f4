"""Read-ahead of keyset pages (``events.readahead``): every row once, in order, whether the next
page is read ahead or not; an early stop ends the reader; a reader's error reaches the caller."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from events.readahead import paged


def pages_of(rows: list[int], page_size: int, calls: list[int]) -> Callable[[int], list[int]]:
    """A keyset read over ``rows`` (distinct, ascending): the rows after ``key``."""

    def fetch(key: int) -> list[int]:
        calls.append(key)
        return [r for r in rows if r > key][:page_size]

    return fetch


def readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "events-read-ahead"]


@given(
    count=st.integers(min_value=0, max_value=60),
    page_size=st.integers(min_value=1, max_value=12),
    ahead=st.booleans(),
)
def test_every_row_once_in_order(count: int, page_size: int, ahead: bool) -> None:
    rows = list(range(1, count + 1))
    calls: list[int] = []
    fetch = pages_of(rows, page_size, calls)
    fetched_in: set[str] = set()

    def fetch_noting_the_thread(key: int) -> list[int]:
        fetched_in.add(threading.current_thread().name)
        return fetch(key)

    got = list(paged(fetch_noting_the_thread, lambda r: r, 0, page_size, ahead=ahead))

    assert got == rows
    if not ahead:  # page by page, in the caller's thread
        assert fetched_in == {threading.current_thread().name}
    assert len(calls) == count // page_size + 1  # the last page is the first short one
    assert not readers()


def test_a_short_first_page_needs_no_reader_thread() -> None:
    rows = paged(pages_of([1, 2], 5, []), lambda r: r, 0, 5)
    assert next(rows) == 1 and not readers()
    assert list(rows) == [2]


def test_stopping_early_ends_the_reader() -> None:
    calls: list[int] = []
    rows = paged(pages_of(list(range(1, 1001)), 10, calls), lambda r: r, 0, 10)

    assert [next(rows) for _ in range(25)] == list(range(1, 26))
    assert [t.daemon for t in readers()] == [True]  # read ahead by default, never holding exit
    rows.close()  # what a for loop's break and garbage collection do

    assert not readers()
    assert len(calls) <= 5  # pages 1-3 handed over, at most one read ahead, one offered


def test_an_error_of_the_reader_reaches_the_caller_after_the_rows_before_it() -> None:
    def fetch(key: int) -> Sequence[int]:
        if key >= 20:
            raise RuntimeError("the database went away")
        return list(range(key + 1, key + 11))

    got: list[int] = []
    with pytest.raises(RuntimeError, match="went away"):
        for row in paged(fetch, lambda r: r, 0, 10):
            got.append(row)

    assert got == list(range(1, 21))
    assert not readers()
