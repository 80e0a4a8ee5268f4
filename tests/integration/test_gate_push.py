"""A decision that changes the gate reaches it as it is committed (``gatekeeping.GatePush``),
before any relay runs: the next request is refused at once. No workers run in these tests, so
only the push can have told the gate."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from test_service_support import OPERATOR, REPORTER, FakeClock, open_system

from enforcement import gatekeeping
from enforcement import operator_decisions as ops
from enforcement.bootstrap import Container, bootstrap
from enforcement.gate import EmbeddedGate, GateUnavailable
from enforcement.gatekeeping import PUSH_TIMEOUT_S, GatePush, build_gate, build_push_gate
from enforcement.migrations import upgrade
from enforcement.policy import ViolationReport
from enforcement.settings import Settings
from projections import aup_events as ev
from projections.standing import active_throttles
from tests.redis_server import RedisServer


@pytest.fixture
def system(database_url: str, clock: FakeClock) -> Iterator[Container]:
    with open_system(database_url, clock) as container:
        # The embedded gate reads the service's clock (bootstrap), the fake one here.
        assert isinstance(container.gate, EmbeddedGate)
        yield container


def reason(system: Container, account: str) -> str:
    return system.gate.check(account, "key_1").reason


def test_suspension_reinstatement_and_termination_reach_the_gate_at_once(
    system: Container,
) -> None:
    service = system.service
    assert reason(system, "acct_1") == "ok"

    service.operator("acct_1", ops.Suspend("review"), OPERATOR)
    assert reason(system, "acct_1") == "suspended"
    service.operator("acct_1", ops.Reinstate("cleared"), OPERATOR)
    assert reason(system, "acct_1") == "ok"
    service.operator("acct_1", ops.Terminate("fraud"), OPERATOR)
    assert reason(system, "acct_1") == "terminated"


def test_the_end_of_a_suspension_is_pushed_as_a_status(system: Container, clock: FakeClock) -> None:
    """``SuspensionEnded`` (its time ran out, or an appeal overturned it) changes the account's
    status: the push tells the gate, as it does a reinstatement."""
    service = system.service
    until = clock() + timedelta(hours=1)
    suspended = service.operator("acct_8", ops.Suspend("review", until=until), OPERATOR)
    suspension_id = suspended.events[0].data["suspension_id"]
    clock.advance(timedelta(hours=2))
    gate = CountingGate()
    service.after_commit = GatePush(gate)  # type: ignore[arg-type]

    ended = service.end_suspension("acct_8", suspension_id, OPERATOR)
    assert [e.type for e in ended.events] == ["SuspensionEnded"]
    assert gate.calls == ["holds_status", "set_status"]


def push(system: Container, gate: EmbeddedGate, account_id: str, events: Any) -> None:
    """What the push after a commit of ``events`` tells ``gate``."""
    state = system.standings.load(account_id)
    gatekeeping.apply_changes(gate, state, events, system.clock())


def gate_with_a_lifted_throttle(system: Container, account_id: str) -> EmbeddedGate:
    """A gate told of an operator's throttle of ``account_id`` alone (not of its status), whose
    lift it was never told of (lost)."""
    gate = EmbeddedGate(clock=lambda: system.clock().timestamp())
    applied = system.service.operator(account_id, ops.ApplyThrottle(0.25, "load"), OPERATOR)
    push(system, gate, account_id, applied.events)
    throttle_id = applied.standing.active_throttles[0].throttle_id
    assert gate.throttle_ids(account_id) == {throttle_id}
    assert not gate.holds_status(account_id)
    system.service.operator(account_id, ops.LiftThrottle(throttle_id), OPERATOR)  # not pushed
    return gate


def test_a_status_pushed_to_a_gate_that_had_not_learned_the_account_lifts_what_it_lacks(
    system: Container,
) -> None:
    """A gate that holds a throttle of the account but not its status (told of the throttle
    alone, its lift lost) is given the whole standing with the next status, the throttle the
    state no longer holds lifted, as its seeder would have done."""
    gate = gate_with_a_lifted_throttle(system, "acct_13")

    suspended = system.service.operator("acct_13", ops.Suspend("review"), OPERATOR)
    push(system, gate, "acct_13", suspended.events)
    assert gate.check("acct_13", "key_1").reason == "suspended"
    assert gate.throttle_ids("acct_13") == set()


def test_the_seeder_lifts_a_throttle_a_gate_holds_of_an_account_it_had_not_learned(
    system: Container,
) -> None:
    """As above, when the gate's seeder learns the account (at its next check) instead."""
    gate = gate_with_a_lifted_throttle(system, "acct_14")

    gatekeeping.GateSeeder(gate, system.standings, system.clock)("acct_14")
    assert gate.holds_status("acct_14")
    assert gate.throttle_ids("acct_14") == set()


