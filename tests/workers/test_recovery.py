"""Which notices a restart sends again (``recovery.notices_without_outcome``), on SQLite and on
PostgreSQL: a notice is done only once every channel it goes out on has a final outcome."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from enforcement.bootstrap import Container, bootstrap
from enforcement.migrations import upgrade
from enforcement.notices.delivery import DeliveryFailed
from enforcement.service import Actor
from enforcement.workers.recovery import (
    notices_without_outcome,
    pending_deliveries,
    stranded_deliveries,
)
from enforcement.workers.runtime import build_actors
from projections import aup_events as ev
from tests.workers.system import Receiver, fast_settings, report, set_contact

WORKER = Actor(name="worker:test", correlation_id="test")


def notice_of(system: Container, account: str) -> str:
    [notice] = [e for e in report(system, account).events if e.type == "NoticeIssued"]
    return notice.event_id


def delivered(system: Container, account: str, notice: str, channel: str) -> None:
    system.service.record_fact(account, ev.NoticeDelivered("ntc", notice, channel, 1), WORKER)


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
            with pytest.raises(DeliveryFailed):
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


def test_a_delivery_is_stranded_once_nothing_was_recorded_on_it_for_the_quiet_time(
    database_url: str, tmp_path: Path
) -> None:
    """``stranded_deliveries``: the pending deliveries last heard of (the notice, or the
    channel's last failed attempt) ``quiet`` or longer ago; one with a final outcome never."""
    upgrade(database_url)
    system = bootstrap(fast_settings(database_url, tmp_path))
    try:
        for account in ("acct_never_tried", "acct_tried", "acct_done"):
            set_contact(system.engine, account, webhook_url="https://customer.test/hook")
        never_tried = notice_of(system, "acct_never_tried")
        tried = notice_of(system, "acct_tried")
        done = notice_of(system, "acct_done")
        issued_by = system.clock()
        failed(system, "acct_tried", tried, "webhook", final=False)
        failed(system, "acct_done", done, "webhook", final=False)
        delivered(system, "acct_done", done, "webhook")
        tried_at = max(
            e.recorded_at
            for e in system.store.read_stream("acct_tried")
            if e.type == "NoticeDeliveryFailed"
        )
        quiet = timedelta(hours=1)

        def stranded(now: datetime) -> list[tuple[str, str]]:
            return stranded_deliveries(system.store, now, quiet)

        assert stranded(issued_by + quiet - timedelta(seconds=1)) == []
        # (the untried notice was recorded before the other's failed attempt)
        assert stranded(tried_at + quiet - timedelta(microseconds=1)) == [(never_tried, "webhook")]
        assert stranded(tried_at + quiet) == [(never_tried, "webhook"), (tried, "webhook")]
        # the relay's checkpoint bounds it as it bounds ``pending_deliveries``
        first = system.store.get_event(never_tried)
        assert first is not None
        assert stranded_deliveries(
            system.store, tried_at + quiet, quiet, up_to_position=first.position
        ) == [(never_tried, "webhook")]
    finally:
        system.close()
