"""Recovery of notices whose in-memory messages died with the process (embedded mode).

The in-memory broker keeps no message across a restart, while the relay's checkpoint has already
moved past the ``NoticeIssued`` events it enqueued. At start-up, every recent notice without a
final outcome in the log (``NoticeDelivered``, or ``NoticeDeliveryFailed`` with ``final``) is
sent again; delivery is idempotent per notice and channel, so a notice that did go out is not
sent twice.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa

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
    """Event ids of ``NoticeIssued`` events recorded within ``window`` that have no final outcome,
    at or before ``up_to_position`` (the relay's checkpoint: the relay itself sends what comes
    after it, and sending those here too would deliver them twice)."""
    outcome = events.alias("outcome")
    notice_ref = outcome.c.data["notice_event_id"].as_string()
    final = outcome.c.data["final"].as_boolean()
    done = (
        sa.select(sa.literal(1))
        .where(
            outcome.c.account_id == events.c.account_id,
            outcome.c.version > events.c.version,
            sa.or_(
                outcome.c.type == "NoticeDelivered",
                sa.and_(outcome.c.type == "NoticeDeliveryFailed", final.is_(True)),
            ),
            notice_ref == sa.cast(events.c.event_id, sa.String),
        )
        .exists()
    )
    query = (
        sa.select(events.c.event_id)
        .where(
            events.c.type == "NoticeIssued",
            events.c.recorded_at >= to_utc(now) - window,
            ~done,
        )
        .order_by(events.c.position)
    )
    if up_to_position is not None:
        query = query.where(events.c.position <= up_to_position)
    with store.engine.connect() as conn:
        return [str(r[0]) for r in conn.execute(query)]
