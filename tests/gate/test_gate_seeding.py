"""``Gate.set_seeder``: an account the gate holds no status for is learned before it is checked,
so an empty gate (a fresh process, Redis restarted without its data) never lets a suspended
account through."""

from __future__ import annotations

import concurrent.futures
import threading

import pytest
import redis

from enforcement.gate import EmbeddedGate, Gate, GateUnavailable
from tests.gate.harness import Backend, embedded_backend, redis_backend


class Seeder:
    """Records the accounts it is asked about; tells the gate what ``standings`` say."""

    def __init__(self, gate: Gate, standings: dict[str, tuple[str, int]] | None = None) -> None:
        self.gate = gate
        self.standings = standings or {}
        self.asked: list[str] = []

    def __call__(self, account_id: str) -> None:
        self.asked.append(account_id)
        status, version = self.standings.get(account_id, ("active", 0))
        self.gate.set_status(account_id, status, None, version)  # type: ignore[arg-type]


def test_an_unknown_account_is_learned_once_before_its_first_check(gate: Gate) -> None:
    seeder = Seeder(gate, {"acct_s": ("suspended", 4)})
    gate.set_seeder(seeder)

    first = gate.check("acct_s", "key")
    again = gate.check("acct_s", "key")
    fresh = [gate.check("acct_new", "key", tokens=5) for _ in range(2)]

    assert (first.reason, again.reason) == ("suspended", "suspended")
    assert [d.allowed for d in fresh] == [True, True]
    assert [d.remaining_tokens for d in fresh] == [
        gate.default_tpd - 5,
        gate.default_tpd - 10,
    ]  # the check after learning counts once
    assert seeder.asked == ["acct_s", "acct_new"]


def test_an_account_the_gate_was_told_about_is_not_learned(gate: Gate) -> None:
    seeder = Seeder(gate, {"acct": ("suspended", 1)})
    gate.set_seeder(seeder)
    gate.set_status("acct", "active", None, version=2)

    assert gate.check("acct", "key").allowed
    assert seeder.asked == []


def test_limits_or_a_throttle_alone_do_not_make_an_account_known(gate: Gate) -> None:
    # A push after Redis lost its data writes only what a decision changed: the status the
    # account had (here a suspension) must still be learned.
    seeder = Seeder(gate, {"acct": ("suspended", 3)})
    gate.set_seeder(seeder)
    gate.set_limits("acct", "key", rpm=5, tpd=100, version=4)

    assert gate.check("acct", "key").reason == "suspended"
    assert seeder.asked == ["acct"]


def test_a_decision_newer_than_what_the_seeder_read_wins(gate: Gate) -> None:
    # The seeder reads the standing at version 4 (active); a suspension at version 5 reaches the
    # gate before the seeder writes: the older status is refused by version.
    def seeder(account_id: str) -> None:
        gate.set_status(account_id, "suspended", None, version=5)
        gate.set_status(account_id, "active", None, version=4)

    gate.set_seeder(seeder)

    assert gate.check("acct", "key").reason == "suspended"


def test_a_failing_seeder_makes_the_gate_unavailable_and_counts_nothing(gate: Gate) -> None:
    def failing(account_id: str) -> None:
        raise RuntimeError("database down")

    gate.set_seeder(failing)
    gate.set_limits("acct", "key", rpm=2, tpd=100, version=1)

    with pytest.raises(GateUnavailable, match="database down"):
        gate.check("acct", "key", tokens=10)

    gate.set_seeder(Seeder(gate))
    decision = gate.check("acct", "key", tokens=10)
    assert (decision.remaining_requests, decision.remaining_tokens) == (1, 90)


def test_without_a_seeder_an_unknown_account_is_checked_as_active(gate: Gate) -> None:
    seeder = Seeder(gate, {"acct": ("suspended", 1)})
    gate.set_seeder(seeder)
    gate.set_seeder(None)

    assert gate.check("acct", "key").allowed
    assert seeder.asked == []


