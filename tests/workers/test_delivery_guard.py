"""Two copies of one notice's delivery that run at once send it once (``notices/guard.py``).

Two messages for the same notice and channel can be handled at the same time: a new relay
leader sends again from its checkpoint while the first message's retry runs (the production
crash soak saw a webhook POSTed twice, 0.23 s apart, by two threads of one worker). Each copy
here runs ``NoticeDelivery.attempt`` in a thread of its own against a real webhook receiver that
holds the first POST until the second copy either waits for the guard or has sent too; over
the embedded mode's guard (one process) and over a real Redis (two deliveries, each with its
own client: two worker processes). The guard never costs a notice: one a dead process left
lapses or is waited for a bounded time, and one that cannot be taken is done without.

The last tests run one ``NoticeDelivery`` try alone: what it answers for an id that is no
notice, after a final failure, and when its outcome cannot be recorded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from enforcement.bootstrap import Container, bootstrap
from enforcement.notices.delivery import Contact, NoticeDelivery, hold_seconds
from enforcement.notices.email import EmailSender
from enforcement.notices.guard import DeliveryGuard, LocalGuard, RedisGuard
from enforcement.notices.webhook import WebhookRefused, WebhookSender
from enforcement.redis_client import bounded_client
from enforcement.settings import Settings
from enforcement.workers import runtime
from enforcement.workers.broker import make_broker
from enforcement.workers.runtime import build_actors
from tests.processes import free_port
from tests.redis_server import RedisServer
from tests.workers.system import (
    SECRET,
    Receiver,
    fast_settings,
    outcomes_of,
    report,
    set_contact,
    wait_until,
)


@pytest.fixture
def container(sqlite_db: str, tmp_path: Path) -> Iterator[Container]:
    c = bootstrap(fast_settings(sqlite_db, tmp_path))
    yield c
    c.close()


@pytest.fixture
def clients(redis_url: str) -> Iterator[list[redis.Redis]]:
    """Clients of the test's Redis, closed after it: one per "process"."""
    made: list[redis.Redis] = []

    def client() -> redis.Redis:
        made.append(bounded_client(redis_url, 2.0))
        return made[-1]

    yield [client(), client()]
    for c in made:
        c.close()


def delivery(container: Container, tmp_path: Path, guard: DeliveryGuard | None) -> NoticeDelivery:
    webhook = WebhookSender(SECRET, allow_private=True, timeout=5.0, deadline=10.0)
    return NoticeDelivery(container.service, EmailSender(None, str(tmp_path)), webhook, guard)


def webhook_notice(container: Container, receiver: Receiver, account_id: str = "acct_1") -> str:
    """A notice issued to an account whose only contact is ``receiver``."""
    set_contact(container.engine, account_id, webhook_url=receiver.url)
    [notice] = [e for e in report(container, account_id).events if e.type == "NoticeIssued"]
    return notice.event_id


@dataclass
class Copy:
    """One message's attempt, running in a thread: what it returned or raised."""

    thread: threading.Thread
    outcome: str | Exception | None = None

    @classmethod
    def start(cls, delivery: NoticeDelivery, notice: str) -> Copy:
        copy = cls(threading.Thread(target=lambda: copy.run(delivery, notice), daemon=True))
        copy.thread.start()
        return copy

    def run(self, delivery: NoticeDelivery, notice: str) -> None:
        try:
            self.outcome = delivery.attempt(notice, "webhook", 1, final=False)
        except Exception as exc:
            self.outcome = exc

    def result(self) -> str | Exception | None:
        self.thread.join(10)
        assert not self.thread.is_alive()
        return self.outcome


