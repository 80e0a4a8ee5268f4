"""The distributed runtime under failure: the real ``enforcement worker`` killed in the middle of
a delivery, Redis stopped and started again while violations keep being recorded (and a
suspension committed meanwhile enforced as soon as Redis answers again), and a worker started
before Redis is up.

All run on SQLite and on PostgreSQL (``database_url``) against a real Redis. Violations are
recorded through the use case in this process, as ``serve`` would record them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from enforcement import operator_decisions as ops
from enforcement import policy_activations
from enforcement.bootstrap import Container, bootstrap
from enforcement.gate import GateUnavailable, RedisGate
from enforcement.settings import Settings
from enforcement.workers import redis_watch, runtime
from enforcement.workers import relay as relay_module
from enforcement.workers.broker import make_broker
from enforcement.workers.leader import LEADER_LOCK_KEY
from enforcement.workers.redis_watch import RedisWatch
from enforcement.workers.retrying import CameBack
from enforcement.workers.runtime import build_actors, start_background, start_runtime
from events import RecordedEvent
from tests.redis_server import RedisServer
from tests.workers.system import (
    OPERATOR,
    SECRET,
    Receiver,
    WorkerProcess,
    all_events,
    delivered_once_each,
    fast_settings,
    outcomes_of,
    relay_position,
    report,
    set_contact,
    wait_until,
)

pytestmark = pytest.mark.redis
POSTGRES_ONLY = pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def settings(database_url: str, redis_url: str, tmp_path: Path) -> Settings:
    # A dead worker's unacknowledged messages are requeued once its heartbeat is 2 s old.
    return fast_settings(
        database_url, tmp_path, redis_url=redis_url, worker_threads=2, worker_heartbeat_ms=2000
    )


def notice_of(recorded: Sequence[RecordedEvent]) -> str:
    [notice] = [e for e in recorded if e.type == "NoticeIssued"]
    return notice.event_id


def test_a_worker_killed_mid_delivery_is_redelivered_and_recorded_once(
    settings: Settings, poster: Container, tmp_path: Path
) -> None:
    receiver = Receiver(hold_first=True)
    set_contact(poster.engine, "acct_crash", webhook_url=receiver.url)
    first = WorkerProcess(settings, tmp_path / "worker-1.log")
    second: WorkerProcess | None = None
    try:
        # Given a worker that is in the middle of posting a notice's webhook
        notice_id = notice_of(report(poster, "acct_crash").events)
        wait_until(
            lambda: receiver.for_event(notice_id), "the first attempt to reach the receiver", 30
        )

        # When the worker and its consumer processes are SIGKILLed before it can finish
        first.kill()
        receiver.release()
        assert outcomes_of(poster.store, notice_id) == []

        # and a new worker starts
        second = WorkerProcess(settings, tmp_path / "worker-2.log")

        # Then Redis hands the unacknowledged message to it and the notice is delivered
        wait_until(
            lambda: delivered_once_each(poster.store, [notice_id], ["webhook"]),
            "the redelivered notice to be recorded as delivered",
            timeout=40,
        )
        second.stop()

        # exactly once in the log, although the receiver saw it twice (at least once on the wire)
        outcomes = outcomes_of(poster.store, notice_id)
        assert [(e.type, e.data["channel"], e.data["attempt"]) for e in outcomes] == [
            ("NoticeDelivered", "webhook", 1)
        ], second.output()
        attempts = receiver.for_event(notice_id)
        assert len(attempts) == 2
        assert attempts[0].body == attempts[1].body
        signature = (
            "sha256=" + hmac.new(SECRET.encode(), attempts[1].body, hashlib.sha256).hexdigest()
        )
        assert attempts[1].headers["x-enforcement-signature"] == signature
        # Each worker recorded as it started the policy it decides with, one after the other.
        begun = policy_activations.listed(poster.engine)
        assert [(a.policy_version, a.strike_lookback) for a in begun] == [
            ("aup-2026-11", "90d")
        ] * 2
        assert begun[0].activated_at < begun[1].activated_at
    finally:
        receiver.close()
        first.stop()
        if second is not None:
            second.stop()


def test_notices_recorded_while_redis_is_down_go_out_when_it_returns(
    settings: Settings, poster: Container, redis_server: RedisServer, tmp_path: Path
) -> None:
    receiver = Receiver()
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    notices: dict[str, list[str]] = {}

    def post(phase: str, count: int) -> None:
        for i in range(count):
            account = f"acct_{phase}_{i}"
            set_contact(poster.engine, account, f"{account}@customer.test", receiver.url)
            notices.setdefault(phase, []).append(notice_of(report(poster, account).events))

    try:
        # Given a running worker that has delivered everything posted so far
        post("before", 5)
        wait_until(
            lambda: delivered_once_each(poster.store, notices["before"], ["email", "webhook"]),
            "the first notices to be delivered",
            timeout=30,
        )

        # When Redis stops while violations keep being recorded
        redis_server.stop()
        stopped_at = relay_position(poster.store)
        failures_before = worker.output().count("relay failed")
        post("during", 8)
        issued = all_events(poster.store, "NoticeIssued")
        first_during = min(e.position for e in issued if e.event_id in notices["during"])
        # (the relay cannot enqueue them, so it does not move past them)
        wait_until(
            lambda: worker.output().count("relay failed") > failures_before,
            "the relay to hit the outage",
        )
        assert stopped_at <= relay_position(poster.store) < first_during

        # and Redis comes back (empty: it keeps nothing on disk), and more violations come in
        redis_server.restart()
        post("after", 5)

        # Then every notice goes out, each recorded as delivered exactly once per channel
        everything = [n for phase in notices.values() for n in phase]
        wait_until(
            lambda: delivered_once_each(poster.store, everything, ["email", "webhook"]),
            "every notice to be delivered after the outage",
            timeout=40,
        )
        worker.stop()
        delivered = Counter(
            (e.data["notice_event_id"], e.data["channel"])
            for e in all_events(poster.store, "NoticeDelivered")
        )
        assert len(delivered) == 2 * len(everything) == 36
        assert set(delivered.values()) == {1}
        assert all_events(poster.store, "NoticeDeliveryFailed") == []
        assert {r.event_id for r in receiver.requests} == set(everything)
        eml = {p.stem for p in (tmp_path / "notices").glob("*.eml")}
        assert eml == set(everything)
    finally:
        receiver.close()
        worker.stop()


@POSTGRES_ONLY
def test_a_worker_started_while_redis_is_down_relays_once_it_comes_up(
    settings: Settings, poster: Container, redis_server: RedisServer, tmp_path: Path
) -> None:
    """On PostgreSQL, where a failed start must also give up the relay's leader lock."""
    receiver = Receiver()
    set_contact(poster.engine, "acct_early", webhook_url=receiver.url)
    # Given Redis down when the worker starts, and a notice waiting to be relayed
    redis_server.stop()
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        notice_id = notice_of(report(poster, "acct_early").events)
        wait_until(
            lambda: (
                "leads the relay" in worker.output() and "Connection refused" in worker.output()
            ),
            "the worker to start against the missing Redis",
            timeout=30,
        )

        # When Redis comes up
        redis_server.start()

        # Then the notice goes out without restarting the worker
        wait_until(
            lambda: delivered_once_each(poster.store, [notice_id], ["webhook"]),
            "the notice to be delivered once Redis is up",
            timeout=30,
        )
    finally:
        receiver.close()
        worker.stop()


