"""The broker's Redis at ``maxmemory`` with the ``noeviction`` policy (``RedisServer.memory_full``):
it answers, but refuses every command that may add data with an ``OOM`` error reply. The
consumers' tests also run with Redis turned replica by a failover (``RedisServer.read_only``),
which refuses every write with a ``READONLY`` error reply.

- The relay fails, keeps its checkpoint before what Redis did not take, and once Redis takes
  writes again sends every message, none twice (Dramatiq's enqueue script fails on its first
  write: nothing of a refused enqueue is left in Redis).
- Dramatiq's consumers live through it, the delay queues' included: a consumer that cannot put
  its delayed messages back, nor acknowledge a message it ran, takes it as it takes a lost
  connection, and consumes and acknowledges again once Redis takes writes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from enforcement.bootstrap import Container, bootstrap
from enforcement.settings import Settings
from enforcement.workers.redis_watch import RedisWatch
from enforcement.workers.runtime import build_actors, start_background
from tests.redis_server import RedisServer
from tests.workers.system import (
    Receiver,
    System,
    delivered_once_each,
    fast_settings,
    relay_position,
    report,
    wait_until,
)
from tests.workers.test_silent_redis import delayed_expiry_taken, expiry_held, queued

pytestmark = pytest.mark.redis


@pytest.fixture
def settings(sqlite_db: str, redis_url: str, tmp_path: Path) -> Settings:
    return fast_settings(sqlite_db, tmp_path, redis_url=redis_url, redis_timeout_ms=2000)


def test_the_relay_waits_for_a_full_redis_and_then_sends_each_message_once(
    settings: Settings,
    poster: Container,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="enforcement.workers")
    leader = bootstrap(settings)
    actors = build_actors(leader)
    stop = start_background(leader, actors, consumers=False, relay=True)
    try:
        admin = redis_server.client()
        try:  # the leader's start ends with its note in Redis
            wait_until(lambda: admin.exists(RedisWatch.LOG_KEY), "the relay to start")
        finally:
            admin.close()
        with redis_server.memory_full():
            for n in range(3):  # each: a notice on two channels and a remediation's expiry
                report(poster, f"acct_{n}")
            # While Redis is full the relay fails, its checkpoint before it all.
            wait_until(
                lambda: any(
                    m.startswith("relay failed") and "OutOfMemoryError" in m
                    for m in caplog.messages
                ),
                "the relay to fail on the full Redis",
            )
            assert relay_position(poster.store) == 0
            assert queued(redis_server) == {}
        # Once Redis takes writes again, the relay sends everything, nothing twice.
        last = poster.store.max_position()
        wait_until(lambda: relay_position(poster.store) >= last, "the relay to catch up", 30)
    finally:
        stop()
        leader.close()
    found = queued(redis_server)
    assert sum(found.values()) == len(found) == 9, found


REFUSING = pytest.mark.parametrize("refusing", ["memory_full", "read_only", "snapshot_failing"])


@REFUSING
def test_consumers_live_through_a_full_redis_their_delay_queues_too(
    settings: Settings, redis_server: RedisServer, caplog: pytest.LogCaptureFixture, refusing: str
) -> None:
    caplog.set_level(logging.INFO, logger="dramatiq.worker")
    system = System(settings)
    try:
        # Given a consumer that holds a delayed message (the remediation's expiry, in 7 days)
        expiry_held(system, redis_server)

        # When Redis is full until that consumer has failed to fetch (and to put its delayed
        # message back), and then takes writes again
        with getattr(redis_server, refusing)():
            wait_until(
                lambda: any(
                    r.name.endswith("(deadlines.DQ)") and r.levelno >= logging.CRITICAL
                    for r in caplog.records
                ),
                "the delay queue's consumer to fail on the full Redis",
                timeout=20,
            )

        # Then every queue is consumed again, the deadlines' delay queue too.
        delayed_expiry_taken(system, "acct_2")
    finally:
        system.close()


@REFUSING
def test_a_message_run_while_redis_is_full_is_acknowledged_once_it_takes_writes(
    settings: Settings, redis_server: RedisServer, caplog: pytest.LogCaptureFixture, refusing: str
) -> None:
    caplog.set_level(logging.WARNING, logger="dramatiq.worker")
    receiver = Receiver(hold_first=True)
    system = System(settings)
    admin = redis_server.client()
    try:
        # Given a notice whose webhook delivery is under way (the receiver holds it)
        system.contact("acct_1", webhook_url=receiver.url)
        recorded = system.report("acct_1").events
        notice = next(e.event_id for e in recorded if e.type == "NoticeIssued")
        wait_until(lambda: receiver.for_event(notice), "the webhook to be called")

        # When it ends while Redis is full: its outcome is recorded, its acknowledgement refused
        with getattr(redis_server, refusing)():
            receiver.release()
            wait_until(
                lambda: delivered_once_each(system.store, [notice], ["webhook"]),
                "the delivery to be recorded",
            )
            wait_until(
                lambda: any("deliver_notice" in m for m in caplog.messages),
                "the acknowledgement to be refused",
            )

        # Then the message is acknowledged once Redis takes writes (it would otherwise wait,
        # unacknowledged, for the worker's restart to be run again). (The notices' queue: the
        # deadlines' delay queue holds the remediation's expiry, unacknowledged until due.)
        def unacknowledged() -> int:
            return sum(admin.scard(k) for k in admin.keys("dramatiq:__acks__.*.enforcement"))

        wait_until(lambda: unacknowledged() == 0, "the message to be acknowledged", 30)
        assert len(receiver.for_event(notice)) == 1
    finally:
        admin.close()
        system.close()
        receiver.close()
