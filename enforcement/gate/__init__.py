"""The gate: what an API gateway asks on every request (AUP §3 rate limits, §6 suspension).

A gateway written in Python makes the check as ``POST /v1/gate/check`` does, with the service's
settings (``ENFORCEMENT_DATABASE_URL``, ``ENFORCEMENT_REDIS_URL``, the policy file):

    from enforcement.bootstrap import bootstrap
    container = bootstrap()
    decision = container.gate_check("acct_42", "key_7", tokens=512)
    if not decision.allowed:
        return 429 if decision.reason in ("rate_limited", "token_quota_exceeded") else 403

A bare ``RedisGate.from_url("redis://…").check(…)`` answers the same from Redis alone, but
reads no database: its denials raise no AUP §3 report (``sustained_abuse``), and an account
Redis has lost is allowed until the workers tell it again.

``EmbeddedGate`` is the in-process twin for embedded mode and tests. Both implement ``Gate``
(checks) and ``GateState`` (updates from the event log, versioned and idempotent).
"""

from typing import TYPE_CHECKING, Any

from enforcement.gate.base import (
    DEFAULT_DENIAL_COUNT,
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

if TYPE_CHECKING:
    from enforcement.gate.redis_gate import DEFAULT_STATE_TTL_S, RedisGate

# ``RedisGate`` is imported on first use: redis-py takes about 70 ms to import, which every CLI
# command paid, embedded or not, for a gate it never builds.
_LAZY = {"RedisGate", "DEFAULT_STATE_TTL_S"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from enforcement.gate import redis_gate

        return getattr(redis_gate, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_DENIAL_COUNT",
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