def test_limits_a_throttle_and_its_lift_reach_the_gate_at_once(system: Container) -> None:
    service = system.service
    service.operator("acct_2", ops.ConfigureLimits(100, 1000, key_id="key_1"), OPERATOR)
    assert system.gate.check("acct_2", "key_1").limit_requests == 100

    applied = service.operator("acct_2", ops.ApplyThrottle(0.25, "load"), OPERATOR)
    throttle_id = ev.CODEC.decode(applied.events[0]).payload.throttle_id
    assert system.gate.check("acct_2", "key_1").limit_requests == 25
    service.operator("acct_2", ops.LiftThrottle(throttle_id), OPERATOR)
    assert system.gate.check("acct_2", "key_1").limit_requests == 100


def test_a_key_throttle_reaches_the_gate_for_that_key_alone(system: Container) -> None:
    service = system.service
    for key in ("key_1", "key_2"):
        service.operator("acct_7", ops.ConfigureLimits(100, 1000, key_id=key), OPERATOR)

    service.operator("acct_7", ops.ApplyThrottle(0.25, "load", key_id="key_1"), OPERATOR)

    assert system.gate.check("acct_7", "key_1").limit_requests == 25
    assert system.gate.check("acct_7", "key_2").limit_requests == 100  # not account-wide


