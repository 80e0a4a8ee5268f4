"""Recovery of notices whose messages a broker lost: the in-memory one at a restart (embedded
mode), a Redis that lost its data (``runtime.RedisWatch``), or a retry the broker could not
take (``stranded_deliveries``).

The relay's checkpoint has already moved past the ``NoticeIssued`` events it enqueued. Every
recent notice without a final outcome in the log (``NoticeDelivered``, or
``NoticeDeliveryFailed`` with ``final``) on a channel it goes out on is sent again; delivery is
idempotent per notice and channel, so a channel that did go out is not sent twice.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa

from enforcement.notices.delivery import Contact
from enforcement.tables import contacts
from events import EventStore
from events.schema import events
from events.timefmt import to_utc

RECOVERY_WINDOW = timedelta(days=14)


def notices_without_outcome(
    store: EventStore,
    now: datetime,
    window: timedelta = RECOVERY_WINDOW,
    up_to_position: int | None = None,
) -> list[str]:
    """Event ids of the notices ``pending_deliveries`` names, each once, in log order."""
    return list(dict.fromkeys(n for n, _ in pending_deliveries(store, now, window, up_to_position)))


def pending_deliveries(
    store: EventStore,
    now: datetime,
    window: timedelta = RECOVERY_WINDOW,
    up_to_position: int | None = None,
) -> list[tuple[str, str]]:
    """``(notice event id, channel)`` of each ``NoticeIssued`` event recorded within ``window``
    and each channel it goes out on that lacks a final outcome, at or before ``up_to_position``
    (the relay's checkpoint: the relay itself sends what comes after it, and sending those here
    too would deliver them twice).

    A notice goes out on each channel its account has a target for (its contact as it is now),
    on e-mail when it has none (recorded as undeliverable on the channel "none"); it is done
    once each of those has a final outcome: ``NoticeDelivered``, or ``NoticeDeliveryFailed`` with
    ``final``. One channel's outcome says nothing of the other's."""
    return [(n, c) for n, c, _ in _deliveries_without_outcome(store, now, window, up_to_position)]


def stranded_deliveries(
    store: EventStore,
    now: datetime,
    quiet: timedelta,
    window: timedelta = RECOVERY_WINDOW,
    up_to_position: int | None = None,
) -> list[tuple[str, str]]:
    """The ``pending_deliveries`` on which nothing was recorded for ``quiet`` or longer: neither
    the notice (for a channel never attempted) nor a failed attempt on that channel. With
    ``quiet`` longer than any retry waits, their next attempt's message is lost: Dramatiq
    queues a retry after the failed attempt, and when the broker cannot take it (Redis
    unreachable, even briefly) it only logs that and acknowledges the message."""
    before = to_utc(now) - quiet
    return [
        (n, c)
        for n, c, last in _deliveries_without_outcome(store, now, window, up_to_position)
        if last <= before
    ]


def _deliveries_without_outcome(
    store: EventStore, now: datetime, window: timedelta, up_to_position: int | None
) -> list[tuple[str, str, datetime]]:
    """``pending_deliveries`` with when each was last heard of: its notice's ``recorded_at``, or
    its channel's last failed attempt's."""
    since = to_utc(now) - window
    notices = sa.select(events.c.event_id, events.c.account_id, events.c.recorded_at).where(
        events.c.type == "NoticeIssued", events.c.recorded_at >= since
    )
    if up_to_position is not None:
        notices = notices.where(events.c.position <= up_to_position)
    final = events.c.data["final"].as_boolean()
    outcomes = sa.select(
        events.c.data["notice_event_id"].as_string(),
        events.c.data["channel"].as_string(),
        events.c.type == "NoticeDelivered",
        final,
        events.c.recorded_at,
    ).where(
        events.c.recorded_at >= since,
        events.c.type.in_(("NoticeDelivered", "NoticeDeliveryFailed")),
    )
    with store.engine.connect() as conn:
        issued = [
            (str(r[0]), r[1], to_utc(r[2]))
            for r in conn.execute(notices.order_by(events.c.position))
        ]
        done: dict[str, set[str]] = {}
        tried: dict[tuple[str, str], datetime] = {}
        for notice_event_id, channel, delivered, is_final, recorded_at in conn.execute(outcomes):
            if delivered or is_final:
                done.setdefault(str(notice_event_id), set()).add(channel)
            else:
                key = (str(notice_event_id), channel)
                tried[key] = max(tried.get(key, to_utc(recorded_at)), to_utc(recorded_at))
        accounts = sorted({account for _, account, _ in issued})
        contact_of: dict[str, Contact] = {}
        for start in range(0, len(accounts), 500):
            chunk = accounts[start : start + 500]
            query = sa.select(contacts.c.account_id, contacts.c.email, contacts.c.webhook_url)
            for account, email, webhook_url in conn.execute(
                query.where(contacts.c.account_id.in_(chunk))
            ):
                contact_of[account] = Contact(email, webhook_url)
    no_contact = Contact(None, None)
    pending = []
    for event_id, account, recorded_at in issued:
        finished = done.get(event_id, set())
        if "none" in finished:  # undeliverable: the account had no contact data
            continue
        channels = contact_of.get(account, no_contact).channels
        pending += [
            (event_id, c, tried.get((event_id, c), recorded_at))
            for c in channels
            if c not in finished
        ]
    return pending
