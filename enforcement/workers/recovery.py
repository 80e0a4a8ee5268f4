"""Recovery of notices whose messages a broker lost: the in-memory one at a restart (embedded
mode), a Redis that lost its data (``redis_watch.RedisWatch``), or a retry the broker could not
take (``lost_retries``); and of notices that a changed contact gives a channel their messages
did not have (``contact_changed_deliveries``).

The relay's checkpoint has already moved past the ``NoticeIssued`` events it enqueued. Every
recent notice without a final outcome in the log (``NoticeDelivered``, or
``NoticeDeliveryFailed`` with ``final``) on a channel it goes out on is sent again; delivery is
idempotent per notice and channel, so a channel that did go out is not sent twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import sqlalchemy as sa

from enforcement.gate.base import EPOCH
from enforcement.notices.delivery import Contact, delivered_key, failed_key, undeliverable_key
from enforcement.tables import contacts
from enforcement.workers.relay import CHECKPOINT as RELAY_CHECKPOINT
from events import EventStore
from events.dialects import write_connection
from events.schema import checkpoints, events
from events.timefmt import format_time, to_utc
from projections.notices import OUTCOME_TYPES, settled_notices

log = logging.getLogger("enforcement.workers")

RECOVERY_WINDOW = timedelta(days=14)
# How far the failed attempts were looked at (``LostRetryScan``): the ``until`` of the last look,
# in microseconds since the epoch, in the checkpoints table (a time, not a log position).
LOST_RETRIES_CHECKPOINT = "notice-lost-retries-until-us"
# How far the relayed notices were looked at for a message that died without a trace: a log
# position (``untried_deliveries``).
UNTRIED_CHECKPOINT = "notice-untried-until-position"
# The relay's checkpoint as each look saw it: one row per look, named by when it was seen
# (microseconds since the epoch, after the prefix), holding the position. Everything at or
# before the position was in the broker by then.
RELAY_SEEN_PREFIX = "notice-relay-seen-at-us:"
# How far the contacts changed were looked at (``contact_changed_deliveries``): the leader's
# clock at the last look, in microseconds since the epoch (a time, not a log position).
CONTACTS_CHECKPOINT = "notice-contacts-until-us"
# How far back before the last look the next one looks at contacts again: ``PUT …/contact``
# stamps a change with its own process's clock, which may be behind the leader's.
CONTACT_CLOCK_MARGIN = timedelta(minutes=10)


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

    A notice goes out on each channel its account has a target for (its contact as it is now,
    without the channels set after the notice: ``_channels_without``), on e-mail when it has
    none (recorded as undeliverable on the channel "none"); it is done once each of those has a
    final outcome: ``NoticeDelivered``, or ``NoticeDeliveryFailed`` with ``final``. One
    channel's outcome says nothing of the other's."""
    since = to_utc(now) - window
    where = [events.c.recorded_at >= since]
    if up_to_position is not None:
        where.append(events.c.position <= up_to_position)
    final = events.c.data["final"].as_boolean()
    outcomes = _outcomes(
        events.c.recorded_at >= since,
        sa.or_(
            events.c.type == "NoticeDelivered",
            sa.and_(events.c.type == "NoticeDeliveryFailed", final.is_(True)),
        ),
    )
    with store.engine.connect() as conn:
        issued = _issued(conn, *where)
        copies = _copies(events.c.recorded_at >= since)
        return _channels_without(conn, issued, outcomes, copies)


# The channels a copy an operator sent again was sent on (null: every one, or not a copy).
_CHOSEN = events.c.data[("resend_of", "channels")]


class _Issued(NamedTuple):
    """A ``NoticeIssued`` as the re-sends reckon its channels."""

    event_id: str
    account_id: str
    recorded_at: datetime
    chosen: list[str] | None  # a copy's chosen channels (None: every one, or not a copy)
    position: int


