"""``SerialThread``: the report queue's worker thread (``enforcement/api/serial_thread.py``)."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time

import pytest

from enforcement.api.serial_thread import SerialThread

request = contextvars.ContextVar("request", default="none")


def _threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name]


def _wait_until(predicate: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return True
        time.sleep(0.01)
    return False


def test_jobs_run_one_at_a_time_in_order_in_one_thread_with_the_callers_context() -> None:
    worker = SerialThread("serial-order")
    seen: list[tuple[int, str, str]] = []
    running = 0
    overlapped = False

    def job(i: int) -> int:
        nonlocal running, overlapped
        running += 1
        overlapped |= running > 1
        time.sleep(0.005)
        seen.append((i, threading.current_thread().name, request.get()))
        running -= 1
        return i * 10

    async def caller(i: int) -> int:
        request.set(f"req-{i}")
        return await worker.run(job, i)

    async def main() -> list[int]:
        return list(await asyncio.gather(*(caller(i) for i in range(8))))

    assert asyncio.run(main()) == [i * 10 for i in range(8)]
    assert not overlapped
    assert seen == [(i, "serial-order", f"req-{i}") for i in range(8)]
    assert request.get() == "none"  # the job's context was a copy


def test_an_error_of_the_job_is_raised_in_the_caller_and_the_thread_goes_on() -> None:
    worker = SerialThread("serial-errors")
    boom = KeyError("boom")

    def fail() -> None:
        raise boom

    async def main() -> str:
        with pytest.raises(KeyError) as raised:
            await worker.run(fail)
        assert raised.value is boom
        return await worker.run(lambda: "still here")

    assert asyncio.run(main()) == "still here"


def test_a_cancelled_caller_stops_waiting_and_the_job_runs_to_its_end_before_the_next() -> None:
    worker = SerialThread("serial-cancel")
    release, finished = threading.Event(), threading.Event()
    order: list[str] = []

    def slow() -> str:
        assert release.wait(5)
        order.append("slow")
        finished.set()
        return "slow done"

    async def main() -> None:
        waiting = asyncio.ensure_future(worker.run(slow))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert not finished.is_set()  # the caller stopped waiting before the job ended
        later = asyncio.ensure_future(worker.run(lambda: order.append("next")))
        await asyncio.sleep(0.05)
        assert order == []  # queued behind the job still running
        release.set()
        await later

    asyncio.run(main())
    assert order == ["slow", "next"]


def test_the_thread_ends_when_idle_and_a_new_job_starts_another() -> None:
    worker = SerialThread("serial-idle", idle_s=0.05)

    async def main() -> str:
        return await worker.run(lambda: threading.current_thread().name)

    assert asyncio.run(main()) == "serial-idle"
    assert _wait_until(lambda: not _threads("serial-idle"))
    assert asyncio.run(main()) == "serial-idle"


def test_a_job_that_ends_after_its_loop_closed_leaves_the_thread_working() -> None:
    worker = SerialThread("serial-closed")
    release = threading.Event()

    def held() -> str:
        assert release.wait(5)
        return "too late"

    async def leave_it() -> None:
        worker.submit(held)
        await asyncio.sleep(0.01)

    asyncio.run(leave_it())  # the loop is closed while the job still runs
    release.set()

    async def next_loop() -> str:
        return await asyncio.wait_for(worker.run(lambda: "answered"), 5)

    assert asyncio.run(next_loop()) == "answered"
