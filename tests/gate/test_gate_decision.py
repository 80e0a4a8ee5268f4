"""The answer's shape: JSON body, headers, durations (no backend needed)."""

from __future__ import annotations

import dataclasses
import struct

import pytest

from enforcement.gate import GateDecision, format_duration
from enforcement.gate.redis_gate import _decision

DENIED = GateDecision(
    allowed=False,
    reason="rate_limited",
    limit_requests=600,
    remaining_requests=0,
    reset_requests_s=59.9,
    limit_tokens=1_000_000,
    remaining_tokens=12_345,
    reset_tokens_s=3725.0,
    retry_after_s=0.25,
    denials_in_window=7,
    denied_keys_last_minute=2,
)


def test_from_values_builds_the_same_frozen_decision() -> None:
    built = GateDecision.from_values(dataclasses.astuple(DENIED))

    assert built == DENIED
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.allowed = True  # type: ignore[misc]


def test_the_redis_replies_decode_to_whole_decisions() -> None:
    # lua.CHECK answers six numbers when allowed (the rest are then 0) and ten when denied.
    allowed = _decision(struct.pack("<6q", 600, 599, 100, 1000, 900, 3_600_000))
    denied = _decision(struct.pack("<10q", *_DENIED_REPLY))

    assert allowed == GateDecision(True, "ok", 600, 599, 0.1, 1000, 900, 3600.0, 0.0, 0, 0)
    assert dataclasses.asdict(allowed)["denials_in_window"] == 0
    assert allowed.denied_keys_last_minute == 0
    assert denied == DENIED
    with pytest.raises(dataclasses.FrozenInstanceError):
        allowed.allowed = False  # type: ignore[misc]


_DENIED_REPLY = (1, 600, 0, 59_900, 1_000_000, 12_345, 3_725_000, 250, 7, 2)


def test_json_is_the_contract_body_without_the_abuse_counters() -> None:
    assert DENIED.to_json() == {
        "allowed": False,
        "reason": "rate_limited",
        "limit_requests": 600,
        "remaining_requests": 0,
        "reset_requests_s": 59.9,
        "limit_tokens": 1_000_000,
        "remaining_tokens": 12_345,
        "reset_tokens_s": 3725.0,
        "retry_after_s": 0.25,
    }


def test_headers_of_a_denial() -> None:
    assert DENIED.headers() == {
        "x-ratelimit-limit-requests": "600",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "59.9s",
        "x-ratelimit-limit-tokens": "1000000",
        "x-ratelimit-remaining-tokens": "12345",
        "x-ratelimit-reset-tokens": "1h2m5s",
        "retry-after": "1",
        "retry-after-ms": "250",
    }


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0ms"), (0.0004, "1ms"), (0.25, "250ms"), (1, "1s"), (1.5, "1.5s"), (59.999, "59.999s"),
     (60, "1m0s"), (360, "6m0s"), (3725, "1h2m5s"), (86_400, "24h0m0s")],
)  # fmt: skip
def test_durations_read_like_openai_resets(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
