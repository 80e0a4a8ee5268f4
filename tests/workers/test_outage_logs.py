"""What the worker logs while Redis is away: each failure once in full, not every 3 s.

Dramatiq's consumers retry every 3 s while the broker's Redis is away, each logging "Consumer
encountered a connection error" (critical) and "Restarting consumer": an hour's outage wrote
some 10,000 lines per consumer process. The worker's runtime folds those repeats
(``enforcement.log_folding``): the first of each is logged, a reminder at most once a minute,
and one line once it stopped repeating.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import dramatiq
import pytest

from enforcement.bootstrap import bootstrap
from enforcement.settings import Settings
from enforcement.workers.runtime import build_actors, start_background
from tests.redis_server import RedisServer
from tests.workers.system import fast_settings, wait_until

pytestmark = pytest.mark.redis
# Long enough for each consumer to fail twice (it retries every 3 s): a repeat to fold.
OUTAGE_S = 4.5


@pytest.fixture
def settings(sqlite_db: str, redis_url: str, tmp_path: Path) -> Settings:
    return fast_settings(sqlite_db, tmp_path, redis_url=redis_url)


def test_a_redis_outage_is_logged_once_per_consumer_and_its_end_once(
    settings: Settings, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dramatiq.worker")
    container = bootstrap(settings)
    actors = build_actors(container)
    consumers = [
        f"dramatiq.worker.ConsumerThread({queue})"
        for queue in ["enforcement", "enforcement.DQ", "deadlines", "deadlines.DQ"]
    ]
    stop = start_background(
        container, actors, consumers=True, relay=False, then_close=actors.broker.close
    )
    try:
        # Given consumers that consume from Redis
        wait_until(lambda: actors.broker.client.client_list(), "the consumers to connect")

        # When Redis is away for long enough that each consumer fails and retries twice
        redis_server.stop()
        started = time.monotonic()
        wait_until(
            lambda: (
                {r.name for r in caplog.records if r.levelno == logging.CRITICAL} >= set(consumers)
            ),
            "every consumer to hit the outage",
        )
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - started)))  # the outage itself
        redis_server.start()

        # Then each consumer said so once, in full (not once every 3 s)
        def said(name: str, level: int) -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.name == name and r.levelno == level]

        for name in consumers:
            failures = said(name, logging.CRITICAL)
            assert len(failures) == 1, [r.getMessage() for r in failures]
            message = failures[0].getMessage()
            assert message.startswith("Consumer encountered a connection error: "), message
            assert f"{redis_server.port}" in message and "folded" in message, message
            [restart] = said(name, logging.INFO)
            assert restart.getMessage().startswith("Restarting consumer in 3.00 seconds.")

        # and once it is back, each says once that the failure stopped repeating
        wait_until(
            lambda: all(said(name, logging.WARNING) for name in consumers),
            "each consumer to say that its connection errors stopped",
            timeout=10,
        )
        for name in consumers:
            [end] = said(name, logging.WARNING)
            assert end.getMessage().startswith("stopped repeating after "), end.getMessage()
            assert "Consumer encountered a connection error" in end.getMessage()
        assert len([r for r in caplog.records if r.name in consumers]) == 3 * len(consumers)
    finally:
        stop()
        container.close()


def test_the_consumers_logs_are_folded_until_they_are_stopped(settings: Settings) -> None:
    container = bootstrap(settings)
    actors = build_actors(container)
    names = [
        "dramatiq.worker.WorkerThread",
        *(
            f"dramatiq.worker.ConsumerThread({queue})"
            for queue in ["enforcement", "enforcement.DQ", "deadlines", "deadlines.DQ"]
        ),
    ]
    before = {name: list(logging.getLogger(name).filters) for name in names}
    stop = start_background(
        container, actors, consumers=True, relay=False, then_close=actors.broker.close
    )
    try:
        # While the consumers run, one folding filters each of their loggers
        added = {
            name: [f for f in logging.getLogger(name).filters if f not in before[name]]
            for name in names
        }
        [folding] = added["dramatiq.worker.WorkerThread"]
        assert added == {name: [folding] for name in names}
    finally:
        stop()
        container.close()
    # and once they are stopped, none does
    assert {name: logging.getLogger(name).filters for name in names} == before


def test_consumers_that_cannot_start_leave_no_folding_behind(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    container = bootstrap(settings)
    actors = build_actors(container)

    def refuse(worker: dramatiq.Worker) -> None:
        raise RuntimeError("the consumers cannot start")

    monkeypatch.setattr(dramatiq.Worker, "start", refuse)
    worker_log = logging.getLogger("dramatiq.worker.WorkerThread")
    before = list(worker_log.filters)
    try:
        # When the consumers fail to start, the error reaches the caller
        with pytest.raises(RuntimeError, match="cannot start"):
            start_background(container, actors, consumers=True, relay=False)
        # and the folding installed for them is gone again (no stop function would remove it)
        assert worker_log.filters == before
    finally:
        actors.broker.close()
        container.close()
