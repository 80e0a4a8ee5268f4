"""What the leader re-sends when Redis lost its data: the notices the relay had sent before the
loss was seen (their messages may have gone with it), not those it relayed into the new Redis
while the gate was being re-seeded (re-sent, they went out twice)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import redis

from enforcement.bootstrap import Container, bootstrap
from enforcement.workers import redis_watch
from enforcement.workers.redis_watch import RedisWatch
from enforcement.workers.runtime import start_runtime
from tests.cutting_proxy import CuttingProxy
from tests.workers.system import (
    fast_settings,
    hold_gate_keeper_seeds,
    relay_position,
    report,
    wait_until,
)


@pytest.mark.redis
def test_notices_relayed_while_the_gate_is_re_seeded_are_not_re_sent(
    sqlite_db: str,
    tmp_path: Path,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(redis_watch, "REDIS_WATCH_SECONDS", 0.05)
    seeding, go_on = hold_gate_keeper_seeds(monkeypatch)
    caplog.set_level(logging.INFO, logger="enforcement.workers")
    watcher = redis.Redis.from_url(redis_url)
    container = bootstrap(fast_settings(sqlite_db, tmp_path, redis_url=redis_url))

    def relayed_all() -> bool:
        return relay_position(container.store) >= container.store.max_position()

    try:
        # No consumers: each notice stays without an outcome, each re-send is counted.
        _, stop = start_runtime(container, consumers=False, relay=True)
        try:
            # Given a notice the relay sent to Redis
            report(container, "acct_before")
            wait_until(lambda: watcher.exists(RedisWatch.KEY), "the leader marks Redis")
            wait_until(relayed_all, "the relay passes the first notice")
            # When Redis loses its data, and the leader sees it (and re-seeds the gate, held)
            watcher.delete(RedisWatch.KEY)
            wait_until(seeding.is_set, "the gate keeper re-seeds")
            # and meanwhile another notice is relayed, into the Redis that lost its data
            report(container, "acct_meanwhile")
            wait_until(relayed_all, "the relay passes the second notice")
            go_on.set()
            wait_until(lambda: watcher.exists(RedisWatch.KEY), "the leader marks Redis again")
        finally:
            go_on.set()
            stop()
    finally:
        container.close()
        watcher.close()
    # Then only the first notice is sent again: the second one's message is in Redis already.
    resent = [m for m in caplog.messages if m.startswith("re-sent")]
    assert resent == [
        "re-sent 0 notice deliveries without an outcome",  # taking the lead: a new Redis
        "re-sent 1 notice deliveries without an outcome",
    ]


@pytest.mark.redis
def test_a_redis_that_will_not_say_its_run_is_watched_by_its_mark_alone(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis user whose ACL forbids INFO (managed services and proxies may too): the watch
    cannot tell runs apart, says so once, and still sees a Redis that lost the mark."""
    admin = redis.Redis.from_url(redis_url)
    admin.acl_setuser(
        "no_info", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-info"]
    )
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    watch = RedisWatch(f"redis://no_info:pw@{host}:{port}/0")
    caplog.set_level(logging.WARNING, logger="enforcement.workers")
    try:
        assert watch.lost()  # never marked
        watch.mark()
        assert not watch.lost()
        assert not watch.lost()
        admin.delete(RedisWatch.KEY)  # as a Redis that lost its data
        assert watch.lost()
        said = [m for m in caplog.messages if "does not say which run" in m]
        assert len(said) == 1, caplog.messages
        assert "'info' command): a Redis restarted from a snapshot" in said[0]
    finally:
        watch.close()
        admin.acl_deluser("no_info")
        admin.close()


# What redis-server 7 answers INFO renamed away (``rename-command INFO ""``), as some proxies do.
UNKNOWN_INFO = b"-ERR unknown command 'INFO', with args beginning with: 'server' \r\n"
UNSUPPORTED_INFO = b"-ERR unsupported command 'INFO'\r\n"  # some proxies' words for it
INFO_REQUEST = b"$4\r\nINFO\r\n"  # not CLIENT SETINFO's "$7\r\nSETINFO"


