"""Concurrent ``POST /v1/violations`` requests recorded together.

Each violation report used to run in a worker thread of its own. With several at once, those
threads took turns at the GIL and at the log's writer (SQLite's one writer, PostgreSQL's append
lock), so eight concurrent reports cost the server more time each than one alone, and on
PostgreSQL 32 clients were answered more slowly than 8. Here the reports of one event loop
queue instead, and one drain at a time takes every report queued so far to one worker thread,
which records them with ``EnforcementService.report_each``: the first report of each account
without an Idempotency-Key is decided with the others like it and recorded in one transaction
(one commit), the rest one by one, exactly as a single request would be. A report that finds
the queue idle goes straight to the worker thread, as before the queue: nothing waits for company,
and one client alone sees no difference; reports that arrive meanwhile queue behind it.

Each request still gets its own answer, as soon as its report is settled (a slow report in a
drain holds up no other's answer): the same response as before, or the same exception (a copy
of its own, raised in the request, so the application's handlers answer it as they did), and
each event keeps its own request's actor and correlation id. A report that fails before the
shared transaction is written (its standing unreadable, a fault in deciding it) is recorded on
its own, where it fails alone. Log lines of a report recorded on its own
carry its request id; those of a shared transaction carry the first report's. A request that
goes away stops waiting; its report is still recorded if a drain has taken it (as a worker
thread already started would have recorded it). When the database left a report unanswered
for its whole timeout (``ENFORCEMENT_DATABASE_TIMEOUT_MS``, or the connect timeout), the reports
that queued behind it fail at once, not sent (503, nothing was written): each would otherwise
wait as long again, one drain after another; the reports after them try again.

The queue's jobs (a lone report, a drain: never two at once) run in a thread of its own
(``serial_thread.SerialThread``), whose hand-off costs two thirds of AnyIO's. Every other
route keeps AnyIO's thread pool: nothing else queues behind the reports.
"""

from __future__ import annotations

import asyncio
import contextvars
from dataclasses import dataclass, field
from typing import cast

from anyio.lowlevel import RunVar
from fastapi import Response
from sqlalchemy.exc import OperationalError

from enforcement.api import violations
from enforcement.api.schemas import ViolationIn
from enforcement.api.serial_thread import SerialThread, settle, settle_from_thread
from enforcement.bootstrap import Container
from enforcement.service import Actor, Outcome, ReportItem, not_sent_for_silence
from events.groupcommit import own_copy
from events.timefmt import to_utc

_QUEUE = "report_queue"


@dataclass(slots=True)
class _Report:
    """One request's report, waiting for its answer."""

    body: ViolationIn
    actor: Actor
    idempotency_key: str | None
    context: contextvars.Context  # the request's (its request id, for log lines)
    answer: asyncio.Future[Response | BaseException] = field(repr=False)


