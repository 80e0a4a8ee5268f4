"""Notices leave through the relay and the real workers: SMTP and signed webhooks, retried with
exponential backoff, refused for private targets, recorded as undeliverable without contact data,
and never sent when an operator asked for none.

Each test runs the relay, the sweep and Dramatiq worker threads in this process, over the
embedded broker and over a real Redis (``broker_url``), on a migrated SQLite file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import current_millis
from dramatiq.middleware import CurrentMessage, TimeLimitExceeded

from enforcement import operator_decisions as ops
from enforcement.bootstrap import bootstrap
from enforcement.notices.delivery import DeliveryFailed, NoticeDelivery
from enforcement.notices.email import EmailSender, build_message, file_bytes, sweep_parts
from enforcement.notices.guard import LocalGuard
from enforcement.notices.templates import render
from enforcement.notices.webhook import WebhookSender, account_key
from enforcement.service import Actor
from enforcement.settings import Settings
from enforcement.workers import runtime
from enforcement.workers.actors import QUEUE, Actors, register_actors
from enforcement.workers.broker import make_broker
from enforcement.workers.recovery import UNTRIED_CHECKPOINT, LostRetryScan
from enforcement.workers.relay import CHECKPOINT, Message
from enforcement.workers.runtime import build_actors, retry_lost_after, start_runtime
from events import RecordedEvent
from tests.unit.test_templates import warning
from tests.webhook_receiver import receiver as example_receiver
from tests.workers.system import (
    OPERATOR,
    SECRET,
    Receiver,
    Recorder,
    SmtpSink,
    System,
    delivered_once_each,
    fast_settings,
    outcomes_of,
    report,
    set_contact,
    wait_until,
)
from tests.workers.test_webhook_sender import Drip

CHANNELS = ("email", "webhook")


@pytest.fixture
def system(
    sqlite_db: str, broker_url: str | None, smtp: SmtpSink, tmp_path: Path
) -> Iterator[System]:
    s = System(fast_settings(sqlite_db, tmp_path, redis_url=broker_url, smtp_url=smtp.url))
    yield s
    s.close()


def notice_in(recorded: Sequence[RecordedEvent]) -> str:
    [notice] = [e for e in recorded if e.type == "NoticeIssued"]
    return notice.event_id


def summary(system: System, notice_event_id: str) -> list[tuple[str, str, int, bool | None]]:
    return [
        (e.type, e.data["channel"], e.data["attempt"], e.data.get("final"))
        for e in system.outcomes(notice_event_id)
    ]


def test_a_notice_goes_out_by_smtp_and_by_a_signed_webhook(
    system: System, smtp: SmtpSink, receiver: Receiver
) -> None:
    # Given an account with an email address and a webhook
    system.contact("acct_42", email="abuse-desk@customer.test", webhook_url=receiver.url)

    # When a first-time minor violation is reported
    outcome = system.report("acct_42", "spam", description="bulk mail sent through key_7")
    [notice] = [e for e in outcome.events if e.type == "NoticeIssued"]
    [remediation] = [e for e in outcome.events if e.type == "RemediationRequested"]

    # Then each channel delivers it exactly once, as recorded events
    wait_until(
        lambda: delivered_once_each(system.store, [notice.event_id], CHANNELS),
        "NoticeDelivered on both channels",
    )
    assert sorted(summary(system, notice.event_id)) == [
        ("NoticeDelivered", "email", 1, None),
        ("NoticeDelivered", "webhook", 1, None),
    ]
    for delivered in system.outcomes(notice.event_id):
        assert delivered.metadata["causation_id"] == notice.event_id

    # The webhook carries the NoticeIssued id and an HMAC-SHA256 of its raw body
    [request] = receiver.for_event(notice.event_id)
    assert request.headers["x-enforcement-event-id"] == notice.event_id
    expected = "sha256=" + hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request.headers["x-enforcement-signature"], expected)
    forged = "sha256=" + hmac.new(b"another secret", request.body, hashlib.sha256).hexdigest()
    assert not hmac.compare_digest(request.headers["x-enforcement-signature"], forged)
    assert request.headers["content-type"] == "application/json"
    body = request.json()
    assert body["notice_event_id"] == notice.event_id
    assert body["notice_id"] == notice.data["notice_id"]
    assert body["account_id"] == "acct_42"
    assert body["kind"] == "warning"
    assert body["decision_event_id"] == remediation.event_id
    assert body["deadline"] == remediation.data["due_at"]
    assert body["statement_of_reasons"] == notice.data["statement_of_reasons"]

    # The email names the account, the decision, the AUP section, the statement of reasons,
    # the deadline and how to appeal
    [(rcpts, message)] = [(r, m) for r, m in smtp.messages if m["X-Enforcement-Event-Id"]]
    assert rcpts == ["abuse-desk@customer.test"]
    assert message["To"] == "abuse-desk@customer.test"
    assert message["X-Enforcement-Event-Id"] == notice.event_id
    assert message["Message-ID"] == f"<{notice.event_id}@taas.invalid>"
    assert (message["In-Reply-To"], message["References"]) == (None, None)
    assert "acct_42" in message["Subject"]
    text = message.get_content()
    sor = notice.data["statement_of_reasons"]
    assert "Account: acct_42" in text
    assert f"Decision: {sor['decision']}" in text
    assert "AUP §2" in text
    assert "Statement of reasons" in text
    violation_id = outcome.events[0].data["violation_id"]
    assert f"{violation_id}: bulk mail sent through key_7" in text
    assert f"Deadline: {remediation.data['due_at']}" in text
    assert "How to appeal" in text
    assert sor["redress"] in text


def test_each_accounts_webhook_is_signed_with_its_own_key(
    system: System, receiver: Receiver
) -> None:
    # Given two accounts whose webhooks go to receivers (one endpoint here, told apart by path)
    system.contact("acct_own_a", webhook_url=receiver.url + "/a")
    system.contact("acct_own_b", webhook_url=receiver.url + "/b")

    # When each gets a notice
    notices = {
        account: notice_in(system.report(account, "spam").events)
        for account in ("acct_own_a", "acct_own_b")
    }
    wait_until(
        lambda: delivered_once_each(system.store, notices.values(), ["webhook"]),
        "both webhooks delivered",
    )
    [to_a] = receiver.for_event(notices["acct_own_a"])
    [to_b] = receiver.for_event(notices["acct_own_b"])
    assert (to_a.path, to_b.path) == ("/hooks/enforcement/a", "/hooks/enforcement/b")

    # Then acct_own_a's receiver, with acct_own_a's key alone, takes its own notice
    key_a = account_key(SECRET, "acct_own_a")
    header = "x-enforcement-account-signature"
    assert example_receiver.verified(to_a.body, to_a.headers[header], key_a)
    # and not acct_own_b's, which is signed with acct_own_b's key
    assert not example_receiver.verified(to_b.body, to_b.headers[header], key_a)
    assert example_receiver.verified(
        to_b.body, to_b.headers[header], account_key(SECRET, "acct_own_b")
    )
    # while the contract's signature on both is the one secret's (what any holder can forge)
    for request in (to_a, to_b):
        digest = hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
        assert request.headers["x-enforcement-signature"] == f"sha256={digest}"


def test_failed_attempts_are_retried_with_exponential_backoff(
    sqlite_db: str, broker_url: str | None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    # Given a webhook that fails its first two requests, and 3 retries at 100 ms doubling
    receiver = Receiver(fail_first=2, fail_status=503)
    system = System(fast_settings(sqlite_db, tmp_path, redis_url=broker_url, notice_retries=3))
    try:
        system.contact("acct_retry", webhook_url=receiver.url)

        # When a notice is issued
        outcome = system.report("acct_retry", "spam")
        [notice] = [e for e in outcome.events if e.type == "NoticeIssued"]

        # Then attempts 1 and 2 are recorded as failures, attempt 3 as the delivery
        wait_until(
            lambda: delivered_once_each(system.store, [notice.event_id], ["webhook"]),
            "NoticeDelivered after two failures",
        )
        assert summary(system, notice.event_id) == [
            ("NoticeDeliveryFailed", "webhook", 1, False),
            ("NoticeDeliveryFailed", "webhook", 2, False),
            ("NoticeDelivered", "webhook", 3, None),
        ]
        failures = [e for e in system.outcomes(notice.event_id) if e.type != "NoticeDelivered"]
        assert all("HTTP 503" in e.data["error"] for e in failures)

        # and the waits between attempts at least double: >= 100 ms, then >= 200 ms
        times = [r.at for r in receiver.for_event(notice.event_id)]
        assert len(times) == 3
        assert times[1] - times[0] >= 0.1
        assert times[2] - times[1] >= 0.2
    finally:
        system.close()
        receiver.close()

    # and each failed try, expected, is one warning line naming the notice and its error, not
    # an unhandled exception: Dramatiq logs those at ERROR with a traceback, which buried the
    # log of a receiver down for an hour (its Retry backs off the same way without that)
    tried_again = [r for r in caplog.records if "it is tried again" in r.getMessage()]
    assert [(r.name, r.levelno) for r in tried_again] == [
        ("enforcement.workers", logging.WARNING)
    ] * 2
    assert all(notice.event_id in r.getMessage() for r in tried_again)
    assert all("HTTP 503" in r.getMessage() for r in tried_again)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []


@pytest.mark.parametrize("to", ["abuse-desk@customer.test", "josé@exämple.de"])
def test_an_email_goes_over_smtp_to_any_address(smtp: SmtpSink, to: str) -> None:
    """An ASCII address and one that is not (SMTPUTF8, which ``smtplib`` does only for a
    message on the default policy) both go out, with the text intact: a line that starts with
    "From " is not quoted as ">From " (``smtplib.send_message`` would, for an ASCII one)."""
    notice = warning()
    text = "Description:\nFrom the gateway logs: bulk mail — naïve filter\n"
    rendered = dataclasses.replace(render(notice), text=text)
    EmailSender(smtp.url, "/nonexistent").send(build_message(notice, rendered, to), "evt")

    [(rcpts, message)] = smtp.messages
    assert rcpts == [to]
    assert message["To"] == to
    assert message.get_content().replace("\r\n", "\n") == text


@pytest.mark.parametrize("to", ["abuse-desk@customer.test", "josé@exämple.de"])
def test_an_email_file_holds_any_address_as_given(tmp_path: Path, to: str) -> None:
    """Without SMTP a notice is an ``.eml`` file. Encoded words (RFC 2047) are not allowed
    inside an address, so a file to an address that is not ASCII has its headers in UTF-8
    (RFC 6532), as the message goes over SMTPUTF8."""
    import email
    import email.policy

    notice = warning()
    rendered = dataclasses.replace(render(notice), subject="Avis — été")
    EmailSender(None, str(tmp_path)).send(build_message(notice, rendered, to), "evt")

    raw = (tmp_path / "evt.eml").read_bytes()
    assert f"To: {to}\n".encode() in raw
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["To"] == to
    assert parsed["Subject"] == "Avis — été"
    assert parsed.get_content() == rendered.text


def test_email_files_and_their_directory_are_the_services_alone(tmp_path: Path) -> None:
    """A notice names its account's owner and what they did: the ``.eml`` file is 0600 and a
    mail directory the service makes is 0700, whatever the umask. The part written first has
    a name of its own: a link planted where a fixed name would be is not followed."""
    notice = warning()
    message = build_message(notice, render(notice), "abuse-desk@customer.test")
    mail_dir = tmp_path / "notices"
    elsewhere = tmp_path / "elsewhere"
    previous = os.umask(0o022)
    try:
        EmailSender(None, str(mail_dir)).send(message, "evt_1")
        (mail_dir / "evt_2.eml.part").symlink_to(elsewhere)
        EmailSender(None, str(mail_dir)).send(message, "evt_2")
    finally:
        os.umask(previous)

    assert stat.S_IMODE(mail_dir.stat().st_mode) == 0o700
    assert sorted(p.name for p in mail_dir.iterdir()) == [
        "evt_1.eml",
        "evt_2.eml",
        "evt_2.eml.part",
    ]
    assert not elsewhere.exists()
    for name in ("evt_1.eml", "evt_2.eml"):
        assert stat.S_IMODE((mail_dir / name).stat().st_mode) == 0o600
        assert (mail_dir / name).read_bytes() == file_bytes(message)


def test_part_files_a_crash_left_are_swept(tmp_path: Path) -> None:
    """A crash mid-write leaves a part file, whichever notice's: the sender's first file (and
    one every 10 minutes after) removes those older than 10 minutes, not younger ones (another
    delivery's may be under way)."""
    notice = warning()
    message = build_message(notice, render(notice), "abuse-desk@customer.test")
    crashed = tmp_path / ".evt_9.eml.abc.part"
    writing = tmp_path / ".evt_1.eml.xyz.part"
    crashed.write_bytes(b"half a message")
    os.utime(crashed, (time.time() - 3600, time.time() - 3600))
    writing.write_bytes(b"another delivery of it, under way")

    sender = EmailSender(None, str(tmp_path))
    sender.send(message, "evt_1")
    os.utime(writing, (time.time() - 3600, time.time() - 3600))
    sender.send(message, "evt_2")  # within 10 minutes of the last sweep: none

    assert sorted(p.name for p in tmp_path.iterdir()) == [writing.name, "evt_1.eml", "evt_2.eml"]


def test_the_sweep_removes_old_part_files_only(tmp_path: Path) -> None:
    """A sweep takes a hidden ``.part`` file older than 10 minutes, never a notice's ``.eml``
    file nor anything else however old."""
    names = [".evt_9.eml.abc.part", "evt_1.eml", "evt_2.eml.part", ".evt_3.eml"]
    for name in names:
        (tmp_path / name).write_bytes(b"old")
        os.utime(tmp_path / name, (time.time() - 3600, time.time() - 3600))
    sweep_parts(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[1:])


def test_part_files_a_crash_left_are_swept_when_the_workers_start(
    sqlite_db: str, tmp_path: Path
) -> None:
    """A directory that gets no more notices is swept too: the workers sweep it as they start
    (the embedded ones of ``serve`` here; ``enforcement worker``'s consumers alike), the stale
    part files only."""
    settings = fast_settings(sqlite_db, tmp_path)
    mail_dir = Path(settings.mail_dir)
    mail_dir.mkdir()
    crashed = mail_dir / ".evt_9.eml.abc.part"
    writing = mail_dir / ".evt_1.eml.xyz.part"  # another process's, under way
    for part in (crashed, writing):
        part.write_bytes(b"half a message")
    os.utime(crashed, (time.time() - 3600, time.time() - 3600))
    # A process that writes no notice files leaves them: the relay's alone (``serve`` on Redis,
    # the worker's own), and consumers that send by SMTP.
    for smtp_url, consumers in ((None, False), ("smtp://127.0.0.1:1", True)):
        container = bootstrap(dataclasses.replace(settings, smtp_url=smtp_url))
        try:
            _, stop = start_runtime(container, consumers=consumers, relay=not consumers)
            stop()
        finally:
            container.close()
        assert sorted(p.name for p in mail_dir.iterdir()) == sorted([crashed.name, writing.name])

    container = bootstrap(settings)
    try:
        _, stop = start_runtime(container, consumers=True, relay=True)
        stop()
    finally:
        container.close()

    assert sorted(p.name for p in mail_dir.iterdir()) == [writing.name]


def test_an_email_file_that_cannot_be_written_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ``.eml`` and no part of one when the write fails (the disk full, here at the sync):
    the attempt fails, to be retried, and the directory holds no debris."""
    notice = warning()
    message = build_message(notice, render(notice), "abuse-desk@customer.test")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        EmailSender(None, str(tmp_path)).send(message, "evt_1")
    assert list(tmp_path.iterdir()) == []


def test_a_non_ascii_address_on_a_server_without_smtputf8_fails_for_good(
    sqlite_db: str, tmp_path: Path
) -> None:
    """The server cannot take such an address at all: the first attempt is final instead of
    every retry failing the same way."""
    sink = SmtpSink(smtputf8=False)
    system = bootstrap(fast_settings(sqlite_db, tmp_path, smtp_url=sink.url, notice_retries=3))
    try:
        set_contact(system.engine, "acct_utf8", email="josé@exämple.de")
        [notice] = [e for e in report(system, "acct_utf8").events if e.type == "NoticeIssued"]
        deliver = build_actors(system).by_name["deliver_notice"].fn
        deliver(notice.event_id, "email")  # no DeliveryFailed: nothing to retry

        [failure] = [
            e for e in system.store.read_stream("acct_utf8") if e.type == "NoticeDeliveryFailed"
        ]
        assert (failure.data["attempt"], failure.data["final"]) == (1, True)
        assert "SMTPNotSupportedError" in failure.data["error"]
        assert sink.messages == []
    finally:
        system.close()
        sink.close()


@pytest.mark.parametrize("to", ["abuse-desk@customer.test", "josé@exämple.de"])
def test_notices_come_from_the_address_the_deployment_sets(
    sqlite_db: str, tmp_path: Path, to: str
) -> None:
    """A notice's "How to appeal" says to reply to it: replies go to ENFORCEMENT_MAIL_FROM,
    the message's From and its envelope sender, over plain SMTP and SMTPUTF8 alike."""
    sink = SmtpSink()
    settings = fast_settings(sqlite_db, tmp_path, smtp_url=sink.url, mail_from="appeals@taas.test")
    system = bootstrap(settings)
    try:
        set_contact(system.engine, "acct_from", email=to)
        [notice] = [e for e in report(system, "acct_from").events if e.type == "NoticeIssued"]
        build_actors(system).by_name["deliver_notice"].fn(notice.event_id, "email")

        [message] = sink.for_event(notice.event_id)
        assert message["From"] == "TaaS Trust & Safety <appeals@taas.test>"
        assert "reply" in message.get_content().lower()
        assert sink.senders == ["appeals@taas.test"]
    finally:
        system.close()
        sink.close()


def test_a_retry_the_broker_could_not_take_is_sent_again(
    sqlite_db: str, broker_url: str | None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Dramatiq queues a failed attempt's retry after the attempt; when the broker cannot take
    it (Redis away for a moment) it logs that and acknowledges the message, and the retry is
    gone. The leader finds the failed attempt that nothing followed for longer than any retry
    waits (``recovery.lost_retries``) and sends it again."""
    receiver = Receiver(fail_first=1, fail_status=503)
    settings = fast_settings(
        sqlite_db, tmp_path, redis_url=broker_url, notice_retries=3, sweep_seconds=0.1
    )
    system = System(settings)
    broker = system.actors.broker
    enqueue = broker.enqueue
    lost: list[Any] = []

    def broker_away_for_the_first_retry(message: Any, *, delay: int | None = None) -> Any:
        if "traceback" in message.options and not lost:  # the Retries middleware's re-enqueue
            lost.append(message)
            raise ConnectionError("the broker is away")
        return enqueue(message, delay=delay)

    broker.enqueue = broker_away_for_the_first_retry  # type: ignore[method-assign]
    caplog.set_level(logging.WARNING, logger="enforcement.workers")
    try:
        system.contact("acct_lost_retry", webhook_url=receiver.url)
        outcome = system.report("acct_lost_retry", "spam")
        [notice] = [e for e in outcome.events if e.type == "NoticeIssued"]

        wait_until(
            lambda: delivered_once_each(system.store, [notice.event_id], ["webhook"]),
            "the notice to be delivered after its retry was lost",
        )
        assert len(lost) == 1
        assert summary(system, notice.event_id) == [
            ("NoticeDeliveryFailed", "webhook", 1, False),
            ("NoticeDelivered", "webhook", 2, None),
        ]
        resent = (
            "re-sent 1 notice deliveries whose retry or first message was lost, or that a "
            "changed contact gave a channel"
        )
        wait_until(lambda: resent in caplog.messages, "the leader to say what it re-sent")
        # not before the longest retry wait and the margin had passed
        times = [r.at for r in receiver.for_event(notice.event_id)]
        assert times[1] - times[0] >= retry_lost_after(settings).total_seconds()
    finally:
        system.close()
        receiver.close()


def test_by_default_a_retry_is_lost_10_minutes_after_the_longest_wait_looked_for_every_5(
    sqlite_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20 deadline sweeps after the longest wait between retries, looked for every 10 sweeps
    (``runtime.LOST_RETRY_*_SWEEPS``): 10 and 5 minutes with the default 30 s sweep."""
    defaults = Settings(database_url=sqlite_db)
    longest = timedelta(milliseconds=defaults.notice_max_backoff_ms)
    assert retry_lost_after(defaults) == longest + timedelta(minutes=10)
    every: dict[str, float] = {}

    def noted(stop: Any, every_seconds: float, job: Any, what: str) -> None:
        every[what] = every_seconds

    monkeypatch.setattr(runtime, "run_every", noted)
    container = bootstrap(fast_settings(sqlite_db, tmp_path, sweep_seconds=30.0))
    try:
        _, stop = start_runtime(container, consumers=False, relay=True)
        try:
            wait_until(lambda: len(every) == 2, "the leader's periodic jobs")
        finally:
            stop()
    finally:
        container.close()
    assert every == {"deadline sweep": 30.0, "re-sending lost notice retries": 300.0}


def test_the_leader_looks_for_lost_retries_up_to_each_notices_last_attempt(
    sqlite_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leader's look for lost retries (``recovery.LostRetryScan``) reads a notice's failed
    attempts up to its last one, the first try and its ``notice_retries`` retries: with fewer,
    a failed attempt followed only after a gap (an attempt whose failure could not be recorded)
    would be taken for one whose retry was lost, and sent again past its limit."""
    scans: list[LostRetryScan] = []

    class Kept(LostRetryScan):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            scans.append(self)

    monkeypatch.setattr(runtime, "LostRetryScan", Kept)
    container = bootstrap(fast_settings(sqlite_db, tmp_path, notice_retries=3))
    try:
        _, stop = start_runtime(container, consumers=False, relay=True)
        stop()
    finally:
        container.close()
    assert [scan.max_attempts for scan in scans] == [4]


def test_a_notice_whose_every_try_failed_before_recording_anything_is_sent_again(
    sqlite_db: str, broker_url: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database away for longer than a notice's retries last (a failover, a long restart):
    each try fails before it can record an outcome, Dramatiq gives the message up, and the log
    holds the notice with nothing after it, while Redis kept its mark and no failed attempt is
    there to follow. Once that is older than any retry waits, the leader sends it again."""
    receiver = Receiver()
    settings = fast_settings(
        sqlite_db, tmp_path, redis_url=broker_url, notice_retries=1, sweep_seconds=0.1
    )
    failing: list[str] = []
    failed_attempts = NoticeDelivery.failed_attempts

    def database_away(self: NoticeDelivery, notice_event_id: str, channel: str) -> int:
        if channel == "webhook" and len(failing) < 2:  # the first message's two tries
            failing.append(notice_event_id)
            raise ConnectionError("the database is away")
        return failed_attempts(self, notice_event_id, channel)

    monkeypatch.setattr(NoticeDelivery, "failed_attempts", database_away)
    system = System(settings)
    try:
        system.contact("acct_db_away", webhook_url=receiver.url)
        outcome = system.report("acct_db_away", "spam")
        [notice] = [e for e in outcome.events if e.type == "NoticeIssued"]

        wait_until(
            lambda: delivered_once_each(system.store, [notice.event_id], ["webhook"]),
            "the notice to be delivered after its message was given up",
        )
        assert failing == [notice.event_id] * 2
        assert summary(system, notice.event_id) == [("NoticeDelivered", "webhook", 1, None)]
        assert len(receiver.for_event(notice.event_id)) == 1
    finally:
        system.close()
        receiver.close()


def test_a_webhook_replaced_by_an_email_address_gets_its_failed_notice_by_email_at_once(
    sqlite_db: str, broker_url: str | None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A notice whose webhook refused it for good: once an operator replaces the webhook with
    an e-mail address, the leader's next look sends it by e-mail, not the next restart. One
    the webhook delivered is not sent a second time by e-mail (it is settled). The change comes
    after the look for untried deliveries judged both notices, so it is this look that sends."""
    refusing = Receiver(fail_first=100)
    accepting = Receiver()
    settings = fast_settings(
        sqlite_db, tmp_path, redis_url=broker_url, notice_retries=0, sweep_seconds=0.1
    )
    caplog.set_level(logging.WARNING, logger="enforcement.workers")
    system = System(settings)
    try:
        system.contact("acct_refused", webhook_url=refusing.url)
        system.contact("acct_reached", webhook_url=accepting.url)
        refused, reached = (
            next(e for e in system.report(a).events if e.type == "NoticeIssued")
            for a in ("acct_refused", "acct_reached")
        )
        wait_until(
            lambda: (
                delivered_once_each(system.store, [reached.event_id], ["webhook"])
                and [e.data["final"] for e in system.outcomes(refused.event_id)] == [True]
            ),
            "the one webhook to deliver and the other to refuse for good",
        )
        wait_until(
            lambda: untried_position(system) >= reached.position,
            "the leader to judge both notices' first messages",
        )
        changed = datetime.now(UTC)
        for account in ("acct_refused", "acct_reached"):
            set_contact(system.container.engine, account, "o@customer.test", email_since=changed)

        wait_until(
            lambda: delivered_once_each(system.store, [refused.event_id], ["email"]),
            "the refused notice to go out by e-mail",
        )
        resent = [m for m in caplog.messages if m.startswith("re-sent ")]
        assert resent and all(m.startswith("re-sent 1 notice deliveries") for m in resent)
        assert [e.data["channel"] for e in system.outcomes(reached.event_id)] == ["webhook"]
        assert len(accepting.for_event(reached.event_id)) == 1
    finally:
        system.close()
        refusing.close()
        accepting.close()


def untried_position(system: System) -> int:
    """How far the leader's look for untried deliveries judged the relayed notices."""
    with system.container.engine.connect() as conn:
        return system.store.get_checkpoint(conn, UNTRIED_CHECKPOINT)


def test_a_try_cut_off_at_its_time_limit_names_its_notice(
    sqlite_db: str, broker_url: str | None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Dramatiq's time limit cuts a try off by raising ``TimeLimitExceeded`` (a BaseException,
    which ``except Exception`` does not see) in its thread, before it records an outcome. The
    worker's log names the notice and the channel, and says the leader's look takes it up
    again when that was its last try. Over Redis as in embedded mode: the time limit's watcher
    starts with either broker."""
    receiver = Drip(b"", b"HTTP/1.1 200 OK\r\n\r\n", every=0.5)  # answers in 10 s
    settings = fast_settings(sqlite_db, tmp_path, redis_url=broker_url, notice_retries=0)
    container = bootstrap(settings)
    broker = make_broker(settings)
    recorder = Recorder()
    broker.add_middleware(recorder)
    webhook = WebhookSender(SECRET, allow_private=True, timeout=5.0, deadline=30.0)
    delivery = NoticeDelivery(container.service, EmailSender(None, str(tmp_path)), webhook)
    actors = register_actors(
        broker,
        container.service,
        delivery,
        None,
        notice_retries=0,
        min_backoff_ms=100,
        max_backoff_ms=400,
        notice_time_limit_ms=300,
    )
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        set_contact(
            container.engine, "acct_stalled", webhook_url=f"http://127.0.0.1:{receiver.port}/h"
        )
        notice = notice_in(report(container, "acct_stalled").events)
        actors.enqueue(Message("deliver_notice", (notice, "webhook")))

        [tried] = wait_until(
            lambda: recorder.of("deliver_notice", notice, "webhook"), "the try to end"
        )
        assert tried.error is not None and tried.error.startswith("TimeLimitExceeded")
        assert [
            (r.levelname, r.getMessage())
            for r in caplog.records
            if r.name == "enforcement.workers" and notice in r.getMessage()
        ] == [
            (
                "ERROR",
                f"notice {notice} via webhook: its last try was cut off at its time limit "
                "(300 ms) before it could record an outcome; the leader's lost-retry scan "
                "looks at it again",
            )
        ]
        assert outcomes_of(container.store, notice) == []
    finally:
        worker.stop()
        broker.close()
        receiver.close()
        container.close()


def test_a_final_failure_is_recorded_once_the_retries_are_spent(
    sqlite_db: str, broker_url: str | None, tmp_path: Path
) -> None:
    # Given a webhook that always fails, and 2 retries
    receiver = Receiver(fail_first=1_000)
    settings = fast_settings(sqlite_db, tmp_path, redis_url=broker_url, notice_retries=2)
    system = System(settings)
    try:
        system.contact("acct_down", webhook_url=receiver.url)

        # When a notice is issued
        [notice] = [e for e in system.report("acct_down").events if e.type == "NoticeIssued"]

        # Then 3 attempts are made and the last is recorded as final
        wait_until(
            lambda: any(e.data.get("final") for e in system.outcomes(notice.event_id)),
            "a final NoticeDeliveryFailed",
        )
        wait_until(
            lambda: (
                system.recorder.of("deliver_notice", notice.event_id, "webhook")
                and system.recorder.of("deliver_notice", notice.event_id, "webhook")[-1].error
                is None
            ),
            "the last attempt's message to finish",
        )
        expected = [
            ("NoticeDeliveryFailed", "webhook", 1, False),
            ("NoticeDeliveryFailed", "webhook", 2, False),
            ("NoticeDeliveryFailed", "webhook", 3, True),
        ]
        assert summary(system, notice.event_id) == expected

        # and no further attempt follows (longer than the longest backoff)
        wait_for = 2 * settings.notice_max_backoff_ms / 1000
        with pytest.raises(AssertionError):
            wait_until(lambda: len(receiver.requests) > 3, "a 4th attempt", timeout=wait_for)
        assert len(receiver.for_event(notice.event_id)) == 3
        assert summary(system, notice.event_id) == expected

        # nor from another message for the notice (a second relay, before it saw that it had
        # lost the lead, enqueued it again): the limit holds for the notice
        handled = len(system.recorder.of("deliver_notice", notice.event_id, "webhook"))
        system.actors.enqueue(Message("deliver_notice", (notice.event_id, "webhook")))
        wait_until(
            lambda: len(system.recorder.of("deliver_notice", notice.event_id, "webhook")) > handled,
            "the second message to be handled",
        )
        assert len(receiver.for_event(notice.event_id)) == 3
        assert summary(system, notice.event_id) == expected
    finally:
        system.close()
        receiver.close()


def test_a_private_webhook_target_is_refused_without_allow_private(
    sqlite_db: str, broker_url: str | None, tmp_path: Path, receiver: Receiver
) -> None:
    # Given ENFORCEMENT_WEBHOOK_ALLOW_PRIVATE unset and a webhook on loopback
    settings = fast_settings(sqlite_db, tmp_path, redis_url=broker_url, webhook_allow_private=False)
    system = System(settings)
    try:
        system.contact("acct_ssrf", webhook_url=receiver.url)

        # When a notice is issued
        [notice] = [e for e in system.report("acct_ssrf").events if e.type == "NoticeIssued"]

        # Then the attempt is a final failure naming the address, and no request is made
        wait_until(lambda: system.outcomes(notice.event_id), "the refusal to be recorded")
        wait_until(
            lambda: system.recorder.of("deliver_notice", notice.event_id, "webhook"),
            "the webhook message to be handled",
        )
        [refused] = system.outcomes(notice.event_id)
        assert refused.type == "NoticeDeliveryFailed"
        assert (refused.data["channel"], refused.data["attempt"], refused.data["final"]) == (
            "webhook",
            1,
            True,
        )
        assert "non-public address 127.0.0.1" in refused.data["error"]
        assert refused.data["error"].startswith("webhook host 127.0.0.1 resolves")  # as refused
        assert receiver.requests == []

        # and a second message for the notice (another relay's) adds no second final failure
        handled = len(system.recorder.of("deliver_notice", notice.event_id, "webhook"))
        system.actors.enqueue(Message("deliver_notice", (notice.event_id, "webhook")))
        wait_until(
            lambda: len(system.recorder.of("deliver_notice", notice.event_id, "webhook")) > handled,
            "the second message to be handled",
        )
        assert [e.event_id for e in system.outcomes(notice.event_id)] == [refused.event_id]
    finally:
        system.close()


def test_a_slow_drip_webhook_fails_at_its_deadline_to_be_retried(
    sqlite_db: str, tmp_path: Path
) -> None:
    # Given a webhook that answers one byte every 0.2 s, and a deadline of 1 s for an attempt
    receiver = Drip(b"", b"HTTP/1.1 200 OK\r\n\r\n", every=0.2)
    system = bootstrap(fast_settings(sqlite_db, tmp_path))
    try:
        url = f"http://127.0.0.1:{receiver.port}/hooks/secret-token?key=secret"
        set_contact(system.engine, "acct_drip", webhook_url=url)
        [notice] = [e for e in report(system, "acct_drip").events if e.type == "NoticeIssued"]
        webhook = WebhookSender(SECRET, allow_private=True, timeout=0.5, deadline=1.0)
        delivery = NoticeDelivery(system.service, EmailSender(None, str(tmp_path)), webhook)

        # When an attempt is made, it ends at the deadline, to be retried
        started = time.monotonic()
        with pytest.raises(DeliveryFailed):
            delivery.attempt(notice.event_id, "webhook", 1, final=False)
        assert time.monotonic() - started < 1.5

        # Then the failure names the webhook by its scheme, host and port only
        [failure] = [
            e for e in system.store.read_stream("acct_drip") if e.type == "NoticeDeliveryFailed"
        ]
        assert (failure.data["attempt"], failure.data["final"]) == (1, False)
        assert failure.data["error"] == (
            f"TimeoutError: the webhook at 'http://127.0.0.1:{receiver.port}' "
            "did not answer within 1 s"
        )
    finally:
        system.close()
        receiver.close()


def test_an_account_without_contact_data_gets_its_notice_recorded_undeliverable(
    system: System, smtp: SmtpSink, receiver: Receiver, tmp_path: Path
) -> None:
    # Given an account with no contact data
    # When a notice is issued
    [notice] = [e for e in system.report("acct_nobody").events if e.type == "NoticeIssued"]

    # Then one final "undeliverable" failure is recorded once both channels were tried
    wait_until(
        lambda: len(system.recorder.of("deliver_notice", notice.event_id)) == 2,
        "both channels' messages to be handled",
    )
    [undeliverable] = system.outcomes(notice.event_id)
    assert undeliverable.type == "NoticeDeliveryFailed"
    assert undeliverable.data["final"] is True
    assert (undeliverable.data["channel"], undeliverable.data["attempt"]) == ("none", 1)
    assert undeliverable.data["error"].startswith("undeliverable")
    # and nothing was sent anywhere
    assert smtp.messages == []
    assert receiver.requests == []
    assert not (tmp_path / "notices").exists()


def test_a_notice_that_failed_for_good_goes_out_once_an_operator_sends_it_again(
    system: System, smtp: SmtpSink, receiver: Receiver
) -> None:
    # Given a notice recorded undeliverable (no contact then), the contact set since
    [notice] = [e for e in system.report("acct_later").events if e.type == "NoticeIssued"]
    wait_until(
        lambda: len(system.recorder.of("deliver_notice", notice.event_id)) == 2,
        "both channels' messages to be handled",  # (a later one would find the contact set)
    )
    assert [e.data["channel"] for e in system.outcomes(notice.event_id)] == ["none"]
    system.contact("acct_later", email="desk@customer.test", webhook_url=receiver.url)

    # When an operator sends it again
    resent = system.container.service.resend_notice(
        "acct_later", notice.data["notice_id"], "contact corrected", OPERATOR
    )

    # Then the copy, a notice of its own, is delivered once on each channel
    [copy_] = resent.events
    assert copy_.type == "NoticeIssued"
    assert copy_.data["resend_of"]["notice_event_id"] == notice.event_id
    wait_until(
        lambda: delivered_once_each(system.store, [copy_.event_id], CHANNELS),
        "NoticeDelivered of the copy on both channels",
    )
    assert sorted(summary(system, copy_.event_id)) == [
        ("NoticeDelivered", "email", 1, None),
        ("NoticeDelivered", "webhook", 1, None),
    ]
    [message] = smtp.for_event(copy_.event_id)
    assert message["To"] == "desk@customer.test"
    assert message["Subject"].endswith(" (sent again)")
    # in the first one's thread
    assert message["Message-ID"] == f"<{copy_.event_id}@taas.invalid>"
    first_id = f"<{notice.event_id}@taas.invalid>"
    assert (message["In-Reply-To"], message["References"]) == (first_id, first_id)
    assert message.get_content().startswith(
        f"This notice is a copy of notice {notice.data['notice_id']}, issued "
    )
    [request] = receiver.for_event(copy_.event_id)
    assert request.json()["resend_of"]["notice_id"] == notice.data["notice_id"]
    # and the first notice keeps its one outcome: nothing else was sent
    assert [e.data["channel"] for e in system.outcomes(notice.event_id)] == ["none"]
    assert {r.event_id for r in receiver.requests} == {copy_.event_id}
    assert [m["X-Enforcement-Event-Id"] for _, m in smtp.messages] == [copy_.event_id]


def test_a_copy_sent_on_the_webhook_alone_leaves_the_delivered_e_mail_alone(
    system: System, smtp: SmtpSink, receiver: Receiver
) -> None:
    # Given a notice the e-mail delivered and the webhook refused for good
    system.contact("acct_half", email="desk@customer.test", webhook_url="http://a..b/h")
    [notice] = [e for e in system.report("acct_half").events if e.type == "NoticeIssued"]
    wait_until(lambda: len(system.outcomes(notice.event_id)) == 2, "both channels' outcomes")
    assert sorted(summary(system, notice.event_id)) == [
        ("NoticeDelivered", "email", 1, None),
        ("NoticeDeliveryFailed", "webhook", 1, True),  # a name that never resolves
    ]

    # When the webhook is mended and the notice sent again on it alone
    system.contact("acct_half", email="desk@customer.test", webhook_url=receiver.url)
    resent = system.container.service.resend_notice(
        "acct_half", notice.data["notice_id"], "webhook fixed", OPERATOR, channels=("webhook",)
    )
    [copy_] = resent.events
    assert copy_.data["resend_of"]["channels"] == ["webhook"]

    # Then the copy goes out on the webhook, and no second e-mail is sent
    wait_until(
        lambda: delivered_once_each(system.store, [copy_.event_id], ("webhook",)),
        "the copy's webhook delivery",
    )
    wait_until(system.caught_up, "the relay to pass every event")
    assert summary(system, copy_.event_id) == [("NoticeDelivered", "webhook", 1, None)]
    assert [m["X-Enforcement-Event-Id"] for _, m in smtp.messages] == [notice.event_id]
    assert [r.event_id for r in receiver.requests] == [copy_.event_id]
    # a message for the e-mail (a re-send of the notices without an outcome) sends nothing
    assert system.actors.delivery.deliver(copy_.event_id, "email", 0, 3) == "not_chosen"
    assert summary(system, copy_.event_id) == [("NoticeDelivered", "webhook", 1, None)]


def test_a_channel_whose_target_was_removed_while_a_try_was_due_is_closed_for_good(
    sqlite_db: str, tmp_path: Path
) -> None:
    """Nothing would try it again (the re-send reckons channels by the contact as it is now),
    and the notice would wait on it for good: it is closed with a final failure that says so.
    A channel the contact never had records nothing."""
    receiver = Receiver(fail_first=1_000)
    system = bootstrap(fast_settings(sqlite_db, tmp_path))
    try:
        set_contact(
            system.engine, "acct_gone", email="desk@customer.test", webhook_url=receiver.url
        )
        notice = notice_in(report(system, "acct_gone").events)
        webhook = WebhookSender(SECRET, allow_private=True)
        delivery = NoticeDelivery(system.service, EmailSender(None, str(tmp_path)), webhook)
        with pytest.raises(DeliveryFailed):
            delivery.deliver(notice, "webhook", 0, 3)

        set_contact(system.engine, "acct_gone", email="desk@customer.test")  # webhook removed
        assert delivery.deliver(notice, "webhook", 1, 3) == "target_removed"
        assert delivery.deliver(notice, "webhook", 2, 3) == "failed_for_good"  # closed

        outcomes = [e for e in system.store.read_stream("acct_gone") if e.type.startswith("Notice")]
        assert [(e.type, e.data.get("attempt"), e.data.get("final")) for e in outcomes] == [
            ("NoticeIssued", None, None),
            ("NoticeDeliveryFailed", 1, False),
            ("NoticeDeliveryFailed", 2, True),
        ]
        assert outcomes[2].data["channel"] == "webhook"
        assert outcomes[2].data["error"] == (
            "the account's contact no longer has a webhook_url: no try follows"
        )
        assert outcomes[2].metadata["causation_id"] == notice
        assert len(receiver.for_event(notice)) == 1

        # E-mail: delivered, so a removed address closes nothing; one never tried, nothing.
        assert delivery.deliver(notice, "email", 0, 3) == "delivered"
        set_contact(system.engine, "acct_gone", webhook_url=receiver.url)  # e-mail removed
        assert delivery.deliver(notice, "email", 0, 3) == "no_target"
        mail_only = notice_in(report(system, "acct_mail").events)
        set_contact(system.engine, "acct_mail", email="desk@customer.test")
        assert delivery.deliver(mail_only, "webhook", 0, 3) == "no_target"
        set_contact(system.engine, "acct_mail", webhook_url=receiver.url)
        assert delivery.deliver(mail_only, "email", 0, 3) == "no_target"  # never tried
        assert outcomes_of(system.store, mail_only) == []

        # A retry whose first failure could not be recorded (its number says it is a retry)
        # closes the channel too, at its own number.
        assert delivery.deliver(mail_only, "email", 1, 3) == "target_removed"
        [closed] = outcomes_of(system.store, mail_only)
        assert (closed.data["channel"], closed.data["attempt"], closed.data["final"]) == (
            "email",
            2,
            True,
        )
    finally:
        system.close()
        receiver.close()


def test_a_target_set_again_before_the_guard_is_held_is_sent_to_not_closed(
    sqlite_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retry read the contact without its webhook, then waited for the channel's guard
    (another try held it) while the webhook was set again: read again under the guard, the
    notice goes to it, as the retry's attempt, and nothing closes the channel. (Review rv5
    N3: it was closed for good.)"""
    receiver = Receiver(fail_first=1)
    system = bootstrap(fast_settings(sqlite_db, tmp_path))
    try:
        set_contact(system.engine, "acct_back", webhook_url=receiver.url)
        notice = notice_in(report(system, "acct_back").events)
        webhook = WebhookSender(SECRET, allow_private=True)
        delivery = NoticeDelivery(system.service, EmailSender(None, str(tmp_path)), webhook)
        with pytest.raises(DeliveryFailed):
            delivery.deliver(notice, "webhook", 0, 3)
        reads: list[str] = []
        read = NoticeDelivery.contact

        def removed_at_the_first_read(self: NoticeDelivery, account_id: str) -> Any:
            reads.append(account_id)
            if len(reads) == 1:
                return dataclasses.replace(read(self, account_id), webhook_url=None)
            return read(self, account_id)

        monkeypatch.setattr(NoticeDelivery, "contact", removed_at_the_first_read)
        assert delivery.deliver(notice, "webhook", 1, 3) == "delivered"
        assert len(reads) == 2
        outcomes = outcomes_of(system.store, notice)
        assert [(e.type, e.data["attempt"], e.data.get("final")) for e in outcomes] == [
            ("NoticeDeliveryFailed", 1, False),
            ("NoticeDelivered", 2, None),
        ]
        assert len(receiver.for_event(notice)) == 2
    finally:
        system.close()
        receiver.close()


def test_a_copy_whose_chosen_channel_lost_its_target_is_closed_at_its_first_try(
    sqlite_db: str, tmp_path: Path
) -> None:
    """The contact had the channel when the copy was asked for (409 ``no_target`` otherwise):
    one removed since would leave the copy waiting on it for good."""
    system = bootstrap(fast_settings(sqlite_db, tmp_path))
    try:
        set_contact(system.engine, "acct_copy", email="desk@customer.test")
        [first] = [e for e in report(system, "acct_copy").events if e.type == "NoticeIssued"]
        delivery = NoticeDelivery(
            system.service, EmailSender(None, str(tmp_path)), WebhookSender(SECRET, True)
        )
        copies = []
        for channels in (("webhook",), ("email",)):
            resent = system.service.resend_notice(
                "acct_copy", first.data["notice_id"], "r", OPERATOR, channels=channels
            )
            copies.append(resent.events[0].event_id)
        only_webhook, only_email = copies

        assert delivery.deliver(only_webhook, "email", 0, 3) == "not_chosen"
        assert delivery.deliver(only_webhook, "webhook", 0, 3) == "target_removed"
        [closed] = outcomes_of(system.store, only_webhook)
        assert (closed.data["channel"], closed.data["attempt"], closed.data["final"]) == (
            "webhook",
            1,
            True,
        )
        set_contact(system.engine, "acct_copy", webhook_url="https://customer.test/h")
        assert delivery.deliver(only_email, "email", 0, 3) == "target_removed"
        set_contact(system.engine, "acct_copy")  # no contact at all: undeliverable
        again = system.service.resend_notice(
            "acct_copy", first.data["notice_id"], "r", OPERATOR, channels=("email",)
        ).events[0]
        assert delivery.deliver(again.event_id, "email", 0, 3) == "undeliverable"
        assert [e.data["channel"] for e in outcomes_of(system.store, again.event_id)] == ["none"]
    finally:
        system.close()


def test_a_removed_e_mail_address_closes_its_channel_too(
    sqlite_db: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    system = bootstrap(fast_settings(sqlite_db, tmp_path))
    try:
        set_contact(system.engine, "acct_mx", email="desk@customer.test")
        notice = notice_in(report(system, "acct_mx").events)
        failing = EmailSender("smtp://127.0.0.1:9", str(tmp_path))  # nothing listens
        guard = LocalGuard(5.0, wait_s=0.05)
        delivery = NoticeDelivery(system.service, failing, WebhookSender(SECRET, False), guard)
        with pytest.raises(DeliveryFailed):
            delivery.deliver(notice, "email", 0, 3)
        set_contact(system.engine, "acct_mx", webhook_url="https://customer.test/h")
        # Closed under the channel's guard, the one a try of it holds (here another's: it
        # waits for it, then goes on without it, and says so).
        caplog.set_level(logging.WARNING, logger="enforcement.notices")
        with guard.held(f"{notice}:email"):
            assert delivery.deliver(notice, "email", 1, 3) == "target_removed"
        assert f"the delivery guard of {notice}:email was still held" in caplog.text
        [closed] = [e for e in system.store.read_stream("acct_mx") if e.data.get("final")]
        assert closed.data["error"] == (
            "the account's contact no longer has an e-mail address: no try follows"
        )

        # One that failed, then was delivered (a copy of the message raced the retry's): the
        # account has it, and its address removed since closes nothing.
        set_contact(system.engine, "acct_won", email="desk@customer.test")
        won = notice_in(report(system, "acct_won").events)
        with pytest.raises(DeliveryFailed):
            delivery.deliver(won, "email", 0, 3)
        working = NoticeDelivery(
            system.service, EmailSender(None, str(tmp_path)), WebhookSender(SECRET, False)
        )
        assert working.deliver(won, "email", 1, 3) == "delivered"
        set_contact(system.engine, "acct_won", webhook_url="https://customer.test/h")
        assert delivery.deliver(won, "email", 1, 3) == "already_delivered"
        assert [(e.type, e.data["attempt"]) for e in outcomes_of(system.store, won)] == [
            ("NoticeDeliveryFailed", 1),
            ("NoticeDelivered", 2),
        ]
    finally:
        system.close()


def test_notify_false_records_no_notice_and_sends_nothing(
    system: System, smtp: SmtpSink, receiver: Receiver
) -> None:
    # Given three accounts with full contact data
    for account in ("acct_quiet_s", "acct_quiet_t", "acct_loud"):
        system.contact(account, email=f"{account}@customer.test", webhook_url=receiver.url)

    # When an operator suspends one and terminates another with notify false, and (control)
    # suspends a third with notify true
    service = system.container.service
    quiet = [
        service.operator("acct_quiet_s", ops.Suspend("under review", notify=False), OPERATOR),
        service.operator("acct_quiet_t", ops.Terminate("fraud ring", notify=False), OPERATOR),
    ]
    loud = service.operator("acct_loud", ops.Suspend("under review"), OPERATOR)

    # Then the decisions carry no NoticeIssued
    assert [[e.type for e in o.events] for o in quiet] == [
        ["AccountSuspended"],
        ["AccountTerminated"],
    ]
    # and once the relay has passed them and their messages were handled, nothing was sent
    [loud_notice] = [e for e in loud.events if e.type == "NoticeIssued"]
    wait_until(
        lambda: delivered_once_each(system.store, [loud_notice.event_id], CHANNELS),
        "the control notice to be delivered",
    )
    wait_until(system.caught_up, "the relay to pass every event")
    for outcome in quiet:
        decision = outcome.events[0]
        wait_until(
            lambda d=decision: system.recorder.of("apply_gate_state", d.event_id),
            f"the gate message of {decision.type}",
        )
    assert system.events("NoticeIssued", account_id="acct_quiet_s") == []
    assert system.events("NoticeIssued", account_id="acct_quiet_t") == []
    assert [m["To"] for _, m in smtp.messages] == ["acct_loud@customer.test"]
    assert {r.event_id for r in receiver.requests} == {loud_notice.event_id}


def test_pending_deadlines_do_not_hold_back_notice_retries(sqlite_db: str, tmp_path: Path) -> None:
    """Embedded Dramatiq holds at most 2 delayed messages per worker thread. Days-long deadline
    messages must not fill that room for notice retries (regression: they shared a queue)."""
    receiver = Receiver(fail_first=1)
    system = System(fast_settings(sqlite_db, tmp_path, worker_threads=1))
    try:
        # Given more pending remediation deadlines (7 days away) than the delay prefetch
        for i in range(4):
            system.report(f"acct_pending_{i}", "spam")
        wait_until(system.caught_up, "the relay to enqueue the deadline messages")

        # When a notice's first webhook attempt fails
        system.contact("acct_retry", webhook_url=receiver.url)
        [notice] = [e for e in system.report("acct_retry").events if e.type == "NoticeIssued"]

        # Then its retry still goes out within the backoff, not after the deadlines fire
        wait_until(
            lambda: delivered_once_each(system.store, [notice.event_id], ["webhook"]),
            "the retried notice to be delivered",
            timeout=10,
        )
        assert [e.data["attempt"] for e in system.outcomes(notice.event_id)] == [1, 2]
    finally:
        system.close()
        receiver.close()


def test_an_embedded_restart_sends_each_pending_notice_once(
    sqlite_db: str, tmp_path: Path, receiver: Receiver
) -> None:
    # Given two notices recorded while no worker ran: one the relay had already passed (its
    # in-memory message died with the process) and one it had not reached yet
    settings = fast_settings(sqlite_db, tmp_path)
    before = bootstrap(settings)
    for account in ("acct_passed", "acct_unrelayed"):
        set_contact(before.engine, account, webhook_url=receiver.url)
    passed = notice_in(report(before, "acct_passed").events)
    with before.engine.begin() as conn:
        before.store.set_checkpoint(conn, CHECKPOINT, before.store.max_position())
    unrelayed = notice_in(report(before, "acct_unrelayed").events)
    before.close()

    # When `serve` starts again (embedded: the relay, the recovery and the workers)
    system = System(settings)
    try:
        # Then each goes out, and only once: the recovery re-sends the first, the relay the other
        wait_until(
            lambda: delivered_once_each(system.store, [passed, unrelayed], ["webhook"]),
            "both notices to be delivered",
        )
        wait_until(system.caught_up, "the relay to pass every event")
        system.actors.broker.join(QUEUE, timeout=10_000)
        for notice in (passed, unrelayed):
            assert len(system.recorder.of("deliver_notice", notice, "webhook")) == 1
            assert len(receiver.for_event(notice)) == 1
    finally:
        system.close()


# The actors themselves, called in this thread on a StubBroker: what each passes on, and how a
# try's end is logged and handed back to Dramatiq.

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class FakeService:
    """What the deadline actors call, recorded; a clock that stands still."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, Actor]] = []

    def clock(self) -> datetime:
        return NOW

    def expire_remediation(self, account_id: str, remediation_id: str, actor: Actor) -> None:
        self.calls.append(("expire_remediation", account_id, remediation_id, actor))

    def end_suspension(self, account_id: str, suspension_id: str, actor: Actor) -> None:
        self.calls.append(("end_suspension", account_id, suspension_id, actor))


class FakeDelivery:
    """``NoticeDelivery.deliver``'s arguments, recorded; it raises ``error`` if given one."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error
        self.calls: list[tuple[str, str, int, int, str | None]] = []

    def deliver(
        self,
        notice_event_id: str,
        channel: str,
        retries: int,
        max_retries: int,
        message_id: str | None = None,
    ) -> str:
        self.calls.append((notice_event_id, channel, retries, max_retries, message_id))
        if self.error is not None:
            raise self.error
        return "delivered"


def stub_actors(
    delivery: FakeDelivery | None = None,
    service: FakeService | None = None,
    gate_applier: Callable[[str], None] | None = None,
    **options: int,
) -> Actors:
    return register_actors(
        StubBroker(),
        cast(Any, service or FakeService()),
        cast(Any, delivery or FakeDelivery()),
        gate_applier,
        notice_retries=3,
        min_backoff_ms=100,
        max_backoff_ms=400,
        **options,
    )


@contextmanager
def current_message(retries: int | None, message_id: str) -> Iterator[None]:
    """What ``CurrentMessage`` gives an actor while a worker processes its message."""
    options: dict[str, Any] = {} if retries is None else {"retries": retries}
    message: dramatiq.Message[Any] = dramatiq.Message(
        QUEUE, "deliver_notice", (), {}, options, message_id=message_id
    )
    token = CurrentMessage._MESSAGE.set(message)
    try:
        yield
    finally:
        CurrentMessage._MESSAGE.reset(token)


def test_the_actors_are_declared_on_their_queues_with_their_retries_and_time_limits() -> None:
    # The queue names are Redis keys every worker process of a deployment shares
    service = FakeService()
    delivery = FakeDelivery()
    actors = stub_actors(delivery, service)
    keys = ("max_retries", "min_backoff", "max_backoff", "time_limit")
    assert {
        name: (actor.queue_name, {k: actor.options[k] for k in keys if k in actor.options})
        for name, actor in actors.by_name.items()
    } == {
        "deliver_notice": (
            "enforcement",
            {"max_retries": 3, "min_backoff": 100, "max_backoff": 400, "time_limit": 60_000},
        ),
        "expire_remediation": ("deadlines", {"max_retries": 20, "time_limit": 60_000}),
        "end_suspension": ("deadlines", {"max_retries": 20, "time_limit": 60_000}),
        "apply_gate_state": ("enforcement", {"max_retries": 20, "time_limit": 30_000}),
    }
    assert (
        stub_actors(notice_time_limit_ms=5_000).by_name["deliver_notice"].options["time_limit"]
        == 5_000
    )
    assert actors.clock() == NOW
    assert actors.delivery is cast(Any, delivery)


def test_a_message_is_enqueued_on_its_actors_queue_delayed_until_it_is_due() -> None:
    actors = stub_actors()
    broker = actors.broker
    assert isinstance(broker, StubBroker)
    actors.enqueue(Message("deliver_notice", ("evt_1", "email")))
    before = current_millis()
    actors.enqueue(Message("end_suspension", ("acct_1", "susp_1"), NOW + timedelta(hours=1)))
    after = current_millis()

    [now] = map(dramatiq.Message.decode, broker.queues["enforcement"].queue)
    assert (now.actor_name, now.args, "eta" in now.options) == (
        "deliver_notice",
        ("evt_1", "email"),
        False,
    )
    [due] = map(dramatiq.Message.decode, broker.queues["deadlines.DQ"].queue)
    assert (due.actor_name, due.args) == ("end_suspension", ("acct_1", "susp_1"))
    # due in an hour of the service's clock, and a millisecond (``relay.delay_ms``)
    assert before + 3_600_001 <= due.options["eta"] <= after + 3_600_001


def test_the_deadline_and_gate_actors_call_the_service_as_the_scheduler() -> None:
    service = FakeService()
    applied: list[str] = []
    actors = stub_actors(service=service, gate_applier=applied.append)
    actors.by_name["expire_remediation"]("acct_1", "rem_1")
    actors.by_name["end_suspension"]("acct_2", "susp_2")
    actors.by_name["apply_gate_state"]("evt_3")
    scheduler = Actor(name="scheduler", correlation_id="deadline", source="worker")
    assert service.calls == [
        ("expire_remediation", "acct_1", "rem_1", scheduler),
        ("end_suspension", "acct_2", "susp_2", scheduler),
    ]
    assert applied == ["evt_3"]
    # without a gate (no ``gate_applier``) a gate event's message does nothing
    stub_actors(gate_applier=None).by_name["apply_gate_state"]("evt_3")


def test_the_workers_gate_actor_applies_to_the_containers_gate(
    sqlite_db: str, tmp_path: Path
) -> None:
    """``build_actors`` gives the gate actor the container's ``gate_applier``: a consumer's
    ``apply_gate_state`` message applies the decision to the gate the container built."""
    container = bootstrap(fast_settings(sqlite_db, tmp_path))
    applied: list[str] = []
    container.extras["gate_applier"] = applied.append
    try:
        build_actors(container).by_name["apply_gate_state"].fn("evt_3")
    finally:
        container.close()
    assert applied == ["evt_3"]


def test_deliver_notice_passes_on_its_messages_retries_and_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="enforcement.workers")
    delivery = FakeDelivery()
    deliver = stub_actors(delivery).by_name["deliver_notice"]
    deliver("evt_1", "email")  # outside a worker: no message
    with current_message(None, "msg_2"):
        deliver("evt_2", "webhook")
    with current_message(2, "msg_3"):
        deliver("evt_3", "email")
    assert delivery.calls == [
        ("evt_1", "email", 0, 3, None),
        ("evt_2", "webhook", 0, 3, "msg_2"),
        ("evt_3", "email", 2, 3, "msg_3"),
    ]
    assert [r.getMessage() for r in caplog.records][-1] == "notice evt_3 via email: delivered"


def test_a_failed_try_is_retried_by_dramatiq(caplog: pytest.LogCaptureFixture) -> None:
    deliver = stub_actors(FakeDelivery(DeliveryFailed("HTTP 503"))).by_name["deliver_notice"]
    with pytest.raises(dramatiq.Retry, match="HTTP 503"):
        deliver("evt_1", "webhook")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "notice evt_1 via webhook: a try failed (HTTP 503); it is tried again")
    ]


@pytest.mark.parametrize(
    ("retries", "said"),
    [
        (
            2,
            "try 3 was cut off at its time limit (60000 ms) before it could record an outcome; "
            "it is tried again",
        ),
        (
            3,
            "its last try was cut off at its time limit (60000 ms) before it could record an "
            "outcome; the leader's lost-retry scan looks at it again",
        ),
    ],
)
def test_a_try_cut_off_says_which_try_and_what_comes_of_it(
    retries: int, said: str, caplog: pytest.LogCaptureFixture
) -> None:
    deliver = stub_actors(FakeDelivery(TimeLimitExceeded())).by_name["deliver_notice"]
    with current_message(retries, "msg_1"), pytest.raises(TimeLimitExceeded):
        deliver("evt_1", "webhook")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("ERROR", f"notice evt_1 via webhook: {said}")
    ]


@pytest.mark.parametrize(("retries", "logged"), [(2, False), (3, True)])
def test_an_unexpected_error_is_named_only_on_the_last_try(
    retries: int, logged: bool, caplog: pytest.LogCaptureFixture
) -> None:
    deliver = stub_actors(FakeDelivery(RuntimeError("boom"))).by_name["deliver_notice"]
    with current_message(retries, "msg_1"), pytest.raises(RuntimeError, match="boom"):
        deliver("evt_1", "webhook")
    last = (
        "ERROR",
        "notice evt_1 via webhook: its last try failed before it could record an outcome; "
        "the leader's lost-retry scan looks at it again",
    )
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == ([last] if logged else [])
