"""Failure paths of the report queue (``enforcement/api/coalesce.py``) and of
``EnforcementService.report_each``, found in a review (helper-43): a stopped server, a caller's
callback that raises, a failed shared append and a fault after the shared commit each leave
every other report recorded, and answered as it would be alone."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from sqlalchemy.exc import OperationalError
from test_service_support import fail_deciding

from enforcement.api import coalesce
from enforcement.api.schemas import ViolationIn
from enforcement.api.violations import report_of
from enforcement.bootstrap import Container
from enforcement.errors import ValidationFailed
from enforcement.service import Actor, NotSent
from events import AppendOutcomeUnknown
from events.timefmt import to_utc


def body(account_id: str) -> ViolationIn:
    return ViolationIn.model_validate({"account_id": account_id, "category": "spam", "source": "t"})


def queue_recording_by(
    system: Container,
    monkeypatch: pytest.MonkeyPatch,
    alone: Callable[..., Any],
    record: Callable[..., Any],
) -> None:
    """The report queue installed on ``system``, its thread recording a lone report with
    ``alone`` and a drain's batch with ``record``."""
    coalesce.install_report_queue(system)
    monkeypatch.setattr(coalesce, "_record_alone", alone)
    monkeypatch.setattr(coalesce, "_record", record)


def accounts(batch: list[Any]) -> list[str]:
    return [r.body.account_id for r in batch]


def test_a_closed_loop_does_not_stop_the_rest_of_a_taken_batch_from_being_recorded(
    system: Container,
) -> None:
    # The drain's loop ended (server shutdown: asyncio.run cancels the drain task, whose
    # await on the thread is not shielded from a native cancel) while its thread records.
    # The module promises a taken report "is still recorded"; the first call_soon_threadsafe
    # raises RuntimeError inside on_result and report_each stops: the keyed report is lost.
    loop = asyncio.new_event_loop()
    batch = [
        coalesce._Report(
            body(a), Actor("reporter:r", a), key, contextvars.copy_context(), loop.create_future()
        )
        for a, key in (("acct_a", None), ("acct_b", None), ("acct_c", "key-c"))
    ]
    loop.close()
    coalesce._record(system, batch)  # nobody to answer: every report still recorded
    heads = {a: system.store.head(a).version for a in ("acct_a", "acct_b", "acct_c")}
    assert heads["acct_a"] > 0 and heads["acct_b"] > 0  # the shared transaction committed
    assert heads["acct_c"] > 0, "a report the drain had taken was never recorded"


def test_on_result_raising_does_not_stop_report_each(system: Container) -> None:
    now = to_utc(system.clock())
    rep = report_of(body("x"), now)
    items = [("acct_a", rep, None, None), ("acct_b", rep, None, None), ("acct_c", rep, "k", "f")]
    actors = [Actor("reporter:r", f"req-{i}") for i in range(3)]
    calls: list[int] = []

    def on_result(index: int, _result: Any) -> None:
        calls.append(index)
        if index == 0:
            raise RuntimeError("caller's callback failed")

    results = system.service.report_each(items, actors, on_result=on_result)
    # The callback's error is logged; every item is still recorded and handed on.
    assert sorted(calls) == [0, 1, 2]
    assert not any(isinstance(r, Exception) for r in results)
    assert system.store.head("acct_b").version > 0
    assert system.store.head("acct_c").version > 0, "remaining items skipped"


