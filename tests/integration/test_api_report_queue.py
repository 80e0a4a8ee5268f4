"""``enforcement/api/coalesce.py``: concurrent ``POST /v1/violations`` requests are recorded
together, one drain at a time, and each is answered as it would have been alone (both ways of
the route: the shortcut and FastAPI's), on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import anyio
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError
from test_service_support import fail_deciding

from enforcement.api import coalesce
from enforcement.api.app import create_app
from enforcement.api.schemas import ViolationIn
from enforcement.bootstrap import Container
from enforcement.logs import request_id_var
from enforcement.policy import ViolationReport
from enforcement.roles import Role
from enforcement.service import Actor, Outcome, request_fingerprint
from enforcement.tokens import create_token


class HeldDrain:
    """Holds the first drain's thread until ``expected`` reports have reached the queue, so
    that the rest queue behind it and the next drain takes them all (no timing involved)."""

    started: threading.Event

    def __init__(self, monkeypatch: pytest.MonkeyPatch, expected: int) -> None:
        self.expected = expected
        self.queued = 0
        self.changed = threading.Condition()
        self.batches: list[list[str]] = []
        self.started = threading.Event()
        record, alone, report = (
            coalesce._record,
            coalesce._record_alone,
            coalesce.ReportQueue.report,
        )

        def hold(account_ids: list[str]) -> None:
            with self.changed:
                first = not self.batches
                self.batches.append(account_ids)
                if first:
                    self.started.set()
                    assert self.changed.wait_for(lambda: self.queued >= self.expected, 10)

        def held_record(container: Container, batch: list[Any], *rest: Any) -> Any:
            hold([r.body.account_id for r in batch])
            return record(container, batch, *rest)

        def held_alone(container: Container, body: Any, *args: Any) -> Any:
            hold([body.account_id])
            return alone(container, body, *args)

        async def counted_report(queue: Any, *args: Any) -> Any:
            with self.changed:
                self.queued += 1
                self.changed.notify_all()
            return await report(queue, *args)

        monkeypatch.setattr(coalesce, "_record", held_record)
        monkeypatch.setattr(coalesce, "_record_alone", held_alone)
        monkeypatch.setattr(coalesce.ReportQueue, "report", counted_report)


@pytest.fixture
def client(system: Container) -> Iterator[TestClient]:
    with TestClient(create_app(system)) as test_client:
        yield test_client


@pytest.fixture
def headers(system: Container) -> dict[str, str]:
    return {"Authorization": f"Bearer {create_token(system.engine, Role.REPORTER, 'r')}"}


def send_behind_one(
    client: TestClient, held: HeldDrain, requests: list[tuple[dict[str, Any], dict[str, str]]]
) -> list:
    """The first request alone, and while its drain is held, all the others at once."""

    def post(request: tuple[dict[str, Any], dict[str, str]]) -> Any:
        return client.post("/v1/violations", json=request[0], headers=request[1])

    with ThreadPoolExecutor(len(requests)) as pool:
        futures = [pool.submit(post, requests[0])]
        assert held.started.wait(10)
        futures += [pool.submit(post, request) for request in requests[1:]]
        return [future.result() for future in futures]


@pytest.mark.parametrize("cached_token", [False, True], ids=["route", "shortcut"])
def test_concurrent_reports_share_a_drain_and_each_gets_its_own_answer(
    system: Container,
    client: TestClient,
    headers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    cached_token: bool,
) -> None:
    if cached_token:  # the shortcut answers only for a token already cached
        assert client.get("/v1/accounts/acct_x/standing", headers=headers).status_code == 403
    held = HeldDrain(monkeypatch, expected=12)
    requests = [
        (
            {"account_id": f"acct_{i}", "category": "spam", "source": "test"},
            {**headers, "X-Request-Id": f"req-{i}"},
        )
        for i in range(12)
    ]

    answers = send_behind_one(client, held, requests)

    assert [a.status_code for a in answers] == [201] * 12
    assert held.batches[0] == ["acct_0"]
    assert sorted(held.batches[1]) == sorted(f"acct_{i}" for i in range(1, 12))
    for i, answer in enumerate(answers):
        body = answer.json()
        assert body["account_id"] == f"acct_{i}"
        assert answer.headers["X-Request-Id"] == f"req-{i}"
        assert {e["metadata"]["correlation_id"] for e in body["events"]} == {f"req-{i}"}
        stored = [e.event_id for e in system.store.read_stream(f"acct_{i}", 0, limit=100)]
        assert stored == [e["event_id"] for e in body["events"]]


def test_each_report_of_a_shared_drain_is_answered_as_if_alone(
    system: Container, client: TestClient, headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Keyed reports, a second report of one account, a report the API refuses and one whose
    # key was used with another body, all in one drain.
    first = {"account_id": "acct_k", "category": "spam", "source": "test"}
    original = client.post(
        "/v1/violations", json=first, headers={**headers, "Idempotency-Key": "k1"}
    )
    assert original.status_code == 201
    future = (system.clock() + timedelta(hours=1)).isoformat()
    held = HeldDrain(monkeypatch, expected=7)
    requests = [
        ({"account_id": "acct_0", "category": "spam", "source": "t"}, headers),
        ({"account_id": "acct_a", "category": "spam", "source": "t"}, headers),
        ({"account_id": "acct_a", "category": "spam", "source": "t"}, headers),
        (
            {"account_id": "acct_b", "category": "spam", "source": "t", "occurred_at": future},
            headers,
        ),
        (first, {**headers, "Idempotency-Key": "k1"}),  # the same body again: a replay
        ({**first, "source": "other"}, {**headers, "Idempotency-Key": "k1"}),  # another body
        ({"account_id": "acct_c", "category": "spam", "source": "t"}, headers),
    ]

    answers = send_behind_one(client, held, requests)

    assert [len(batch) for batch in held.batches] == [1, 6]
    statuses = [a.status_code for a in answers]
    assert statuses == [201, 201, 201, 422, 200, 409, 201]
    assert answers[3].json()["error"]["code"] == "validation_failed"
    assert answers[5].json()["error"]["code"] == "idempotency_key_reused"
    a_versions = sorted(
        [e["version"] for e in answers[1].json()["events"]]
        + [e["version"] for e in answers[2].json()["events"]]
    )
    assert a_versions == list(range(1, len(a_versions) + 1))  # one after the other, no gap
    assert system.store.head("acct_a").version == len(a_versions)
    assert system.store.head("acct_b").version == 0  # refused: nothing written
    assert answers[4].json()["events"] == original.json()["events"]


def test_a_keyed_report_of_a_drain_replays_its_report_however_written(
    system: Container, client: TestClient, headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a drain as alone (``test_api_idempotency.py``), a field written out at its default is
    the field left out, for a key recorded now and for one recorded with the fingerprint of
    the body as written (before this release); another value is still another body."""
    first = {"account_id": "acct_k", "category": "spam", "source": "test"}
    spelled = {**first, "detection": "automated", "severity": None}
    original = client.post(
        "/v1/violations", json=first, headers={**headers, "Idempotency-Key": "k1"}
    )
    assert original.status_code == 201
    written = ViolationIn.model_validate({**spelled, "account_id": "acct_o"})
    earlier = request_fingerprint(written.model_dump(mode="json", exclude_unset=True))
    report = ViolationReport(category="spam", occurred_at=system.clock(), source="test")
    old = system.service.report_violation("acct_o", report, Actor("r", "c"), "k-old", earlier)
    held = HeldDrain(monkeypatch, expected=5)
    requests = [
        ({"account_id": "acct_0", "category": "spam"}, headers),
        (spelled, {**headers, "Idempotency-Key": "k1"}),
        ({**first, "account_id": "acct_o"}, {**headers, "Idempotency-Key": "k-old"}),
        ({**spelled, "detection": "user_report"}, {**headers, "Idempotency-Key": "k1"}),
        ({"account_id": "acct_o", "category": "spam"}, {**headers, "Idempotency-Key": "k-old"}),
    ]

    answers = send_behind_one(client, held, requests)

    assert [len(batch) for batch in held.batches] == [1, 4]
    assert [a.status_code for a in answers] == [201, 200, 200, 409, 409]
    assert answers[1].json()["events"] == original.json()["events"]
    assert [e["event_id"] for e in answers[2].json()["events"]] == [e.event_id for e in old.events]
    assert system.store.head("acct_k").version == len(original.json()["events"])