@pytest.mark.redis
def test_an_account_lost_with_redis_data_is_learned_again(redis_client: redis.Redis) -> None:
    gate = redis_backend(redis_client).make()
    seeder = Seeder(gate, {"acct": ("suspended", 2)})
    gate.set_seeder(seeder)
    assert gate.check("acct", "key").reason == "suspended"

    redis_client.flushdb()  # as a restart without persistence leaves it

    assert gate.check("acct", "key").reason == "suspended"
    assert seeder.asked == ["acct", "acct"]


def test_how_long_an_account_learned_without_events_is_kept(backend: Backend) -> None:
    gate = backend.make()
    seeder = Seeder(gate)
    gate.set_seeder(seeder)
    gate.check("acct", "key")
    if isinstance(gate, EmbeddedGate):
        backend.advance(180)  # the embedded gate drops idle accounts a minute after their use
        gate.check("other", "key")  # (its sweep runs with checks)
        gate.check("acct", "key")
        assert seeder.asked == ["acct", "other", "acct"]
    else:
        # Redis keeps the account's record for the state TTL, renewed by its checks.
        assert backend.client is not None
        ttl_ms = backend.client.pttl("{a:acct}:gate")
        assert ttl_ms > 29 * 86_400_000
        gate.check("acct", "key")
        assert seeder.asked == ["acct"]


def test_an_account_without_events_learned_when_a_sweep_is_due_is_learned_once() -> None:
    # The embedded gate sweeps idle accounts with its checks: not between a seeder's write and
    # the check it was for (that would drop what was just learned, and ask again).
    backend = embedded_backend()
    gate = backend.make()
    seeder = Seeder(gate)
    gate.set_seeder(seeder)

    gate.check("acct", "key")  # a fresh gate's first check sweeps
    gate.check("acct", "key")
    backend.advance(61)  # the next sweep is due: it runs in this check
    gate.check("other", "key")
    gate.check("other", "key")

    assert seeder.asked == ["acct", "other"]


def test_holds_status_tells_whether_an_account_would_be_learned(gate: Gate) -> None:
    gate.set_limits("acct", "key", rpm=5, tpd=100, version=1)
    assert not gate.holds_status("acct")
    gate.set_status("acct", "active", None, version=2)
    assert gate.holds_status("acct") and not gate.holds_status("other")
    gate.set_status("other", "active", None, version=0)  # as seeded: an account without events
    assert gate.holds_status("other")


def test_an_embedded_gate_with_relearn_learns_an_active_account_again() -> None:
    # Another process's decisions reach this embedded gate only through its seeder.
    backend = embedded_backend()
    gate = EmbeddedGate(clock=backend.now, relearn_s=30)
    standings = {"acct": ("suspended", 3)}
    seeder = Seeder(gate, standings)
    gate.set_seeder(seeder)
    assert gate.check("acct", "key").reason == "suspended"

    standings["acct"] = ("active", 4)  # reinstated by another process
    backend.advance(29)
    assert gate.check("acct", "key").reason == "suspended"  # learned 29 s ago: as it was
    backend.advance(1)
    assert gate.check("acct", "key").allowed
    gate.set_status("acct", "suspended", None, version=5)  # told by its own process
    assert gate.check("acct", "key").reason == "suspended"
    assert seeder.asked == ["acct", "acct"]


def test_relearn_must_be_positive() -> None:
    with pytest.raises(ValueError, match="relearn_s"):
        EmbeddedGate(relearn_s=0)
    EmbeddedGate(relearn_s=0.5)  # any positive span


def test_when_learning_again_fails_the_gate_answers_from_what_it_holds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = embedded_backend()
    gate = EmbeddedGate(clock=backend.now, relearn_s=30)
    seeder = Seeder(gate, {"acct": ("suspended", 3)})
    gate.set_seeder(seeder)
    assert gate.check("acct", "key").reason == "suspended"

    def failing(account_id: str) -> None:
        seeder.asked.append(account_id)
        raise RuntimeError("database down")

    gate.set_seeder(failing)
    backend.advance(30)
    with caplog.at_level("WARNING", logger="enforcement.gate"):
        held = gate.check("acct", "key")
    backend.advance(10)
    again = gate.check("acct", "key")  # not asked again before another 30 s

    assert (held.reason, again.reason) == ("suspended", "suspended")
    assert seeder.asked == ["acct", "acct"]
    assert "could not learn account acct again (" in caplog.text
    assert "database down" in caplog.text


