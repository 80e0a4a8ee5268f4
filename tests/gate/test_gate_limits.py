"""Requests per minute, tokens per day, the account ceiling and throttles (AUP §3)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from enforcement.gate import Gate, GateDecision, format_duration
from tests.gate.harness import Backend, embedded_backend


def drain(gate: Gate, account: str, key: str, tokens: int = 0, limit: int = 1000) -> int:
    """Check until the first denial; how many were allowed."""
    for allowed in range(limit):
        if not gate.check(account, key, tokens).allowed:
            return allowed
    raise AssertionError("never denied")


def test_unconfigured_keys_and_accounts_get_the_default_limits(backend: Backend) -> None:
    gate = backend.make(default_rpm=50, default_tpd=1000)

    decision = gate.check("acct", "key", tokens=10)

    assert decision == GateDecision(
        allowed=True,
        reason="ok",
        limit_requests=50,
        remaining_requests=49,
        reset_requests_s=decision.reset_requests_s,
        limit_tokens=1000,
        remaining_tokens=990,
        reset_tokens_s=decision.reset_tokens_s,
        retry_after_s=0.0,
    )
    assert decision.reset_requests_s == pytest.approx(1.2, abs=0.01)  # one 60/50 s interval
    assert 0 < decision.reset_tokens_s <= 86_400


def test_the_shipped_defaults_are_600_rpm_and_a_million_tokens(gate: Gate) -> None:
    decision = gate.check("acct", "key")

    assert (decision.limit_requests, decision.limit_tokens) == (600, 1_000_000)


def test_a_key_bursts_to_its_limit_then_is_denied_without_consuming(gate: Gate) -> None:
    gate.set_limits("acct", "key", rpm=5, tpd=1000, version=1)

    remaining = [gate.check("acct", "key", tokens=10).remaining_requests for _ in range(5)]
    denied = gate.check("acct", "key", tokens=10)

    assert remaining == [4, 3, 2, 1, 0]
    assert not denied.allowed and denied.reason == "rate_limited"
    assert 11 < denied.retry_after_s <= 12
    # The minute in use is the wait and 48 s more (5 intervals less one), both rounded up alike.
    assert round(denied.reset_requests_s * 1000) == round(denied.retry_after_s * 1000) + 48_000
    assert denied.remaining_tokens == 950  # the denied request took no tokens
    assert gate.check("acct", "key", tokens=10).remaining_tokens == 950


def test_requests_refill_at_the_per_minute_rate(backend: Backend, gate: Gate) -> None:
    gate.set_limits("acct", "key", rpm=120, tpd=10**9, version=1)  # one every 0.5 s
    assert drain(gate, "acct", "key") == 120
    denied = gate.check("acct", "key")
    assert 0 < denied.retry_after_s <= 0.5

    backend.advance(denied.retry_after_s + 0.05)

    assert gate.check("acct", "key").allowed
    assert not gate.check("acct", "key").allowed


def test_token_quota_is_checked_before_counting(gate: Gate) -> None:
    gate.set_limits("acct", "key", rpm=100, tpd=1000, version=1)

    first = gate.check("acct", "key", tokens=600)
    too_big = gate.check("acct", "key", tokens=500)
    fits = gate.check("acct", "key", tokens=400)
    exhausted = gate.check("acct", "key", tokens=0)

    assert first.allowed and first.remaining_tokens == 400
    assert too_big.reason == "token_quota_exceeded" and too_big.remaining_tokens == 400
    # The same instant's wait, both rounded up to the millisecond alike: equal, not close.
    assert too_big.retry_after_s == too_big.reset_tokens_s
    assert fits.allowed and fits.remaining_tokens == 0
    assert exhausted.reason == "token_quota_exceeded"  # no quota left: even tokens=0 waits
    assert exhausted.remaining_tokens == 0
    assert exhausted.remaining_requests == fits.remaining_requests  # no request was counted


def test_a_zero_token_request_needs_room_for_one_token(gate: Gate) -> None:
    gate.set_limits("acct", "key", rpm=100, tpd=10, version=1)
    assert gate.check("acct", "key", tokens=9).allowed

    last = gate.check("acct", "key", tokens=0)

    assert (last.allowed, last.remaining_tokens) == (True, 1)
    assert gate.check("acct", "key", tokens=1).allowed


def test_the_token_window_ends_by_itself(backend: Backend) -> None:
    gate = backend.make(token_window_s=2)  # the UTC day in production; 2 s to watch it roll
    gate.set_limits("acct", "key", rpm=600, tpd=10, version=1)
    backend.advance(gate.check("acct", "key").reset_tokens_s + 0.01)  # a fresh window

    assert gate.check("acct", "key", tokens=10).allowed
    denied = gate.check("acct", "key", tokens=1)
    assert denied.reason == "token_quota_exceeded" and 1.5 < denied.retry_after_s <= 2

    backend.advance(denied.retry_after_s + 0.05)

    assert gate.check("acct", "key", tokens=10).allowed


def test_tokens_used_stay_counted_after_their_requests_have_refilled() -> None:
    # Embedded only (the fake clock): every minute its sweep drops the usage that has fully
    # refilled; the tokens of the day's window are not refilled when the requests are.
    backend = embedded_backend()
    gate = backend.make()
    gate.set_limits("acct", None, rpm=60, tpd=150, version=1)
    gate.set_limits("acct", "a", rpm=60, tpd=100, version=2)
    assert gate.check("acct", "a", tokens=100).allowed

    backend.advance(120)  # both request buckets refilled long ago; a sweep is due

    assert gate.check("acct", "a", tokens=1).reason == "token_quota_exceeded"
    other_key = gate.check("acct", "b", tokens=60)
    assert (other_key.reason, other_key.remaining_tokens) == ("token_quota_exceeded", 50)


def test_decision_json_and_headers(gate: Gate) -> None:
    gate.set_limits("acct", "key", rpm=1, tpd=1000, version=1)

    allowed = gate.check("acct", "key", tokens=1)
    denied = gate.check("acct", "key", tokens=1)

    assert set(allowed.to_json()) == {
        "allowed", "reason", "limit_requests", "remaining_requests", "reset_requests_s",
        "limit_tokens", "remaining_tokens", "reset_tokens_s", "retry_after_s",
    }  # fmt: skip
    assert allowed.headers()["x-ratelimit-limit-requests"] == "1"
    assert allowed.headers()["x-ratelimit-remaining-tokens"] == "999"
    assert "retry-after" not in allowed.headers()
    assert denied.to_json()["reason"] == "rate_limited"
    headers = denied.headers()
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["retry-after"] == "60"
    # The key's minute, less the time since the allowed check (none on the fake clock).
    assert 59 < denied.reset_requests_s <= 60
    assert headers["x-ratelimit-reset-requests"] == format_duration(denied.reset_requests_s)
    assert set(headers) >= {
        "x-ratelimit-limit-tokens", "x-ratelimit-reset-tokens", "x-ratelimit-limit-requests",
    }  # fmt: skip


def test_the_account_ceiling_spans_all_its_keys(gate: Gate) -> None:
    gate.set_limits("acct", None, rpm=10, tpd=1000, version=1)

    results = [gate.check("acct", f"key{i % 5}") for i in range(30)]

    assert sum(d.allowed for d in results) == 10
    assert results[10].reason == "rate_limited" and results[10].limit_requests == 10


def test_more_keys_never_buy_more_quota(backend: Backend) -> None:
    gate = backend.make(default_rpm=10, default_tpd=100)

    allowed = sum(gate.check("acct", f"key{i % 3}").allowed for i in range(30))
    first = gate.check("acct", "key9", tokens=60)
    second = gate.check("acct", "key8", tokens=60)

    assert allowed == 10  # three keys at the default, and the account at the same default
    assert first.reason == "rate_limited"
    assert second.reason == "token_quota_exceeded" or second.reason == "rate_limited"


def test_account_token_ceiling_across_keys(gate: Gate) -> None:
    gate.set_limits("acct", None, rpm=100, tpd=1000, version=1)

    assert gate.check("acct", "a", tokens=600).allowed
    over = gate.check("acct", "b", tokens=600)
    assert over.reason == "token_quota_exceeded"
    assert (over.limit_tokens, over.remaining_tokens) == (1000, 400)
    assert gate.check("acct", "b", tokens=400).allowed


def test_the_tighter_of_key_and_account_is_reported(gate: Gate) -> None:
    gate.set_limits("acct", None, rpm=10, tpd=1000, version=1)
    gate.set_limits("acct", "key", rpm=3, tpd=5000, version=2)

    decision = gate.check("acct", "key", tokens=100)

    assert (decision.limit_requests, decision.remaining_requests) == (3, 2)
    assert (decision.limit_tokens, decision.remaining_tokens) == (1000, 900)
    assert drain(gate, "acct", "key") == 2


def test_the_scope_with_less_left_is_reported_whatever_its_limit(gate: Gate) -> None:
    # The account's ceiling is the higher limit, but other keys have used most of it: the
    # account has less left than the key, and that is what the caller must be told.
    gate.set_limits("acct", None, rpm=12, tpd=1000, version=1)
    gate.set_limits("acct", "a", rpm=6, tpd=500, version=2)
    for _ in range(8):
        gate.check("acct", "b")
    gate.check("acct", "b", tokens=800)

    decision = gate.check("acct", "a", tokens=100)

    assert decision.allowed
    assert (decision.limit_requests, decision.remaining_requests) == (12, 2)  # key "a": 5
    assert (decision.limit_tokens, decision.remaining_tokens) == (1000, 100)  # key "a": 400
    # The account's bucket, after this request: ten of its 5 s intervals in use.
    assert decision.reset_requests_s == pytest.approx(50, abs=0.5)


def test_with_as_much_left_in_both_the_lower_limit_is_reported(gate: Gate) -> None:
    gate.set_limits("acct", None, rpm=12, tpd=1000, version=1)
    gate.set_limits("acct", "a", rpm=6, tpd=500, version=2)
    for _ in range(5):
        gate.check("acct", "b")
    gate.check("acct", "b", tokens=500)

    decision = gate.check("acct", "a", tokens=100)

    assert (decision.limit_requests, decision.remaining_requests) == (6, 5)  # the account: 12, 5
    assert (decision.limit_tokens, decision.remaining_tokens) == (500, 400)  # the account: 1000


def test_throttle_factors_most_restrictive_wins(backend: Backend, gate: Gate) -> None:
    gate.set_limits("acct", "key", rpm=100, tpd=1000, version=1)
    gate.set_limits("acct", None, rpm=1000, tpd=10**6, version=1)

    def limits(key: str = "key") -> tuple[int, int]:
        decision = gate.check("acct", key)
        return decision.limit_requests, decision.limit_tokens

    assert limits() == (100, 1000)
    gate.apply_throttle("acct", "t-acct", None, 0.5, None, version=2)
    assert limits() == (50, 500)
    gate.apply_throttle("acct", "t-key", "key", 0.25, None, version=3)
    assert limits() == (25, 250)
    assert limits("other") == (300, 500_000)  # defaults x the account-wide 0.5, not the key's
    gate.apply_throttle("acct", "t-acct-2", None, 0.1, None, version=4)
    assert limits() == (10, 100)
    gate.lift_throttle("acct", "t-acct-2", version=5)
    assert limits() == (25, 250)
    gate.lift_throttle("acct", "t-key", version=6)
    gate.lift_throttle("acct", "t-acct", version=7)
    assert limits() == (100, 1000)


def test_key_ids_may_be_any_text_the_api_accepts(gate: Gate) -> None:
    # The API takes 1-256 characters but NUL (a gateway's ids may be base64, or not ASCII):
    # the key's limits, its own throttle and its usage stay its own, on every backend.
    odd, long = "sk/AbC+9=ü 😀", "k" * 256
    gate.set_limits("acct", odd, rpm=40, tpd=1000, version=1)
    gate.set_limits("acct", long, rpm=30, tpd=1000, version=1)
    gate.apply_throttle("acct", "t-odd", odd, 0.25, None, version=2)

    first = gate.check("acct", odd, tokens=10)
    assert (first.limit_requests, first.limit_tokens, first.remaining_tokens) == (10, 250, 240)
    assert gate.check("acct", long).limit_requests == 30
    assert gate.check("acct", "sk/AbC+9=u 😀").limit_requests == 600  # another key: defaults
    assert drain(gate, "acct", odd) == 9


def test_an_account_throttle_scales_the_account_ceiling(gate: Gate) -> None:
    gate.set_limits("acct", None, rpm=20, tpd=1000, version=1)
    gate.apply_throttle("acct", "t1", None, 0.5, None, version=2)

    allowed = sum(gate.check("acct", f"key{i % 4}").allowed for i in range(40))

    assert allowed == 10


def test_throttled_limits_round_down_but_never_to_zero(gate: Gate) -> None:
    gate.set_limits("acct", "a", rpm=100, tpd=100, version=1)
    gate.set_limits("acct", "b", rpm=1, tpd=1, version=1)
    gate.apply_throttle("acct", "t1", "a", 1 / 3, None, version=2)
    gate.apply_throttle("acct", "t2", "b", 0.01, None, version=2)

    a = gate.check("acct", "a")
    b = gate.check("acct", "b", tokens=1)

    assert (a.limit_requests, a.limit_tokens) == (33, 33)
    assert (b.allowed, b.limit_requests, b.limit_tokens) == (True, 1, 1)


def test_a_limit_that_does_not_divide_the_minute_rounds_the_interval_up(gate: Gate) -> None:
    gate.set_limits("acct", "key", rpm=7, tpd=100, version=1)
    decision = gate.check("acct", "key")
    # ceil(60 s / 7) = 8.571429 s, reported rounded up to the millisecond
    assert (decision.remaining_requests, decision.reset_requests_s) == (6, 8.572)
    # Rounded up to a whole microsecond: 60 s / 59,999 is 1,000.017 us, so 1,001 us, which
    # reports 2 ms (the account's ceiling set above the key's, so that the key binds).
    gate.set_limits("fast", None, rpm=10_000_000, tpd=100, version=1)
    gate.set_limits("fast", "key", rpm=59_999, tpd=100, version=1)
    assert gate.check("fast", "key").reset_requests_s == 0.002


def test_an_account_ceiling_that_does_not_divide_the_minute_rounds_up_too(gate: Gate) -> None:
    gate.set_limits("acct", None, rpm=7, tpd=100, version=1)
    decision = gate.check("acct", "key")  # the key at the default 600 rpm: the account binds
    assert (decision.limit_requests, decision.remaining_requests) == (7, 6)
    assert decision.reset_requests_s == 8.572
    # One that divides it is not rounded up at all: 1.2 s, not 1.2 s and a microsecond.
    gate.set_limits("even", None, rpm=50, tpd=100, version=1)
    assert gate.check("even", "key").reset_requests_s == 1.2
    # And 60 s / 59,999 (1,000.017 us) to 1,001 us: 2 ms (the key set above the account).
    gate.set_limits("fast", None, rpm=59_999, tpd=100, version=1)
    gate.set_limits("fast", "key", rpm=10_000_000, tpd=100, version=1)
    assert gate.check("fast", "key").reset_requests_s == 0.002


def test_the_token_window_is_the_utc_day() -> None:
    gate = embedded_backend().make()  # at 10:00 UTC
    assert gate.check("acct", "key").reset_tokens_s == 14 * 3600


def test_the_account_ceiling_starts_again_with_the_window() -> None:
    backend = embedded_backend()
    gate = backend.make(token_window_s=10)
    gate.set_limits("acct", None, rpm=600, tpd=10, version=1)
    assert gate.check("acct", "key", tokens=10).allowed

    backend.advance(10)  # the next window, before the usage of the last is swept

    assert gate.check("acct", "key", tokens=10).allowed


def test_a_factor_under_one_part_per_million_keeps_one(gate: Gate) -> None:
    gate.set_limits("acct", None, rpm=600, tpd=10**15, version=1)
    gate.set_limits("acct", "key", rpm=600, tpd=10**15, version=1)
    gate.apply_throttle("acct", "t1", "key", 1e-9, None, version=2)

    assert gate.check("acct", "key").limit_tokens == 10**9


def test_a_throttle_leaves_a_zero_token_quota_at_zero(gate: Gate) -> None:
    # "Never to zero" keeps a positive limit usable; a key allowed no tokens gets none.
    gate.set_limits("acct", "k", rpm=10, tpd=0, version=1)
    gate.apply_throttle("acct", "t1", "k", 0.5, None, version=2)

    decision = gate.check("acct", "k")

    assert (decision.allowed, decision.reason) == (False, "token_quota_exceeded")
    assert decision.limit_tokens == 0


def test_a_throttle_expires_by_itself(backend: Backend, gate: Gate) -> None:
    gate.set_limits("acct", "key", rpm=100, tpd=1000, version=1)
    # On Redis these are real seconds: the first check has 0.9 s to spare on a loaded machine.
    gate.apply_throttle("acct", "t1", None, 0.5, backend.at(0.9), version=2)
    assert gate.check("acct", "key").limit_requests == 50

    backend.advance(1.0)

    assert gate.check("acct", "key").limit_requests == 100


def test_an_already_expired_throttle_changes_nothing(backend: Backend, gate: Gate) -> None:
    assert gate.apply_throttle("acct", "t1", None, 0.5, backend.at(-1), version=2)
    assert gate.apply_throttle("acct", "t0", None, 0.5, datetime(1970, 1, 1, tzinfo=UTC), 3)
    assert gate.throttle_ids("acct") == set()  # dropped at once

    assert gate.check("acct", "key").limit_requests == 600


def test_throttles_expire_one_after_another(backend: Backend, gate: Gate) -> None:
    # The Redis gate keeps a summary of the account-wide throttles for the check (the most
    # restrictive factor, and until when it holds): each expiry must still take effect.
    gate.set_limits("acct", "key", rpm=100, tpd=1000, version=1)
    # On Redis these are real seconds: each check has 0.6 s or more to spare on a loaded machine.
    gate.apply_throttle("acct", "t1", None, 0.25, backend.at(0.9), version=2)
    gate.apply_throttle("acct", "t2", None, 0.5, backend.at(1.8), version=3)
    gate.apply_throttle("acct", "t3", "key", 0.1, backend.at(0.9), version=4)
    assert gate.check("acct", "key").limit_requests == 10
    assert gate.check("acct", "other").limit_requests == 150  # 600 x 0.25

    backend.advance(1.2)
    assert gate.check("acct", "key").limit_requests == 50
    assert gate.check("acct", "other").limit_requests == 300

    backend.advance(0.9)
    assert gate.check("acct", "key").limit_requests == 100
    assert gate.check("acct", "other").limit_requests == 600


def test_account_throttles_expire_one_after_another_with_no_key_throttle(
    backend: Backend, gate: Gate
) -> None:
    # With no key throttle in force the Redis gate's check trusts its account summary until
    # the summary's expiry: that must be the first expiry, not the last (with a key throttle,
    # as above, the check reads every throttle and would not show it).
    gate.set_limits("acct", "key", rpm=100, tpd=1000, version=1)
    # On Redis these are real seconds: each check has 0.8 s or more to spare on a loaded machine.
    gate.apply_throttle("acct", "t1", None, 0.25, backend.at(1.0), version=2)
    gate.apply_throttle("acct", "t2", None, 0.5, backend.at(2.0), version=3)
    assert gate.check("acct", "key").limit_requests == 25

    backend.advance(1.2)
    assert gate.check("acct", "key").limit_requests == 50

    backend.advance(1.0)
    assert gate.check("acct", "key").limit_requests == 100


def test_an_expiring_account_throttle_ends_beside_one_without_expiry(
    backend: Backend, gate: Gate
) -> None:
    # The Redis gate's summary of the account throttles must keep the expiry of the one that
    # expires whatever the order it meets them in (a Lua table's): both orders, on two accounts
    # given the same throttle ids in the same order, the lasting one first or second.
    lasting, expiring = (0.5, None), (0.25, backend.at(0.9))
    for account, throttles in {"x": (lasting, expiring), "y": (expiring, lasting)}.items():
        for version, (factor, expires) in enumerate(throttles, start=2):
            gate.apply_throttle(account, f"t{version}", None, factor, expires, version)
    # On Redis these are real seconds: the checks have 0.8 s or more to spare.
    before = {account: gate.check(account, "key").limit_requests for account in "xy"}

    backend.advance(1.0)

    after = {account: gate.check(account, "key").limit_requests for account in "xy"}
    assert (before, after) == ({"x": 150, "y": 150}, {"x": 300, "y": 300})


def test_a_throttle_ends_at_its_expiry_as_in_the_standing() -> None:
    # The standing holds a throttle in force while ``expires_at > as_of``; the gate agrees
    # to the millisecond (the fake clock: only the embedded gate can be put exactly there).
    backend = embedded_backend()
    gate = backend.make()
    gate.set_limits("acct", "key", rpm=100, tpd=1000, version=1)
    gate.apply_throttle("acct", "t1", None, 0.5, backend.at(10), version=2)

    backend.advance(9.999)
    assert gate.check("acct", "key").limit_requests == 50
    backend.advance(0.001)
    assert gate.check("acct", "key").limit_requests == 100
