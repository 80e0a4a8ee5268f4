"""The answer's shape: JSON body, headers, durations (no backend needed)."""

from __future__ import annotations

import dataclasses

import pytest

from enforcement.gate import GateDecision, format_duration

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