def two_copies_at_once(
    receiver: Receiver, notice: str, first: NoticeDelivery, second: NoticeDelivery
) -> tuple[str | Exception | None, str | Exception | None]:
    """The first copy sends (its POST held by ``receiver``), the second starts meanwhile; once
    it waits for the guard (or has sent as well) the receiver answers the first."""
    one = Copy.start(first, notice)
    wait_until(lambda: receiver.for_event(notice), "the first copy's POST")
    two = Copy.start(second, notice)
    wait_until(
        lambda: second.guard.waiting or len(receiver.for_event(notice)) > 1,
        "the second copy to wait for the first, or to send as well",
    )
    receiver.release()
    return one.result(), two.result()


def test_two_copies_at_once_in_one_process_send_once(container: Container, tmp_path: Path) -> None:
    # Given a webhook receiver that holds the first POST
    receiver = Receiver(hold_first=True)
    try:
        notice = webhook_notice(container, receiver)
        both = delivery(container, tmp_path, None)  # the embedded mode's guard

        # When two threads attempt the notice on the webhook at once
        outcomes = two_copies_at_once(receiver, notice, both, both)

        # Then it is POSTed once and delivered once; the second found it delivered
        assert outcomes == ("delivered", "already_delivered")
        assert len(receiver.for_event(notice)) == 1
        assert [e.type for e in outcomes_of(container.store, notice)] == ["NoticeDelivered"]
    finally:
        receiver.close()


@pytest.mark.redis
def test_two_copies_at_once_in_two_processes_sharing_redis_send_once(
    container: Container, tmp_path: Path, clients: list[redis.Redis]
) -> None:
    # Given two deliveries, each with its own client of one Redis, as two worker processes
    receiver = Receiver(hold_first=True)
    try:
        notice = webhook_notice(container, receiver)
        first, second = (delivery(container, tmp_path, RedisGuard(c, 10.0)) for c in clients)

        # When each attempts the notice on the webhook at the same time
        outcomes = two_copies_at_once(receiver, notice, first, second)

        # Then it is POSTed once and delivered once, and the guard is gone
        assert outcomes == ("delivered", "already_delivered")
        assert len(receiver.for_event(notice)) == 1
        assert [e.type for e in outcomes_of(container.store, notice)] == ["NoticeDelivered"]
        assert clients[0].keys(RedisGuard.PREFIX + "*") == []
    finally:
        receiver.close()


@pytest.mark.redis
def test_a_copy_that_waited_for_a_failed_one_sends(
    container: Container, tmp_path: Path, clients: list[redis.Redis]
) -> None:
    # Given a receiver that holds the first POST and then answers it 500
    receiver = Receiver(hold_first=True, fail_first=1)
    try:
        notice = webhook_notice(container, receiver)
        first, second = (delivery(container, tmp_path, RedisGuard(c, 10.0)) for c in clients)

        # When two copies run at once
        failed, sent = two_copies_at_once(receiver, notice, first, second)

        # Then the one that waited sends once the first failed, and the first's retry finds
        # the notice delivered and sends nothing
        assert type(failed).__name__ == "DeliveryFailed" and sent == "delivered"
        assert first.attempt(notice, "webhook", 2, final=False) == "already_delivered"
        assert len(receiver.for_event(notice)) == 2
        assert [e.type for e in outcomes_of(container.store, notice)] == [
            "NoticeDeliveryFailed",
            "NoticeDelivered",
        ]
    finally:
        receiver.close()


def test_copies_of_two_notices_at_once_do_not_wait_for_each_other(
    container: Container, tmp_path: Path
) -> None:
    # Given a webhook receiver that holds the first POST, and two accounts' notices to it
    receiver = Receiver(hold_first=True)
    try:
        first, second = (webhook_notice(container, receiver, f"acct_{n}") for n in (1, 2))
        both = delivery(container, tmp_path, None)  # the embedded mode's guard

        # When the first notice's POST is held
        one = Copy.start(both, first)
        wait_until(lambda: receiver.for_event(first), "the first notice's POST")

        # Then the second notice goes out meanwhile: the guard is each notice's own
        assert Copy.start(both, second).result() == "delivered"
        receiver.release()
        assert one.result() == "delivered"
        assert [len(receiver.for_event(n)) for n in (first, second)] == [1, 1]
    finally:
        receiver.close()


