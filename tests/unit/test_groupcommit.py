"""Group commit: every submitted item is flushed exactly once, its own result comes back to its
own thread, calls that arrive during a flush share the next one, and an error reaches exactly
the calls of the batch that raised it."""

from __future__ import annotations

import ctypes
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import NoReturn

import pytest

from events.groupcommit import FlushInterrupted, GroupCommit


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
    with pytest.raises(RuntimeError, match=r"^flush returned 0 results for 1 items$"):
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


class Interrupted(BaseException):
    """Stands for an asynchronous interruption (Dramatiq's time limit raises one like it)."""


def _interrupt(thread: threading.Thread) -> None:
    """Raise ``Interrupted`` in ``thread`` when it next runs Python code."""
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread.ident or 0), ctypes.py_object(Interrupted)
    )
    assert done == 1


class FirstBatchHeld:
    """A flush that records its batches and holds the first open until ``release`` is set;
    ``first`` answers the first batch (by default ``later``), ``later`` every other."""

    def __init__(
        self,
        later: Callable[[Sequence[str]], list[str]],
        first: Callable[[Sequence[str]], list[str]] | None = None,
    ) -> None:
        self.later, self.first = later, first or later
        self.batches: list[list[str]] = []
        self.started, self.release = threading.Event(), threading.Event()

    def __call__(self, items: Sequence[str]) -> list[str]:
        self.batches.append(list(items))
        if len(self.batches) > 1:
            return self.later(items)
        self.started.set()
        assert self.release.wait(10)
        return self.first(items)


def test_a_follower_interrupted_when_handed_the_lead_passes_it_on() -> None:
    flush = FirstBatchHeld(lambda items: [f"done {i}" for i in items])
    first_started, release_first, batches = flush.started, flush.release, flush.batches
    group: GroupCommit[str, str] = GroupCommit(flush)
    outcomes: dict[str, object] = {}
    call = _recording_calls(group, outcomes)

    leader = threading.Thread(target=call, args=("leader",))
    leader.start()
    assert first_started.wait(10)
    a = threading.Thread(target=call, args=("a",))
    a.start()
    _wait_pending(group, 1)
    b = threading.Thread(target=call, args=("b",))
    b.start()
    _wait_pending(group, 2)
    _interrupt(a)  # takes effect when "a" wakes: handed the lead, it must pass it to "b"
    release_first.set()
    for t in (leader, a, b):
        t.join(10)
        assert not t.is_alive()

    assert isinstance(outcomes["a"], Interrupted)
    assert outcomes["b"] == "done b" and outcomes["leader"] == "done leader"
    assert batches == [["leader"], ["b"]]  # "a" was withdrawn, never written
    assert group.submit("later") == "done later"  # nothing hangs


def test_a_follower_interrupted_after_its_batch_was_written_gets_its_own_interruption() -> None:
    flush = FirstBatchHeld(lambda items: [f"done {i}" for i in items])
    group: GroupCommit[str, str] = GroupCommit(flush)
    outcomes: dict[str, object] = {}
    call = _recording_calls(group, outcomes)

    leader = threading.Thread(target=call, args=("leader",))
    leader.start()
    assert flush.started.wait(10)
    followers = [threading.Thread(target=call, args=(name,)) for name in ("a", "b")]
    for count, t in enumerate(followers, start=1):
        t.start()
        _wait_pending(group, count)
    _interrupt(followers[1])  # takes effect when "b" wakes: its item is written by then
    flush.release.set()
    for t in (leader, *followers):
        t.join(10)
        assert not t.is_alive()

    assert flush.batches == [["leader"], ["a", "b"]]
    assert outcomes["a"] == "done a" and isinstance(outcomes["b"], Interrupted)


