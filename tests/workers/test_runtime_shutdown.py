"""What the workers close when they stop: every Redis connection they opened (the broker's,
the leader's ``RedisWatch``), with the database pool and the gates' clients that
``Container.close`` closes."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from enforcement.bootstrap import bootstrap
from enforcement.workers import runtime
from enforcement.workers.runtime import RedisWatch, start_runtime
from tests.workers.system import fast_settings, outcomes_of, report, wait_until


def connections(watcher: redis.Redis) -> list[str]:
    """The last command of each connection to Redis but ``watcher``'s own."""
    own = watcher.client_id()
    return sorted(c["cmd"] for c in watcher.client_list() if int(c["id"]) != own)


@pytest.mark.redis
def test_stopping_the_workers_closes_their_redis_connections(
    sqlite_db: str, tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The watches the runtime makes are kept referenced here: a client nothing refers to any
    # more is closed when it is collected, and ``stop`` must not depend on when that is.
    watches: list[RedisWatch] = []

    class KeptWatch(RedisWatch):
        def __init__(self, url: str) -> None:
            super().__init__(url)
            watches.append(self)

    monkeypatch.setattr(runtime, "RedisWatch", KeptWatch)
    watcher = redis.Redis.from_url(redis_url)
    container = bootstrap(fast_settings(sqlite_db, tmp_path, redis_url=redis_url))
    try:
        _, stop = start_runtime(container, consumers=True, relay=True)
        try:
            [notice] = [e for e in report(container, "acct_1").events if e.type == "NoticeIssued"]
            wait_until(lambda: watcher.exists(RedisWatch.KEY), "the leader marks Redis")
            # A consumer took the notice's message (no contact: recorded undeliverable).
            wait_until(lambda: outcomes_of(container.store, notice.event_id), "its outcome")
            assert len(watches) == 1
            assert connections(watcher) != []
        finally:
            stop()
    finally:
        container.close()
    assert connections(watcher) == []
    watcher.close()