def test_only_one_check_learns_an_account_again_while_the_others_answer_as_it_was() -> None:
    # A slow database must not send every check of a busy account to it at once.
    backend = embedded_backend()
    gate = EmbeddedGate(clock=backend.now, relearn_s=30)
    seeder = Seeder(gate, {"acct": ("suspended", 3)})
    gate.set_seeder(seeder)
    assert gate.check("acct", "key").reason == "suspended"
    entered, release = threading.Event(), threading.Event()

    def slow(account_id: str) -> None:
        entered.set()
        assert release.wait(10)
        seeder(account_id)

    gate.set_seeder(slow)
    backend.advance(30)
    first = concurrent.futures.ThreadPoolExecutor(1).submit(gate.check, "acct", "key")
    assert entered.wait(10)
    during = [gate.check("acct", "key") for _ in range(3)]  # each would block if it asked
    release.set()

    assert first.result(10).reason == "suspended"
    assert [d.reason for d in during] == ["suspended"] * 3
    assert seeder.asked == ["acct", "acct"]


def test_a_slow_failure_is_retried_relearn_s_after_it_failed_not_after_it_was_asked() -> None:
    backend = embedded_backend()
    gate = EmbeddedGate(clock=backend.now, relearn_s=30)
    seeder = Seeder(gate, {"acct": ("suspended", 3)})
    gate.set_seeder(seeder)
    gate.check("acct", "key")
    asked: list[str] = []

    def slow_failure(account_id: str) -> None:
        asked.append(account_id)
        backend.advance(20)  # the database took 20 s to fail
        raise RuntimeError("timeout")

    gate.set_seeder(slow_failure)
    backend.advance(30)
    gate.check("acct", "key")  # fails at +50 s
    backend.advance(15)  # +65 s: 35 s after the ask, 15 s after the failure
    gate.check("acct", "key")
    assert asked == ["acct"]
    backend.advance(15)  # 30 s after the failure
    gate.check("acct", "key")
    assert asked == ["acct", "acct"]


def test_relearning_failures_are_logged_at_most_once_per_relearn_s(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = embedded_backend()
    gate = EmbeddedGate(clock=backend.now, relearn_s=5)
    gate.set_seeder(Seeder(gate))
    accounts = [f"acct_{i}" for i in range(4)]
    for account in accounts:
        gate.check(account, "key")

    def failing(account_id: str) -> None:
        raise RuntimeError("database down")

    gate.set_seeder(failing)
    backend.advance(5)
    with caplog.at_level("WARNING", logger="enforcement.gate"):
        for account in accounts[:3]:
            assert gate.check(account, "key").allowed
        assert len(caplog.records) == 1
        backend.advance(5)
        gate.check(accounts[3], "key")

    assert len(caplog.records) == 2
    assert "(2 more such failures since the last warning)" in caplog.records[1].getMessage()


def test_a_cleared_gate_learns_every_account_again_whatever_versions_it_held(
    gate: Gate,
) -> None:
    """``Gate.clear``: for a gate whose state follows events the log no longer has (a database
    restored from a backup). Its versions are gone with it: the standing learned next, at a
    lower version, is the one enforced."""
    gate.set_status("acct_lost", "suspended", None, version=9)
    gate.set_limits("acct_lost", "key", 1, 0, version=9)
    gate.apply_throttle("acct_lost", "thr", None, 0.5, None, version=9)
    gate.set_status("acct_other", "terminated", None, version=3)
    seeder = Seeder(gate, {"acct_lost": ("active", 2)})
    gate.set_seeder(seeder)
    assert gate.check("acct_lost", "key").reason == "suspended"

    gate.clear()

    decisions = [gate.check("acct_lost", "key", tokens=5) for _ in range(2)]
    assert [d.reason for d in decisions] == ["ok", "ok"]
    assert decisions[0].limit_requests == gate.default_rpm  # no limits, no throttle held
    assert gate.throttle_ids("acct_lost") == set()
    assert gate.check("acct_other", "key").allowed
    assert seeder.asked == ["acct_lost", "acct_other"]
    assert gate.set_status("acct_lost", "suspended", None, version=3)  # 3 is newer than 2 now
