"""The deadline sweep: the safety net behind delayed messages.

Periodically finds remediations past due and suspensions past their end in the stored
standings and runs the same idempotent use cases, so a lost delayed message only delays.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from enforcement.service import Actor, EnforcementService
from events.timefmt import format_time, to_utc
from projections.standing import StandingState, remediation_is_open
from projections.stored import iter_stored_states

log = logging.getLogger("enforcement.sweep")
SWEEPER = Actor(name="scheduler:sweep", correlation_id="deadline-sweep", source="worker")


def due_deadlines(state: StandingState, now_text: str) -> Iterator[tuple[str, str]]:
    """(kind, id) of every deadline in ``state`` that has passed (pure)."""
    for remediation in state.remediations.values():
        if remediation_is_open(state, remediation) and remediation.due_at <= now_text:
            yield "remediation", remediation.remediation_id
    s = state.suspension
    if s is not None and s.until is not None and s.until <= now_text:
        yield "suspension", s.suspension_id


def sweep_once(service: EnforcementService, page_size: int = 500) -> int:
    """Run every overdue deadline once; returns how many use cases it ran."""
    now_text = format_time(to_utc(service.clock()))
    ran = 0
    # Deadlines live in the head (the suspension) and the remediations: read no other table.
    for state in iter_stored_states(service.store, page_size, kinds=("remediations",)):
        account_id = state.account_id
        for kind, ident in due_deadlines(state, now_text):
            try:
                if kind == "remediation":
                    service.expire_remediation(account_id, ident, SWEEPER)
                else:
                    service.end_suspension(account_id, ident, SWEEPER)
                ran += 1
            except Exception:
                log.exception("sweep failed for %s %s on %s", kind, ident, account_id)
    return ran
