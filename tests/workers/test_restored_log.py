"""A log restored from a backup while Redis kept the gate's state: that state carries the
versions of the events the restore took away, and the gate refuses every update older than
what it holds, the re-seeds included. The leading worker sees that the log no longer has the
newest event Redis was told of, and brings the gate back to the log (``RedisWatch.follows``,
``redis_watch.forget_another_log``).

Real PostgreSQL (pg_dump and pg_restore, as docs/operations.md gives them), real Redis, the real
``enforcement worker``.
"""

from __future__ import annotations

import logging
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from enforcement import operator_decisions as ops
from enforcement.bootstrap import Container, bootstrap
from enforcement.gate import RedisGate
from enforcement.migrations import upgrade
from enforcement.settings import Settings
from enforcement.workers import redis_watch
from enforcement.workers.redis_watch import RedisWatch
from enforcement.workers.runtime import start_runtime
from events import EventStore
from tests.conftest import create_pg_database, drop_pg_database, pg_dump, pg_restore
from tests.workers.system import (
    CLI,
    OPERATOR,
    WorkerProcess,
    cli_env,
    fast_settings,
    relay_position,
    report,
    wait_until,
)

pytestmark = pytest.mark.redis
FORGOT = "Redis holds gate state of events this database does not have"


@contextmanager
def leading(settings: Settings) -> Iterator[Container]:
    """The system on ``settings`` with its relay leader running in this process (what serve
    records, and the leading worker's relay and gate keeping)."""
    container = bootstrap(settings)
    try:
        _, stop = start_runtime(container, consumers=False, relay=True)
        try:
            yield container
        finally:
            stop()
    finally:
        container.close()


def relayed_all(container: Container) -> bool:
    return relay_position(container.store) >= container.store.max_position()


def suspend(container: Container, gate: RedisGate, account_id: str) -> None:
    container.service.operator(account_id, ops.Suspend("abuse"), OPERATOR)
    wait_until(
        lambda: gate.check(account_id, "key_1").reason == "suspended",
        f"the gate to refuse {account_id}",
    )


def noted_event(client: redis.Redis) -> str:
    """The id of the event Redis was last told of ("" for none)."""
    noted = client.get(RedisWatch.LOG_KEY)
    return "" if noted is None else noted.split()[-1].decode()


def allowed(gate: RedisGate, account_id: str) -> bool:
    return gate.check(account_id, "key_1").reason == "ok"


