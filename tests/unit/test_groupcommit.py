"""Group commit: every submitted item is flushed exactly once, its own result comes back to its
own thread, calls that arrive during a flush share the next one, and an error reaches exactly
the calls of the batch that raised it."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from events.groupcommit import GroupCommit


def test_a_lone_call_is_flushed_at_once_on_its_own() -> None:
    batches: list[list[int]] = []

    def flush(items: Sequence[int]) -> list[int]:
        batches.append(list(items))
        return [i * 10 for i in items]

    group: GroupCommit[int, int] = GroupCommit(flush)
    assert group.submit(1) == 10
    assert group.submit(2) == 20
    assert batches == [[1], [2]]


def test_calls_arriving_during_a_flush_share_the_next_one_and_get_their_own_results() -> None:
    first_started = threading.Event()
    release_first = threading.Event()
    batches: list[list[int]] = []

    def flush(items: Sequence[int]) -> list[int]:
        batches.append(list(items))
        if len(batches) == 1:
            first_started.set()
            assert release_first.wait(10)
        return [i * 10 for i in items]

    group: GroupCommit[int, int] = GroupCommit(flush)
    results: dict[int, int] = {}

    def call(i: int) -> None:
        results[i] = group.submit(i)

    leader = threading.Thread(target=call, args=(0,))
    leader.start()
    assert first_started.wait(10)
    followers = [threading.Thread(target=call, args=(i,)) for i in range(1, 6)]
    for t in followers:
        t.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # all five are waiting behind the running flush
        with group._lock:
            if len(group._pending) == 5:
                break
        time.sleep(0.001)
    release_first.set()
    for t in [leader, *followers]:
        t.join(10)
    assert batches[0] == [0]
    assert sorted(batches[1]) == [1, 2, 3, 4, 5] and len(batches) == 2
    assert results == {i: i * 10 for i in range(6)}


def test_an_error_reaches_the_calls_of_its_batch_and_the_next_batch_still_runs() -> None:
    def flush(items: Sequence[int]) -> list[int]:
        if 13 in items:
            raise ValueError("unlucky batch")
        return list(items)

    group: GroupCommit[int, int] = GroupCommit(flush)
    with pytest.raises(ValueError, match="unlucky"):
        group.submit(13)
    assert group.submit(7) == 7


def test_a_flush_returning_the_wrong_number_of_results_is_an_error() -> None:
    group: GroupCommit[int, int] = GroupCommit(lambda items: [])
    with pytest.raises(RuntimeError, match="0 results for 1 items"):
        group.submit(1)


def test_many_threads_each_item_flushed_exactly_once() -> None:
    flushed: list[int] = []
    lock = threading.Lock()

    def flush(items: Sequence[int]) -> list[int]:
        with lock:
            flushed.extend(items)
        return [-i for i in items]

    group: GroupCommit[int, int] = GroupCommit(flush)
    wrong: list[int] = []

    def worker(base: int) -> None:
        for i in range(base, base + 200):
            if group.submit(i) != -i:
                wrong.append(i)

    threads = [threading.Thread(target=worker, args=(k * 1000,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert wrong == []
    assert sorted(flushed) == sorted(k * 1000 + i for k in range(8) for i in range(200))