def _issued(conn: sa.Connection, *where: sa.ColumnElement[bool]) -> list[_Issued]:
    """The ``NoticeIssued`` events ``where`` selects, in log order."""
    query = (
        sa.select(
            events.c.event_id, events.c.account_id, events.c.recorded_at, _CHOSEN, events.c.position
        )
        .where(events.c.type == "NoticeIssued", *where)
        .order_by(events.c.position)
    )
    return [_Issued(str(r[0]), r[1], r[2], r[3], int(r[4])) for r in conn.execute(query)]


def _outcomes(*where: sa.ColumnElement[bool]) -> sa.Select[Any]:
    """``(notice event id, channel, type)`` of the delivery outcomes ``where`` selects."""
    return sa.select(
        events.c.data["notice_event_id"].as_string(),
        events.c.data["channel"].as_string(),
        events.c.type,
    ).where(*where)


def _copies(*where: sa.ColumnElement[bool]) -> sa.Select[Any]:
    """Of each copy an operator sent again (``resend_of``) that ``where`` selects, in log
    order: the first notice's event id (a copy of a copy names the first too), its own event
    id, and the channels it was sent on (null: every one)."""
    first = events.c.data[("resend_of", "notice_event_id")].as_string()
    return (
        sa.select(first, events.c.event_id, _CHOSEN)
        .where(events.c.type == "NoticeIssued", first.is_not(None), *where)
        .order_by(events.c.position)
    )


def _channels_without(
    conn: sa.Connection,
    issued: Sequence[_Issued],
    outcomes: sa.Select[Any],
    copies: sa.Select[Any],
) -> list[tuple[str, str]]:
    """``(notice event id, channel)`` for each notice of ``issued`` (event id, account, when it
    was recorded, a copy's chosen channels; in log order) on each channel it goes out on that
    none of ``outcomes`` names (of a copy's chosen channels only: it goes out on no other).
    A notice goes out on each channel its account has a target for (its contact as it is now),
    on e-mail when it has none; one recorded undeliverable (on the channel "none") goes out on
    none. A channel set after the notice was recorded is left out: the notice went out on the
    others then (a webhook added months later is not sent two weeks of old notices), unless
    every channel is newer than it and the notice is not settled: it then goes out on those
    rather than on none (``projections.notices.settled_notices``)."""
    if not issued:
        return []  # nothing to read outcomes, copies or contacts for
    named: dict[str, set[str]] = {}
    delivered: set[str] = set()
    for notice_event_id, channel, kind in conn.execute(outcomes):
        named.setdefault(str(notice_event_id), set()).add(channel)
        if kind == "NoticeDelivered":
            delivered.add(str(notice_event_id))
    settled = settled_notices(delivered, conn.execute(copies))
    contact_of = _contacts(conn, {notice.account_id for notice in issued})
    no_contact = ContactSince(Contact(None, None), {})
    without = []
    for event_id, account, recorded_at, chosen, _ in issued:
        seen = named.get(event_id, set())
        if "none" in seen:  # undeliverable: the account had no contact data
            continue
        contact = contact_of.get(account, no_contact)
        channels = contact.channels_at(to_utc(recorded_at), event_id in settled)
        without += [
            (event_id, c) for c in channels if c not in seen and (chosen is None or c in chosen)
        ]
    return without


def notice_channels(
    engine: sa.Engine, accounts: set[str]
) -> Callable[[str, datetime, bool], tuple[str, ...]]:
    """The channels a notice of one of ``accounts`` recorded at an instant, settled or not,
    goes out on, as the re-send of the notices without an outcome reckons them
    (``_channels_without``): its contact's as it is now that were set by then (all of them if
    none was and the notice is not settled), e-mail when it has none (to be recorded
    undeliverable)."""
    with engine.connect() as conn:
        contact_of = _contacts(conn, accounts)
    no_contact = ContactSince(Contact(None, None), {})

    def channels(account: str, moment: datetime, settled: bool) -> tuple[str, ...]:
        return contact_of.get(account, no_contact).channels_at(to_utc(moment), settled)

    return channels