def test_a_waiting_call_interrupted_wakes_no_other_leader_while_a_flush_runs() -> None:
    # A signal interrupts the main thread even as it waits (``KeyboardInterrupt``).
    assert threading.current_thread() is threading.main_thread()
    flush = FirstBatchHeld(lambda items: list(items))
    group: GroupCommit[str, str] = GroupCommit(flush)
    outcomes: dict[str, object] = {}
    call = _recording_calls(group, outcomes)
    threads = [threading.Thread(target=call, args=("leader",))]
    threads[0].start()
    assert flush.started.wait(10)

    def queue_behind_main_then_interrupt_it() -> None:
        _wait_pending(group, 1)
        threads.append(threading.Thread(target=call, args=("next",)))
        threads[-1].start()
        _wait_pending(group, 2)
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)

    def interrupted(*_args: object) -> NoReturn:
        raise Interrupted()

    helper = threading.Thread(target=queue_behind_main_then_interrupt_it)
    previous = signal.signal(signal.SIGUSR1, interrupted)
    try:
        helper.start()
        with pytest.raises(Interrupted):
            group.submit("main")
    finally:
        signal.signal(signal.SIGUSR1, previous)
        helper.join(10)
    with group._lock:  # the first flush still runs: "next" waits for it, not woken to lead
        assert [slot.item for slot in group._pending] == ["next"]
        assert not group._pending[0].wake.is_set()  # type: ignore[union-attr]
    flush.release.set()
    for t in threads:
        t.join(10)
        assert not t.is_alive()
    assert flush.batches == [["leader"], ["next"]]
    assert outcomes == {"leader": "leader", "next": "next"}


def test_an_interrupted_leader_leaves_the_others_an_outcome_unknown_error() -> None:
    first_started, release_first = threading.Event(), threading.Event()

    def flush(items: Sequence[str]) -> list[str]:
        if items == ["first"]:
            first_started.set()
            assert release_first.wait(10)
        if "f1" in items:
            raise Interrupted()  # the thread leading ["f1", "f2"] is interrupted mid-flush
        return list(items)

    group: GroupCommit[str, str] = GroupCommit(flush)
    outcomes: dict[str, object] = {}
    call = _recording_calls(group, outcomes)

    first = threading.Thread(target=call, args=("first",))
    first.start()
    assert first_started.wait(10)
    followers = []
    for count, name in enumerate(("f1", "f2"), start=1):
        followers.append(threading.Thread(target=call, args=(name,)))
        followers[-1].start()
        _wait_pending(group, count)
    release_first.set()
    for t in (first, *followers):
        t.join(10)
        assert not t.is_alive()

    assert outcomes["first"] == "first"
    assert isinstance(outcomes["f1"], Interrupted)  # its own interruption
    assert isinstance(outcomes["f2"], FlushInterrupted)  # not f1's, and not a hang
    assert str(outcomes["f2"]) == "the flush of this batch was interrupted"
    assert group.submit("later") == "later"


class _InterruptedAt:
    """A ``GroupCommit``'s lock whose ``at``-th acquisition raises ``Interrupted`` instead: an
    interruption that reaches a thread just as it takes the lock."""

    def __init__(self, at: int) -> None:
        self.lock, self.at, self.taken = threading.Lock(), at, 0

    def __enter__(self) -> None:
        self.taken += 1
        if self.taken == self.at:
            raise Interrupted()
        self.lock.acquire()

    def __exit__(self, *_exc: object) -> None:
        self.lock.release()


def _submit_within_10s(group: GroupCommit[str, str], item: str) -> object:
    outcomes: dict[str, object] = {}
    caller = threading.Thread(target=_recording_calls(group, outcomes), args=(item,), daemon=True)
    caller.start()
    caller.join(10)
    assert not caller.is_alive(), "the group commit is stuck"
    return outcomes[item]