def test_a_copy_that_waited_for_a_failed_one_is_numbered_after_it(
    container: Container, tmp_path: Path
) -> None:
    # Given a receiver that holds the first POST and answers the first two 500
    receiver = Receiver(hold_first=True, fail_first=2)
    try:
        notice = webhook_notice(container, receiver)
        actors = build_actors(container)  # the embedded mode's guard
        guard = actors.delivery.guard if actors.delivery else None
        assert guard is not None
        outcomes: list[BaseException | None] = []

        def deliver() -> None:
            try:
                actors.by_name["deliver_notice"].fn(notice, "webhook")
                outcomes.append(None)
            except BaseException as exc:  # dramatiq's Retry
                outcomes.append(exc)

        # When two messages for it run at once, the second waiting for the first's try
        one = threading.Thread(target=deliver, daemon=True)
        one.start()
        wait_until(lambda: receiver.for_event(notice), "the first copy's POST")
        two = threading.Thread(target=deliver, daemon=True)
        two.start()
        wait_until(lambda: guard.waiting, "the second copy to wait for the first")
        receiver.release()
        for thread in (one, two):
            thread.join(10)

        # Then both tries failed and each is recorded under its own number: counted before
        # the wait, both were attempt 1, and the second's failure was taken for the first's
        assert [type(o).__name__ for o in outcomes] == ["Retry", "Retry"]
        assert len(receiver.for_event(notice)) == 2
        failures = outcomes_of(container.store, notice)
        assert [(e.type, e.data["attempt"]) for e in failures] == [
            ("NoticeDeliveryFailed", 1),
            ("NoticeDeliveryFailed", 2),
        ]
    finally:
        receiver.close()