@pytest.mark.redis
@pytest.mark.parametrize("unknown_info", [UNKNOWN_INFO, UNSUPPORTED_INFO])
def test_a_redis_without_info_is_watched_by_its_mark_alone(
    redis_proxy: CuttingProxy, caplog: pytest.LogCaptureFixture, unknown_info: bytes
) -> None:
    """INFO unknown (renamed away, or behind a proxy without it) is a refusal, as an ACL's:
    the watch says once that it cannot tell runs apart and goes on with its mark."""
    watch = RedisWatch(redis_proxy.url)
    caplog.set_level(logging.WARNING, logger="enforcement.workers")
    try:
        redis_proxy.answer_once(INFO_REQUEST, unknown_info)
        assert watch.lost()  # never marked
        watch.mark()
        redis_proxy.answer_once(INFO_REQUEST, unknown_info)
        assert not watch.lost()
        assert [m for m in caplog.messages if "does not say which run" in m]
    finally:
        watch.close()


@pytest.mark.redis
def test_a_mark_redis_garbled_is_a_loss(redis_url: str) -> None:
    """A mark that is no text (another program's value under the key) is no mark of this run:
    a loss, not a look that fails at every try."""
    watch = RedisWatch(redis_url)
    try:
        watch.client.set(RedisWatch.KEY, b"\xff\xfe")
        assert watch.lost()
        watch.mark()
        assert not watch.lost()
    finally:
        watch.close()


@pytest.mark.redis
def test_a_mark_before_any_look_names_the_run_of_redis(redis_url: str) -> None:
    watch = RedisWatch(redis_url)
    try:
        watch.mark()
        assert not watch.lost()
    finally:
        watch.close()


