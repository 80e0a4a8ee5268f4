"""Gate denials raise ``sustained_abuse`` (POLICY.md, AUP §3) through ``gatekeeping.AbuseDetector``,
which the gate route calls on every rate or quota denial: past the policy's count, an abusive
client's denials must cost no database read each, and a standing that cannot be read must not
turn the denial into an error."""

from __future__ import annotations

from typing import Any

import pytest

from enforcement.bootstrap import Container
from enforcement.gate import GateDecision
from projections.standing import active_throttles


def denial(denials_in_window: int) -> GateDecision:
    return GateDecision(
        allowed=False,
        reason="rate_limited",
        limit_requests=5,
        remaining_requests=0,
        reset_requests_s=60.0,
        limit_tokens=1000,
        remaining_tokens=1000,
        reset_tokens_s=3600.0,
        retry_after_s=12.0,
        denials_in_window=denials_in_window,
    )


def count_loads(system: Container, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    loads: list[str] = []
    load = system.service.standings.load

    def counting(account_id: str, *args: Any, **kwargs: Any) -> Any:
        loads.append(account_id)
        return load(account_id, *args, **kwargs)

    monkeypatch.setattr(system.service.standings, "load", counting)
    return loads


def test_denials_past_the_count_read_the_standing_once_per_window(
    system: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    count = system.policy.sustained_abuse_denials.count
    assert system.abuse.observe("acct_1", "key_1", denial(count - 1)) is None
    assert system.abuse.observe("acct_1", "key_1", denial(count)) == "sustained_abuse"
    state = system.standings.load("acct_1")
    assert [t.reason for t in active_throttles(state, system.clock())] == ["sustained_abuse"]

    loads = count_loads(system, monkeypatch)
    for more in range(1, 200):
        assert system.abuse.observe("acct_1", "key_1", denial(count + more)) is None
    assert loads == []


def test_a_standing_that_cannot_be_read_does_not_fail_the_denial(
    system: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    count = system.policy.sustained_abuse_denials.count
    load = system.service.standings.load

    def down(account_id: str, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("database is down")

    monkeypatch.setattr(system.service.standings, "load", down)
    assert system.abuse.observe("acct_2", "key_1", denial(count)) is None

    monkeypatch.setattr(system.service.standings, "load", load)
    assert system.abuse.observe("acct_2", "key_1", denial(count + 1)) == "sustained_abuse"