def test_a_shared_transaction_that_fails_fails_each_of_its_reports(
    system: Container, client: TestClient, headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldDrain(monkeypatch, expected=4)

    def down(*_args: Any) -> Any:
        raise OperationalError("INSERT", {}, Exception("database down"))

    monkeypatch.setattr(system.service, "_report_together", down)
    requests = [
        ({"account_id": f"acct_{i}", "category": "spam", "source": "t"}, headers) for i in range(4)
    ]

    answers = send_behind_one(client, held, requests)

    # The first report is drained alone (its own transaction); the other three shared the
    # one that failed.
    assert [len(batch) for batch in held.batches] == [1, 3]
    assert [a.status_code for a in answers] == [201, 503, 503, 503]
    assert {a.json()["error"]["code"] for a in answers[1:]} == {"dependency_unavailable"}
    assert [system.store.head(f"acct_{i}").version > 0 for i in range(4)] == [
        True,
        False,
        False,
        False,
    ]


def test_a_request_that_stops_waiting_does_not_stall_the_queue(
    system: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    coalesce.install_report_queue(system)
    release = threading.Event()
    recorded: list[list[str]] = []

    def alone(container: Container, body: ViolationIn, *_args: Any) -> str:
        recorded.append([body.account_id])
        assert release.wait(10)
        return f"answer {body.account_id}"

    def record(container: Container, batch: list[Any]) -> dict[int, Any]:
        recorded.append([r.body.account_id for r in batch])
        return {id(r): f"answer {r.body.account_id}" for r in batch}

    monkeypatch.setattr(coalesce, "_record_alone", alone)
    monkeypatch.setattr(coalesce, "_record", record)

    def body(account_id: str) -> ViolationIn:
        return ViolationIn.model_validate(
            {"account_id": account_id, "category": "spam", "source": "t"}
        )

    actor = Actor("reporter:r", "req")

    async def scenario() -> list[Any]:
        queue = coalesce.report_queue(system)
        first = asyncio.ensure_future(queue.report(body("acct_1"), actor, None))
        while not recorded:  # acct_1 runs alone, held in its thread
            await asyncio.sleep(0.01)
        gone = asyncio.ensure_future(queue.report(body("acct_gone"), actor, None))
        kept = asyncio.ensure_future(queue.report(body("acct_2"), actor, None))
        await asyncio.sleep(0)
        gone.cancel()
        first.cancel()  # its thread has started: it still records, and still hands on
        await anyio.to_thread.run_sync(release.set)
        answers = [await kept]
        later = await queue.report(body("acct_3"), actor, None)
        return [*answers, later, gone.cancelled(), first.cancelled()]

    assert anyio.run(scenario) == ["answer acct_2", "answer acct_3", True, True]
    # The cancelled reports that no thread had taken never ran.
    assert recorded == [["acct_1"], ["acct_2"], ["acct_3"]]


def test_each_event_loop_has_a_queue_of_its_own(system: Container) -> None:
    # A queue's futures and drain belong to the loop it was made on.
    coalesce.install_report_queue(system)

    async def twice() -> tuple[Any, Any]:
        return coalesce.report_queue(system), coalesce.report_queue(system)

    first, second = anyio.run(twice), anyio.run(twice)
    assert first[0] is first[1] and second[0] is second[1]
    assert first[0] is not second[0]


# ---------------------------------------------------- found in review (helper-42)


def body(account_id: str) -> ViolationIn:
    return ViolationIn.model_validate({"account_id": account_id, "category": "spam", "source": "t"})


def report(system: Container) -> ViolationReport:
    from enforcement.api.violations import report_of
    from events.timefmt import to_utc

    return report_of(body("x"), to_utc(system.clock()))


def test_an_item_that_fails_before_the_shared_append_fails_alone(
    system: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_deciding(monkeypatch, "acct_bad", RuntimeError)
    items = [(a, report(system), None, None) for a in ("acct_bad", "acct_1", "acct_2")]
    actors = [Actor("reporter:r", f"req-{i}") for i in range(3)]

    alone: list[Any] = []
    for (a, rep, k, f), actor in zip(items, actors, strict=True):
        try:
            alone.append(system.service.report_violation(a, rep, actor, k, f))
        except Exception as exc:
            alone.append(exc)
    assert [type(x).__name__ for x in alone] == ["RuntimeError", "Outcome", "Outcome"]

    items2 = [(a + "_b" if a != "acct_bad" else a, r, k, f) for a, r, k, f in items]
    together = system.service.report_each(items2, actors)
    assert [type(x).__name__ for x in together] == ["RuntimeError", "Outcome", "Outcome"]


def test_report_each_without_one_actor_and_context_per_item_refuses_and_records_nothing(
    system: Container,
) -> None:
    items = [(a, report(system), None, None) for a in ("acct_n1", "acct_n2")]
    actors = [Actor("reporter:r", f"req-{i}") for i in range(2)]
    with pytest.raises(ValueError, match="one actor"):
        system.service.report_each(items, actors[:1])
    with pytest.raises(ValueError, match="one actor"):
        system.service.report_each(items, actors, contexts=[contextvars.copy_context()])
    assert [system.store.head(a).version for a in ("acct_n1", "acct_n2")] == [0, 0]


def test_a_cancelled_lone_report_hands_on_only_when_its_thread_ends(
    system: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    coalesce.install_report_queue(system)
    release = threading.Event()
    alone_running = threading.Event()
    overlap: list[bool] = []

    def alone(container: Container, b: ViolationIn, *_: Any) -> str:
        alone_running.set()
        assert release.wait(10)
        time.sleep(0.05)
        alone_running.clear()
        return "alone"

    def record(container: Container, batch: list[Any]) -> dict[int, Any]:
        overlap.append(alone_running.is_set())
        return {id(r): "drained" for r in batch}

    monkeypatch.setattr(coalesce, "_record_alone", alone)
    monkeypatch.setattr(coalesce, "_record", record)
    actor = Actor("reporter:r", "req")

    async def scenario() -> None:
        queue = coalesce.report_queue(system)
        first = asyncio.ensure_future(queue.report(body("acct_a"), actor, None))
        while not alone_running.is_set():
            await asyncio.sleep(0.01)
        second = asyncio.ensure_future(queue.report(body("acct_a"), actor, None))
        await asyncio.sleep(0)
        first.cancel()
        await asyncio.sleep(0.05)  # the drain would start here if the cancel handed on
        release.set()
        await second
        await anyio.sleep(0.2)

    anyio.run(scenario)
    # The drain's thread ran only once the cancelled report's thread had finished.
    assert overlap == [False]


def test_the_requests_of_a_failed_transaction_each_raise_their_own_copy(
    system: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    coalesce.install_report_queue(system)
    release = threading.Event()
    real_alone = coalesce._record_alone

    def held_alone(*args: Any) -> Any:
        assert release.wait(10)
        return real_alone(*args)

    def down(*_a: Any) -> Any:
        raise OperationalError("INSERT", {}, Exception("database down"))

    monkeypatch.setattr(coalesce, "_record_alone", held_alone)
    monkeypatch.setattr(system.service, "_report_together", down)

    async def one(queue: Any, account: str) -> BaseException | None:
        try:
            await queue.report(body(account), Actor("reporter:r", account), None)
        except Exception as exc:
            return exc
        return None

    async def scenario() -> list[Any]:
        queue = coalesce.report_queue(system)
        first = asyncio.ensure_future(one(queue, "acct_0"))
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(one(queue, f"acct_{i}")) for i in (1, 2, 3)]
        await asyncio.sleep(0.05)
        await anyio.to_thread.run_sync(release.set)
        return [await first] + [await r for r in rest]

    errors = anyio.run(scenario)
    assert errors[0] is None
    e1, e2, e3 = errors[1:]
    assert type(e1) is type(e2) is type(e3) is OperationalError

    def frames(exc: BaseException) -> list[str]:
        tb, names = exc.__traceback__, []
        while tb is not None:
            names.append(tb.tb_frame.f_code.co_name)
            tb = tb.tb_next
        return names

    # Each its own copy: one raise no longer extends the others' traceback.
    assert e1 is not e2 and e2 is not e3 and e1 is not e3
    assert [frames(e).count("one") for e in (e1, e2, e3)] == [1, 1, 1]


def test_an_item_recorded_on_its_own_in_a_drain_runs_in_its_requests_context(
    system: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}
    original = system.service.report_violation

    def spy(account_id: str, *args: Any) -> Outcome:
        seen[account_id] = request_id_var.get()
        return original(account_id, *args)

    monkeypatch.setattr(system.service, "report_violation", spy)
    loop = asyncio.new_event_loop()
    batch = []
    for account, rid, key in (
        ("acct_a", "req-a", None),
        ("acct_b", "req-b", None),
        ("acct_c", "req-c", "key-c"),
    ):
        token = request_id_var.set(rid)
        ctx = contextvars.copy_context()
        request_id_var.reset(token)
        batch.append(
            coalesce._Report(
                body(account), Actor("reporter:r", rid), key, ctx, loop.create_future()
            )
        )
    answers = coalesce._record(system, batch)
    loop.close()
    assert [answers[id(r)].status_code for r in batch] == [201, 201, 201]
    assert seen == {"acct_c": "req-c"}


def test_a_slow_report_in_a_drain_holds_up_no_other_answer(
    system: Container, client: TestClient, headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The keyed report is recorded on its own after the shared transaction, and is slow (say,
    # it meets another process's writes): the shared ones are answered without waiting for it.
    slow = threading.Event()
    report_violation = system.service.report_violation

    def slow_for_one(account_id: str, *args: Any) -> Outcome:
        if account_id == "acct_slow":
            assert slow.wait(10)
        return report_violation(account_id, *args)

    monkeypatch.setattr(system.service, "report_violation", slow_for_one)
    held = HeldDrain(monkeypatch, expected=4)

    def post(account_id: str, key: str | None = None) -> Any:
        extra = {"Idempotency-Key": key} if key else {}
        body = {"account_id": account_id, "category": "spam", "source": "t"}
        return client.post("/v1/violations", json=body, headers={**headers, **extra})

    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(post, "acct_0")
        assert held.started.wait(10)
        slow_one = pool.submit(post, "acct_slow", "key-slow")
        shared = [pool.submit(post, a) for a in ("acct_1", "acct_2")]
        assert [f.result(timeout=10).status_code for f in shared] == [201, 201]
        assert not slow_one.done()
        slow.set()
        assert slow_one.result(timeout=10).status_code == 201
        assert first.result(timeout=10).status_code == 201
    assert [len(batch) for batch in held.batches] == [1, 3]


def test_a_drain_of_one_report_answers_it_as_alone(
    system: Container, client: TestClient, headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldDrain(monkeypatch, expected=2)
    requests = [
        ({"account_id": f"acct_{i}", "category": "spam", "source": "t"}, headers) for i in range(2)
    ]

    answers = send_behind_one(client, held, requests)

    assert held.batches == [["acct_0"], ["acct_1"]]
    assert [(a.status_code, a.json()["account_id"]) for a in answers] == [
        (201, "acct_0"),
        (201, "acct_1"),
    ]