@pytest.mark.redis
@pytest.mark.parametrize("left_for", ["its lapse", "ever"])
def test_a_guard_a_dead_process_left_delays_another_copy_at_most_its_bound(
    container: Container,
    tmp_path: Path,
    clients: list[redis.Redis],
    left_for: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given the guard of a notice left in Redis by a process that died holding it: lapsing
    # 0.5 s later as it was taken, or never (however it came to be, it is waited for 1 s: a
    # wait that ended as the guard lapsed would give up or take it, by a millisecond)
    receiver = Receiver()
    try:
        notice = webhook_notice(container, receiver)
        guard = RedisGuard(clients[0], hold_s=0.5, wait_s=1.0)
        left_at = time.monotonic()
        lapse_ms = 500 if left_for == "its lapse" else None
        clients[1].set(guard.key(f"{notice}:webhook"), "message-1", px=lapse_ms)

        # When another message's copy attempts it
        outcome = delivery(container, tmp_path, guard).attempt(
            notice, "webhook", 1, final=False, message_id="message-2"
        )

        # Then it sent, once the guard lapsed or its wait ended (the slack after the bound is
        # for the send and its record on a loaded machine: never lapsing, it would wait forever)
        waited = time.monotonic() - left_at
        assert outcome == "delivered" and len(receiver.for_event(notice)) == 1
        bound = 0.5 if left_for == "its lapse" else 1.0
        assert bound <= waited < bound + 5.0
        gave_up = [r.getMessage() for r in caplog.records if "still held" in r.getMessage()]
        assert gave_up == (
            []
            if left_for == "its lapse"
            else [
                f"the delivery guard of {notice}:webhook was still held after 1 s; "
                "delivering without it"
            ]
        )
    finally:
        receiver.close()


@pytest.mark.redis
def test_the_message_a_dead_process_held_the_guard_for_takes_it_over_at_once(
    container: Container, tmp_path: Path, clients: list[redis.Redis]
) -> None:
    # Given the guard a process left as it died delivering a message, which the broker then
    # hands to another worker (a SIGKILLed worker's unacknowledged message)
    receiver = Receiver()
    try:
        notice = webhook_notice(container, receiver)
        guard = RedisGuard(clients[0], hold_s=30.0, wait_s=30.0)
        # (a try's token: its message's id, then its own part)
        clients[1].set(guard.key(f"{notice}:webhook"), "message-1/dead-try", px=30_000)

        # When the same message is tried again
        started = time.monotonic()
        outcome = delivery(container, tmp_path, guard).attempt(
            notice, "webhook", 1, final=False, message_id="message-1"
        )

        # Then it sends at once, and frees the guard
        assert outcome == "delivered" and len(receiver.for_event(notice)) == 1
        assert time.monotonic() - started < 5.0
        assert clients[0].keys(RedisGuard.PREFIX + "*") == []
    finally:
        receiver.close()


def test_a_guard_whose_redis_is_unavailable_is_done_without(
    container: Container, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a guard in a Redis that nothing answers for
    caplog.set_level(logging.WARNING, "enforcement.notices")
    receiver = Receiver()
    client = bounded_client(f"redis://127.0.0.1:{free_port()}", 1.0)
    try:
        sends = delivery(container, tmp_path, RedisGuard(client, 10.0))
        notices = [webhook_notice(container, receiver, f"acct_{n}") for n in range(3)]

        # When notices are delivered
        outcomes = [sends.attempt(n, "webhook", 1, final=False) for n in notices]

        # Then each is sent, and the guard's absence is logged once, not for each
        assert outcomes == ["delivered"] * 3
        assert [len(receiver.for_event(n)) for n in notices] == [1, 1, 1]
        said = [r.getMessage() for r in caplog.records if "guard is unavailable" in r.getMessage()]
        assert {r.name for r in caplog.records if "guard" in r.getMessage()} == {
            "enforcement.notices"
        }
        assert len(said) == 1 and said[0].startswith(
            "the delivery guard is unavailable (ConnectionError: "
        )
    finally:
        client.close()
        receiver.close()


@pytest.mark.redis
@pytest.mark.parametrize("refusing", ["memory_full", "read_only"])
def test_a_guard_whose_redis_refuses_writes_is_done_without(
    container: Container,
    tmp_path: Path,
    redis_server: RedisServer,
    redis_url: str,
    refusing: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a guard in a Redis that answers but refuses writes (full, or a replica after a
    # failover): SET is refused, GET still answered
    caplog.set_level(logging.WARNING, "enforcement.notices")
    receiver = Receiver()
    client = bounded_client(redis_url, 2.0)
    try:
        sends = delivery(container, tmp_path, RedisGuard(client, 10.0))
        notice = webhook_notice(container, receiver)

        # When the notice is delivered meanwhile
        with getattr(redis_server, refusing)():
            outcome = sends.attempt(notice, "webhook", 1, final=False)

        # Then it is sent all the same, and the guard's absence logged
        assert outcome == "delivered"
        assert len(receiver.for_event(notice)) == 1
        said = [r.getMessage() for r in caplog.records if "guard is unavailable" in r.getMessage()]
        assert len(said) == 1
    finally:
        client.close()
        receiver.close()


# Where a guard is kept: ``guard_kept`` makes it.
KEPT = pytest.mark.parametrize(
    "kept", ["in one process", pytest.param("in Redis", marks=pytest.mark.redis)]
)


def guard_kept(
    kept: str, request: pytest.FixtureRequest, hold_s: float, wait_s: float
) -> DeliveryGuard:
    """The embedded mode's guard ("in one process") or one in the test's Redis ("in Redis")."""
    if kept == "in Redis":
        return RedisGuard(request.getfixturevalue("clients")[0], hold_s=hold_s, wait_s=wait_s)
    return LocalGuard(hold_s=hold_s, wait_s=wait_s)


@KEPT
def test_a_guard_held_past_its_lapse_is_not_freed_under_its_next_holder(
    kept: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a delivery that holds its guard past the guard's lapse
    guard = guard_kept(kept, request, hold_s=0.5, wait_s=5.0)
    first = guard.held("n:webhook", "message-1")
    first.__enter__()

    # When another copy takes it once it lapsed, and the first ends while the second holds it
    started = time.monotonic()
    with guard.held("n:webhook", "message-2"):
        assert 0.4 <= time.monotonic() - started < 5.0
        first.__exit__(None, None, None)

    # Then the first's late release logs that its guard lapsed and leaves the second's alone:
    # the second frees its own, in time (no second such line)
    assert [r.getMessage() for r in caplog.records if "lapsed" in r.getMessage()] == [
        "the delivery guard of n:webhook lapsed (0.5 s) before its delivery ended: another "
        "copy may have sent it too"
    ]


@KEPT
def test_a_frozen_try_does_not_free_the_guard_its_message_s_next_try_took_over(
    kept: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a try that holds the guard and freezes (a paused VM, SIGSTOP) longer than the
    # broker's heartbeat, so that its message is handed to another worker, whose try takes the
    # guard over at once (it is held under the message's id)
    guard = guard_kept(kept, request, hold_s=30.0, wait_s=0.5)
    frozen = guard.held("n:webhook", "message-1")
    frozen.__enter__()
    with guard.held("n:webhook", "message-1"):
        # When the frozen try resumes and ends while the next try holds the guard
        frozen.__exit__(None, None, None)

        # Then the next try's guard stands: another message's copy still waits for it
        started = time.monotonic()
        with guard.held("n:webhook", "message-2"):
            assert time.monotonic() - started >= 0.4
    assert [r.getMessage() for r in caplog.records if "lapsed" in r.getMessage()] == [
        "the delivery guard of n:webhook lapsed (30 s) before its delivery ended: another "
        "copy may have sent it too"
    ]


@pytest.mark.redis
def test_workers_guard_deliveries_in_the_brokers_redis(
    sqlite_db: str, tmp_path: Path, redis_url: str
) -> None:
    """``enforcement worker``'s consumers guard in the broker's Redis, on its client; the
    embedded mode in its process. A try's time limit leaves room for the wait and the hold."""
    for url in (redis_url, None):
        settings = fast_settings(sqlite_db, tmp_path, redis_url=url)
        container = bootstrap(settings)
        broker = make_broker(settings)
        try:
            actors = build_actors(container, broker)
            guard = actors.delivery.guard
            if url is None:
                assert isinstance(guard, LocalGuard)
            else:
                assert isinstance(guard, RedisGuard) and guard.client is broker.client
            # the senders' 30 s deadline, then the database's 30 s timeout to record
            assert (guard.hold_s, guard.wait_s) == (60.0, 60.0)
            assert actors.by_name["deliver_notice"].options["time_limit"] == 120_000
        finally:
            broker.close()
            container.close()


@KEPT
def test_a_copy_that_waits_looks_again_at_a_bounded_pace_and_is_counted_while_it_waits(
    kept: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a guard another copy holds, and a copy that may wait 0.3 s for it
    guard = guard_kept(kept, request, hold_s=30.0, wait_s=0.3)
    looks: list[float] = []
    take = guard._take

    def counted_take(name: str, token: str, message: str | None) -> bool:
        looks.append(time.monotonic())
        return take(name, token, message)

    assert guard.waiting == 0
    with guard.held("n:webhook", "message-1"):
        guard._take = counted_take  # type: ignore[method-assign]
        waiter = threading.Thread(target=lambda: guard.held("n:webhook", "m-2").__enter__())
        waiter.start()
        wait_until(lambda: guard.waiting == 1, "the copy to wait")
        waiter.join(10)

    # Then it looked again from 10 ms, doubling (a handful of looks, not a busy loop), and is
    # no longer counted as waiting once it went on without the guard
    assert 2 <= len(looks) <= 8
    assert guard.waiting == 0
    # and the holder, which gave its guard back in time, logged no lapse
    assert [r for r in caplog.records if "lapsed" in r.getMessage()] == []


@KEPT
def test_a_guard_is_taken_over_by_a_try_of_its_own_message_only(
    kept: str, request: pytest.FixtureRequest
) -> None:
    # Given a guard a try of message "m-10" holds
    guard = guard_kept(kept, request, hold_s=30.0, wait_s=0.2)
    with guard.held("n:webhook", "m-10"):
        # When a copy of message "m-1" (whose id begins the holder's) comes
        started = time.monotonic()
        with guard.held("n:webhook", "m-1"):
            # Then it is no try of the holder's message: it waited its bound for the guard
            assert time.monotonic() - started >= 0.2


def test_a_guard_that_cannot_be_taken_is_not_waited_for() -> None:
    # Given a guard whose store refuses every take (its Redis unreachable)
    takes: list[str] = []

    class Unreachable(LocalGuard):
        unavailable = (ConnectionError,)

        def _take(self, name: str, token: str, message: str | None) -> bool:
            takes.append(token)
            raise ConnectionError("gone")

    # When a delivery asks for it, then it goes on at once, without it: one try, no wait
    with Unreachable(hold_s=30.0, wait_s=30.0).held("n:webhook", "message-1"):
        assert len(takes) == 1


def test_a_guard_that_cannot_be_given_back_is_left_to_lapse(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a guard whose store fails as it is given back (its Redis went away meanwhile)
    class Unreachable(LocalGuard):
        unavailable = (ConnectionError,)

        def _release(self, name: str, token: str) -> bool:
            raise ConnectionError("gone")

    caplog.set_level(logging.WARNING, "enforcement.notices")

    # When a delivery held it
    with Unreachable(hold_s=30.0).held("n:webhook", "message-1"):
        pass

    # Then the delivery ends as it would have, and the guard's absence is logged
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and said[0].startswith(
        "the delivery guard is unavailable (ConnectionError: gone)"
    )


# ------------------------------------------------------------------ one attempt's edges


def test_an_id_that_is_no_notice_is_answered_unknown_and_nothing_is_sent(
    container: Container, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a notice's account with a webhook, and ids that name no NoticeIssued event
    caplog.set_level(logging.WARNING, "enforcement.notices")
    receiver = Receiver()
    try:
        notice = webhook_notice(container, receiver)
        [violation] = container.store.read_stream("acct_1")[:1]
        sends = delivery(container, tmp_path, None)

        # When they are attempted
        outcomes = [
            sends.attempt(e, "webhook", 1, final=False) for e in ("nope", violation.event_id)
        ]

        # Then each is an unknown notice, logged, and nothing was sent or recorded
        assert outcomes == ["unknown_notice", "unknown_notice"]
        assert receiver.requests == []
        assert outcomes_of(container.store, notice) == []
        said = [
            (r.name, r.getMessage()) for r in caplog.records if "no NoticeIssued" in r.getMessage()
        ]
        assert said == [
            ("enforcement.notices", "no NoticeIssued event nope"),
            ("enforcement.notices", f"no NoticeIssued event {violation.event_id}"),
        ]
    finally:
        receiver.close()


def test_an_outcome_is_recorded_by_the_notices_worker_and_one_that_cannot_be_fails_the_try(
    container: Container, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given two notices to a webhook
    receiver = Receiver()
    try:
        first, second = (webhook_notice(container, receiver, f"acct_{n}") for n in (1, 2))
        sends = delivery(container, tmp_path, None)

        # When the first is delivered
        assert sends.attempt(first, "webhook", 1, final=False) == "delivered"

        # Then its NoticeDelivered is the notices worker's
        [delivered] = outcomes_of(container.store, first)
        assert {k: delivered.metadata[k] for k in ("actor", "correlation_id", "source")} == {
            "actor": "worker:notices",
            "correlation_id": "notice-delivery",
            "source": "worker",
        }

        # and when the second's outcome cannot be recorded (the database went away), the try
        # fails (its message is tried again) rather than answering "delivered"
        def refused(*args: object, **kwargs: object) -> None:
            raise ConnectionError("the database went away")

        monkeypatch.setattr(container.service, "record_fact", refused)
        with pytest.raises(ConnectionError, match="went away"):
            sends.attempt(second, "webhook", 1, final=False)
        assert outcomes_of(container.store, second) == []
    finally:
        receiver.close()


def test_a_long_error_is_recorded_cut_to_its_first_500_characters(
    container: Container, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a notice to a webhook whose sender refuses it with a long message
    receiver = Receiver()
    try:
        notice = webhook_notice(container, receiver)
        sends = delivery(container, tmp_path, None)
        said = "".join(f"{n:04d}" for n in range(200))  # 800 characters, each place distinct

        def refusing(*args: object, **kwargs: object) -> None:
            raise WebhookRefused(said)

        monkeypatch.setattr(sends.webhook, "send", refusing)

        # When it is attempted
        assert sends.attempt(notice, "webhook", 1, final=False) == "refused"

        # Then its final failure holds the error's first 500 characters
        [failed] = outcomes_of(container.store, notice)
        assert (failed.data["final"], failed.data["error"]) == (True, said[:500])
        assert receiver.requests == []
    finally:
        receiver.close()


def test_a_notice_that_failed_for_good_by_mail_is_not_recorded_undeliverable_later(
    container: Container, tmp_path: Path
) -> None:
    # Given a notice whose e-mail failed for good (a mail server nothing answers for)
    set_contact(container.engine, "acct_1", email="abuse-desk@customer.test")
    [notice] = [e for e in report(container, "acct_1").events if e.type == "NoticeIssued"]
    webhook = WebhookSender(SECRET, allow_private=True, timeout=5.0, deadline=10.0)
    mail = EmailSender(f"smtp://127.0.0.1:{free_port()}", str(tmp_path), timeout=2.0)
    sends = NoticeDelivery(container.service, mail, webhook, None)
    assert sends.deliver(notice.event_id, "email", 0, max_retries=0) == "failed"

    # When its contact data is removed and another message for its e-mail comes
    set_contact(container.engine, "acct_1")
    outcome = sends.deliver(notice.event_id, "email", 0, max_retries=0)

    # Then nothing more is recorded: the last failure was final (its error named by its type)
    assert outcome == "failed_for_good"
    [failed] = outcomes_of(container.store, notice.event_id)
    assert (failed.data["channel"], failed.data["final"]) == ("email", True)
    assert failed.data["error"].startswith("ConnectionRefusedError: [Errno")


def test_a_webhook_that_failed_for_good_is_not_tried_again(
    container: Container, tmp_path: Path
) -> None:
    # Given a notice whose webhook's last try failed (a 500), with no retry left
    receiver = Receiver(fail_first=1)
    try:
        notice = webhook_notice(container, receiver)
        sends = delivery(container, tmp_path, None)
        assert sends.deliver(notice, "webhook", 0, max_retries=0) == "failed"

        # When another message for it comes (another relay's)
        outcome = sends.deliver(notice, "webhook", 0, max_retries=0)

        # Then it sends nothing and records nothing more
        assert outcome == "failed_for_good"
        assert len(receiver.for_event(notice)) == 1
        assert [e.data["final"] for e in outcomes_of(container.store, notice)] == [True]
    finally:
        receiver.close()


def test_a_delivery_holds_its_guard_for_the_longer_senders_deadline_and_the_record(
    container: Container, tmp_path: Path
) -> None:
    # Given senders with different deadlines
    mail = EmailSender(None, str(tmp_path), deadline=5.0)
    webhook = WebhookSender(SECRET, allow_private=True, timeout=5.0, deadline=20.0)

    # Then a delivery holds its guard for the longer, then the time to record its outcome: the
    # database's default timeout when the guard is the delivery's own
    assert hold_seconds(mail, webhook, 3.0) == 23.0
    own = NoticeDelivery(container.service, mail, webhook).guard
    assert isinstance(own, LocalGuard)
    assert own.hold_s == 20.0 + Settings.database_timeout_ms / 1000 == 50.0


def test_a_notice_goes_out_on_each_channel_with_a_target_and_by_mail_without_one(
    container: Container, tmp_path: Path
) -> None:
    # The channels a notice goes out on (what the lost-retry scan sends again)
    assert Contact("a@customer.test", "https://h.test/").channels == ("email", "webhook")
    assert Contact(None, "https://h.test/").channels == ("webhook",)
    assert Contact(None, None).channels == ("email",)

    # and without any target, its e-mail is recorded undeliverable, its webhook has no target
    set_contact(container.engine, "acct_1")
    [notice] = [e for e in report(container, "acct_1").events if e.type == "NoticeIssued"]
    sends = delivery(container, tmp_path, None)
    assert sends.attempt(notice.event_id, "webhook", 1, final=False) == "no_target"
    assert sends.attempt(notice.event_id, "email", 1, final=False) == "undeliverable"
    [undeliverable] = outcomes_of(container.store, notice.event_id)
    assert (undeliverable.data["channel"], undeliverable.data["final"]) == ("none", True)

    # once: a message for it again records nothing more, and another such notice its own
    assert sends.attempt(notice.event_id, "email", 1, final=False) == "undeliverable"
    assert outcomes_of(container.store, notice.event_id) == [undeliverable]
    [other] = [e for e in report(container, "acct_2").events if e.type == "NoticeIssued"]
    assert sends.attempt(other.event_id, "email", 1, final=False) == "undeliverable"
    assert [e.data["channel"] for e in outcomes_of(container.store, other.event_id)] == ["none"]


def test_a_notices_contact_is_read_on_either_database(database_url: str, tmp_path: Path) -> None:
    # Given an account with both targets, one with a webhook only, and one never set
    system = bootstrap(fast_settings(database_url, tmp_path))
    try:
        set_contact(system.engine, "acct_1", email="a@customer.test", webhook_url="https://h.test/")
        set_contact(system.engine, "acct_2", webhook_url="https://h.test/2")
        sends = delivery(system, tmp_path, None)

        # Then a delivery reads each account's own targets, and none for the third
        assert sends.contact("acct_1") == Contact("a@customer.test", "https://h.test/")
        assert sends.contact("acct_2") == Contact(None, "https://h.test/2")
        assert sends.contact("acct_3") == Contact(None, None)
    finally:
        system.close()


WEBHOOKS_REFUSED = (
    "ENFORCEMENT_WEBHOOK_SECRET is unset: notices to a contact's webhook_url are refused, "
    "not sent (e-mail is not affected)"
)


def said_at_start(
    system: Container,
    consumers: bool,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> list[str]:
    """What ``start_runtime`` warns of the webhook secret (its background threads not run)."""
    monkeypatch.setattr(runtime, "start_background", lambda *a, **k: lambda: None)
    with caplog.at_level(logging.WARNING, logger="enforcement.workers"):
        actors, stop = runtime.start_runtime(system, consumers=consumers, relay=not consumers)
    stop()
    actors.broker.close()
    return [r.getMessage() for r in caplog.records if "WEBHOOK_SECRET" in r.getMessage()]


def test_a_process_that_delivers_without_a_webhook_secret_says_webhooks_are_not_sent(
    sqlite_db: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    unsigned = bootstrap(fast_settings(sqlite_db, tmp_path, webhook_secret=None))
    try:
        assert said_at_start(unsigned, True, monkeypatch, caplog) == [WEBHOOKS_REFUSED]
        caplog.clear()
        # ``serve`` on Redis, the worker's relay process: they deliver nothing, say nothing
        assert said_at_start(unsigned, False, monkeypatch, caplog) == []
    finally:
        unsigned.close()


def test_workers_started_with_a_webhook_secret_say_nothing_of_it(
    container: Container, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert said_at_start(container, True, monkeypatch, caplog) == []