@dataclass(frozen=True)
class ContactSince:
    """An account's contact as it is now, and since when each of its channels has been set
    (a channel absent from ``since``, or at None: since always)."""

    contact: Contact
    since: dict[str, datetime | None]

    def channels_at(self, moment: datetime, settled: bool) -> tuple[str, ...]:
        """The channels a notice recorded at ``moment`` goes out on: those set by then, or all
        of them if none was, unless the notice is ``settled``
        (``projections.notices.settled_notices``): then none."""
        channels = self.contact.channels
        then = tuple(c for c in channels if self._set_by(c, moment))
        return then if then or settled else channels

    def _set_by(self, channel: str, moment: datetime) -> bool:
        since = self.since.get(channel)
        return since is None or to_utc(since) <= moment


def _contacts(conn: sa.Connection, accounts: set[str]) -> dict[str, ContactSince]:
    """The contact of each of ``accounts`` that has one."""
    ordered = sorted(accounts)
    contact_of: dict[str, ContactSince] = {}
    query = sa.select(
        contacts.c.account_id,
        contacts.c.email,
        contacts.c.webhook_url,
        contacts.c.email_since,
        contacts.c.webhook_since,
    )
    for start in range(0, len(ordered), 500):
        chunk = ordered[start : start + 500]
        for account, email, webhook_url, email_since, webhook_since in conn.execute(
            query.where(contacts.c.account_id.in_(chunk))
        ):
            since = {"email": email_since, "webhook": webhook_since}
            contact_of[account] = ContactSince(Contact(email, webhook_url), since)
    return contact_of


def untried_deliveries(
    store: EventStore, after_position: int, up_to_position: int, since: datetime
) -> list[tuple[str, str]]:
    """``(notice event id, channel)`` of each ``NoticeIssued`` after ``after_position`` and at or
    before ``up_to_position`` (a relay position seen longer ago than any retry waits: the relay
    had enqueued them by then), recorded since ``since``, on each channel it goes out on
    (``pending_deliveries``) that has nothing recorded at all: no delivery, no failed attempt,
    not undeliverable. Such a channel's message is gone without a trace: its attempts all
    failed before an outcome could be recorded (the database away for longer than the retries
    last, a time limit), so Dramatiq gave up on it, while Redis kept its mark (nothing for
    ``RedisWatch`` to see) and no failed attempt is there for ``lost_retries`` to find. Judged
    by when the relay enqueued it, not when it was recorded: a notice that waited in the log
    while the workers were away is enqueued late, and its first message may still be queued."""
    with store.engine.connect() as conn:
        issued = _issued(
            conn,
            events.c.position > after_position,
            events.c.position <= up_to_position,
            events.c.recorded_at >= to_utc(since),
        )
        if not issued:
            return []
        # Every outcome and copy of these notices comes after them in the log.
        first = issued[0].position
        outcomes = _outcomes(
            events.c.position > first,
            events.c.type.in_(OUTCOME_TYPES),
        )
        copies = _copies(events.c.position > first)
        return _channels_without(conn, issued, outcomes, copies)