def test_an_embedded_gate_reads_the_use_cases_clock(
    database_url: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A throttle recorded at the fake clock's instant (2026-11-24) for one day holds in the
    # gate for that day and ends with it, as in the standing; by the real clock (days later) it
    # had ended before it was recorded. The gate never learns the account again here, so the
    # end is the gate's own.
    monkeypatch.setattr(gatekeeping, "EMBEDDED_RELEARN_S", 10**9)
    with open_system(database_url, clock) as system:
        service = system.service
        service.operator("acct_6", ops.ConfigureLimits(100, 1000, key_id="key_1"), OPERATOR)
        until = clock() + timedelta(days=1)
        service.operator("acct_6", ops.ApplyThrottle(0.25, "load", expires_at=until), OPERATOR)
        assert system.gate.check("acct_6", "key_1").limit_requests == 25
        clock.advance(timedelta(hours=23))
        assert system.gate.check("acct_6", "key_1").limit_requests == 25
        assert active_throttles(system.standings.load("acct_6"), clock())
        clock.advance(timedelta(hours=1, seconds=1))
        assert system.gate.check("acct_6", "key_1").limit_requests == 100
        assert not active_throttles(system.standings.load("acct_6"), clock())  # ended for both


def test_a_batch_recorded_in_one_transaction_reaches_the_gate_too(
    system: Container, clock: FakeClock
) -> None:
    critical = ViolationReport("csam", clock())
    minor = ViolationReport("spam", clock())
    items = [("acct_3", critical, None, None), ("acct_4", minor, None, None)]

    results = system.service.report_batch(items, REPORTER)

    assert [r.status for r in results] == [201, 201]
    assert reason(system, "acct_3") == "terminated"
    assert reason(system, "acct_4") == "ok"  # a warning restricts nothing


def test_each_account_of_a_shared_commit_is_pushed_though_a_push_before_it_failed(
    system: Container, clock: FakeClock
) -> None:
    pushed: list[str] = []

    def after_commit(state: Any, _events: object, _at: object) -> None:
        pushed.append(state.account_id)
        if state.account_id == "acct_3":
            raise ConnectionError("gate store down")

    system.service.after_commit = after_commit
    items = [(a, ViolationReport("csam", clock()), None, None) for a in ("acct_3", "acct_4")]

    results = system.service.report_batch(items, REPORTER)

    assert [r.status for r in results] == [201, 201]  # committed: a failed push fails neither
    assert pushed == ["acct_3", "acct_4"]


def test_a_service_without_a_push_tries_none_after_a_shared_commit(
    system: Container, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    system.service.after_commit = None
    items = [(a, ViolationReport("spam", clock()), None, None) for a in ("acct_5", "acct_6")]

    assert [r.status for r in system.service.report_batch(items, REPORTER)] == [201, 201]
    assert "were not pushed" not in caplog.text


class CountingGate:
    """Counts the gate updates it is asked for, and fails each when told to."""

    def __init__(
        self,
        fail: bool = False,
        on_call: Callable[[], object] = lambda: None,
        error: Callable[[], Exception] = lambda: ConnectionError("gate store down"),
    ) -> None:
        self.calls: list[str] = []
        self.fail = fail
        self.on_call = on_call  # what each call does first (moves a fake clock: a slow one)
        self.error = error  # what each failing call raises

    def __getattr__(self, name: str) -> Any:
        def update(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            self.on_call()
            if self.fail:
                raise self.error()
            return set() if name == "throttle_ids" else True

        return update


def test_only_what_a_decision_changed_is_pushed(system: Container) -> None:
    gate = CountingGate()
    service = system.service
    for key in ("key_1", "key_2", "key_3"):  # (pushed one by one, before the counting starts)
        service.operator("acct_5", ops.ConfigureLimits(60, 1000, key_id=key), OPERATOR)
    service.operator("acct_5", ops.ApplyThrottle(0.5, "load"), OPERATOR)
    service.after_commit = GatePush(gate)  # type: ignore[arg-type]

    report = ViolationReport("spam", system.clock())
    service.report_violation("acct_5", report, REPORTER)  # a remediation: nothing for the gate
    assert gate.calls == []
    service.operator("acct_5", ops.Suspend("review"), OPERATOR)
    # not the three keys' limits and the throttle again (the gate holds the account's status)
    assert gate.calls == ["holds_status", "set_status"]
    service.operator("acct_5", ops.ConfigureLimits(30, 500, key_id="key_2"), OPERATOR)
    service.operator("acct_5", ops.ApplyThrottle(0.25, "more load", key_id="key_1"), OPERATOR)
    assert gate.calls == ["holds_status", "set_status", "set_limits", "apply_throttle"]


def test_the_push_runs_once_the_account_is_unlocked(system: Container) -> None:
    service, free = system.service, []
    lock = service._account_lock("acct_8")

    def after_commit(*_: object) -> None:
        free.append(lock.acquire(blocking=False))
        lock.release()

    service.after_commit = after_commit
    service.operator("acct_8", ops.Suspend("review"), OPERATOR)
    assert free == [True]  # another request on the account (or its stripe) need not wait


def test_only_a_commit_is_pushed_not_a_replay_nor_a_command_that_recorded_nothing(
    system: Container,
) -> None:
    service, pushed = system.service, []
    service.after_commit = lambda _state, events, _at: pushed.append([e.type for e in events])
    for _ in range(2):  # the second replays the first
        service.operator(
            "acct_12", ops.Suspend("review"), OPERATOR, idempotency_key="k", fingerprint="f"
        )
    assert service.end_suspension("acct_12", "sus_other", OPERATOR).events == []
    assert pushed == [["AccountSuspended", "NoticeIssued"]]


def test_after_a_push_that_failed_slowly_none_is_tried_for_a_while(
    system: Container, caplog: pytest.LogCaptureFixture
) -> None:
    """The defaults: a push that failed after half the push timeout or more stops the pushes
    for 10 s, and each such failure is logged with its error."""
    now = [100.0]
    slowly = PUSH_TIMEOUT_S / 2
    gate = CountingGate(fail=True, on_call=lambda: now.__setitem__(0, now[0] + slowly))
    service = system.service
    service.after_commit = GatePush(gate, clock=lambda: now[0])  # type: ignore[arg-type]

    service.operator("acct_9", ops.Suspend("review"), OPERATOR)  # failed at 100.125
    now[0] = 110.0
    service.operator("acct_9", ops.Reinstate("cleared"), OPERATOR)  # within the quiet time
    assert gate.calls == ["holds_status"]  # the push's first call failed, after a wait
    now[0] = 110.125  # 10 s after the failure
    service.operator("acct_9", ops.Terminate("fraud"), OPERATOR)
    assert gate.calls == ["holds_status", "holds_status"]
    warnings = [r for r in caplog.records if r.name == "enforcement.gate"]
    message = "gate not updated after commit; the relay will (no push for 10s)"
    assert [r.getMessage() for r in warnings] == [message] * 2
    assert all(r.exc_info for r in warnings)


def test_a_push_refused_at_once_stops_no_later_push(
    system: Container, caplog: pytest.LogCaptureFixture
) -> None:
    """Refused in less than half the push timeout: no pause, and one warning per quiet time."""
    now = [100.0]
    gate = CountingGate(fail=True, on_call=lambda: now.__setitem__(0, now[0] + 0.09375))
    service = system.service
    service.after_commit = GatePush(gate, quiet_s=10, clock=lambda: now[0])  # type: ignore[arg-type]

    service.operator("acct_11", ops.Suspend("review"), OPERATOR)
    service.operator("acct_11", ops.Reinstate("cleared"), OPERATOR)
    assert gate.calls == ["holds_status", "holds_status"]
    now[0] = 110.0  # the first failure was 10 s before the next one's end
    service.operator("acct_11", ops.Terminate("fraud"), OPERATOR)
    assert gate.calls == ["holds_status"] * 3

    warnings = [r for r in caplog.records if r.name == "enforcement.gate"]
    message = "gate not updated after commit; the relay will"
    assert [r.getMessage() for r in warnings] == [message] * 2  # the first and the third
    assert all(r.exc_info for r in warnings)


def refused() -> Exception:
    """What the Redis gate raises for a connection refused: redis-py's error, raised as it
    handled the socket's, in a ``GateUnavailable``."""
    error = redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
    error.__context__ = ConnectionRefusedError(111, "Connection refused")
    wrapped = GateUnavailable(f"gate store unavailable: {error}")
    wrapped.__cause__ = error
    return wrapped


def test_a_refused_push_measured_slow_under_load_stops_no_later_push(system: Container) -> None:
    """A refusal comes at once, but a thread waits for the GIL after it: in a busy process (16
    threads at work) one in forty was measured at over 0.4 s. Still refused, not hung: it pauses
    no push (it did, as slow, and the next decision reached the gate only with the relay)."""
    now = [100.0]
    gate = CountingGate(fail=True, on_call=lambda: now.__setitem__(0, now[0] + 0.4), error=refused)
    service = system.service
    service.after_commit = GatePush(gate, quiet_s=10, clock=lambda: now[0])  # type: ignore[arg-type]

    service.operator("acct_14", ops.Suspend("review"), OPERATOR)
    service.operator("acct_14", ops.Reinstate("cleared"), OPERATOR)

    assert gate.calls == ["holds_status", "holds_status"]


@pytest.mark.redis
def test_a_decision_just_after_redis_restarted_reaches_it_at_once(
    system: Container, redis_server: RedisServer, redis_url: str
) -> None:
    # Given a push to Redis that failed as Redis was down (its connection refused), and Redis
    # started again, empty, a moment later
    settings = Settings(database_url="sqlite://", redis_url=redis_url)
    gate = build_gate(settings, system.policy)
    system.service.after_commit = GatePush(build_push_gate(settings, system.policy, gate))
    try:
        redis_server.stop()
        system.service.operator("acct_12", ops.Suspend("review"), OPERATOR)
        redis_server.start()

        # When the next decision is committed, within the 10 s after the failed push
        system.service.operator("acct_13", ops.Suspend("review"), OPERATOR)

        # Then it reached the gate (no relay runs here): its account is refused at once
        assert gate.check("acct_13", "key_1").reason == "suspended"
    finally:
        gate.close()


class Calls:
    """``gate``, noting the name of each of its methods called."""

    def __init__(self, gate: Any) -> None:
        self.gate = gate
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.gate, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return method(*args, **kwargs)

        return call


class SilentServer:
    """A TCP server that accepts connections and never answers: a Redis that hangs."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.1)
        self.address = self._server.getsockname()
        self.url = f"redis://127.0.0.1:{self.address[1]}/0"
        self._held: list[socket.socket] = []
        self._accepted = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn = self._server.accept()[0]
            except TimeoutError:
                continue
            with self._accepted:
                self._held.append(conn)
                self._accepted.notify_all()

    def connections_so_far(self) -> int:
        """How many connections clients opened so far: those accepted before a probe's, which
        the listen queue hands over after them (first in, first out)."""
        with socket.create_connection(self.address) as probe:
            mine = probe.getsockname()
            with self._accepted:
                assert self._accepted.wait_for(
                    lambda: any(c.getpeername() == mine for c in self._held), timeout=30
                )
                count = next(i for i, c in enumerate(self._held) if c.getpeername() == mine)
                self._held.pop(count).close()
        return count

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for conn in self._held:
            conn.close()
        self._server.close()


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def test_a_redis_that_hangs_delays_a_decision_by_the_push_timeout_only(
    system: Container, silent_server: SilentServer
) -> None:
    settings = Settings(database_url="sqlite://", redis_url=silent_server.url)
    gate = build_gate(settings, system.policy)
    push_gate = Calls(build_push_gate(settings, system.policy, gate))
    system.service.after_commit = GatePush(push_gate)  # type: ignore[arg-type]

    started = time.monotonic()
    outcome = system.service.operator("acct_10", ops.Suspend("review"), OPERATOR)
    took = time.monotonic() - started
    assert push_gate.calls == ["holds_status"]
    # One command, not retried: a retry after a timeout would go out on a new connection (the
    # timed-out one is dropped). The time alone could not tell: PUSH_TIMEOUT_S + 1.5 s below
    # lets five retries through.
    assert silent_server.connections_so_far() == 1
    system.service.operator("acct_10", ops.Reinstate("cleared"), OPERATOR)  # quiet: no push

    assert push_gate.calls == ["holds_status"]
    assert silent_server.connections_so_far() == 1
    assert outcome.standing.status == "suspended"
    # It gave up after PUSH_TIMEOUT_S (the gate's own client would wait 5 s, and retry); the
    # bound above leaves a loaded machine a second and a half.
    assert PUSH_TIMEOUT_S <= took < PUSH_TIMEOUT_S + 1.5


def test_a_gate_that_fails_does_not_fail_the_committed_decision(
    system: Container, caplog: pytest.LogCaptureFixture
) -> None:
    system.service.after_commit = GatePush(CountingGate(fail=True))  # type: ignore[arg-type]

    with caplog.at_level(logging.WARNING, logger="enforcement.gate"):
        outcome = system.service.operator("acct_6", ops.Suspend("review"), OPERATOR)

    assert [e.type for e in outcome.events] == ["AccountSuspended", "NoticeIssued"]
    assert outcome.standing.status == "suspended"
    assert [e.type for e in system.store.read_stream("acct_6")][:1] == ["AccountSuspended"]
    assert "the relay will" in caplog.text


def test_the_push_is_the_states_own_time(
    system: Container, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state is applied at the committed decision's instant (the same as the relay's),
    here later than the instant it was decided at, alone or in a shared commit."""
    seen: list[datetime] = []
    system.service.after_commit = lambda state, events, at: seen.append(at)
    committed = clock() + timedelta(seconds=1)
    monkeypatch.setattr(system.store, "_clock", lambda: committed)

    outcome = system.service.operator("acct_7", ops.Suspend("review"), OPERATOR)
    items = [(a, ViolationReport("csam", clock()), None, None) for a in ("acct_8", "acct_9")]
    system.service.report_batch(items, REPORTER)

    assert outcome.events[-1].recorded_at == committed
    assert seen == [committed] * 3


def test_the_embedded_gate_reads_a_naive_clock_as_utc(monkeypatch: pytest.MonkeyPatch) -> None:
    # As everywhere else (events.timefmt.to_utc), whatever the host's time zone.
    from enforcement.bootstrap import _seconds

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        seconds = _seconds(lambda: datetime(2026, 11, 24, 10, 0))()
    finally:
        monkeypatch.undo()
        time.tzset()
    assert seconds == datetime(2026, 11, 24, 10, 0, tzinfo=UTC).timestamp()


def test_closing_the_container_closes_its_gates_redis_connections(
    sqlite_url: str, redis_url: str
) -> None:
    upgrade(sqlite_url)
    watcher = redis.Redis.from_url(redis_url)
    alone = watcher.info("clients")["connected_clients"]
    container = bootstrap(Settings(database_url=sqlite_url, redis_url=redis_url))
    # The gate's client, from threads at once (a connection each), and the push gate's.
    checks = [
        threading.Thread(target=container.gate.check, args=(f"acct_{i}", "key_1")) for i in range(4)
    ]
    for thread in checks:
        thread.start()
    for thread in checks:
        thread.join()
    container.service.operator("acct_0", ops.Suspend("review"), OPERATOR)
    assert container.gate.check("acct_0", "key_1").reason == "suspended"  # pushed
    assert watcher.info("clients")["connected_clients"] > alone

    container.close()

    assert watcher.info("clients")["connected_clients"] == alone
    watcher.close()
