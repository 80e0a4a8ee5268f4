"""When each policy began: the deployment's record of the policies it ran.

Every event records the lookback of the policy that wrote it (``projections.lookback``), but a
policy is in force before it acts on an account: a standing as of an instant after a policy
change, and before the account's next event, is the one the new policy would decide on
(POLICY.md: "the standing that the policy of the day produced"). So each serving process
(``enforcement serve``, ``enforcement worker``) records, as it starts, the policy it runs, when
it is not already the last one recorded; the table is append-only. A standing ``as_of`` an
instant counts strikes with the last policy begun by then, when it began after the account's
last event (``projections.standing.fold``).

What the record cannot tell: during a rolling change, processes of both policies serve at once;
the record holds the order in which they started.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from enforcement.policy_file import Policy
from enforcement.tables import policy_activations as table
from events.timefmt import format_time, to_utc
from events.write_locks import write_connection
from projections.durations import duration_text, parse_duration_text
from projections.lookback import PolicyStart

log = logging.getLogger(__name__)

# Serializes ``record`` across processes on PostgreSQL (SQLite: ``BEGIN IMMEDIATE``), so that
# processes starting at once with one policy record it once. Any constant, the same everywhere.
RECORD_LOCK_KEY = 7_301_947_563
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
    """Record that ``policy`` runs from ``at`` on, unless it is already the last policy recorded
    (same version and lookback); the new row, or ``None`` when there was nothing to record."""
    lookback = duration_text(policy.strike_lookback)
    if lookback is None:  # no policy file gives one; nothing a reader could count with
        return None
    with write_connection(engine) as conn, conn.begin():
        if conn.dialect.name == "postgresql":  # two processes starting at once: one row
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({RECORD_LOCK_KEY})")
        last = conn.execute(sa.select(*_COLUMNS).order_by(table.c.position.desc()).limit(1)).first()
        if last is not None and (last[1], last[2]) == (policy.version, lookback):
            return None
        position = conn.execute(
            table.insert()
            .values(policy_version=policy.version, strike_lookback=lookback, activated_at=at)
            .returning(table.c.position)
        ).scalar_one()
    activation = Activation(int(position), policy.version, lookback, to_utc(at))
    log.info(
        "policy %s (strike lookback %s) recorded as in force from %s",
        policy.version,
        lookback,
        activation.activated_at.isoformat(),
    )
    return activation


def listed(engine: Engine) -> list[Activation]:
    """Every recorded activation, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(*_COLUMNS).order_by(table.c.position)).all()
    return [Activation(int(p), v, lookback, to_utc(at)) for p, v, lookback, at in rows]


def in_force(engine: Engine, as_of: datetime) -> PolicyStart | None:
    """The last policy begun by ``as_of``, as ``fold`` takes it; ``None`` when none was recorded
    by then (or its lookback is not one this release reads)."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(*_COLUMNS)
            .where(table.c.activated_at <= to_utc(as_of))
            .order_by(table.c.activated_at.desc(), table.c.position.desc())
            .limit(1)
        ).first()
    if row is None:
        return None
    lookback = parse_duration_text(row[2])
    if lookback is None:
        return None
    return PolicyStart(to_utc(row[3]), row[1], lookback)


def record_when_possible(
    engine: Engine,
    policy: Policy,
    clock: Callable[[], datetime],
    stopped: threading.Event | None = None,
) -> threading.Thread | None:
    """``record`` now; when the database does not answer (a process may start before it:
    ``/healthz`` says 503 meanwhile), from a daemon thread that tries again until it does, or
    until ``stopped`` is set. The thread, or ``None`` when the policy was recorded at once."""
    try:
        record(engine, policy, clock())
        return None
    except sa.exc.DBAPIError as exc:
        log.warning("policy %s not recorded yet, the database said: %s", policy.version, exc.orig)
    stop = stopped or threading.Event()

    def again() -> None:
        tries = 0
        while not stop.wait(RETRY_SECONDS[min(tries, len(RETRY_SECONDS) - 1)]):
            tries += 1
            try:
                record(engine, policy, clock())
                return
            except sa.exc.DBAPIError as exc:
                log.warning("policy %s still not recorded: %s", policy.version, exc.orig)

    thread = threading.Thread(target=again, name="record-policy", daemon=True)
    thread.start()
    return thread