def test_a_redis_that_lost_its_data_gets_the_gate_and_waiting_notices_back(
    settings: Settings, poster: Container, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Redis restarted without persistence loses the gate's state and the messages it held (a
    notice's retry waiting out its backoff). The worker's leader sees the loss within seconds,
    without any error of its own: it re-seeds the gate and re-sends notices without an outcome."""
    receiver = Receiver(fail_first=1)
    worker_settings = replace(settings, notice_backoff_ms=600_000, notice_max_backoff_ms=600_000)
    worker = WorkerProcess(worker_settings, tmp_path / "worker.log")
    gate = RedisGate.from_url(str(settings.redis_url))
    try:
        # Given a suspended account, enforced at the gate
        poster.service.operator("acct_gate", ops.Suspend("abuse"), OPERATOR)
        wait_until(
            lambda: gate.check("acct_gate", "key_1").reason == "suspended",
            "the gate to enforce the suspension",
            timeout=30,
        )
        # and a notice whose first attempt failed, its retry waiting in Redis for 10 minutes
        set_contact(poster.engine, "acct_notice", webhook_url=receiver.url)
        notice = notice_of(report(poster, "acct_notice").events)
        wait_until(
            lambda: [e.type for e in outcomes_of(poster.store, notice)] == ["NoticeDeliveryFailed"],
            "the first attempt to fail",
            timeout=30,
        )

        # When Redis restarts empty
        redis_server.restart()

        # Then the gate enforces the suspension again and the notice goes out, each soon
        wait_until(
            lambda: gate.check("acct_gate", "key_1").reason == "suspended",
            "the gate to be re-seeded",
            timeout=20,
        )
        wait_until(
            lambda: delivered_once_each(poster.store, [notice], ["webhook"]),
            "the lost retry to be sent again",
            timeout=20,
        )
        assert "Redis lost its data" in worker.output()
        assert "relay failed" not in worker.output()  # seen by the watch, not by an error
    finally:
        receiver.close()
        worker.stop()


def test_a_redis_restarted_from_an_older_snapshot_gets_the_gate_back(
    settings: Settings, poster: Container, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Redis restarted from a snapshot (RDB, redis-server's default persistence) comes back
    with the leader's mark, but without what was written since: here the suspension the gate
    enforced. The mark names the run of Redis that took it, so the leader sees another run
    within seconds and re-seeds the gate. (Found by ``benchmarks/soak_production.py
    --redis-persistence rdb``: a terminated account allowed after Redis was killed.)"""
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    gate = RedisGate.from_url(str(settings.redis_url))
    client = redis_server.client()
    snapshot = Path(client.config_get("dir")["dir"]) / "dump.rdb"
    try:
        # Given an account the gate allows again, in a snapshot of Redis with the leader's mark
        wait_until(lambda: client.exists(RedisWatch.KEY), "the leader marks Redis", timeout=30)
        poster.service.operator("acct_snap", ops.Suspend("abuse"), OPERATOR)
        wait_until(
            lambda: gate.check("acct_snap", "key_1").reason == "suspended",
            "the gate to enforce the suspension",
            timeout=30,
        )
        poster.service.operator("acct_snap", ops.Reinstate("appeal won"), OPERATOR)
        wait_until(
            lambda: gate.check("acct_snap", "key_1").allowed,
            "the gate to allow the account again",
            timeout=30,
        )
        # (once every message is done: one run again after the restart would push the
        # account's standing of then, and mend the gate by chance)
        wait_until(
            lambda: not any(client.hlen(k) for k in client.keys("dramatiq:*.msgs")),
            "the messages to be done",
            timeout=30,
        )
        client.save()
        # and suspended again after the snapshot
        poster.service.operator("acct_snap", ops.Suspend("abuse again"), OPERATOR)
        wait_until(
            lambda: gate.check("acct_snap", "key_1").reason == "suspended",
            "the gate to enforce the second suspension",
            timeout=30,
        )
        wait_until(
            lambda: relay_position(poster.store) >= poster.store.max_position(),
            "the relay to pass the second suspension",
            timeout=30,
        )

        # When Redis restarts from the snapshot
        redis_server.restart()
        assert client.exists(RedisWatch.KEY)

        # Then the gate enforces the suspension again, soon
        wait_until(
            lambda: gate.check("acct_snap", "key_1").reason == "suspended",
            "the gate to be re-seeded",
            timeout=20,
        )
        assert "Redis lost its data" in worker.output()
    finally:
        snapshot.unlink(missing_ok=True)  # the session's Redis: later restarts start empty
        client.close()
        worker.stop()


def test_the_relay_tells_the_gate_of_a_suspension_whose_push_was_lost_without_the_consumers(
    settings: Settings, poster: Container
) -> None:
    """A suspension whose push did not reach the gate (Redis restarting, the push then paused
    for 10 s) is enforced once the relay passes it, not once a consumer reaches its
    ``apply_gate_state`` message: that message queues behind the notice deliveries, which a
    backlog or slow receivers hold for minutes. (Found by a crash soak: after Redis restarted
    empty, the leader's re-seed read an account's standing just before an operator suspended
    it, the suspension's push was paused, and the gate let the suspended account through on
    both APIs while the message waited behind some 18,000 notice deliveries.)"""
    report(poster, "acct_pushless")  # a standing the leader seeds the gate with: active
    leader = bootstrap(settings)
    actors = build_actors(leader)
    # The relay and its leader's gate-keeping run; no consumer is free to take a message.
    stop = start_background(leader, actors, consumers=False, relay=True)
    gate = RedisGate.from_url(str(settings.redis_url))
    try:
        wait_until(
            lambda: relay_position(leader.store) >= leader.store.max_position(),
            "the leader to seed the gate and relay the report",
        )
        assert gate.check("acct_pushless", "key_1").reason == "ok"

        # When a suspension is committed whose push never reached Redis (the poster's gate is
        # its own, as a push that failed)
        poster.service.operator("acct_pushless", ops.Suspend("abuse"), OPERATOR)

        # Then the gate refuses the account once the relay has passed the suspension
        wait_until(
            lambda: relay_position(leader.store) >= leader.store.max_position(),
            "the relay to pass the suspension",
        )
        assert gate.check("acct_pushless", "key_1").reason == "suspended"
    finally:
        stop()
        actors.broker.close()
        leader.close()
        gate.close()


def test_the_relay_applies_gate_changes_alone_at_once_and_logs_a_failure_to(
    settings: Settings, poster: Container, caplog: pytest.LogCaptureFixture
) -> None:
    """The relay applies each gate change it passes to the gate at once, and nothing else; a
    gate that cannot take it is logged."""
    report(poster, "acct_applied")
    poster.service.operator("acct_applied", ops.Suspend("abuse"), OPERATOR)
    changes = [(e.event_id,) for e in poster.store.read_all() if e.type in relay_module.GATE_EVENTS]
    leader = bootstrap(settings)
    applied: list[tuple[object, ...]] = []

    def unavailable(*args: object) -> None:
        applied.append(args)
        raise GateUnavailable("the gate is away")

    leader.extras["gate_applier"] = unavailable
    actors = build_actors(leader)
    caplog.set_level(logging.WARNING, logger="enforcement.workers")
    stop = start_background(leader, actors, consumers=False, relay=True)
    try:
        wait_until(
            lambda: relay_position(leader.store) >= leader.store.max_position(),
            "the relay to pass the suspension",
        )
    finally:
        stop()
        actors.broker.close()
        leader.close()
    assert changes and applied == changes
    said = "the relay could not apply gate state at once: the gate is away"
    assert [m for m in caplog.messages if "could not apply" in m] == [said] * len(changes)


@pytest.fixture
def redis_keeping_data() -> Iterator[RedisServer]:
    """A Redis of this test's own that can go away and come back with its data (``away``)."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def long_backoffs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay and the leader's start wait 30 s after every failure (their backoff reaches
    15 s), and ask every 0.1 s meanwhile whether Redis answers again."""
    for module in (relay_module, runtime):
        monkeypatch.setattr(module, "retry_delay", lambda failures, first=1.0: 30.0)
    monkeypatch.setattr(runtime, "REDIS_PROBE_SECONDS", 0.1)


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """What the watch's probes answered so far (``RedisWatch.answers_again``): a retry is made
    early once Redis comes back, that is, once it answers after a probe saw it away."""
    answered: list[bool] = []
    answers_again = RedisWatch.answers_again

    def recorded(watch: RedisWatch, failure: BaseException) -> bool:
        answered.append(answers_again(watch, failure))
        return answered[-1]

    monkeypatch.setattr(RedisWatch, "answers_again", recorded)
    return answered


def away(server: RedisServer) -> None:
    """Stop ``server`` with its data saved: it loads them when it starts again, as a Redis
    with persistence does, or one that was only out of reach (a network cut)."""
    client = server.client()
    client.save()
    client.close()
    server.stop()


def test_a_suspension_committed_while_redis_is_away_is_enforced_once_redis_answers_again(
    database_url: str,
    tmp_path: Path,
    redis_keeping_data: RedisServer,
    long_backoffs: None,
    probes: list[bool],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A suspension committed while Redis is away is not pushed (the push fails, then pauses),
    and Redis comes back holding the gate's earlier state: only the relay tells the gate. It
    retries as soon as Redis answers again, not at the end of its backoff (``long_backoffs``).
    (Redis comes back as another run, whose mark the leader's watch takes for lost data and
    re-seeds the gate within ``REDIS_WATCH_SECONDS``: the watch does not look again here, or
    its re-seed would mend the gate without the relay.)"""
    monkeypatch.setattr(redis_watch, "REDIS_WATCH_SECONDS", 3600.0)
    caplog.set_level(logging.ERROR, logger="enforcement.relay")
    server = redis_keeping_data
    settings = fast_settings(database_url, tmp_path, redis_url=server.url)
    poster = bootstrap(replace(settings, redis_url=None))  # its push never reaches Redis
    leader = bootstrap(settings)
    _, stop = start_runtime(leader, consumers=False, relay=True)
    gate = RedisGate.from_url(server.url)
    try:
        report(poster, "acct_away")
        wait_until(
            lambda: relay_position(leader.store) >= leader.store.max_position(),
            "the leader to seed the gate and relay the report",
        )
        assert gate.check("acct_away", "key_1").reason == "ok"

        # Given Redis away when a suspension is committed, and the relay failing to pass it
        away(server)
        poster.service.operator("acct_away", ops.Suspend("abuse"), OPERATOR)
        wait_until(
            lambda: any(m.startswith("relay failed") for m in caplog.messages),
            "the relay to fail on the outage",
        )
        wait_until(lambda: False in probes, "a probe of the relay to see Redis away")

        # When Redis answers again (with what it held before)
        server.start()

        # Then the gate refuses the account within moments, not once the backoff ran out
        wait_until(
            lambda: gate.check("acct_away", "key_1").reason == "suspended",
            "the gate to refuse the suspended account",
            timeout=15,  # the backoff held at 30 s: room for a loaded machine, still half
        )
    finally:
        stop()
        leader.close()
        poster.close()
        gate.close()


def test_a_leader_that_could_not_start_for_redis_starts_once_redis_answers_again(
    database_url: str,
    tmp_path: Path,
    redis_keeping_data: RedisServer,
    long_backoffs: None,
    probes: list[bool],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The leader's start (which marks Redis and seeds the gate) retries too as soon as Redis
    answers again, not at the end of its backoff (``long_backoffs``)."""
    caplog.set_level(logging.ERROR, logger="enforcement.workers")
    server = redis_keeping_data
    leader = bootstrap(fast_settings(database_url, tmp_path, redis_url=server.url))
    # Given Redis away when the workers start
    away(server)
    _, stop = start_runtime(leader, consumers=False, relay=True)
    watcher = server.client()
    try:
        wait_until(
            lambda: any(m.startswith("could not start the relay") for m in caplog.messages),
            "the leader to fail to start",
        )
        wait_until(lambda: False in probes, "a probe of the leader to see Redis away")

        # When Redis answers again
        server.start()

        # Then the leader starts within moments: it marks Redis
        wait_until(
            lambda: watcher.exists(RedisWatch.KEY),
            "the leader to mark Redis",
            timeout=15,  # the backoff held at 30 s: room for a loaded machine, still half
        )
    finally:
        stop()
        leader.close()
        watcher.close()


def relay_with_a_refusing_broker(leader: Container) -> Callable[[], None]:
    """Start ``leader``'s relay with a Redis broker whose every connection is refused (a port
    bound and never listened on, held until the stop: no other test process can take it), as a
    Redis at its ``maxclients`` refuses new ones while the watch's open connection answers its
    PING; the stop function."""
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    port = held.getsockname()[1]
    broker = make_broker(replace(leader.settings, redis_url=f"redis://127.0.0.1:{port}/0"))
    actors = build_actors(leader, broker)
    stop = start_background(leader, actors, consumers=False, relay=True, then_close=broker.close)

    def stop_then_release_the_port() -> None:
        try:
            stop()
        finally:
            held.close()

    return stop_then_release_the_port


def assert_backs_off(caplog: pytest.LogCaptureFixture, failed: str) -> None:
    """The first three failures logged as ``failed``, once there are as many, came 1 s, then
    2 s apart (not at every probe: ``probes_often``)."""

    def logged() -> list[float]:
        times = [r.created for r in list(caplog.records) if r.getMessage().startswith(failed)]
        return times[:3] if len(times) >= 3 else []

    first, second, third = wait_until(logged, f"three records of {failed!r}")
    assert second - first > 0.9 and third - second > 1.9


@pytest.fixture
def probes_often(monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay and the leader's start ask every 0.1 s whether Redis answers again."""
    monkeypatch.setattr(runtime, "REDIS_PROBE_SECONDS", 0.1)


@SQLITE_ONLY  # no database in question: the relay reads one notice, on either
def test_the_relay_backs_off_while_redis_answers_but_the_relay_cannot_reach_it(
    database_url: str,
    tmp_path: Path,
    redis_url: str,
    probes_often: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Early retries are for a Redis that comes back: one that answers the watch all along
    while the relay's enqueue fails with a connection error had the relay retry, and log, at
    every probe."""
    caplog.set_level(logging.ERROR, logger="enforcement.relay")
    # Given a leader whose watch and gate reach Redis, and whose broker cannot
    leader = bootstrap(fast_settings(database_url, tmp_path, redis_url=redis_url))
    stop = relay_with_a_refusing_broker(leader)
    try:
        # When the relay has a notice to enqueue
        report(leader, "acct_refused")

        # Then its attempts back off
        assert_backs_off(caplog, "relay failed")
    finally:
        stop()
        leader.close()


@SQLITE_ONLY
def test_a_leader_whose_start_fails_while_redis_answers_backs_off(
    database_url: str,
    tmp_path: Path,
    redis_url: str,
    probes_often: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The leader's start, likewise: its re-sending of a notice fails on the broker's
    connection while Redis answers the watch."""
    caplog.set_level(logging.ERROR, logger="enforcement.workers")
    settings = fast_settings(database_url, tmp_path, redis_url=redis_url)
    earlier = bootstrap(settings)
    _, stop = start_runtime(earlier, consumers=False, relay=True)
    try:
        report(earlier, "acct_refused")
        wait_until(
            lambda: relay_position(earlier.store) >= earlier.store.max_position(),
            "the relay to pass the notice",
        )
    finally:
        stop()
        earlier.close()
    # Given a notice relayed and not delivered, and Redis without the leader's mark (as after
    # it lost its data): a leader's start re-sends the notice
    with redis.Redis.from_url(redis_url) as client:
        client.delete(RedisWatch.KEY)

    # When a leader starts whose broker cannot reach Redis
    leader = bootstrap(settings)
    stop = relay_with_a_refusing_broker(leader)
    try:
        # Then its attempts back off
        assert_backs_off(caplog, "could not start the relay")
    finally:
        stop()
        leader.close()


def test_the_watch_tells_a_redis_that_answers_again_only_after_a_failure_of_redis(
    redis_keeping_data: RedisServer,
) -> None:
    """What ends the relay's backoff early: a failure of Redis (also as the gate's
    ``GateUnavailable``) while Redis answers a PING; a database failure never does."""
    watch = RedisWatch(redis_keeping_data.url)
    refused = redis.ConnectionError("Error 111 connecting to 127.0.0.1. Connection refused.")
    from_gate = GateUnavailable(f"gate store unavailable: {refused}")
    from_gate.__cause__ = refused
    database = sa.exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("refused"))
    try:
        assert watch.answers_again(refused)
        assert watch.answers_again(from_gate)
        assert watch.answers_again(redis.TimeoutError("Timeout reading from socket"))
        assert not watch.answers_again(database)
        assert not watch.answers_again(redis.ResponseError("OOM command not allowed"))
        redis_keeping_data.stop()
        assert not watch.answers_again(refused)
    finally:
        watch.close()


def test_a_database_failure_does_not_count_as_redis_seen_away(redis_url: str) -> None:
    """``CameBack`` retries early only once a probe saw Redis away. A database failure's probe
    asks Redis nothing, so it sees nothing away: a failure of Redis that follows in the same
    run, while Redis answers all along (at its ``maxclients``), waits its whole backoff."""
    watch = RedisWatch(redis_url)
    came_back = CameBack(watch.answers_again)
    database = sa.exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("refused"))
    refused = redis.ConnectionError("max number of clients reached")
    try:
        assert watch.answers_again(database) is None  # not a failure of Redis: nothing asked
        assert not came_back(database)
        assert not came_back(refused)  # Redis answers, but no probe of this run saw it away
        assert not came_back(refused)
    finally:
        watch.close()


@POSTGRES_ONLY
def test_a_leader_whose_lock_session_died_steps_down_so_one_relay_runs(
    settings: Settings, poster: Container, redis_server: RedisServer, tmp_path: Path
) -> None:
    """The relay's leader holds a session advisory lock. When that session ends (a restart, a
    failover, a terminated backend) the other worker takes the lead; the old leader must notice
    and stop relaying, or both enqueue every message and notices go out twice."""
    receiver = Receiver()
    first = WorkerProcess(settings, tmp_path / "first.log")
    second: WorkerProcess | None = None
    try:
        wait_until(lambda: "leads the relay" in first.output(), "the first worker to lead")
        second = WorkerProcess(settings, tmp_path / "second.log")
        # When the leader's lock session is ended under it
        high, low = divmod(LEADER_LOCK_KEY, 2**32)  # as pg_locks shows a bigint advisory key
        with poster.engine.begin() as conn:
            ended = conn.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                f"AND classid = {high} AND objid = {low} AND objsubid = 1 AND granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ).all()
        assert ended == [(True,)]
        assert second is not None
        wait_until(
            lambda: (
                "leads the relay" in second.output()  # type: ignore[union-attr]
                and "stepping down" in first.output()
            ),
            "the second worker to lead and the first to step down",
            timeout=30,
        )

        # Then every notice recorded afterwards goes out once
        notices = []
        for i in range(5):
            set_contact(poster.engine, f"acct_lead_{i}", webhook_url=receiver.url)
            notices.append(notice_of(report(poster, f"acct_lead_{i}").events))
        wait_until(
            lambda: delivered_once_each(poster.store, notices, ["webhook"]),
            "the notices to be delivered",
            timeout=30,
        )
        wait_until(lambda: relay_position(poster.store) >= poster.store.max_position(), "relay")
        requests = Counter(r.event_id for r in receiver.requests)
        assert {n: requests[n] for n in notices} == dict.fromkeys(notices, 1)
    finally:
        receiver.close()
        first.stop()
        if second is not None:
            second.stop()


def children_of(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def spawned(pids: set[int]) -> list[int]:
    """Those of ``pids`` that are multiprocessing's spawned processes (the consumers; not its
    resource tracker, another child of the worker)."""
    found = []
    for pid in pids:
        try:
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue  # gone meanwhile
    return found


def started_consumers(worker: WorkerProcess, settings: Settings) -> set[int]:
    """The worker's child processes (its consumers and multiprocessing's resource tracker),
    once its consumers are started, not only spawned: one killed while it still reads its
    arguments from the worker dies of that (EOFError) rather than as the test means it to."""
    consumers: set[int] = wait_until(
        lambda: (
            (c := children_of(worker.proc.pid))
            and len(spawned(c)) >= settings.worker_processes
            and c
        ),
        "the worker's consumer processes",
        30,
    )
    wait_until(
        lambda: worker.output().count("is consuming") >= settings.worker_processes,
        "the consumer processes to start consuming",
        30,
    )
    return consumers


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@POSTGRES_ONLY
def test_consumers_of_a_worker_killed_outright_stop_by_themselves(
    settings: Settings, tmp_path: Path
) -> None:
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        consumers = started_consumers(worker, settings)
        # SIGKILL the worker alone (not its group): its consumers get no signal at all.
        os.kill(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(timeout=10)

        wait_until(
            lambda: not any(alive(pid) for pid in consumers),
            "the orphaned consumers to stop",
            timeout=30,
        )
    finally:
        worker.stop()
    # Logged by the consumers, structured as the worker's own lines are.
    gone = [line for line in worker.output().splitlines() if "is gone; stopping" in line]
    assert gone and all(json.loads(line)["level"] == "warning" for line in gone)


@POSTGRES_ONLY
def test_a_worker_whose_consumer_died_stops_with_a_failure_status(
    settings: Settings, tmp_path: Path
) -> None:
    """A consumer process that dies (killed, out of memory) stops the whole worker, relay and
    sweep included, with exit status 1 (as Dramatiq's own command does), so that a supervisor
    that restarts on failure (systemd ``Restart=on-failure``) starts it again; 0 told it that
    the worker had finished."""
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        consumers = started_consumers(worker, settings)
        os.kill(spawned(consumers)[0], signal.SIGKILL)

        assert worker.proc.wait(timeout=30) == 1
        # Its children go with it: the consumers are joined before it exits; multiprocessing's
        # resource tracker, a child too, ends once it reads the end of its pipe, a moment after.
        wait_until(lambda: not any(alive(pid) for pid in consumers), "its children to end", 10)
    finally:
        worker.stop()
    [died] = [line for line in worker.output().splitlines() if "consumer process died" in line]
    assert json.loads(died)["level"] == "error"


def signalled_worker(
    settings: Settings, tmp_path: Path, signal_it: Callable[[WorkerProcess], None]
) -> tuple[int, list[int], str]:
    """A worker whose consumer processes have started, signalled by ``signal_it``: its exit
    status, its consumers still alive just after it exited, and its output."""
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        consumers = spawned(started_consumers(worker, settings))
        signal_it(worker)
        status = worker.proc.wait(timeout=30)
        left = [pid for pid in consumers if alive(pid)]
    finally:
        worker.stop()
    return status, left, worker.output()


@POSTGRES_ONLY
def test_a_worker_told_to_stop_stops_its_consumers_and_exits_0(
    settings: Settings, tmp_path: Path
) -> None:
    """SIGTERM to the worker alone (a supervisor that signals its main process only): it stops
    its consumer processes itself and waits for them before it exits, with status 0 (a stop
    asked for, not a failure); they do not find themselves orphaned."""
    status, left, output = signalled_worker(
        settings, tmp_path, lambda worker: worker.proc.send_signal(signal.SIGTERM)
    )
    assert status == 0
    assert left == []  # joined before it exited
    assert "is gone; stopping" not in output


@POSTGRES_ONLY
def test_a_worker_interrupted_by_ctrl_c_stops_its_consumers_quietly_and_exits_0(
    settings: Settings, tmp_path: Path
) -> None:
    """Ctrl-C in a terminal signals the whole process group: each consumer process stops as it
    does when the worker terminates it (no KeyboardInterrupt traceback from it), and the worker,
    which sees its consumers end because a stop was asked for, not because one died, exits 0."""
    status, left, output = signalled_worker(
        settings, tmp_path, lambda worker: os.killpg(worker.proc.pid, signal.SIGINT)
    )
    assert status == 0
    assert left == []
    assert "Traceback" not in output
    assert "consumer process died" not in output


@POSTGRES_ONLY
def test_a_worker_without_a_webhook_secret_says_so_once_for_each_consumer_process(
    settings: Settings, tmp_path: Path
) -> None:
    """Only the processes that deliver notices warn that webhooks are refused: each consumer
    process, not the worker's own (the relay and the sweep), which consumes nothing."""
    worker = WorkerProcess(replace(settings, webhook_secret=None), tmp_path / "worker.log")
    try:
        started_consumers(worker, settings)
        wait_until(lambda: "leads the relay" in worker.output(), "the worker to lead the relay")
    finally:
        worker.stop()
    refused = [line for line in worker.output().splitlines() if "WEBHOOK_SECRET is unset" in line]
    assert len(refused) == settings.worker_processes


def test_the_watch_gives_up_on_a_frozen_redis_within_its_timeout(
    redis_keeping_data: RedisServer,
) -> None:
    """A Redis that accepts connections and answers nothing (its process stopped, a paused VM)
    holds the relay's probe, and the leader's look and mark, for no longer than the watch's own
    timeout: the probe is asked every second while the relay waits to retry (redis-py's default
    is 5 s in recent versions, none in older ones)."""
    watch = RedisWatch(redis_keeping_data.url)
    assert redis_keeping_data.pid is not None
    refused = redis.ConnectionError("Error 111 connecting to 127.0.0.1. Connection refused.")
    answered: list[bool] = []
    try:
        assert watch.answers_again(refused)  # connected
        os.kill(redis_keeping_data.pid, signal.SIGSTOP)
        started = time.monotonic()
        probe = threading.Thread(target=lambda: answered.append(watch.answers_again(refused)))
        probe.start()
        probe.join(30)
        took = time.monotonic() - started
        assert answered == [False]
        assert took < 4.0, took  # the watch's 2 s, with room for a loaded machine
    finally:
        os.kill(redis_keeping_data.pid, signal.SIGCONT)
        watch.close()


def test_a_redis_restarted_amid_a_re_seed_is_seen_lost_at_the_next_look(
    redis_keeping_data: RedisServer,
) -> None:
    """The leader looks (``lost``), re-seeds the gate, then marks Redis. A Redis that restarted
    from a snapshot in between holds only part of the re-seed, if any: the mark names the run
    the look saw, not the one that came back, so the next look sees the loss (and re-seeds)."""
    watch = RedisWatch(redis_keeping_data.url)
    try:
        assert watch.lost()  # never marked: the leader re-seeds
        away(redis_keeping_data)  # amid the re-seed, Redis restarts from its snapshot
        redis_keeping_data.start()
        watch.mark()
        assert watch.lost()
        watch.mark()
        assert not watch.lost()
    finally:
        watch.close()
