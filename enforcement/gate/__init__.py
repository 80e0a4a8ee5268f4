"""The gate: what an API gateway asks on every request (AUP §3 rate limits, §6 suspension).

    from enforcement.gate import RedisGate
    gate = RedisGate.from_url("redis://localhost:6379/0")
    decision = gate.check("acct_42", "key_7", tokens=512)
    if not decision.allowed:
        return 429 if decision.reason in ("rate_limited", "token_quota_exceeded") else 403

``EmbeddedGate`` is the in-process twin for embedded mode and tests. Both implement ``Gate``
(checks) and ``GateState`` (updates from the event log, versioned and idempotent).
"""

from enforcement.gate.base import (
    DEFAULT_DENIAL_WINDOW_S,
    DEFAULT_RPM,
    DEFAULT_TPD,
    AccountStatus,
    Gate,
    GateState,
    GateUnavailable,
    Seeder,
)
from enforcement.gate.decision import DenialStats, GateDecision, Reason, format_duration
from enforcement.gate.embedded import Clock, EmbeddedGate
from enforcement.gate.redis_gate import DEFAULT_STATE_TTL_S, RedisGate

__all__ = [
    "DEFAULT_DENIAL_WINDOW_S",
    "DEFAULT_RPM",
    "DEFAULT_STATE_TTL_S",
    "DEFAULT_TPD",
    "AccountStatus",
    "Clock",
    "DenialStats",
    "EmbeddedGate",
    "Gate",
    "GateDecision",
    "GateState",
    "GateUnavailable",
    "Reason",
    "RedisGate",
    "Seeder",
    "format_duration",
]