def contact_changed_deliveries(
    store: EventStore,
    changed_after: datetime,
    changed_until: datetime,
    up_to_position: int,
    now: datetime,
) -> list[tuple[str, str]]:
    """``(notice event id, channel)`` of each ``NoticeIssued`` recorded within the recovery
    window, at or before ``up_to_position``, of an account whose contact was changed in
    ``(changed_after, changed_until]``, on each channel it goes out on (``pending_deliveries``)
    that has nothing recorded at all: no delivery, no attempt, not undeliverable.

    Such a channel is one the contact gave the notice only since it changed: its message
    found no target then and recorded nothing (a webhook-only contact replaced by an e-mail
    address: the notice goes out by e-mail, unless it is settled). Nothing else would send it
    before the next re-send of the notices without an outcome (a restart). ``up_to_position``
    is a relay position seen longer ago than any retry waits, as for ``untried_deliveries``:
    a message enqueued since may still be queued, and goes to the contact as it is when it
    runs (sent here too, it would go out twice); a notice after it is judged by
    ``untried_deliveries`` later, with the contact as it is then."""
    changed = sa.select(contacts.c.account_id).where(
        contacts.c.updated_at > to_utc(changed_after),
        contacts.c.updated_at <= to_utc(changed_until),
    )
    since = to_utc(now) - RECOVERY_WINDOW
    found: list[tuple[str, str]] = []
    with store.engine.connect() as conn:
        accounts = sorted(str(account) for (account,) in conn.execute(changed))
        for start in range(0, len(accounts), 500):
            chunk = events.c.account_id.in_(accounts[start : start + 500])
            recent = events.c.recorded_at >= since
            issued = _issued(conn, chunk, recent, events.c.position <= up_to_position)
            outcomes = _outcomes(chunk, events.c.type.in_(OUTCOME_TYPES), recent)
            copies = _copies(chunk, recent)
            found += _channels_without(conn, issued, outcomes, copies)
    return found


def lost_retries(
    store: EventStore, after: datetime, until: datetime, max_attempts: int
) -> list[tuple[str, str]]:
    """``(notice event id, channel)`` of each failed attempt recorded in ``(after, until]`` that
    was not final and that nothing followed: no delivery, no "undeliverable", no later attempt
    on its channel up to ``max_attempts`` (looked up by their idempotency keys). Dramatiq
    queues a failed attempt's retry after the attempt, and when the broker cannot take it
    (Redis unreachable, even briefly) it only logs that and acknowledges the message; with
    ``until`` longer ago than any retry waits, such an attempt's retry was lost. Each attempt
    is in one scan's range only, so a caller that moves ``after`` on sends each lost retry
    once. Reads the failed attempts in the range (by ``recorded_at``) and a few keys for each
    one not final."""
    failures = sa.select(
        events.c.data["notice_event_id"].as_string(),
        events.c.data["channel"].as_string(),
        events.c.data["attempt"].as_integer(),
        events.c.data["final"].as_boolean(),
    ).where(
        events.c.recorded_at > to_utc(after),
        events.c.recorded_at <= to_utc(until),
        events.c.type == "NoticeDeliveryFailed",
    )
    with store.engine.connect() as conn:
        attempts = [
            (str(n), str(c), int(a)) for n, c, a, final in conn.execute(failures) if not final
        ]
    return list(
        dict.fromkeys(
            (notice, channel)
            for notice, channel, attempt in attempts
            if not _followed(store, notice, channel, attempt, max_attempts)
        )
    )


def _followed(store: EventStore, notice: str, channel: str, attempt: int, most: int) -> bool:
    """Whether anything was recorded on ``channel`` after failed ``attempt``: a delivery, the
    notice undeliverable, or a later attempt (any of them: an attempt whose failure could not
    be recorded leaves a gap in the numbers)."""
    later = (failed_key(notice, channel, n) for n in range(attempt + 1, most + 1))
    return any(
        store.key_used(key)
        for key in (delivered_key(notice, channel), undeliverable_key(notice), *later)
    )


