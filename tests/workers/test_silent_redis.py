"""The broker's Redis gone silent: a proxy stops passing bytes either way and closes nothing
(``CuttingProxy.silence``), as a partition or a frozen server does, so that only the clients' own
timeout (``ENFORCEMENT_REDIS_TIMEOUT_MS``) ends a wait.

- The relay fails within that timeout, keeps its checkpoint before what Redis did not take, and
  once Redis answers sends every message, none it had enqueued before twice: only the one whose
  enqueue timed out may reach the queue twice (it reached Redis when the bytes flowed again).
- Dramatiq's consumers take the silence for a lost connection and consume again afterwards,
  the delay queues included (a consumer holding delayed messages died of it).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from enforcement.bootstrap import Container, bootstrap
from enforcement.settings import Settings
from enforcement.workers.relay import Message
from enforcement.workers.runtime import build_actors, start_background
from tests.cutting_proxy import CuttingProxy
from tests.redis_server import RedisServer
from tests.workers.system import (
    System,
    delivered_once_each,
    fast_settings,
    relay_position,
    report,
    wait_until,
)

pytestmark = pytest.mark.redis

TIMEOUT_S = 1.0  # ENFORCEMENT_REDIS_TIMEOUT_MS here
SLACK_S = 1.5  # a loaded machine's delays on top of the bound


@pytest.fixture
def settings(sqlite_db: str, redis_proxy: CuttingProxy, tmp_path: Path) -> Settings:
    return fast_settings(
        sqlite_db, tmp_path, redis_url=redis_proxy.url, redis_timeout_ms=int(TIMEOUT_S * 1000)
    )


def queued(server: RedisServer) -> Counter[tuple[str, tuple[Any, ...]]]:
    """Every message in Redis's queues (delayed ones included), by actor and arguments."""
    client = server.client()
    try:
        found: Counter[tuple[str, tuple[Any, ...]]] = Counter()
        for key in client.keys("dramatiq:*.msgs"):
            for data in client.hvals(key):
                message = json.loads(data)
                found[message["actor_name"], tuple(message["args"])] += 1
        return found
    finally:
        client.close()


def test_the_relay_waits_out_a_silent_redis_and_then_sends_what_it_had_not_sent(
    settings: Settings,
    poster: Container,
    redis_proxy: CuttingProxy,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="enforcement.relay")
    for n in range(5):  # each: a notice on two channels and a remediation's expiry
        report(poster, f"acct_{n}")
    leader = bootstrap(settings)
    actors = build_actors(leader)
    send = actors.enqueue
    sent: list[Message] = []
    silenced_at: list[float] = []

    def enqueue(message: Message) -> None:
        if len(sent) == 3 and not silenced_at:  # Redis goes silent in the middle of a page
            redis_proxy.silence()
            silenced_at.append(time.monotonic())
        send(message)
        sent.append(message)

    actors.enqueue = enqueue  # type: ignore[method-assign]
    stop = start_background(leader, actors, consumers=False, relay=True)
    try:
        # While Redis is silent the relay fails within the timeout, and its checkpoint stays
        # before what Redis did not take.
        wait_until(
            lambda: any(m.startswith("relay failed") for m in caplog.messages),
            "the relay to give up on the silent Redis",
        )
        failed_after = time.monotonic() - silenced_at[0]
        assert failed_after < TIMEOUT_S + SLACK_S, failed_after
        assert relay_position(poster.store) == 0
        assert len(sent) == 3  # the fourth's enqueue is the one that timed out

        # When Redis answers again, every message reaches the queue, none of the three taken
        # before twice.
        redis_proxy.resume()
        last = poster.store.max_position()
        wait_until(lambda: relay_position(poster.store) >= last, "the relay to catch up", 30)
    finally:
        stop()
        leader.close()
    relayed = [(m.actor, m.args) for m in sent]
    assert len(relayed) == len(set(relayed)) == 15  # the relay sent none twice
    found = queued(redis_server)
    assert set(found) == set(relayed)
    twice = [message for message, count in found.items() if count > 1]
    # Only the one whose enqueue timed out may be there twice: Redis took it when the bytes
    # held meanwhile flowed again, and the relay could not know.
    assert set(twice) <= {relayed[3]}, twice


def expiry_held(system: System, redis_server: RedisServer) -> None:
    """Deliver a notice (every consumer then has consumed), and wait until the deadlines' delay
    queue consumer holds the remediation's expiry (due in 7 days)."""
    notice_delivered(system, "acct_1")
    admin = redis_server.client()
    try:
        wait_until(
            lambda: (
                admin.llen("dramatiq:deadlines.DQ") == 0
                and admin.hlen("dramatiq:deadlines.DQ.msgs") == 1
            ),
            "the deadlines' delay queue consumer to hold the expiry",
        )
    finally:
        admin.close()


def delayed_expiry_taken(
    system: System, account_id: str, then: Callable[[], None] = lambda: None
) -> None:
    """Report a violation of ``account_id``, send its remediation's expiry delayed by a second,
    call ``then``, and wait until the expiry was taken from the deadlines' delay queue."""
    recorded = system.report(account_id).events
    [remediation] = [e for e in recorded if e.type == "RemediationRequested"]
    rid = remediation.data["remediation_id"]
    due = system.container.clock() + timedelta(seconds=1)
    system.actors.enqueue(Message("expire_remediation", (account_id, rid), due))
    then()
    wait_until(
        lambda: system.recorder.of("expire_remediation", account_id, rid),
        "the delayed expiry to be taken from the delay queue",
        timeout=30,
    )


def notice_delivered(system: System, account_id: str) -> None:
    """Report a violation of ``account_id``, with an e-mail contact; wait for its notice."""
    system.contact(account_id, email=f"{account_id}@customer.test")
    recorded = system.report(account_id).events
    notice = next(e.event_id for e in recorded if e.type == "NoticeIssued")
    wait_until(
        lambda: delivered_once_each(system.store, [notice], ["email"]),
        f"the notice to {account_id} to be delivered",
        timeout=30,
    )


def test_consumers_consume_again_after_a_silent_redis_their_delay_queues_too(
    settings: Settings,
    redis_proxy: CuttingProxy,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="dramatiq.worker")
    system = System(settings)
    try:
        # Given consumers that have delivered a notice, and one that holds a delayed message
        # (the remediation's expiry, due in 7 days)
        expiry_held(system, redis_server)

        # When Redis goes silent for longer than the timeout (until that consumer has given
        # up on it, and on putting its delayed message back), and answers again
        redis_proxy.silence()
        wait_until(
            lambda: any(
                "deadlines.DQ" in r.name and r.getMessage().startswith("Restarting consumer")
                for r in caplog.records
            ),
            "the delay queue's consumer to take the silence for a lost connection",
            timeout=20,
        )
        redis_proxy.resume()

        # Then every queue is consumed again: a new notice, and a message delayed on the
        # deadlines' delay queue
        delayed_expiry_taken(system, "acct_2", then=lambda: notice_delivered(system, "acct_3"))
    finally:
        system.close()
    unexpected = [r for r in caplog.records if "unexpected error" in r.getMessage()]
    assert unexpected == []  # a silent Redis is a lost connection, not a fault