@pytest.mark.postgres
def test_a_suspension_the_restored_log_does_not_have_is_no_longer_enforced(
    pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    upgrade(pg_url)
    settings = fast_settings(pg_url, tmp_path, redis_url=redis_url)
    gate = RedisGate.from_url(redis_url)
    dump = tmp_path / "enforcement.dump"
    restored_url = create_pg_database()
    worker: WorkerProcess | None = None
    try:
        with leading(settings) as system:
            # Given a log with an account in it, backed up with pg_dump
            report(system, "acct_known")
            wait_until(lambda: relayed_all(system), "the relay to pass the report")
            pg_dump(pg_url, dump)
            # and, after the backup, that account and a new one suspended, enforced by the gate
            suspend(system, gate, "acct_known")
            suspend(system, gate, "acct_new")
            wait_until(lambda: relayed_all(system), "the relay to pass the suspensions")

        # When the dump is restored (Redis kept as it was)
        pg_restore(dump, restored_url)
        restored = replace(settings, database_url=restored_url)
        # and serve records before the worker starts: the lost events' positions go to others
        serve = bootstrap(replace(restored, redis_url=None))
        try:
            report(serve, "acct_other")
        finally:
            serve.close()
        worker = WorkerProcess(restored, tmp_path / "worker.log")

        # Then the gate no longer refuses either account: neither suspension is in the log
        for account in ("acct_known", "acct_new"):
            wait_until(lambda a=account: allowed(gate, a), f"the gate to let {account} through")
        assert worker.output().count(FORGOT) == 1, worker.output()
    finally:
        if worker is not None:
            worker.stop()
        gate.close()
        drop_pg_database(restored_url)


def test_a_sqlite_backup_restored_under_a_kept_redis_is_not_overruled_by_the_gate(
    sqlite_db: str, redis_url: str, tmp_path: Path
) -> None:
    """The same with SQLite's own commands: ``enforcement backup``, ``enforcement restore``."""
    settings = fast_settings(sqlite_db, tmp_path, redis_url=redis_url)
    gate = RedisGate.from_url(redis_url)
    backup = tmp_path / "b.db"
    worker: WorkerProcess | None = None
    try:
        with leading(settings) as system:
            report(system, "acct_known")
            wait_until(lambda: relayed_all(system), "the relay to pass the report")
            backed_up = subprocess.run(
                [CLI, "backup", str(backup)], env=cli_env(settings), capture_output=True
            )
            assert backed_up.returncode == 0, backed_up.stderr
            suspend(system, gate, "acct_known")
            wait_until(lambda: relayed_all(system), "the relay to pass the suspension")
        restored = subprocess.run(
            [CLI, "restore", str(backup)], env=cli_env(settings), capture_output=True, text=True
        )
        assert "Redis needs nothing" in restored.stdout, restored.stderr
        worker = WorkerProcess(settings, tmp_path / "worker.log")
        wait_until(lambda: allowed(gate, "acct_known"), "the gate to let acct_known through")
        assert worker.output().count(FORGOT) == 1, worker.output()
    finally:
        if worker is not None:
            worker.stop()
        gate.close()


def test_a_failover_that_lost_the_newest_events_is_seen_by_the_running_leader(
    sqlite_db: str,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The leader looks at each of its looks, not only when it starts: a database that lost
    its newest commits under a running worker (a failover to a replica that had not received
    them) is seen too."""
    monkeypatch.setattr(redis_watch, "REDIS_WATCH_SECONDS", 0.05)
    caplog.set_level(logging.WARNING, logger="enforcement.workers")
    # What Redis is told a look after the test asks: set by the leader's thread right after it
    # noted the log, so that its next look reads it (set by the test, a look under way could
    # note the log over it before it was read).
    planted: list[str] = []
    note = RedisWatch.note

    def note_then_plant(watch: RedisWatch, store: EventStore) -> None:
        note(watch, store)
        if planted:
            watch.client.set(RedisWatch.LOG_KEY, planted.pop())

    monkeypatch.setattr(RedisWatch, "note", note_then_plant)
    settings = fast_settings(sqlite_db, tmp_path, redis_url=redis_url)
    gate = RedisGate.from_url(redis_url)
    client = redis.Redis.from_url(redis_url)
    try:
        with leading(settings) as system:
            suspend(system, gate, "acct_known")
            wait_until(
                lambda: system.store.get_event(noted_event(client)) is not None,
                "the leader to note the log",
            )
            # Given the gate state of a suspension whose event the database no longer has
            gate.set_status("acct_new", "suspended", None, 7)
            identity = client.get(RedisWatch.LOG_KEY).split()[0].decode()  # type: ignore[union-attr]
            lost = f"{system.store.max_position() + 1} {uuid.uuid4()}"
            planted.append(f"{identity} {lost}")

            # Then, at its next look, the leader brings the gate back to the log
            wait_until(lambda: allowed(gate, "acct_new"), "the gate to let acct_new through")
            wait_until(
                lambda: system.store.get_event(noted_event(client)) is not None,
                "the leader to note the log again",
            )
            assert gate.check("acct_known", "key_1").reason == "suspended"  # in the log
        assert [r.message.startswith(FORGOT) for r in caplog.records].count(True) == 1
    finally:
        gate.close()
        client.close()


def test_a_leader_that_starts_again_on_the_same_log_keeps_the_gate(
    sqlite_db: str, redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing is forgotten when the log has what Redis was told of: the tokens counted today
    still count. (Not the requests: at 600 a minute one is given back every 0.1 s, so those of
    a check made before the second leader started were given back by the time it had, on a
    loaded machine, whether Redis forgot them or not.)"""
    caplog.set_level(logging.INFO, logger="enforcement.workers")
    settings = fast_settings(sqlite_db, tmp_path, redis_url=redis_url)
    gate = RedisGate.from_url(redis_url)
    try:
        with leading(settings) as system:
            report(system, "acct_counted")
            wait_until(lambda: relayed_all(system), "the relay to pass the report")
        first = gate.check("acct_counted", "key_1", tokens=1000)
        with leading(settings):
            wait_until(
                lambda: [m for m in caplog.messages if m.startswith("gate seeded")][1:],
                "the second leader to seed the gate",
            )
        second = gate.check("acct_counted", "key_1", tokens=1000)
        assert second.remaining_tokens == first.remaining_tokens - 1000
        assert not [m for m in caplog.messages if m.startswith(FORGOT)]
    finally:
        gate.close()


def test_what_redis_was_told_of_the_log_is_followed_only_as_told(
    sqlite_db: str, redis_url: str, tmp_path: Path
) -> None:
    """``follows`` against what ``note`` told Redis: nothing told yet is followed; a value not in
    ``note``'s words, another database, another position or an event the log does not have
    is not."""
    container = bootstrap(fast_settings(sqlite_db, tmp_path))
    watch = RedisWatch(redis_url)
    store = container.store
    try:
        assert watch.follows(store) is True  # told of nothing
        watch.note(store)
        identity = watch.client.get(RedisWatch.LOG_KEY).split()[0].decode()  # type: ignore[union-attr]
        assert watch.client.get(RedisWatch.LOG_KEY) == f"{identity} 0 -".encode()
        assert watch.follows(store) is True  # told of an empty log
        report(container, "acct_1")
        position, event_id = store.last_event()  # type: ignore[misc]
        watch.note(store)
        assert noted_event(watch.client) == event_id
        assert watch.follows(store) is True
        for told in (
            "garbled",
            f"{identity} {position}",
            f"{identity} {position} {event_id} more",
            f"sqlite:another {position} {event_id}",
            f"{identity} {position + 1} {event_id}",
            f"{identity} {position} {uuid.uuid4()}",
            "sqlite:another 0 -",
        ):
            watch.client.set(RedisWatch.LOG_KEY, told)
            assert watch.follows(store) is False, told
    finally:
        watch.close()
        container.close()
