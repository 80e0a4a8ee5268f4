"""Which notices a restart sends again (``recovery.notices_without_outcome``), on SQLite and on
PostgreSQL: a notice is done only once every channel it goes out on has a final outcome."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dramatiq
import pytest
import sqlalchemy as sa

from enforcement.bootstrap import Container, bootstrap
from enforcement.gate.base import EPOCH
from enforcement.migrations import upgrade
from enforcement.notice_listing import listed_notices
from enforcement.notices.delivery import (
    delivered_key,
    failed_key,
    undeliverable_key,
)
from enforcement.service import Actor
from enforcement.tables import contacts
from enforcement.workers.recovery import (
    CONTACTS_CHECKPOINT,
    LOST_RETRIES_CHECKPOINT,
    RECOVERY_WINDOW,
    UNTRIED_CHECKPOINT,
    LostRetryScan,
    _contacts,
    contact_changed_deliveries,
    lost_retries,
    notices_without_outcome,
    pending_deliveries,
    untried_deliveries,
)
from enforcement.workers.relay import CHECKPOINT
from enforcement.workers.runtime import build_actors
from events.timefmt import to_utc
from projections import aup_events as ev
from tests.locks import waiting_on_a_lock
from tests.workers.system import Receiver, fast_settings, report, set_contact, wait_until

WORKER = Actor(name="worker:test", correlation_id="test")
T0 = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)


def notice_of(system: Container, account: str) -> str:
    [notice] = [e for e in report(system, account).events if e.type == "NoticeIssued"]
    return notice.event_id


def delivered(system: Container, account: str, notice: str, channel: str) -> None:
    payload = ev.NoticeDelivered("ntc", notice, channel, 1)
    key = delivered_key(notice, channel)
    system.service.record_fact(account, payload, WORKER, idempotency_key=key)


def failed(system: Container, account: str, notice: str, channel: str, final: bool) -> None:
    payload = ev.NoticeDeliveryFailed("ntc", notice, channel, 1, "down", final)
    system.service.record_fact(account, payload, WORKER)


def test_a_notice_is_pending_until_each_of_its_channels_has_a_final_outcome(
    database_url: str, tmp_path: Path
) -> None:
    upgrade(database_url)
    system = bootstrap(fast_settings(database_url, tmp_path))
    try:
        both = {"email": "a@customer.test", "webhook_url": "https://customer.test/hook"}
        for account in ("acct_both", "acct_half", "acct_web", "acct_none", "acct_retrying"):
            if account != "acct_none":
                contact = both if account != "acct_web" else {"webhook_url": both["webhook_url"]}
                set_contact(system.engine, account, **contact)
        notices = {
            account: notice_of(system, account)
            for account in ("acct_both", "acct_half", "acct_web", "acct_none", "acct_retrying")
        }
        # Both channels out; one channel out and the other still retrying; the only channel out;
        # no contact (undeliverable, final on "none"); a failed attempt that is not final.
        delivered(system, "acct_both", notices["acct_both"], "webhook")
        failed(system, "acct_both", notices["acct_both"], "email", final=True)
        delivered(system, "acct_half", notices["acct_half"], "webhook")
        failed(system, "acct_half", notices["acct_half"], "email", final=False)
        delivered(system, "acct_web", notices["acct_web"], "webhook")
        failed(system, "acct_none", notices["acct_none"], "none", final=True)
        failed(system, "acct_retrying", notices["acct_retrying"], "webhook", final=False)

        pending = notices_without_outcome(system.store, system.clock())

        assert sorted(pending) == sorted([notices["acct_half"], notices["acct_retrying"]])
        # Only the channels without a final outcome go out again.
        assert sorted(pending_deliveries(system.store, system.clock())) == sorted(
            [
                (notices["acct_half"], "email"),
                (notices["acct_retrying"], "email"),
                (notices["acct_retrying"], "webhook"),
            ]
        )
        up_to = system.store.get_event(notices["acct_half"])
        assert up_to is not None
        assert notices_without_outcome(
            system.store, system.clock(), up_to_position=up_to.position
        ) == [notices["acct_half"]]
        # A notice is looked at for 14 days (the recovery window) from when it was recorded.
        last_day = up_to.recorded_at + timedelta(days=14)
        assert notices["acct_half"] in notices_without_outcome(system.store, last_day)
        after_it = last_day + timedelta(microseconds=1)
        assert notices["acct_half"] not in notices_without_outcome(system.store, after_it)
    finally:
        system.close()


def test_a_channel_set_after_a_notice_is_not_sent_it_again(
    database_url: str, tmp_path: Path
) -> None:
    """A re-send goes out on the channels the account had when the notice was recorded: a
    webhook added after its notice went out by e-mail is not sent it (nor two weeks of old
    notices) at the next re-send, only the notices recorded since; a notice whose channels
    are all newer than it goes out on them rather than on none; a channel set before the
    columns existed (NULL) counts as set since always."""
    upgrade(database_url)
    system = bootstrap(fast_settings(database_url, tmp_path))
    try:
        accounts = ("acct_later", "acct_retry", "acct_lost", "acct_legacy")
        notices = {account: notice_of(system, account) for account in accounts}
        hook, email = "https://customer.test/hook", "owner@customer.test"
        now = system.clock()
        before = now - timedelta(days=30)
        for account in ("acct_later", "acct_retry"):  # e-mail then, a webhook added since
            set_contact(system.engine, account, email, hook, email_since=before, webhook_since=now)
        set_contact(system.engine, "acct_lost", email, hook, email_since=now, webhook_since=now)
        set_contact(system.engine, "acct_legacy", email, hook)
        delivered(system, "acct_later", notices["acct_later"], "email")
        failed(system, "acct_retry", notices["acct_retry"], "email", final=False)
        delivered(system, "acct_legacy", notices["acct_legacy"], "email")
        recorded_since = notice_of(system, "acct_later")  # after the webhook was set

        assert sorted(pending_deliveries(system.store, system.clock())) == sorted(
            [
                (notices["acct_retry"], "email"),
                (notices["acct_lost"], "email"),
                (notices["acct_lost"], "webhook"),
                (notices["acct_legacy"], "webhook"),
                (recorded_since, "email"),
                (recorded_since, "webhook"),
            ]
        )
        everything = untried_deliveries(system.store, 0, system.store.max_position(), before)
        assert (notices["acct_later"], "webhook") not in everything
        assert (recorded_since, "webhook") in everything
    finally:
        system.close()


def test_a_copy_sent_on_some_channels_is_sent_again_on_those_only(
    database_url: str, tmp_path: Path
) -> None:
    """Its other channels would only answer ``not_chosen``: they are neither sent nor counted
    (the re-send's log line counts what it sends)."""
    upgrade(database_url)
    system = bootstrap(fast_settings(database_url, tmp_path))
    try:
        set_contact(system.engine, "acct_copy", "a@customer.test", "https://customer.test/h")
        first = system.store.get_event(notice_of(system, "acct_copy"))
        assert first is not None
        delivered(system, "acct_copy", first.event_id, "email")
        delivered(system, "acct_copy", first.event_id, "webhook")
        copies = {
            chosen: system.service.resend_notice(
                "acct_copy", first.data["notice_id"], "r", WORKER, channels=chosen
            )
            .events[0]
            .event_id
            for chosen in (("webhook",), ("email",), None)
        }

        expected = [
            (copies[("webhook",)], "webhook"),
            (copies[("email",)], "email"),
            (copies[None], "email"),
            (copies[None], "webhook"),
        ]
        assert pending_deliveries(system.store, system.clock()) == expected
        since = system.clock() - timedelta(days=1)
        assert untried_deliveries(system.store, 0, system.store.max_position(), since) == expected
    finally:
        system.close()


def test_an_outcome_or_a_channel_set_at_the_instant_of_its_notice_counts(
    database_url: str, tmp_path: Path
) -> None:
    """With a clock that stands still: an outcome recorded at the very instant its notice was
    is its outcome on the window's last day too (the notice is not sent again), and a channel
    set at the very instant a notice was recorded was set by then (the notice went out on it,
    so a re-send goes out on it too); a copy sent at the instant of its notice settles it on
    that last day too (a contact that replaced its channels gets the copy, not it)."""
    upgrade(database_url)
    system = bootstrap(fast_settings(database_url, tmp_path), clock=lambda: T0)
    try:
        hook, email = "https://customer.test/hook", "owner@customer.test"
        set_contact(system.engine, "acct_done", webhook_url=hook)
        month_ago = T0 - timedelta(days=30)
        set_contact(system.engine, "acct_new", email, hook, email_since=month_ago, webhook_since=T0)
        set_contact(system.engine, "acct_copied", webhook_url=hook, webhook_since=month_ago)
        done = notice_of(system, "acct_done")
        new = notice_of(system, "acct_new")
        copied = notice_of(system, "acct_copied")
        delivered(system, "acct_done", done, "webhook")
        copy = copy_of(system, "acct_copied", copied)  # settles it, at that very instant
        tomorrow = T0 + timedelta(days=1)
        set_contact(system.engine, "acct_copied", email, email_since=tomorrow)

        last_day = T0 + RECOVERY_WINDOW
        expected = [(new, "email"), (new, "webhook"), (copy, "email")]
        assert pending_deliveries(system.store, last_day) == expected
    finally:
        system.close()


def test_the_contacts_of_many_accounts_are_read_in_chunks_none_left_out(
    sqlite_db: str, tmp_path: Path
) -> None:
    """The notices sent again are many after a Redis lost its data: their accounts' contacts
    are read 500 at a time, and one left out between two chunks would go out by e-mail alone
    (a webhook lost) or, without an address, on no channel."""
    system = bootstrap(fast_settings(sqlite_db, tmp_path))
    try:
        accounts = {f"acct_{n:04}" for n in range(1001)}
        hook = "https://customer.test/hook"
        rows = [{"account_id": a, "webhook_url": hook, "updated_at": T0} for a in accounts]
        with system.engine.begin() as conn:
            conn.execute(contacts.insert(), rows)
        with system.engine.connect() as conn:
            contact_of = _contacts(conn, accounts | {"acct_without"})
        assert set(contact_of) == accounts
    finally:
        system.close()


def test_a_notice_sent_again_numbers_its_attempts_on_and_keeps_its_limit(
    sqlite_db: str, tmp_path: Path
) -> None:
    """A message sent again (its broker lost the first) starts its own retries at 0. Its
    attempts are numbered on from those recorded, so each is recorded (under a key of its own)
    and the notice's limit of attempts holds across messages."""
    receiver = Receiver(fail_first=100)
    system = bootstrap(fast_settings(sqlite_db, tmp_path, notice_retries=2))
    try:
        set_contact(system.engine, "acct_again", webhook_url=receiver.url)
        notice = notice_of(system, "acct_again")
        deliver = build_actors(system).by_name["deliver_notice"].fn
        for _ in range(2):  # two messages, each on its first try (retries 0), each failing
            with pytest.raises(dramatiq.Retry):  # (DeliveryFailed, as Dramatiq's Retry)
                deliver(notice, "webhook")
        deliver(notice, "webhook")  # the third attempt is the last the limit allows

        failures = [
            (e.data["attempt"], e.data["final"])
            for e in system.store.read_stream("acct_again")
            if e.type == "NoticeDeliveryFailed"
        ]
        assert failures == [(1, False), (2, False), (3, True)]
        assert len(receiver.requests) == 3
        assert notices_without_outcome(system.store, system.clock()) == []
    finally:
        receiver.close()
        system.close()


def test_a_failed_attempt_that_nothing_followed_has_lost_its_retry(
    database_url: str, tmp_path: Path
) -> None:
    """``lost_retries``: the failed attempts recorded in the range that were not final and
    that no delivery, no "undeliverable" and no later attempt on their channel followed (a
    later one, not only the next: a failure that could not be recorded leaves a gap)."""
    upgrade(database_url)
    system = bootstrap(fast_settings(database_url, tmp_path))
    try:
        accounts = (
            "acct_lost",
            "acct_next",
            "acct_done",
            "acct_gap",
            "acct_gone",
            "acct_final",
            "acct_untried",
            "acct_last",
        )
        for account in accounts:
            set_contact(system.engine, account, webhook_url="https://customer.test/hook")
        notice = {account: notice_of(system, account) for account in accounts}
        start = system.clock() - timedelta(seconds=1)
        for account in accounts[:5]:
            attempt(system, account, notice[account], 1, final=False)
        attempt(system, "acct_next", notice["acct_next"], 2, final=False)  # the retry came
        delivered(system, "acct_done", notice["acct_done"], "webhook")
        attempt(system, "acct_gap", notice["acct_gap"], 3, final=True)  # 2 was never recorded
        payload = ev.NoticeDeliveryFailed("ntc", notice["acct_gone"], "none", 2, "no contact", True)
        key = undeliverable_key(notice["acct_gone"])
        system.service.record_fact("acct_gone", payload, WORKER, idempotency_key=key)
        attempt(system, "acct_final", notice["acct_final"], 1, final=True)
        attempt(system, "acct_last", notice["acct_last"], 3, final=False)
        attempt(system, "acct_last", notice["acct_last"], 4, final=True)  # the next, the last
        end = system.clock() + timedelta(seconds=1)

        assert lost_retries(system.store, start, end, 4) == [
            (notice["acct_lost"], "webhook"),
            (notice["acct_next"], "webhook"),  # its second attempt is not followed either
        ]
        # An attempt outside the range is not looked at (each scan looks at its own range).
        assert lost_retries(system.store, end, end + timedelta(hours=1), 4) == []
        # The range is (after, until]: an attempt recorded at its end is in it, and not in the
        # next one, which begins there.
        [at] = [
            e.recorded_at
            for e in system.store.read_stream("acct_lost")
            if e.type == "NoticeDeliveryFailed"
        ]
        assert (notice["acct_lost"], "webhook") in lost_retries(system.store, start, at, 4)
        assert (notice["acct_lost"], "webhook") not in lost_retries(system.store, at, end, 4)
    finally:
        system.close()


def test_a_relayed_notice_with_nothing_recorded_after_it_is_sent_again(
    database_url: str, tmp_path: Path
) -> None:
    """``LostRetryScan`` also sends a relayed notice's channel that has no outcome at all once
    it is older than any retry waits: its message died without recording anything (every try
    failed before it could, e.g. with the database away), so no failed attempt is there for
    ``lost_retries``. Not a channel that recorded anything, not a notice the relay has not
    passed yet (it sends that itself), not one recorded undeliverable."""
    upgrade(database_url)
    system = bootstrap(fast_settings(database_url, tmp_path))
    try:
        hook = "https://customer.test/hook"
        for account in ("acct_untried", "acct_half", "acct_tried", "acct_unrelayed"):
            set_contact(system.engine, account, email=f"{account}@customer.test", webhook_url=hook)
        notice = {a: notice_of(system, a) for a in ("acct_untried", "acct_half", "acct_tried")}
        notice["acct_none"] = notice_of(system, "acct_none")
        with system.engine.begin() as conn:
            system.store.set_checkpoint(conn, CHECKPOINT, system.store.max_position())
        notice_of(system, "acct_unrelayed")
        delivered(system, "acct_half", notice["acct_half"], "email")
        attempt(system, "acct_tried", notice["acct_tried"], 1, final=True, channel="email")
        delivered(system, "acct_tried", notice["acct_tried"], "webhook")
        payload = ev.NoticeDeliveryFailed("ntc", notice["acct_none"], "none", 1, "none", True)
        key = undeliverable_key(notice["acct_none"])
        system.service.record_fact("acct_none", payload, WORKER, idempotency_key=key)

        sent: list[list[tuple[str, str]]] = []
        assert leader(system, system.clock() + timedelta(seconds=1)).run(sent.append) == [
            (notice["acct_untried"], "email"),
            (notice["acct_untried"], "webhook"),
            (notice["acct_half"], "webhook"),
        ]
        assert sent == [
            [
                (notice["acct_untried"], "email"),
                (notice["acct_untried"], "webhook"),
                (notice["acct_half"], "webhook"),
            ]
        ]
        # The notices after one position and up to another, recorded since a time: a notice at
        # the position a look reached, or recorded at that time, is in; one at the position the
        # last look reached is not (that look judged it).
        untried = system.store.get_event(notice["acct_untried"])
        half = system.store.get_event(notice["acct_half"])
        assert untried is not None and half is not None
        at, since = untried.position, untried.recorded_at
        both = [(notice["acct_untried"], "email"), (notice["acct_untried"], "webhook")]
        assert untried_deliveries(system.store, at - 1, at, since) == both
        assert untried_deliveries(system.store, at, half.position - 1, since) == []
        # An outcome recorded before a later notice is still its notice's outcome.
        notice_of(system, "acct_late")
        everything = untried_deliveries(system.store, 0, system.store.max_position(), since)
        assert (notice["acct_half"], "webhook") in everything
        assert (notice["acct_half"], "email") not in everything
    finally:
        system.close()


def test_a_new_leader_looks_for_lost_retries_from_where_the_last_one_stopped(
    database_url: str, tmp_path: Path
) -> None:
    """``LostRetryScan`` keeps how far it looked in the database: a new leader's first look
    does not send again what the last leader sent, nor read the recovery window again. The
    range moves on only once the deliveries were sent, by a leader that still leads."""
    upgrade(database_url)
    system = bootstrap(fast_settings(database_url, tmp_path))
    try:
        set_contact(system.engine, "acct_lost", webhook_url="https://customer.test/hook")
        notice = notice_of(system, "acct_lost")
        attempt(system, "acct_lost", notice, 1, final=False)
        now = system.clock() + timedelta(seconds=1)
        sent: list[list[tuple[str, str]]] = []

        def enqueue_fails(lost: list[tuple[str, str]]) -> None:
            raise ConnectionError("the broker is away")

        first = leader(system, now)
        assert first.scanned_until() is None
        with pytest.raises(ConnectionError):
            first.run(enqueue_fails)
        assert first.scanned_until() is None  # the range is left to the next look
        assert first.run(sent.append, leads=lambda: False) == []  # deposed meanwhile
        assert (sent, first.scanned_until()) == ([], None)
        deposed_while_sending = iter([True, False])
        assert first.run(sent.append, leads=deposed_while_sending.__next__) == [(notice, "webhook")]
        assert first.scanned_until() is None  # sent, and left to the next look all the same
        sent.clear()
        assert first.run(sent.append) == [(notice, "webhook")]
        assert sent == [[(notice, "webhook")]]
        assert first.scanned_until() == now
        assert first.run(sent.append) == []  # a look again at the same instant: nothing new

        # A new leader, a minute later, goes on from there: nothing to send again.
        second = leader(system, now + timedelta(minutes=1))
        assert second.run(sent.append) == []
        assert sent[1:] == [[], []]
        assert second.scanned_until() == now + timedelta(minutes=1)
        # The relay never moved here: no look took up a notice (the notices' checkpoint stays).
        assert untried_until(system) == 0
    finally:
        system.close()


def test_a_lost_retry_checkpoint_ahead_of_the_clock_is_moved_back(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A leader whose clock ran a day ahead left the checkpoint a day ahead. Going on from
    there would skip for good the attempts recorded meanwhile by processes with right clocks:
    the next leader looks back over the recovery window instead, finds them, and moves the
    checkpoint back to its own time. A checkpoint older than the window is looked back over
    only as far as the window."""
    upgrade(database_url)
    system = bootstrap(fast_settings(database_url, tmp_path))
    try:
        set_contact(system.engine, "acct_skew", webhook_url="https://customer.test/hook")
        notice = notice_of(system, "acct_skew")
        ahead = leader(system, system.clock() + timedelta(days=1))
        assert ahead.run(lambda lost: None) == []
        attempt(system, "acct_skew", notice, 1, final=False)  # recorded by a right clock
        now = system.clock() + timedelta(seconds=1)

        right = leader(system, now)
        assert right.run(lambda lost: None) == [(notice, "webhook")]
        assert right.scanned_until() == now  # moved back
        [warned] = [r for r in caplog.records if "ahead of this leader's clock" in r.getMessage()]
        assert warned.name == "enforcement.workers"

        with system.engine.begin() as conn:
            system.store.set_checkpoint(conn, LOST_RETRIES_CHECKPOINT, 1)  # the epoch
        pause = leader(system, now + RECOVERY_WINDOW + timedelta(seconds=1))
        assert pause.run(lambda lost: None) == []  # the attempt is before the window
        assert pause.scanned_until() == now + RECOVERY_WINDOW + timedelta(seconds=1)
    finally:
        system.close()


def leader(system: Container, clock_at: datetime) -> LostRetryScan:
    """The scan of a leader whose clock reads ``clock_at``, taking every attempt for lost."""
    return LostRetryScan(system.store, lambda: clock_at, timedelta(0), 4)


def attempt(
    system: Container, account: str, notice: str, n: int, final: bool, channel: str = "webhook"
) -> None:
    payload = ev.NoticeDeliveryFailed("ntc", notice, channel, n, "down", final)
    key = failed_key(notice, channel, n)
    system.service.record_fact(account, payload, WORKER, idempotency_key=key)


def test_a_backlog_the_relay_enqueued_just_now_is_not_sent_again(
    database_url: str, tmp_path: Path
) -> None:
    """The workers away for longer than ``lost_after`` while ``serve`` kept recording: when they
    come back, the relay enqueues the backlog at once, and the leader's first look finds
    notices recorded longer ago than any retry waits with nothing recorded after them, as
    their first messages are only now in the queue. Sent again, each would go out twice.
    The look judges a notice by when the relay enqueued it: only once the relay position that
    passed it was seen ``lost_after`` ago, and then it sends only what still has nothing
    recorded (a message that died without a trace)."""
    system = bootstrap(fast_settings(database_url, tmp_path))
    try:
        for account in ("acct_backlog", "acct_gone"):
            set_contact(system.engine, account, webhook_url="https://customer.test/hook")
        lost_after = timedelta(hours=1)
        before = system.clock()
        sent: list[list[tuple[str, str]]] = []

        def look(at: datetime) -> list[tuple[str, str]]:
            return LostRetryScan(system.store, lambda: at, lost_after, 4).run(sent.append)

        assert look(before) == []  # the last look before the workers went away
        assert untried_until(system) == 0  # the relay was seen nowhere an hour ago yet
        backlog = notice_of(system, "acct_backlog")
        gone = notice_of(system, "acct_gone")
        back = system.clock() + timedelta(hours=2)  # the workers come back two hours later
        relay_to(system, system.store.max_position())  # and the relay enqueues the backlog

        assert look(back) == []
        # The backlog's first messages run: one delivers, the other dies without a trace.
        delivered(system, "acct_backlog", backlog, "webhook")
        assert look(back + lost_after - timedelta(minutes=5)) == []
        assert look(back + lost_after + timedelta(minutes=5)) == [(gone, "webhook")]
        assert look(back + lost_after + timedelta(minutes=10)) == []  # once
        assert [s for s in sent if s] == [[(gone, "webhook")]]
    finally:
        system.close()


def relay_to(system: Container, position: int) -> None:
    """The relay enqueued everything up to ``position``."""
    with system.engine.begin() as conn:
        system.store.set_checkpoint(conn, CHECKPOINT, position)


def test_a_relayed_notice_is_looked_at_once_the_relay_was_seen_past_it_long_enough_ago(
    database_url: str, tmp_path: Path
) -> None:
    """Each look writes down the relay's position and when it saw it, in the database: a new
    leader takes up what the last one saw, and looks at the notices up to the furthest
    position seen ``lost_after`` ago once. The position moves on (and the rows it took up go)
    only once the deliveries were sent by a leader that still leads."""
    system = bootstrap(fast_settings(database_url, tmp_path))
    try:
        set_contact(system.engine, "acct_died", webhook_url="https://customer.test/hook")
        notice = notice_of(system, "acct_died")
        relay_to(system, system.store.max_position())
        position = system.store.max_position()
        lost_after = timedelta(hours=1)
        sent: list[list[tuple[str, str]]] = []

        def leader_at(at: datetime) -> LostRetryScan:
            return LostRetryScan(system.store, lambda: at, lost_after, 4)

        start = system.clock()
        assert leader_at(start).run(sent.append) == []
        assert leader_at(start).relay_positions_seen() == {start: position}

        # Another leader, when that was seen lost_after ago: a failed enqueue, then deposed.
        later = start + lost_after

        def enqueue_fails(lost: list[tuple[str, str]]) -> None:
            raise ConnectionError("the broker is away")

        with pytest.raises(ConnectionError):
            leader_at(later).run(enqueue_fails)
        assert leader_at(later).run(sent.append, leads=lambda: False) == []
        assert sent == [[]]
        assert leader_at(later).run(sent.append) == [(notice, "webhook")]
        assert sent == [[], [(notice, "webhook")]]
        assert leader_at(later).relay_positions_seen() == {later: position}

        # Once: the position seen later is no further than the one taken up.
        assert leader_at(later + lost_after).run(sent.append) == []
        assert leader_at(later).relay_positions_seen() == {later + lost_after: position}
    finally:
        system.close()


def untried_until(system: Container) -> int:
    with system.engine.connect() as conn:
        return system.store.get_checkpoint(conn, UNTRIED_CHECKPOINT)


def test_a_leader_that_finishes_last_leaves_the_further_untried_position(
    database_url: str, tmp_path: Path
) -> None:
    """Two leaders (a deposed one finishing late): the slow one saw the relay at 100 and
    finishes after the other, which saw it at 200. The position taken up stays at 200: moved
    back, the next look would read those notices again."""
    system = bootstrap(fast_settings(database_url, tmp_path))
    try:
        relay_to(system, 100)
        now = system.clock()

        def the_other_leads_meanwhile(lost: list[tuple[str, str]]) -> None:
            relay_to(system, 200)
            leader(system, now + timedelta(seconds=1)).run(lambda lost: None)
            assert untried_until(system) == 200

        leader(system, now).run(the_other_leads_meanwhile)
        assert untried_until(system) == 200
    finally:
        system.close()


@pytest.mark.postgres
def test_two_leaders_writing_at_once_never_move_the_untried_position_back(
    pg_url: str, tmp_path: Path
) -> None:
    """On PostgreSQL the other leader's transaction writes 200 and is still open when this
    leader, which saw the relay at 100, writes: it waits, and then must change nothing. A
    read-then-write at READ COMMITTED read 50 (the last committed), waited for the row, and
    wrote 100 over the 200."""
    upgrade(pg_url)
    system = bootstrap(fast_settings(pg_url, tmp_path))
    try:
        with system.engine.begin() as conn:
            system.store.set_checkpoint(conn, UNTRIED_CHECKPOINT, 50)
        relay_to(system, 100)
        failed: list[BaseException] = []

        def look() -> None:
            try:
                leader(system, system.clock()).run(lambda lost: None)
            except BaseException as exc:
                failed.append(exc)

        with system.engine.connect() as other, other.begin():
            system.store.set_checkpoint(other, UNTRIED_CHECKPOINT, 200)
            this = threading.Thread(target=look)
            this.start()
            wait_until(lambda: waiting_on_a_lock(system.engine), "this leader's write waits")
        this.join(20)
        assert (this.is_alive(), failed) == (False, [])
        assert untried_until(system) == 200
    finally:
        system.close()


def test_two_leaders_writing_the_lost_retry_checkpoint_first_at_once_keep_the_last_one(
    pg_url: str, tmp_path: Path
) -> None:
    """On PostgreSQL another leader, whose clock is a day ahead, writes the lost-retry
    checkpoint for the first time and its transaction is still open when this leader's first
    look writes it too: this one waits for the row, then writes its own time over it (the
    checkpoint may move back). An update then an insert failed there on the unique name, and
    the whole look was rolled back."""
    upgrade(pg_url)
    system = bootstrap(fast_settings(pg_url, tmp_path))
    try:
        now = system.clock()
        ahead = (to_utc(now) + timedelta(days=1) - EPOCH) // timedelta(microseconds=1)
        failed: list[BaseException] = []

        def look() -> None:
            try:
                leader(system, now).run(lambda lost: None)
            except BaseException as exc:
                failed.append(exc)

        with system.engine.connect() as other, other.begin():
            system.store.set_checkpoint(other, LOST_RETRIES_CHECKPOINT, ahead)
            this = threading.Thread(target=look)
            this.start()
            wait_until(lambda: waiting_on_a_lock(system.engine), "this leader's write waits")
        this.join(20)
        assert (this.is_alive(), failed) == (False, [])
        assert leader(system, now).scanned_until() == now
    finally:
        system.close()


def test_a_look_reads_the_checkpoints_in_one_query(database_url: str, tmp_path: Path) -> None:
    """The relay's position, both checkpoints and the relay positions seen are read together
    at the start of a look (not a connection for each), and the look still takes up what it
    saw."""
    system = bootstrap(fast_settings(database_url, tmp_path))
    try:
        relay_to(system, 100)
        reads: list[str] = []

        def note(_conn: object, _cursor: object, statement: str, *_: object) -> None:
            if statement.lstrip().upper().startswith("SELECT") and "checkpoints" in statement:
                reads.append(statement)

        sa.event.listen(system.engine, "before_cursor_execute", note)
        try:
            leader(system, system.clock()).run(lambda lost: None)
        finally:
            sa.event.remove(system.engine, "before_cursor_execute", note)
        assert len(reads) == 1
        assert untried_until(system) == 100
    finally:
        system.close()


def copy_of(
    system: Container, account: str, notice: str, channels: tuple[str, ...] | None = None
) -> str:
    """An operator's copy of ``notice`` (``POST …/resend``), to every channel or to
    ``channels``."""
    first = system.store.get_event(notice)
    assert first is not None
    outcome = system.service.resend_notice(
        account, first.data["notice_id"], "r", WORKER, channels=channels
    )
    return outcome.events[0].event_id


def test_a_settled_notice_is_not_sent_to_a_contact_that_replaced_its_channels(
    database_url: str, tmp_path: Path
) -> None:
    """A notice whose every channel is newer than it goes out on those, unless it is settled:
    a channel delivered it, or a copy will reach the account in its place (one sent on every
    channel, or one delivered; it settles the first notice and the copies of it before). A
    webhook-only contact replaced by an e-mail address then does not get a second time, by
    e-mail, what its webhook delivered, nor a notice and its copies each: the last copy goes.
    A notice whose copy was sent on the webhook alone and refused goes out by e-mail itself
    (that copy goes out on no new channel); one whose webhook-only copy was delivered does
    not; nor one whose webhook-only copy was copied again on every channel (the last copy
    goes), nor a notice copied twice and its first copy (the second goes: review rv7 R1). A
    notice that failed on the webhook and was not copied goes out by e-mail."""
    upgrade(database_url)
    system = bootstrap(fast_settings(database_url, tmp_path))
    try:
        accounts = (
            "reached",
            "copied",
            "failed",
            "chain",
            "chosen_failed",
            "chosen_reached",
            "chosen_chain",
            "two_copies",
        )
        month_ago = system.clock() - timedelta(days=30)
        for account in accounts:
            hook = "https://customer.test/hook"
            set_contact(system.engine, account, webhook_url=hook, webhook_since=month_ago)
        notices = {account: notice_of(system, account) for account in accounts}
        failed(system, "reached", notices["reached"], "webhook", final=False)
        delivered(system, "reached", notices["reached"], "webhook")
        for account in accounts[1:]:
            failed(system, account, notices[account], "webhook", final=True)
        copy = copy_of(system, "copied", notices["copied"])
        failed(system, "copied", copy, "webhook", final=True)
        once = copy_of(system, "chain", notices["chain"])
        failed(system, "chain", once, "webhook", final=True)
        twice = copy_of(system, "chain", once)  # a copy of the copy
        failed(system, "chain", twice, "webhook", final=True)
        webhook = ("webhook",)
        refused = copy_of(system, "chosen_failed", notices["chosen_failed"], webhook)
        failed(system, "chosen_failed", refused, "webhook", final=True)
        reached = copy_of(system, "chosen_reached", notices["chosen_reached"], webhook)
        delivered(system, "chosen_reached", reached, "webhook")
        partly = copy_of(system, "chosen_chain", notices["chosen_chain"], webhook)
        failed(system, "chosen_chain", partly, "webhook", final=True)
        wholly = copy_of(system, "chosen_chain", partly)  # of that copy, on every channel
        failed(system, "chosen_chain", wholly, "webhook", final=True)
        first_copy = copy_of(system, "two_copies", notices["two_copies"])
        failed(system, "two_copies", first_copy, "webhook", final=True)
        second_copy = copy_of(system, "two_copies", notices["two_copies"])  # the notice again
        failed(system, "two_copies", second_copy, "webhook", final=True)
        now = system.clock()
        for account in accounts:  # the webhook replaced by an e-mail address
            set_contact(system.engine, account, "owner@customer.test", email_since=now)

        expected = [
            (notices["failed"], "email"),
            (notices["chosen_failed"], "email"),
            (copy, "email"),
            (twice, "email"),
            (wholly, "email"),
            (second_copy, "email"),
        ]
        assert pending_deliveries(system.store, system.clock()) == expected
        everything = untried_deliveries(system.store, 0, system.store.max_position(), month_ago)
        assert everything == expected
        listed = {
            n.notice_event_id: [c.channel for c in n.channels if c.state == "awaiting"]
            for account in accounts
            for n in listed_notices(system, account)
        }
        awaited = sorted((n, c) for n, channels in listed.items() for c in channels)
        assert awaited == sorted(expected)  # the listing awaits what the re-send sends
    finally:
        system.close()


def change_contact(
    system: Container,
    account: str,
    at: datetime,
    email: str | None = None,
    webhook_url: str | None = None,
) -> None:
    """``PUT …/contact`` at ``at``: the contact replaced, each channel given set since then."""
    set_contact(
        system.engine,
        account,
        email,
        webhook_url,
        updated_at=at,
        email_since=None if email is None else at,
        webhook_since=None if webhook_url is None else at,
    )


def test_the_notices_a_changed_contact_gives_a_channel_are_those_with_nothing_on_it(
    database_url: str, tmp_path: Path
) -> None:
    """Of the accounts whose contact changed in the range, the notices up to the position
    given that the contact now gives a channel with nothing recorded on it: the webhook's
    notice retrying, or failed for good, gets the e-mail that replaced it; not one the webhook
    delivered, nor one after the position, nor one older than the recovery window, nor one
    whose account had no contact, nor an account changed outside the range."""
    upgrade(database_url)
    system = bootstrap(fast_settings(database_url, tmp_path))
    try:
        start = system.clock()
        month_ago = start - timedelta(days=30)
        names = ("retrying", "failed", "reached", "nobody", "same", "late")
        accounts = {name: f"acct_{name}" for name in names}
        for name, account in accounts.items():
            if name != "nobody":
                change_contact(system, account, month_ago, webhook_url="https://customer.test/h")
        notices = {name: notice_of(system, account) for name, account in accounts.items()}
        failed(system, accounts["retrying"], notices["retrying"], "webhook", final=False)
        failed(system, accounts["failed"], notices["failed"], "webhook", final=True)
        delivered(system, accounts["reached"], notices["reached"], "webhook")
        failed(system, accounts["nobody"], notices["nobody"], "none", final=True)
        relayed = system.store.get_event(notices["same"])
        assert relayed is not None
        changed = system.clock()
        for name in ("retrying", "failed", "reached", "nobody", "late"):
            change_contact(system, accounts[name], changed, email="owner@customer.test")
        change_contact(system, accounts["same"], changed - timedelta(hours=1), email="o@c.test")

        def look(after: datetime, until: datetime, now: datetime) -> list[tuple[str, str]]:
            return contact_changed_deliveries(system.store, after, until, relayed.position, now)

        in_range = look(changed - timedelta(seconds=1), changed, changed)
        assert in_range == [(notices["retrying"], "email"), (notices["failed"], "email")]
        assert look(changed, changed + timedelta(hours=1), changed) == []  # after is excluded
        assert look(changed - timedelta(seconds=2), changed - timedelta(seconds=1), changed) == []
        at_failed = system.store.get_event(notices["failed"])
        assert at_failed is not None  # a notice at the position given is taken
        up_to_it = contact_changed_deliveries(
            system.store, changed - timedelta(seconds=1), changed, at_failed.position, changed
        )
        assert up_to_it == in_range
        first = system.store.get_event(notices["retrying"])
        assert first is not None
        window_end = to_utc(first.recorded_at) + RECOVERY_WINDOW
        assert look(changed - timedelta(seconds=1), changed, window_end) == in_range
        past_it = window_end + timedelta(microseconds=1)
        assert look(changed - timedelta(seconds=1), changed, past_it) == [
            (notices["failed"], "email")
        ]
    finally:
        system.close()


def test_an_outcome_or_a_copy_at_the_instant_of_its_notice_counts_for_a_changed_contact(
    database_url: str, tmp_path: Path
) -> None:
    """With a clock that stands still, on the window's last day: a failed attempt recorded at
    the very instant of its notice is on its channel (a contact that added an e-mail address
    gives the notice no webhook to send again), and a copy sent at that instant settles the
    notice (a contact that replaced its webhook by an e-mail address gets the copy, not it)."""
    upgrade(database_url)
    system = bootstrap(fast_settings(database_url, tmp_path), clock=lambda: T0)
    try:
        hook, email = "https://customer.test/hook", "owner@customer.test"
        month_ago = T0 - timedelta(days=30)
        for account in ("acct_tried", "acct_copied"):
            set_contact(system.engine, account, webhook_url=hook, webhook_since=month_ago)
        tried = notice_of(system, "acct_tried")
        copied = notice_of(system, "acct_copied")
        failed(system, "acct_tried", tried, "webhook", final=False)
        failed(system, "acct_copied", copied, "webhook", final=True)
        copy = copy_of(system, "acct_copied", copied)
        failed(system, "acct_copied", copy, "webhook", final=True)
        changed = T0 + timedelta(days=1)
        since = {"email_since": changed, "webhook_since": month_ago}
        set_contact(system.engine, "acct_tried", email, hook, updated_at=changed, **since)
        set_contact(system.engine, "acct_copied", email, updated_at=changed, email_since=changed)

        last_day = T0 + RECOVERY_WINDOW
        found = contact_changed_deliveries(
            system.store,
            changed - timedelta(seconds=1),
            changed,
            system.store.max_position(),
            last_day,
        )
        assert found == [(copy, "email")]
    finally:
        system.close()


def test_the_accounts_of_many_changed_contacts_are_looked_at_in_chunks_none_twice(
    sqlite_db: str, tmp_path: Path
) -> None:
    """Many contacts changed (an import): their accounts' notices are read 500 accounts at a
    time, and an account left out between two chunks would not get its notice, one in two
    chunks would get it twice."""
    system = bootstrap(fast_settings(sqlite_db, tmp_path))
    try:
        changed = system.clock()
        accounts = [f"acct_{n:04}" for n in range(1001)]
        email = "owner@customer.test"
        rows = [{"account_id": a, "email": email, "updated_at": changed} for a in accounts]
        with system.engine.begin() as conn:
            conn.execute(contacts.insert(), rows)
        at_the_edges = [accounts[n] for n in (499, 500, 998, 999)]
        notices = [notice_of(system, account) for account in at_the_edges]

        found = contact_changed_deliveries(
            system.store,
            changed - timedelta(seconds=1),
            changed,
            system.store.max_position(),
            system.clock(),
        )
        assert found == [(notice, "email") for notice in notices]
    finally:
        system.close()


def contacts_until(system: Container) -> datetime:
    with system.engine.connect() as conn:
        micros = system.store.get_checkpoint(conn, CONTACTS_CHECKPOINT)
    return EPOCH + timedelta(microseconds=micros)


def test_each_look_takes_the_contacts_changed_since_ten_minutes_before_the_last_one(
    database_url: str, tmp_path: Path
) -> None:
    """The leader's look (``LostRetryScan``) sends the notices of the accounts whose contact
    changed since ``CONTACT_CLOCK_MARGIN`` before its last look (a process whose clock is
    behind stamps its change earlier), over the recovery window at the first look ever and
    after a look by a clock ahead; it moves the checkpoint to its own time once it sent them
    (back, when a clock ahead wrote it), and not when it no longer leads."""
    upgrade(database_url)
    system = bootstrap(fast_settings(database_url, tmp_path))
    try:
        month_ago = system.clock() - timedelta(days=30)
        for account in ("acct_a", "acct_b"):
            change_contact(system, account, month_ago, webhook_url="https://customer.test/h")
        a, b = notice_of(system, "acct_a"), notice_of(system, "acct_b")
        for account, notice in (("acct_a", a), ("acct_b", b)):
            failed(system, account, notice, "webhook", final=True)
        relay_to(system, system.store.max_position())
        with system.engine.begin() as conn:  # both judged by earlier looks, with their webhook
            system.store.set_checkpoint(conn, UNTRIED_CHECKPOINT, system.store.max_position())
        t = system.clock()
        sent: list[list[tuple[str, str]]] = []

        def look(at: datetime, leads: bool = True) -> list[tuple[str, str]]:
            return leader(system, at).run(sent.append, lambda: leads)

        change_contact(system, "acct_a", t + timedelta(days=1), email="a@customer.test")
        first = t + timedelta(days=2)
        assert look(first) == [(a, "email")]  # the first look ever: the window back
        assert contacts_until(system) == first
        # Stamped before that look by clocks behind the leader's, written after it: 9.5 and
        # 5.5 minutes before it. The next look takes both; the one after, only changes since
        # 10 minutes before that next look: neither.
        change_contact(system, "acct_a", first - timedelta(minutes=9.5), email="a1@c.test")
        change_contact(system, "acct_b", first - timedelta(minutes=5.5), email="b@customer.test")
        second = first + timedelta(minutes=5)
        assert look(second) == [(a, "email"), (b, "email")]
        third = second + timedelta(minutes=5)
        assert look(third) == []
        assert sent == [[(a, "email")], [(a, "email"), (b, "email")], []]

        change_contact(system, "acct_a", third + timedelta(minutes=1), email="a2@customer.test")
        assert look(third + timedelta(minutes=5), leads=False) == []
        assert contacts_until(system) == third  # not moved by a look that no longer leads
        assert look(third + timedelta(minutes=5)) == [(a, "email")]

        # A checkpoint a day ahead (a leader whose clock was ahead wrote it): this look goes
        # back over the window, as the first one did (both accounts changed in it), and moves
        # the checkpoint back to its own time.
        fifth = third + timedelta(minutes=15)
        with system.engine.begin() as conn:
            ahead = (to_utc(fifth) + timedelta(days=1) - EPOCH) // timedelta(microseconds=1)
            system.store.set_checkpoint(conn, CONTACTS_CHECKPOINT, ahead)
        assert look(fifth) == [(a, "email"), (b, "email")]
        assert contacts_until(system) == fifth
        # A checkpoint at the look's own instant is not ahead: only the last 10 minutes.
        assert look(fifth) == []
    finally:
        system.close()


def test_a_look_without_a_relay_sighting_old_enough_still_sends_a_changed_contacts_notices(
    database_url: str, tmp_path: Path
) -> None:
    """Looks unevenly spaced (one late, as a slow sweep or a leader change makes them): the
    look at +25 min finds no relay sighting old enough to take up (each is taken up once), yet
    the notices judged before are still enqueued long ago, and a contact replaced two minutes
    before it gets its notice there. Before, that look looked up to position 0, sent nothing,
    and moved its checkpoint past the change for good. (Found by review rv6.)"""
    upgrade(database_url)
    system = bootstrap(fast_settings(database_url, tmp_path))
    try:
        month_ago = system.clock() - timedelta(days=30)
        change_contact(system, "acct_a", month_ago, webhook_url="https://customer.test/h")
        a = notice_of(system, "acct_a")
        failed(system, "acct_a", a, "webhook", final=True)
        relay_to(system, system.store.max_position())
        t = system.clock()

        def look(minutes: float) -> list[tuple[str, str]]:
            at = t + timedelta(minutes=minutes)
            return LostRetryScan(system.store, lambda: at, timedelta(minutes=15), 4).run(
                lambda lost: None
            )

        for minutes in (0, 5, 10.5, 15, 20):
            assert look(minutes) == []
        assert untried_until(system) == system.store.max_position()
        change_contact(system, "acct_a", t + timedelta(minutes=23), email="a@customer.test")
        assert look(25) == [(a, "email")]
    finally:
        system.close()