class LostRetryScan:
    """The leader's periodic look for failed attempts whose retry was lost (``lost_retries``),
    for relayed notices whose message died without any attempt recorded
    (``untried_deliveries``), and for relayed notices of accounts whose contact changed since
    the last look that have a channel with nothing recorded (``contact_changed_deliveries``:
    changes since ``CONTACT_CLOCK_MARGIN`` before the last look, ``CONTACTS_CHECKPOINT``).

    Each look takes the attempts recorded since the previous look up to ``lost_after`` ago, so
    each attempt is looked at once, when it is that old. How far the looks reached is kept in
    the database (``LOST_RETRIES_CHECKPOINT``), so a new leader goes on from where the last one
    stopped instead of reading the whole recovery window again. The first look ever reaches
    back over ``RECOVERY_WINDOW``, as does a look after a longer pause. The checkpoint moves on
    only after the deliveries were sent (a failed enqueue leaves the range to the next look).

    Relayed notices are judged by when the relay enqueued them, not when they were recorded (a
    notice recorded while the workers were away is enqueued when they come back, and its first
    message may wait in the queue): each look first writes down the relay's checkpoint and when
    it saw it (a row under ``RELAY_SEEN_PREFIX``), then takes the notices after
    ``UNTRIED_CHECKPOINT`` up to the furthest position seen ``lost_after`` ago or longer, and
    moves that checkpoint there (and drops those rows) once the deliveries were sent. Rows, and
    that checkpoint, are in the database like the other, so a new leader goes on from them; a
    position only ever moves forward.

    A checkpoint ahead of this leader's own ``until`` was written by a clock ahead of this one
    (another leader's): going on from there would skip for good the attempts that processes
    with right clocks recorded meanwhile, so that look reaches back over the recovery window,
    as a first one does, and moves the checkpoint back. (A relay position seen by a clock
    ahead only waits longer.) A look again over attempts or notices already looked at (that
    one, a new leader's after a checkpoint that could not be written, one that a deposed leader
    finishes late) sends again only those that nothing followed yet: a lost retry or message is
    sent at least once, and rarely twice (delivery is idempotent per notice and channel, and
    numbers its attempts)."""

    def __init__(
        self,
        store: EventStore,
        clock: Callable[[], datetime],
        lost_after: timedelta,
        max_attempts: int,
    ) -> None:
        self.store = store
        self.clock = clock
        self.lost_after = lost_after
        self.max_attempts = max_attempts

    def scanned_until(self) -> datetime | None:
        """The end of the last look's range, or None before the first."""
        return _scanned_until(self._marks().scanned_micros)

    def run(
        self,
        send: Callable[[list[tuple[str, str]]], object],
        leads: Callable[[], bool] = lambda: True,
    ) -> list[tuple[str, str]]:
        """Look at the next range; ``send`` gets the lost ``(notice event id, channel)``s.
        ``leads`` is asked before sending and before moving the checkpoints: a leader that lost
        the lead meanwhile leaves both to the next one."""
        marks = self._marks()
        now = to_utc(self.clock())  # read after the position: the relay had passed it by now
        self._saw(marks.relayed, now)
        until = now - self.lost_after
        scanned = _scanned_until(marks.scanned_micros)
        if scanned is not None and scanned > until:
            log.warning(
                "the lost-retry checkpoint %s is ahead of this leader's clock (%s): a clock "
                "ahead wrote it; looking back over the recovery window",
                format_time(scanned),
                format_time(until),
            )
            scanned = None
        after = until - RECOVERY_WINDOW
        if scanned is not None:
            after = max(after, scanned)
        lost = lost_retries(self.store, after, until, self.max_attempts) if until > after else []
        # The furthest the relay was seen at ``lost_after`` ago or longer (this look's sighting
        # too, as ``_saw`` kept it): it had enqueued everything up to there that long ago.
        seen_by = {**marks.seen, now: max(marks.relayed, marks.seen.get(now, 0))}
        seen = {at: position for at, position in seen_by.items() if at <= until}
        enqueued = max(seen.values(), default=0)
        if enqueued > marks.judged:
            lost += untried_deliveries(self.store, marks.judged, enqueued, now - RECOVERY_WINDOW)
        # Up to the furthest position known enqueued long ago: the one this look takes up, or
        # the one an earlier look took up (no relay sighting is old enough after an uneven gap
        # between looks: that position, everything up to it judged already, still holds).
        judged = max(enqueued, marks.judged)
        lost += contact_changed_deliveries(
            self.store, _contacts_after(marks.contacts_micros, now), now, judged, now
        )
        lost = list(dict.fromkeys(lost))
        if not leads():
            return []
        send(lost)
        if leads():
            self._reach(until, enqueued, list(seen), now)
        return lost

    def relay_positions_seen(self) -> dict[datetime, int]:
        """The relay positions the looks saw that no look has taken up yet, by when."""
        return self._marks().seen

    def _marks(self) -> _Marks:
        """The checkpoints a look starts from, in one query."""
        named = (
            RELAY_CHECKPOINT,
            LOST_RETRIES_CHECKPOINT,
            UNTRIED_CHECKPOINT,
            CONTACTS_CHECKPOINT,
        )
        query = sa.select(checkpoints.c.name, checkpoints.c.position).where(
            sa.or_(
                checkpoints.c.name.in_(named),
                checkpoints.c.name.startswith(RELAY_SEEN_PREFIX, autoescape=True),
            )
        )
        with self.store.engine.connect() as conn:
            position = {str(name): int(value) for name, value in conn.execute(query)}
        return _Marks(
            relayed=position.get(RELAY_CHECKPOINT, 0),
            scanned_micros=position.get(LOST_RETRIES_CHECKPOINT, 0),
            judged=position.get(UNTRIED_CHECKPOINT, 0),
            contacts_micros=position.get(CONTACTS_CHECKPOINT, 0),
            seen={
                EPOCH + timedelta(microseconds=int(name[len(RELAY_SEEN_PREFIX) :])): value
                for name, value in position.items()
                if name.startswith(RELAY_SEEN_PREFIX)
            },
        )

    def _saw(self, position: int, at: datetime) -> None:
        """Write down that the relay had enqueued everything up to ``position`` by ``at``: true
        whoever writes it, so a look writes it whether it still leads or not (two at the same
        instant keep the greater: both are true)."""
        with write_connection(self.store.engine) as conn, conn.begin():
            self.store.advance_checkpoint(conn, _seen_name(at), position)

    def _reach(self, until: datetime, enqueued: int, seen: list[datetime], now: datetime) -> None:
        """Move the checkpoints on (the position never back, whoever writes last: the database
        keeps the greater; the times to this look's ``until`` and ``now``, back too when a clock
        ahead wrote them) and drop the relay positions ``seen`` that this look took up, in one
        transaction."""
        with write_connection(self.store.engine) as conn, conn.begin():
            self.store.set_checkpoint(conn, LOST_RETRIES_CHECKPOINT, _micros(until))
            self.store.set_checkpoint(conn, CONTACTS_CHECKPOINT, _micros(now))
            self.store.advance_checkpoint(conn, UNTRIED_CHECKPOINT, enqueued)
            names = [_seen_name(at) for at in seen]
            if names:
                conn.execute(checkpoints.delete().where(checkpoints.c.name.in_(names)))