def test_a_failed_shared_append_keeps_the_answers_settled_before_it(
    system: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Items settled before the append (a policy refusal) and items left to be recorded alone
    # (a fault deciding them) keep their own answers; only the appended ones get its error.
    fail_deciding(monkeypatch, "acct_bad", KeyError)

    def down(*_a: Any, **_k: Any) -> Any:
        raise OperationalError("INSERT", {}, Exception("database down"))

    monkeypatch.setattr(system.store, "append_streams", down)
    now = to_utc(system.clock())
    rep = report_of(body("x"), now)
    refused = dataclasses.replace(rep, detection="bogus")
    items = [
        ("acct_bad", rep, None, None),
        ("acct_ref", refused, None, None),
        ("acct_1", rep, None, None),
        ("acct_2", rep, None, None),
    ]
    actors = [Actor("reporter:r", f"req-{i}") for i in range(4)]
    results = system.service.report_each(items, actors)
    kinds = [type(r).__name__ for r in results]
    # As alone: KeyError, ValidationFailed (no write attempted for either).
    assert isinstance(results[1], ValidationFailed), kinds
    assert isinstance(results[0], KeyError), kinds
    assert [type(r) for r in results[2:]] == [OperationalError, OperationalError], kinds


def test_a_shared_append_whose_outcome_is_unknown_is_not_tried_again(
    system: Container, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The shared transaction committed but its caller could not know: recording its reports
    # again alone would record each twice.
    real = system.store.append_streams

    def committed_but_lost(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        raise AppendOutcomeUnknown("connection lost at the commit")

    monkeypatch.setattr(system.store, "append_streams", committed_but_lost)
    items = [(a, report_of(body(a), to_utc(system.clock())), None, None) for a in ("a1", "a2")]
    actors = [Actor("reporter:r", f"req-{i}") for i in range(2)]

    results = system.service.report_each(items, actors)

    assert [type(r) for r in results] == [AppendOutcomeUnknown, AppendOutcomeUnknown]
    assert [system.store.head(a).version for a in ("a1", "a2")] == [3, 3]  # recorded once
    assert "could not be handed on" not in caplog.text  # no ``on_result`` was given


def silent(*_a: Any, **_k: Any) -> Any:
    """A statement the database left unanswered (its driver's timeout)."""
    raise OperationalError("SELECT", {}, psycopg.errors.ConnectionTimeout("no answer"))


def test_standings_the_database_left_unanswered_send_none_of_the_reports(
    system: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The shared read found the database silent: each report fails at once, not sent, rather
    # than each waiting as long again on its own.
    monkeypatch.setattr(system.standings, "load_many", silent)
    items = [(a, report_of(body(a), to_utc(system.clock())), None, None) for a in ("s1", "s2")]
    actors = [Actor("reporter:r", f"req-{i}") for i in range(2)]

    results = system.service.report_each(items, actors)

    assert [type(r) for r in results] == [NotSent, NotSent], results
    assert [system.store.head(a).version for a in ("s1", "s2")] == [0, 0]


def test_a_shared_append_the_database_left_unanswered_sends_no_report_after_it(
    system: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(system.store, "append_streams", silent)
    now = to_utc(system.clock())
    # u1's second report is recorded alone, after the shared append
    items = [(a, report_of(body(a), now), None, None) for a in ("u1", "u2", "u1")]
    actors = [Actor("reporter:r", f"req-{i}") for i in range(3)]

    results = system.service.report_each(items, actors)

    assert [type(r) for r in results] == [OperationalError, OperationalError, NotSent], results
    assert system.store.head("u1").version == 0


def test_a_server_stopping_mid_drain_loses_no_taken_report(
    system: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    # End to end: the server's loop ends (asyncio.run cancels the drain task) while the drain's
    # thread records a keyed report on its own; the thread's answer then meets a closed loop.
    hold_alone, slow = threading.Event(), threading.Event()
    loop_closed = threading.Event()
    errors: list[BaseException] = []
    real_alone, real_record = coalesce._record_alone, coalesce._record
    real_report = system.service.report_violation

    def held_alone(*args: Any) -> Any:
        assert hold_alone.wait(10)
        return real_alone(*args)

    def record(*args: Any) -> Any:
        try:
            return real_record(*args)
        except BaseException as exc:
            errors.append(exc)
            raise

    def slow_c(account_id: str, *args: Any) -> Any:
        if account_id == "acct_c":
            assert slow.wait(10)
            assert loop_closed.wait(10)
        return real_report(account_id, *args)

    queue_recording_by(system, monkeypatch, held_alone, record)
    monkeypatch.setattr(system.service, "report_violation", slow_c)

    async def main() -> None:
        queue = coalesce.report_queue(system)
        first = asyncio.ensure_future(queue.report(body("acct_0"), Actor("r", "0"), None))
        await asyncio.sleep(0.05)
        a = asyncio.ensure_future(queue.report(body("acct_a"), Actor("r", "a"), None))
        b = asyncio.ensure_future(queue.report(body("acct_b"), Actor("r", "b"), None))
        keyed = [
            asyncio.ensure_future(queue.report(body(a), Actor("r", a), f"key-{a}"))
            for a in ("acct_c", "acct_d")
        ]
        await asyncio.sleep(0.05)
        hold_alone.set()
        await first, await a, await b
        slow.set()  # the thread now records acct_c on its own; the server stops meanwhile
        assert not any(k.done() for k in keyed)

    asyncio.run(main())
    loop_closed.set()
    import time

    deadline = time.monotonic() + 15  # the thread records acct_c, then acct_d
    while time.monotonic() < deadline and system.store.head("acct_d").version == 0:
        time.sleep(0.05)
    assert system.store.head("acct_a").version > 0
    assert system.store.head("acct_c").version > 0
    # acct_c's answer meets the closed loop; acct_d, taken by the same thread, is recorded.
    assert system.store.head("acct_d").version > 0, f"taken report lost at shutdown: {errors}"


def test_a_fault_after_the_shared_commit_fails_only_its_own_report(
    system: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After the commit, one account's post-commit step fails: only its report gets the error;
    # acct_2's committed report is answered (a 5xx would make a client record it twice).
    repo = system.standings
    real = repo.remember_appended

    def flaky(saver: Any, state: Any, events: Any) -> Any:
        if state.account_id == "acct_1":
            raise RuntimeError("post-commit fault for acct_1 only")
        return real(saver, state, events)

    monkeypatch.setattr(repo, "remember_appended", flaky)
    rep = report_of(body("x"), to_utc(system.clock()))
    items = [("acct_1", rep, None, None), ("acct_2", rep, None, None)]
    results = system.service.report_each(items, [Actor("r", "1"), Actor("r", "2")])
    assert system.store.head("acct_2").version > 0  # committed
    assert not isinstance(results[1], Exception), results[1]
    assert isinstance(results[0], RuntimeError)
    # Committed too, so not recorded again on its own
    assert system.store.head("acct_1").version == system.store.head("acct_2").version


def test_a_lone_report_raising_stopiteration_fails_alone_and_leaves_the_queue_working(
    system: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found in a review (helper-44): a future refuses StopIteration, so the lone report's
    # future was never settled; the queue stayed busy and every later report waited forever.
    real_alone = coalesce._record_alone
    calls: list[str] = []

    def alone(container: Container, model: ViolationIn, *args: Any) -> Any:
        calls.append(model.account_id)
        if model.account_id == "acct_stop":
            raise StopIteration  # e.g. a next() over positions running short
        return real_alone(container, model, *args)

    monkeypatch.setattr(coalesce, "_record_alone", alone)
    coalesce.install_report_queue(system)

    async def main() -> int:
        queue = coalesce.report_queue(system)
        with pytest.raises(RuntimeError, match="StopIteration"):
            await asyncio.wait_for(queue.report(body("acct_stop"), Actor("r", "1"), None), 10)
        answer = await asyncio.wait_for(queue.report(body("acct_next"), Actor("r", "2"), None), 10)
        return answer.status_code

    assert asyncio.run(main()) == 201
    assert calls == ["acct_stop", "acct_next"]
    assert system.store.head("acct_next").version > 0


async def outcome(queue: Any, account: str) -> Any:
    """``account``'s report through ``queue``: its answer, or the type of its error."""
    try:
        return await queue.report(body(account), Actor("reporter:r", account), None)
    except Exception as exc:
        return type(exc)


class Held:
    """A job of the queue's thread held where it calls ``hold`` until the test lets it go."""

    def __init__(self) -> None:
        self._entered, self._release = threading.Semaphore(0), threading.Semaphore(0)

    def hold(self) -> None:
        self._entered.release()
        assert self._release.acquire(timeout=10)

    async def entered(self) -> None:
        """Until a job has called ``hold``."""
        assert await asyncio.to_thread(self._entered.acquire, True, 10)

    def let_go(self) -> None:
        self._release.release()


def test_reports_queued_behind_a_lone_report_the_database_left_unanswered_are_not_sent(
    system: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The lone report of an idle queue found the database silent: the reports that queued
    # while it waited fail at once, not sent, untried. With none queued, nothing is kept for
    # later: the reports queued behind the next lone report are tried.
    job = Held()
    drained: list[list[str]] = []

    def alone(_container: Container, model: ViolationIn, *_args: Any) -> Any:
        job.hold()
        if model.account_id in ("acct_0", "acct_3"):
            silent()
        return "alone"

    def record(_container: Container, batch: list[Any]) -> dict[int, Any]:
        drained.append(accounts(batch))
        return {id(r): "drained" for r in batch}

    queue_recording_by(system, monkeypatch, alone, record)

    async def lone_then(queue: Any, account: str, behind: list[str]) -> list[Any]:
        first = asyncio.ensure_future(outcome(queue, account))
        await job.entered()
        queued = [asyncio.ensure_future(outcome(queue, a)) for a in behind]
        await asyncio.sleep(0)  # each queued
        job.let_go()
        return [await asyncio.wait_for(f, 10) for f in (first, *queued)]

    async def main() -> list[list[Any]]:
        queue = coalesce.report_queue(system)
        return [
            await lone_then(queue, "acct_0", ["acct_1", "acct_2"]),
            await lone_then(queue, "acct_3", []),
            await lone_then(queue, "acct_4", ["acct_5"]),
        ]

    assert asyncio.run(main()) == [
        [OperationalError, NotSent, NotSent],
        [OperationalError],
        ["alone", "drained"],
    ]
    assert drained == [["acct_5"]]


def silence() -> OperationalError:
    try:
        silent()
    except OperationalError as exc:
        return exc
    raise AssertionError("silent() returned")


def test_a_drains_report_the_database_left_unanswered_fails_the_reports_queued_meanwhile(
    system: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its batch's other reports keep their own answers; the reports that queued while the
    # drain waited fail at once, not sent, untried; the queue then works as before.
    job = Held()
    drained: list[list[str]] = []

    def alone(_container: Container, _model: ViolationIn, *_args: Any) -> Any:
        job.hold()
        return "alone"

    def record(_container: Container, batch: list[Any]) -> dict[int, Any]:
        drained.append(accounts(batch))
        job.hold()
        return {id(r): silence() if r.body.account_id == "acct_1" else "drained" for r in batch}

    queue_recording_by(system, monkeypatch, alone, record)

    async def main() -> list[Any]:
        queue = coalesce.report_queue(system)
        reports = [asyncio.ensure_future(outcome(queue, "acct_0"))]
        await job.entered()  # acct_0 alone
        reports += [asyncio.ensure_future(outcome(queue, a)) for a in ("acct_1", "acct_2")]
        await asyncio.sleep(0)
        job.let_go()
        await job.entered()  # the drain of acct_1 and acct_2
        reports.append(asyncio.ensure_future(outcome(queue, "acct_3")))
        await asyncio.sleep(0)
        job.let_go()
        answers = [await asyncio.wait_for(r, 10) for r in reports]
        later = asyncio.ensure_future(outcome(queue, "acct_4"))
        await job.entered()
        job.let_go()
        return [*answers, await asyncio.wait_for(later, 10)]

    answers = asyncio.run(main())
    assert answers == ["alone", OperationalError, "drained", NotSent, "alone"]
    assert drained == [["acct_1", "acct_2"]]


def test_a_failing_drain_fails_its_batch_only_and_the_queue_drains_on(
    system: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The drain's thread itself raised (a bug in recording the batch): each of its reports
    # gets that error; the reports queued meanwhile are recorded by the next drain.
    job = Held()

    def held(result: Any) -> Any:
        job.hold()
        return result

    def record(_container: Container, batch: list[Any]) -> dict[int, Any]:
        if held(batch[0].body.account_id == "acct_1"):
            raise LookupError("a bug in recording this batch")
        return {id(r): "drained" for r in batch}

    queue_recording_by(system, monkeypatch, lambda *_a: held("alone"), record)

    async def main() -> list[Any]:
        queue = coalesce.report_queue(system)
        reports = [asyncio.ensure_future(outcome(queue, "acct_0"))]
        await job.entered()
        reports += [asyncio.ensure_future(outcome(queue, a)) for a in ("acct_1", "acct_2")]
        await asyncio.sleep(0)
        job.let_go()
        await job.entered()  # the failing drain
        reports.append(asyncio.ensure_future(outcome(queue, "acct_3")))
        await asyncio.sleep(0)
        job.let_go()
        await job.entered()  # the next
        job.let_go()
        return [await asyncio.wait_for(r, 10) for r in reports]

    assert asyncio.run(main()) == ["alone", LookupError, LookupError, "drained"]


def test_record_answers_each_report_with_its_own_outcome_or_error(
    system: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A report that failed keeps its own error; one recorded whose answer could not be made
    # gets that error (not "no answer"); the others their responses.
    from enforcement.api import violations

    fail_deciding(monkeypatch, "acct_bad", KeyError)
    answer_of = violations.answer_of

    def odd(account_id: str, outcome: Any) -> Any:
        if account_id == "acct_odd":
            raise ValueError("its answer could not be made")
        return answer_of(account_id, outcome)

    monkeypatch.setattr(violations, "answer_of", odd)
    loop = asyncio.new_event_loop()
    batch = [
        coalesce._Report(
            body(a), Actor("reporter:r", a), None, contextvars.copy_context(), loop.create_future()
        )
        for a in ("acct_bad", "acct_odd", "acct_ok")
    ]
    answers = coalesce._record(system, batch)
    loop.close()
    kinds = [type(answers[id(r)]).__name__ for r in batch]
    assert kinds[:2] == ["KeyError", "ValueError"] and answers[id(batch[2])].status_code == 201


def test_a_drain_its_loop_ends_cancels_the_reports_queued_behind_it_untried(
    system: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = Held()
    drained: list[list[str]] = []

    def record(_container: Container, batch: list[Any]) -> dict[int, Any]:
        drained.append(accounts(batch))
        job.hold()
        return {id(r): "drained" for r in batch}

    queue_recording_by(system, monkeypatch, lambda *_a: "alone", record)

    async def main() -> list[Any]:
        queue = coalesce.report_queue(system)
        reports = [asyncio.ensure_future(outcome(queue, "acct_0"))]
        await asyncio.sleep(0)  # alone, in its thread: the next queues
        reports.append(asyncio.ensure_future(outcome(queue, "acct_1")))
        await job.entered()  # the drain of acct_1
        reports.append(asyncio.ensure_future(outcome(queue, "acct_2")))
        await asyncio.sleep(0)
        queue._drain.cancel()  # as the end of the loop does
        done, _ = await asyncio.wait(reports, timeout=10)
        job.let_go()
        return [r.cancelled() or r.result() if r in done else "waiting" for r in reports]

    assert asyncio.run(main()) == ["alone", True, True]
    assert drained == [["acct_1"]]