class ReportQueue:
    """The violation reports of one event loop, drained one batch at a time (see the module)."""

    def __init__(self, container: Container) -> None:
        self._container = container
        self._waiting: list[_Report] = []
        self._drain: asyncio.Task[None] | None = None
        self._alone = False  # a report of an idle queue is running (``_report_alone``)
        # The database did not answer the report or batch just ended: the reports that queued
        # while it waited fail at once, not sent (``_drain_all``).
        self._silent: OperationalError | None = None
        # One job in a thread at a time (a lone report or a drain), so one thread of its own.
        self._thread = SerialThread("report-queue")

    async def report(
        self, body: ViolationIn, actor: Actor, idempotency_key: str | None
    ) -> Response:
        """Record one violation report; its response, or its exception raised here."""
        if not self._busy:
            return await self._report_alone(body, actor, idempotency_key)
        loop = asyncio.get_running_loop()
        report = _Report(
            body, actor, idempotency_key, contextvars.copy_context(), loop.create_future()
        )
        self._waiting.append(report)
        self._start_drain()
        # A request that goes away stops waiting (its future is cancelled); its report is
        # still recorded if the drain has taken it, as a thread already started would.
        answer = await report.answer
        if isinstance(answer, BaseException):
            # A copy of its own: the reports of a failed transaction share one error, and each
            # raise would add its request's frames to the one traceback.
            raise own_copy(answer) if isinstance(answer, Exception) else answer
        return answer

    async def _report_alone(
        self, body: ViolationIn, actor: Actor, idempotency_key: str | None
    ) -> Response:
        """The report of an idle queue: straight to a worker thread, as if there were no queue;
        reports that arrive meanwhile wait for the drain that starts when the thread is done.
        The queue waits for the thread's outcome itself, so that a request cancelled meanwhile
        cannot start that drain while the thread still records (the job runs in the request's
        context)."""
        done = self._thread.submit(_record_alone, self._container, body, actor, idempotency_key)
        self._alone = True  # once submitted: a thread that cannot start leaves the queue idle
        done.add_done_callback(self._alone_done)
        return await asyncio.shield(done)

    def _alone_done(self, done: asyncio.Future[Response]) -> None:
        self._alone = False
        if not done.cancelled():
            failed = done.exception()  # retrieved: its request raises it, or has gone
            if failed is not None and self._waiting:
                self._silent = not_sent_for_silence(failed)
        self._start_drain()

    @property
    def _busy(self) -> bool:
        return self._alone or self._drain is not None or bool(self._waiting)

    def _start_drain(self) -> None:
        if self._waiting and self._drain is None and not self._alone:
            # A context of its own: the drain is no request's (each report runs in its own).
            loop = asyncio.get_running_loop()
            self._drain = loop.create_task(self._drain_all(), context=contextvars.Context())

    async def _drain_all(self) -> None:
        try:
            while self._waiting:
                batch = [r for r in self._waiting if not r.answer.done()]
                self._waiting = []
                silent, self._silent = self._silent, None
                if silent is not None:
                    # They waited for a report the database left unanswered for the whole
                    # timeout: the next would wait as long again. Those that come after them
                    # try again.
                    for report in batch:
                        settle(report.answer, own_copy(silent))
                    continue
                if not batch:
                    continue
                failed: BaseException | None = None
                values: dict[int, Response | BaseException] = {}
                try:
                    values = await self._thread.run(_record, self._container, batch)
                except BaseException as exc:  # the thread itself failed, or the loop ends
                    failed = exc
                    if not isinstance(exc, Exception):
                        raise
                finally:
                    # The thread answers each report through the loop as soon as it is settled;
                    # what it returns answers any not answered yet; failing that, the failure.
                    for report in batch:
                        value = values.get(id(report))
                        if value is None:
                            value = failed or RuntimeError("the report got no answer")
                        settle(report.answer, value)
                        if self._waiting and self._silent is None and isinstance(value, Exception):
                            self._silent = not_sent_for_silence(value)
        finally:
            self._drain = None
            self._silent = None
            for report in self._waiting:  # only if the loop ended the drain
                if not report.answer.done():
                    report.answer.cancel()


def _record_alone(
    container: Container, body: ViolationIn, actor: Actor, idempotency_key: str | None
) -> Response:
    """The worker thread's part for the report of an idle queue (in the request's context)."""
    return violations.record_violation(body, container, actor, idempotency_key)


def _record(container: Container, batch: list[_Report]) -> dict[int, Response | BaseException]:
    """The worker thread's part: every report of the batch recorded, each one answered through
    the event loop as soon as it is settled (a slow report holds up no other's answer); returns
    every answer by ``id`` of its report."""
    values: dict[int, Response | BaseException] = {}

    def answer(report: _Report, value: Response | BaseException) -> None:
        values[id(report)] = value
        # If the server stopped meanwhile, nobody waits; the reports this thread took are
        # still recorded, as a thread already started always was.
        settle_from_thread(report.answer, value)

    now = to_utc(container.clock())
    items: list[ReportItem] = []
    taken: list[_Report] = []
    for one in batch:
        try:
            report, fingerprint = violations.prepared(one.body, now)
        except Exception as exc:  # this report's own error (ApiError: refused): it fails alone
            answer(one, exc)
            continue
        items.append((one.body.account_id, report, one.idempotency_key, fingerprint))
        taken.append(one)

    def settled(index: int, outcome: Outcome | Exception) -> None:
        if isinstance(outcome, Exception):
            answer(taken[index], outcome)
            return
        try:
            answer(taken[index], violations.answer_of(items[index][0], outcome))
        except Exception as exc:  # recorded, but its answer could not be made
            answer(taken[index], exc)

    if items:
        # The shared transaction's log lines carry the first report's request id; each report
        # recorded on its own runs in its own request's context.
        taken[0].context.copy().run(
            container.service.report_each,
            items,
            [one.actor for one in taken],
            contexts=[one.context for one in taken],
            on_result=settled,
        )
    return values


def install_report_queue(container: Container) -> None:
    """Give the container its report queues: one per event loop, made on its first report.

    A queue's futures and its drain belong to one event loop, and a container can serve from
    several (the test client runs one of its own), hence a run variable per container.
    """
    container.extras[_QUEUE] = RunVar[ReportQueue](_QUEUE)


def report_queue(container: Container) -> ReportQueue:
    """This event loop's report queue of the container."""
    per_loop = cast(RunVar[ReportQueue], container.extras[_QUEUE])
    queue = per_loop.get(None)
    if queue is None:
        queue = ReportQueue(container)
        per_loop.set(queue)
    return queue


async def report_violation_answer(
    container: Container, body: ViolationIn, actor: Actor, idempotency_key: str | None
) -> Response:
    """``POST /v1/violations``'s answer, both ways (the route and the shortcut)."""
    return await report_queue(container).report(body, actor, idempotency_key)