@dataclass(frozen=True)
class _Marks:
    """What the checkpoints held when a look began."""

    relayed: int  # the relay's position
    scanned_micros: int  # ``LOST_RETRIES_CHECKPOINT``, 0 before the first look
    judged: int  # ``UNTRIED_CHECKPOINT``
    contacts_micros: int  # ``CONTACTS_CHECKPOINT``, 0 before the first look
    seen: dict[datetime, int]  # the relay positions seen (``RELAY_SEEN_PREFIX``), by when


def _contacts_after(micros: int, now: datetime) -> datetime:
    """Where a look at ``now`` begins to look at contacts changed: ``CONTACT_CLOCK_MARGIN``
    before the last look, at most the recovery window back; the window back at the first look
    ever, and when a clock ahead made the last look (going on from there would skip the
    changes that right clocks stamped meanwhile; a channel sent already has something
    recorded, and is not sent again)."""
    last = _scanned_until(micros)
    earliest = now - RECOVERY_WINDOW
    if last is None or last > now:
        return earliest
    return max(earliest, last - CONTACT_CLOCK_MARGIN)


def _scanned_until(micros: int) -> datetime | None:
    return EPOCH + timedelta(microseconds=micros) if micros else None


def _micros(moment: datetime) -> int:
    return (to_utc(moment) - EPOCH) // timedelta(microseconds=1)


def _seen_name(at: datetime) -> str:
    return f"{RELAY_SEEN_PREFIX}{_micros(at)}"
