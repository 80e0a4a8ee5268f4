"""What the gate answers: a decision with the numbers a gateway puts in its rate-limit headers."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal

Reason = Literal["ok", "rate_limited", "token_quota_exceeded", "suspended", "terminated"]

# Index = the reason code the backends compute (the Lua script returns the index).
REASONS: tuple[Reason, ...] = (
    "ok",
    "rate_limited",
    "token_quota_exceeded",
    "suspended",
    "terminated",
)


# ``retry-after`` of a denial that no wait ends: a day, not "retry now". An indefinite suspension
# ends by an operator's review, a termination only by an appeal; a client has nothing to retry
# sooner, and a day keeps a retrying client from hammering the gate.
UNENDING_RETRY_AFTER_S = 86_400


@dataclass(frozen=True)
class GateDecision:
    """The answer to one check. A denial has consumed nothing.

    ``limit_*``/``remaining_*``/``reset_*_s`` describe the binding scope (the key or the account
    ceiling, whichever has less left), after this request when it was allowed. ``reset_*_s`` is
    the time until that scope is fully replenished: the request bucket refilled, the token window
    (the UTC day) over. ``retry_after_s`` is 0 when allowed, and also on a termination or an
    indefinite suspension, which no wait ends.

    ``denials_in_window`` and ``denied_keys_last_minute`` are set on a ``rate_limited`` or
    ``token_quota_exceeded`` denial only (0 otherwise): the account's rate/quota denials less
    than the gate's ``denial_window_s`` before this one, this one included, exact up to the
    gate's ``denial_count`` and never more (so it is ``denial_count`` exactly when that many
    denials fall within the window), and how many distinct keys of the account were denied in
    the last 60 seconds. The caller raises ``sustained_abuse`` and ``rate_limit_circumvention``
    from them (AUP §3). They are not part of the public JSON.
    """

    allowed: bool
    reason: Reason
    limit_requests: int
    remaining_requests: int
    reset_requests_s: float
    limit_tokens: int
    remaining_tokens: int
    reset_tokens_s: float
    retry_after_s: float
    denials_in_window: int = 0
    denied_keys_last_minute: int = 0

    @classmethod
    def from_values(cls, values: tuple[object, ...]) -> GateDecision:
        """Build from all fields in order, without validation: the hot path (a frozen
        dataclass's ``__init__`` sets each field through ``object.__setattr__``, several
        times slower)."""
        decision = _new(cls)
        decision.__dict__.update(zip(_FIELDS, values, strict=True))
        return decision

    def to_json(self) -> dict[str, object]:
        """The body of ``POST /v1/gate/check`` (CONTRACT.md, "Gate")."""
        return {
            "allowed": self.allowed,
            "reason": self.reason,
            "limit_requests": self.limit_requests,
            "remaining_requests": self.remaining_requests,
            "reset_requests_s": self.reset_requests_s,
            "limit_tokens": self.limit_tokens,
            "remaining_tokens": self.remaining_tokens,
            "reset_tokens_s": self.reset_tokens_s,
            "retry_after_s": self.retry_after_s,
        }

    def headers(self) -> dict[str, str]:
        """Rate-limit headers as OpenAI-compatible clients read them.

        Resets are durations in the same format (``"250ms"``, ``"1.5s"``, ``"6m0s"``);
        ``retry-after`` is whole seconds, rounded up, and ``retry-after-ms`` the exact wait. The
        contract lists ``retry-after`` on every denial: one that no wait ends (an indefinite
        suspension, a termination; ``retry_after_s`` 0) has ``UNENDING_RETRY_AFTER_S`` there,
        and no ``retry-after-ms``, there being no exact wait.
        """
        headers = {
            "x-ratelimit-limit-requests": str(self.limit_requests),
            "x-ratelimit-remaining-requests": str(self.remaining_requests),
            "x-ratelimit-reset-requests": format_duration(self.reset_requests_s),
            "x-ratelimit-limit-tokens": str(self.limit_tokens),
            "x-ratelimit-remaining-tokens": str(self.remaining_tokens),
            "x-ratelimit-reset-tokens": format_duration(self.reset_tokens_s),
        }
        if not self.allowed:
            if self.retry_after_s > 0:
                headers["retry-after"] = str(max(1, math.ceil(self.retry_after_s)))
                headers["retry-after-ms"] = str(math.ceil(self.retry_after_s * 1000))
            else:
                headers["retry-after"] = str(UNENDING_RETRY_AFTER_S)
        return headers


_FIELDS = tuple(f.name for f in fields(GateDecision))
_new = object.__new__


@dataclass(frozen=True, slots=True)
class DenialStats:
    """An account's rate/quota denials now: those less than ``window_s`` old (exact up to the
    gate's ``denial_count``, as ``GateDecision.denials_in_window``), and distinct keys in 60 s."""

    denials_in_window: int
    window_s: int
    denied_keys_last_minute: int


def format_duration(seconds: float) -> str:
    """Seconds as OpenAI writes resets: ``"250ms"``, ``"1.5s"``, ``"6m0s"``, ``"1h2m5s"``."""
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"