@pytest.mark.parametrize(
    "at", [2, 3], ids=["before taking its batch", "when handing over after its flush"]
)
def test_a_leader_interrupted_as_it_takes_the_lock_leaves_the_group_usable(at: int) -> None:
    batches: list[list[str]] = []

    def flush(items: Sequence[str]) -> list[str]:
        batches.append(list(items))
        return list(items)

    group: GroupCommit[str, str] = GroupCommit(flush)
    group._lock = _InterruptedAt(at)  # type: ignore[assignment]
    with pytest.raises(Interrupted):
        group.submit("interrupted")
    assert _submit_within_10s(group, "later") == "later"
    assert batches == ([["later"]] if at == 2 else [["interrupted"], ["later"]])


def _wait_pending(group: GroupCommit[str, str], count: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with group._lock:
            if len(group._pending) == count:
                return
        time.sleep(0.001)
    raise AssertionError(f"never {count} pending")


def _recording_calls(
    group: GroupCommit[str, str], outcomes: dict[str, object]
) -> Callable[[str], None]:
    """A thread target: submit ``name`` and keep what came back, or what was raised."""

    def call(name: str) -> None:
        try:
            outcomes[name] = group.submit(name)
        except BaseException as exc:
            outcomes[name] = exc

    return call


class _Refused(Exception):
    def __init__(self, account_id: str, version: int) -> None:
        super().__init__(f"{account_id} is not at version {version}")
        self.account_id = account_id


def test_each_thread_of_a_failed_batch_raises_itsown_copy_of_the_error() -> None:
    def flush(_items: Sequence[str]) -> list[str]:
        raise _Refused("acct_1", 3) from KeyError("cause")

    held = FirstBatchHeld(flush, first=list)
    first_started, release_first, flushes = held.started, held.release, held.batches
    group: GroupCommit[str, str] = GroupCommit(held)
    outcomes: dict[str, object] = {}
    call = _recording_calls(group, outcomes)

    first = threading.Thread(target=call, args=("0",))
    first.start()
    assert first_started.wait(10)
    threads = [threading.Thread(target=call, args=(name,)) for name in ("1", "2", "3")]
    for t in threads:
        t.start()
    _wait_pending(group, 3)
    release_first.set()
    for t in [first, *threads]:
        t.join(10)

    assert flushes[1] == ["1", "2", "3"]
    raised = [outcomes[name] for name in ("1", "2", "3")]
    assert len({id(e) for e in raised}) == 3  # one object per thread
    for exc in raised:
        assert isinstance(exc, _Refused)
        assert type(exc) is _Refused and exc.args == ("acct_1 is not at version 3",)
        assert exc.account_id == "acct_1" and isinstance(exc.__cause__, KeyError)
        frames = []
        tb = exc.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame.f_code.co_name)
            tb = tb.tb_next
        assert frames.count("call") == 1 and "flush" in frames  # its own raise, then the flush's


def test_a_copied_built_in_error_keeps_what_it_holds_in_c_slots() -> None:
    from events.groupcommit import own_copy

    original = OSError(2, "No such file or directory", "/missing")
    copied = own_copy(original)
    assert copied is not original and type(copied) is type(original)
    assert (copied.errno, copied.filename, str(copied)) == (2, "/missing", str(original))
    assert copied.__suppress_context__ is False  # no ``raise … from``: a context would show
    encode = UnicodeEncodeError("ascii", "é", 0, 1, "ordinal not in range")
    assert str(own_copy(encode)) == str(encode)


class _Uncopyable(Exception):
    """An error that neither ``copy.copy`` nor its class's ``__new__`` can remake."""

    def __new__(cls, *args: object, made: bool = False) -> _Uncopyable:
        if not made:
            raise TypeError("only made by its raiser")
        return super().__new__(cls, *args)

    def __init__(self, *args: object, made: bool = False) -> None:
        super().__init__(*args)

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("no copies")


def test_an_error_that_cannot_be_copied_is_shared_as_it_is() -> None:
    from events.groupcommit import own_copy

    original = _Uncopyable("boom", made=True)
    assert own_copy(original) is original
