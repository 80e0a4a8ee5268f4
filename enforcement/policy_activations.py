"""When each policy began: the deployment's record of the policies its processes started with.

Every event records the lookback of the policy that wrote it (``projections.lookback``), but a
policy is in force before it acts on an account: a standing as of an instant after a policy
change, and before the account's next event, is the one the new policy would decide on
(POLICY.md: "the standing that the policy of the day produced"). So each serving process
(``enforcement serve``, ``enforcement worker``) records, as it starts, the policy it runs and
the instant. A standing ``as_of`` an instant counts strikes with the last policy begun by then,
when it began after the account's last event (``projections.standing.fold``).

Every start is recorded, also of a policy already recorded last: a process of the older policy
may have written events since, and its restart with the new one must begin the new one again.
The table is append-only, and in time order: a row's ``activated_at`` is when it was recorded
(never before the row before it), and the database refuses UPDATE, DELETE and an insert out of
that order. It is not hash-chained: it is not the log.

What the record cannot tell: during a rolling change, processes of both policies serve at once;
the record holds the order in which they started, and each event the policy that wrote it. Stops
are not recorded: an account that a process of the old policy acted on after the new policy's
last start keeps that event's lookback until a start after it (docs/operations.md, "Changing the
policy": restart one process once the old ones have stopped).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from enforcement.policy_file import Policy
from enforcement.tables import policy_activations as table
from enforcement.workers.retrying import one_line
from events.driver import fetch_all
from events.timefmt import format_time, parse_sqlite_time, sqlite_time_text, to_utc
from events.write_locks import write_connection
from projections.durations import duration_text, parse_duration_text
from projections.lookback import PolicyStart

log = logging.getLogger(__name__)

# Serializes ``record`` across processes on PostgreSQL (SQLite: ``BEGIN IMMEDIATE``), so that
# processes starting at once read the last row one after the other and record in time order.
# Any constant no other lock uses (``workers.leader``, ``events.write_locks``).
RECORD_LOCK_KEY = 7_301_947_563
# A start dated this much after the process's own clock (the last row was dated ahead of it) is
# said in a warning: a host whose clock ran ahead dates every later start after its own.
BEHIND_WARNING = timedelta(seconds=1)
# Between tries to record the policy while the database does not answer (``record_when_possible``).
RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)


@dataclass(frozen=True, slots=True)
class Activation:
    """One row: a policy, the lookback it counts strikes with (as its file writes it), when."""

    position: int
    policy_version: str
    strike_lookback: str
    activated_at: datetime

    def to_json(self) -> dict[str, object]:
        return {
            "position": self.position,
            "policy_version": self.policy_version,
            "strike_lookback": self.strike_lookback,
            "activated_at": format_time(self.activated_at),
        }


_COLUMNS = (table.c.position, table.c.policy_version, table.c.strike_lookback, table.c.activated_at)


def record(engine: Engine, policy: Policy, at: datetime) -> Activation | None:
    """Record that ``policy`` runs from ``at`` on (a microsecond after the last row when that is
    later: the rows stay in time order whatever the clocks of the processes); the new row, or
    ``None`` for a lookback no policy file gives (nothing a reader could count with)."""
    lookback = duration_text(policy.strike_lookback)
    if lookback is None:
        return None
    clock_at = at = to_utc(at)
    with write_connection(engine) as connection:
        postgres = connection.dialect.name == "postgresql"
        # READ COMMITTED whatever the server's default: under REPEATABLE READ the snapshot would
        # be taken before the lock is granted, and the last row read could be a stale one.
        conn = (
            connection.execution_options(isolation_level="READ COMMITTED")
            if postgres
            else connection
        )
        with conn.begin():
            if postgres:  # processes starting at once: one after the other
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({RECORD_LOCK_KEY})")
            last = conn.execute(sa.select(sa.func.max(table.c.activated_at))).scalar()
            if last is not None and at <= to_utc(last):
                at = to_utc(last) + timedelta(microseconds=1)
            position = conn.execute(
                table.insert()
                .values(policy_version=policy.version, strike_lookback=lookback, activated_at=at)
                .returning(table.c.position)
            ).scalar_one()
    if at - clock_at > BEHIND_WARNING:
        log.warning(
            "policy %s recorded as in force from %s, %s after this process's clock: a start "
            "recorded earlier was dated ahead of it (check the clocks of the hosts)",
            policy.version,
            format_time(at),
            at - clock_at,
        )
    activation = Activation(int(position), policy.version, lookback, at)
    log.info(
        "policy %s (strike lookback %s) recorded as in force from %s",
        policy.version,
        lookback,
        format_time(at),
    )
    return activation


def listed(engine: Engine, after_position: int = 0, limit: int | None = None) -> list[Activation]:
    """The recorded activations after ``after_position``, oldest first (at most ``limit``)."""
    query = sa.select(*_COLUMNS).where(table.c.position > after_position).order_by(table.c.position)
    with engine.connect() as conn:
        rows = conn.execute(query if limit is None else query.limit(limit)).all()
    return [Activation(int(p), v, lookback, to_utc(at)) for p, v, lookback, at in rows]


# A standing ``as_of`` reads this on every call: straight on the driver (``fetch_all``), as the
# log's own reads, since SQLAlchemy's work per statement cost more than the query. Time order is
# position order (the insert trigger).
_IN_FORCE = (
    "SELECT activated_at, policy_version, strike_lookback FROM policy_activations"
    " WHERE activated_at <= {} ORDER BY activated_at DESC LIMIT 1"
)
_IN_FORCE_SQLITE, _IN_FORCE_POSTGRES = _IN_FORCE.format("?"), _IN_FORCE.format("%s")


def in_force(engine: Engine, as_of: datetime) -> PolicyStart | None:
    """The last policy begun by ``as_of``, as ``fold`` takes it; ``None`` when none was recorded
    by then (or its lookback is not one this release reads)."""
    sqlite = engine.dialect.name == "sqlite"
    if sqlite:  # the time as SQLAlchemy's SQLite type writes it
        rows = fetch_all(engine, _IN_FORCE_SQLITE, (sqlite_time_text(as_of),))
    else:
        rows = fetch_all(engine, _IN_FORCE_POSTGRES, (to_utc(as_of),))
    if not rows:
        return None
    activated_at, version, text = rows[0]
    lookback = parse_duration_text(text)
    if lookback is None:
        return None
    return PolicyStart(
        parse_sqlite_time(activated_at) if sqlite else to_utc(activated_at), version, lookback
    )


def record_when_possible(
    engine: Engine,
    policy: Policy,
    clock: Callable[[], datetime],
    stopped: threading.Event | None = None,
    wait: bool = True,
) -> threading.Thread | None:
    """``record`` now; when the database does not answer (a process may start before it:
    ``/healthz`` says 503 meanwhile), from a daemon thread that tries again until it does, or
    until ``stopped`` is set. With ``wait`` false (the database did not answer a moment ago),
    the first try is the thread's too, so that start-up does not wait for it. The thread, or
    ``None`` when the policy was recorded at once."""
    if wait:
        try:
            record(engine, policy, clock())
            return None
        except sa.exc.SQLAlchemyError as exc:  # a DBAPIError, or the pool's TimeoutError
            log.warning(
                "policy %s not recorded yet, the database said: %s", policy.version, one_line(exc)
            )
    stop = stopped or threading.Event()

    def again() -> None:
        tries = 0 if wait else -1  # -1: the first try at once
        while True:
            if tries >= 0 and stop.wait(RETRY_SECONDS[min(tries, len(RETRY_SECONDS) - 1)]):
                return
            tries += 1
            try:
                record(engine, policy, clock())
                return
            except sa.exc.SQLAlchemyError as exc:
                log.warning("policy %s still not recorded: %s", policy.version, one_line(exc))

    thread = threading.Thread(target=again, name="record-policy", daemon=True)
    thread.start()
    return thread
