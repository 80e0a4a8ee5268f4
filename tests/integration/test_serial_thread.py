"""``SerialThread``: the report queue's worker thread (``enforcement/api/serial_thread.py``)."""

from __future__ import annotations

import asyncio
import contextvars
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from enforcement.api.serial_thread import _POLL_S, SerialThread

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


class Overlap:
    """Whether two jobs ever ran at once."""

    def __init__(self) -> None:
        self.running = 0
        self.happened = False

    @contextmanager
    def job(self, seconds: float) -> Iterator[None]:
        self.running += 1
        self.happened |= self.running > 1
        try:
            time.sleep(seconds)
            yield
        finally:
            self.running -= 1


def test_jobs_run_one_at_a_time_in_order_in_one_thread_with_the_callers_context() -> None:
    worker = SerialThread("serial-order")
    seen: list[tuple[int, str, str]] = []
    overlap = Overlap()

    def job(i: int) -> int:
        with overlap.job(0.005):
            seen.append((i, threading.current_thread().name, request.get()))
        return i * 10

    async def caller(i: int) -> int:
        request.set(f"req-{i}")
        return await worker.run(job, i)

    async def main() -> list[int]:
        return list(await asyncio.gather(*(caller(i) for i in range(8))))

    assert asyncio.run(main()) == [i * 10 for i in range(8)]
    assert not overlap.happened
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
    started, release, finished = threading.Event(), threading.Event(), threading.Event()
    order: list[str] = []

    def slow() -> str:
        started.set()
        assert release.wait(5)
        order.append("slow")
        finished.set()
        return "slow done"

    async def main() -> None:
        waiting = asyncio.ensure_future(worker.run(slow))
        assert await asyncio.to_thread(started.wait, 5)  # the job runs: cancel its caller
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
        name = await worker.run(lambda: threading.current_thread().name)
        # Idle while the loop still runs: the thread ends after idle_s, the next job starts one.
        assert await asyncio.to_thread(_wait_until, lambda: not _threads("serial-idle"))
        return name + " " + await asyncio.wait_for(worker.run(lambda: "again"), 5)

    assert asyncio.run(main()) == "serial-idle again"


def test_the_thread_ends_soon_after_its_event_loop_stops() -> None:
    worker = SerialThread("serial-loop-gone", idle_s=600)

    async def main() -> bool:
        await worker.run(lambda: None)
        return bool(_threads("serial-loop-gone"))

    assert asyncio.run(main())  # running while its loop runs
    assert _wait_until(lambda: not _threads("serial-loop-gone"), timeout=5)


def test_many_jobs_around_a_tiny_idle_time_all_run_one_at_a_time() -> None:
    worker = SerialThread("serial-stress", idle_s=0.001)
    overlap = Overlap()

    def job(i: int) -> int:
        with overlap.job(0.0005):
            return i

    async def main() -> list[int]:
        answers = []
        for i in range(60):
            if i % 3 == 0:
                await asyncio.sleep(0.003)  # long enough for the thread to end meanwhile
            answers.append(await asyncio.wait_for(worker.run(job, i), 5))
        return answers

    assert asyncio.run(main()) == list(range(60))
    assert not overlap.happened


def test_a_job_raising_stopiteration_is_answered_with_a_runtime_error() -> None:
    # A future refuses StopIteration: it would never be settled, and its caller would wait
    # forever. AnyIO answers RuntimeError; so does this.
    worker = SerialThread("serial-stop")
    stopped = StopIteration("done")

    def stop() -> None:
        raise stopped

    async def main() -> None:
        with pytest.raises(RuntimeError, match="StopIteration") as raised:
            await asyncio.wait_for(worker.run(stop), 5)
        assert raised.value.__cause__ is stopped  # the job's own exception, for its traceback

    asyncio.run(main())


def test_a_thread_idle_for_less_than_idle_s_is_kept_while_its_loop_runs() -> None:
    worker = SerialThread("serial-kept")  # idle_s at its default, 30 s

    async def main() -> tuple[threading.Thread, threading.Thread]:
        first = await worker.run(threading.current_thread)
        # Longer than the thread's poll: it has looked at its loop and its idle time meanwhile.
        await asyncio.sleep(2 * _POLL_S)
        return first, await asyncio.wait_for(worker.run(threading.current_thread), 5)

    first, second = asyncio.run(main())
    assert first is second


def test_the_thread_keeps_no_reference_to_a_finished_job() -> None:
    """A job's arguments (a report, a drain's items) are let go when it ends, not kept until
    the next job or the thread's end."""
    worker = SerialThread("serial-forgets", idle_s=600)

    class Payload:
        pass

    async def main() -> None:
        payload = Payload()
        gone = weakref.ref(payload)
        assert await worker.run(id, payload) == id(payload)
        del payload
        assert await asyncio.to_thread(_wait_until, lambda: gone() is None)

    asyncio.run(main())


def test_a_future_cancelled_before_its_job_ends_is_left_cancelled() -> None:
    """``submit``'s caller may cancel its future: the job's outcome then settles nothing (no
    ``InvalidStateError`` in the event loop's callback)."""
    worker = SerialThread("serial-cancelled-future")
    release = threading.Event()

    async def main() -> list[dict[str, Any]]:
        errors: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _, context: errors.append(context))
        future = worker.submit(release.wait, 5)
        future.cancel()
        release.set()
        # Settled after the cancelled job's outcome was handed to the loop.
        assert await asyncio.wait_for(worker.run(lambda: "next"), 5) == "next"
        assert future.cancelled()
        return errors

    assert asyncio.run(main()) == []


def test_a_thread_that_cannot_start_strands_no_job(monkeypatch: pytest.MonkeyPatch) -> None:
    worker = SerialThread("serial-no-start")
    real_start = threading.Thread.start
    refused: list[str] = []

    def start_once_refused(thread: threading.Thread) -> None:
        if thread.name == "serial-no-start" and not refused:
            refused.append(thread.name)
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start_once_refused)
    ran: list[str] = []

    async def main() -> str:
        with pytest.raises(RuntimeError, match="can't start"):
            await worker.run(lambda: ran.append("first"))
        return await asyncio.wait_for(worker.run(lambda: "second"), 5)

    assert asyncio.run(main()) == "second"
    assert ran == []  # the refused job was never queued, so it never runs behind its error


def test_the_interpreter_waits_at_exit_for_a_job_in_progress(tmp_path: Path) -> None:
    # The server stops without waiting for its requests: asyncio.run cancels the drain, and
    # the process exits; the report the drain took is still recorded, as with AnyIO's workers.
    recorded = tmp_path / "recorded"
    script = textwrap.dedent(
        f"""
        import asyncio, time
        from enforcement.api.serial_thread import SerialThread

        def job():
            time.sleep(0.5)
            open({str(recorded)!r}, "w").write("recorded")

        async def main():
            asyncio.ensure_future(SerialThread("report-queue").run(job))
            await asyncio.sleep(0.05)

        asyncio.run(main())
        """
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", script], cwd=root, check=True, timeout=60)
    assert recorded.read_text() == "recorded"


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