@pytest.mark.redis
def test_another_error_from_info_is_a_failed_look_not_a_loss(
    redis_proxy: CuttingProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """A one-off error from INFO that is no refusal (a proxy's backend busy, say) fails the look,
    as a failed GET would, rather than reading as "no run id": after a mark that names the run,
    that would be a loss (a re-seed and the notices re-sent for nothing)."""
    watch = RedisWatch(redis_proxy.url)
    caplog.set_level(logging.WARNING, logger="enforcement.workers")
    try:
        assert watch.lost()
        watch.mark()  # names the run
        redis_proxy.answer_once(INFO_REQUEST, b"-ERR backend busy, try again\r\n")
        with pytest.raises(redis.ResponseError, match="backend busy"):
            watch.lost()
        assert not watch.lost()
        assert not [m for m in caplog.messages if "does not say which run" in m]
    finally:
        watch.close()


# What a managed service (or its proxy) might answer INFO with: no wording the watch knows.
MANAGED_INFO = b"-ERR command not allowed on this plan\r\n"


@pytest.mark.redis
def test_the_same_unknown_error_from_info_again_is_a_refusal_for_good(
    redis_proxy: CuttingProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """Every INFO answered with an error in words the watch does not know as a refusal: the
    first look fails, as at a one-off error; the same error at the next look is a refusal (the
    watch goes on with its mark, says so once, naming it) for good: INFO is not asked again,
    so a run id it would answer later does not make the mark "-" look lost."""
    watch = RedisWatch(redis_proxy.url)
    caplog.set_level(logging.WARNING, logger="enforcement.workers")
    try:
        redis_proxy.answer_every(INFO_REQUEST, MANAGED_INFO)
        with pytest.raises(redis.ResponseError, match="not allowed on this plan"):
            watch.lost()
        assert watch.lost()  # never marked
        watch.mark()
        assert not watch.lost()
        redis_proxy.stop_answering()
        assert not watch.lost()
        said = [m for m in caplog.messages if "does not say which run" in m]
        assert len(said) == 1, caplog.messages
        assert (
            "(INFO server: command not allowed on this plan, twice in a row: taken as a " in said[0]
        )
    finally:
        watch.close()


@pytest.mark.redis
def test_an_error_or_an_answer_in_between_starts_the_count_again(
    redis_proxy: CuttingProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """Only the same error at two INFOs in a row is a refusal: another error, or a run id,
    between them leaves each a failed look."""
    watch = RedisWatch(redis_proxy.url)
    busy, moving = b"-ERR backend busy\r\n", b"-ERR shard moving\r\n"
    caplog.set_level(logging.WARNING, logger="enforcement.workers")
    try:
        for reply in (busy, moving, busy, None, busy):
            if reply is None:
                assert watch.lost()  # never marked: a look that INFO answered
                continue
            redis_proxy.answer_once(INFO_REQUEST, reply)
            with pytest.raises(redis.ResponseError):
                watch.lost()
        assert not [m for m in caplog.messages if "does not say which run" in m]
        redis_proxy.answer_once(INFO_REQUEST, busy)
        assert watch.lost()  # the same again: a refusal (and never marked)
        assert [m for m in caplog.messages if "does not say which run" in m]
    finally:
        watch.close()


@pytest.mark.redis
def test_a_leader_starts_at_its_second_try_when_info_always_fails(
    sqlite_db: str,
    tmp_path: Path,
    redis_url: str,
    redis_proxy: CuttingProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A Redis whose every INFO is an unknown error: the leader's first start fails, as at a
    one-off error; its second, a retry delay (1 s) later, takes the error as a refusal and
    leads: it marks Redis, and the relay passes what is recorded."""
    caplog.set_level(logging.INFO, logger="enforcement.workers")
    redis_proxy.answer_every(INFO_REQUEST, MANAGED_INFO)
    watcher = redis.Redis.from_url(redis_url)
    container = bootstrap(fast_settings(sqlite_db, tmp_path, redis_url=redis_proxy.url))
    try:
        _, stop = start_runtime(container, consumers=False, relay=True)
        try:
            wait_until(lambda: watcher.get(RedisWatch.KEY) == b"-", "the leader marks Redis")
            report(container, "acct_1")
            wait_until(
                lambda: relay_position(container.store) >= container.store.max_position(),
                "the relay passes the notice",
            )
        finally:
            stop()
    finally:
        container.close()
        watcher.close()
    failed = [m for m in caplog.messages if m.startswith("could not start the relay")]
    assert failed == ["could not start the relay; retrying in 1 s"], caplog.messages


class SteppedStop:
    """The gate keeper's stop event on a clock of its own: each ``wait`` is a wait of its full
    timeout (the clock moves on by it) until ``waits`` of them were made, then the stop."""

    def __init__(self, waits: int) -> None:
        self.now = 0.0
        self.left = waits
        self.timeouts: list[float] = []

    def wait(self, timeout: float) -> bool:
        self.timeouts.append(timeout)
        if self.left == 0:
            return True
        self.left -= 1
        self.now += timeout
        return False


class ScriptedWatch:
    """A ``RedisWatch`` whose looks answer from ``lost`` and ``follows`` (one answer a look, then
    False and True); each call is written into ``calls``."""

    def __init__(self, calls: list[str], lost: list[object], follows: list[bool]) -> None:
        self.calls = calls
        self.lost_answers = lost
        self.follows_answers = follows

    def lost(self) -> bool:
        self.calls.append("lost")
        answer = self.lost_answers.pop(0) if self.lost_answers else False
        if isinstance(answer, Exception):
            raise answer
        return bool(answer)

    def follows(self, store: object) -> bool:
        self.calls.append("follows")
        return self.follows_answers.pop(0) if self.follows_answers else True

    def mark(self) -> None:
        self.calls.append("mark")

    def note(self, store: object) -> None:
        self.calls.append("note")


def keep_gate_on(
    monkeypatch: pytest.MonkeyPatch,
    stop: SteppedStop,
    calls: list[str],
    watch: ScriptedWatch | None = None,
    on_lost: Callable[[], Callable[[], None]] | None = None,
) -> list[float]:
    """Run ``keep_gate`` to its stop on ``stop``'s clock, over a container of doubles (its
    gate's ``clear`` and each re-seed written into ``calls``); the times of the re-seeds."""
    seeds: list[float] = []

    def seed(gate: object, store: object, now: object) -> int:
        calls.append("seed")
        seeds.append(stop.now)
        return 0

    monkeypatch.setattr(redis_watch, "seed_gate", seed)
    monkeypatch.setattr(redis_watch, "time", SimpleNamespace(monotonic=lambda: stop.now))
    gate = SimpleNamespace(clear=lambda: calls.append("clear"))
    container = SimpleNamespace(gate=gate, store=object(), clock=lambda: None)
    if watch is None:  # as without Redis: no watch given
        redis_watch.keep_gate(cast(Container, container), cast(Any, stop))
    else:
        redis_watch.keep_gate(
            cast(Container, container), cast(Any, stop), cast(RedisWatch, watch), on_lost
        )
    return seeds


def test_without_redis_the_gate_keeper_re_seeds_every_six_hours(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stop = SteppedStop(waits=3)
    seeds = keep_gate_on(monkeypatch, stop, [])
    assert stop.timeouts == [6 * 3600.0] * 4
    assert seeds == [6 * 3600.0, 12 * 3600.0, 18 * 3600.0]


def test_with_redis_the_gate_keeper_looks_every_five_seconds_and_re_seeds_every_six_hours(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Looks that see nothing lost re-seed nothing until six hours passed since the last
    seed (the keeper's start), then one; each look tells Redis of the log, the stop too."""
    calls: list[str] = []
    looks = 6 * 3600 // 5 + 2
    stop = SteppedStop(waits=looks)
    seeds = keep_gate_on(monkeypatch, stop, calls, ScriptedWatch(calls, [], []))
    assert set(stop.timeouts) == {5.0}
    assert seeds == [6 * 3600.0]
    assert calls.count("note") == looks + 1
    assert "mark" not in calls and "clear" not in calls


def test_a_lost_redis_is_re_seeded_at_once_and_its_notices_sent_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """What ``on_lost`` returns runs after the re-seed, which it precedes; Redis is marked then,
    and the six hours of the next re-seed count from this one."""
    calls: list[str] = []

    def on_lost() -> Callable[[], None]:
        calls.append("on_lost")
        return lambda: calls.append("resend")

    stop = SteppedStop(waits=1 + 6 * 3600 // 5)  # to 5 s before six hours after the loss
    watch = ScriptedWatch(calls, [False, True], [])
    caplog.set_level(logging.WARNING, logger="enforcement.workers")
    seeds = keep_gate_on(monkeypatch, stop, calls, watch, on_lost)
    assert caplog.messages == ["Redis lost its data: re-seeding the gate, re-sending notices"]
    assert caplog.records[0].name == "enforcement.workers"  # where the workers' logs go
    assert calls[:9] == [
        *("lost", "follows", "note"),
        *("lost", "on_lost", "seed", "resend", "mark", "note"),
    ]
    assert seeds == [10.0]  # not again at six hours from the start: from this one
    assert calls.count("mark") == 1


def test_redis_following_another_log_has_the_gate_forgotten_and_re_seeded(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []
    watch = ScriptedWatch(calls, [], [True, False])
    caplog.set_level(logging.WARNING, logger="enforcement.workers")
    seeds = keep_gate_on(monkeypatch, SteppedStop(waits=3), calls, watch)
    assert [m.split(" (")[0] for m in caplog.messages] == [
        "Redis holds gate state of events this database does not have"
    ]
    assert calls == [
        *("lost", "follows", "note"),
        *("lost", "follows", "clear", "seed", "mark", "note"),
        *("lost", "follows", "note"),
        *("follows", "note"),  # the stop
    ]
    assert seeds == [10.0]


def test_the_stop_does_not_note_a_log_redis_does_not_follow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    keep_gate_on(monkeypatch, SteppedStop(waits=0), calls, ScriptedWatch(calls, [], [False]))
    assert calls == ["follows"]


def test_a_failed_look_is_logged_and_counted_until_one_succeeds(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []
    failure = redis.ConnectionError("Redis away")
    watch = ScriptedWatch(calls, [failure, failure, False, failure], [])
    caplog.set_level(logging.ERROR, logger="enforcement.workers")
    keep_gate_on(monkeypatch, SteppedStop(waits=4), calls, watch)
    assert caplog.messages == [
        "keeping the gate failed; trying again later",
        "keeping the gate failed (2 times in a row): ConnectionError: Redis away; "
        "trying again later",
        "keeping the gate failed; trying again later",
    ]
    assert calls.count("note") == 2  # the look that succeeded, and the stop
