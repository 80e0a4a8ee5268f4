"""What only the Redis gate must show: one slot per account, TTLs, one script per check."""

from __future__ import annotations

import struct
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from enforcement.gate import GateUnavailable, RedisGate, redis_gate
from tests.gate.harness import Backend, clear_of_window_end, redis_backend
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis

ODD_IDS = ["acct", "acct.2:x-y_z"]
ODD_KEYS = ["key", "k:{1}", "k}{", "ключ", "a" * 200]


def crc16_xmodem(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def cluster_slot(key: bytes) -> int:
    """The Redis Cluster slot: CRC16 of the hash tag (first {...} non-empty), mod 16384."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return crc16_xmodem(key) % 16384


def exercise(gate: RedisGate, backend: Backend) -> None:
    """Touch every kind of key: allowed and denied checks, every state update."""
    for account in ODD_IDS:
        gate.set_limits(account, None, rpm=3, tpd=1000, version=1)
        for key in ODD_KEYS:
            gate.set_limits(account, key, rpm=2, tpd=100, version=2)
            gate.check(account, key, tokens=5)
            gate.check(account, key, tokens=500)
        gate.apply_throttle(account, "t1", ODD_KEYS[1], 0.5, backend.at(600), version=3)
        gate.apply_throttle(account, "t2", None, 0.5, None, version=4)
        gate.lift_throttle(account, "t2", version=5)
        gate.set_status(account, "suspended", backend.at(600), version=6)
        gate.check(account, "key")


@pytest.fixture
def backend(redis_client: redis.Redis) -> Backend:
    """Here only the Redis backend (overrides the suite's two-backend fixture)."""
    return redis_backend(redis_client)


def test_crc16_matches_redis_py() -> None:
    for key in (b"{a:acct}:cfg", b"{a:acct}:use:k:{1}", b"123456789", b"foo{}{bar}"):
        assert cluster_slot(key) == key_slot(key)
    assert crc16_xmodem(b"123456789") == 0x31C3  # the CRC16-XMODEM check value


def test_every_key_of_an_account_has_one_hash_slot(backend: Backend) -> None:
    client = backend.client
    assert client is not None
    exercise(RedisGate(client), backend)

    slots: dict[bytes, set[int]] = defaultdict(set)
    for name in client.scan_iter(count=1000):
        assert name.startswith(b"{a:"), name
        slots[name[: name.index(b"}") + 1]].add(cluster_slot(name))

    assert set(slots) == {b"{a:" + account.encode() + b"}" for account in ODD_IDS}
    assert all(len(found) == 1 for found in slots.values()), slots


def test_clear_removes_every_key_of_the_gate_and_nothing_else(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = backend.client
    assert client is not None
    monkeypatch.setattr(redis_gate, "CLEAR_PAGE", 2)  # a page of SCAN at a time
    exercise(RedisGate(client), backend)
    for account in range(5):
        RedisGate(client).set_status(f"acct_{account}", "suspended", None, version=1)
    others = {
        b"enforcement:marked",
        b"dramatiq:default",
        b"a:{a:x}",
    }  # the workers', anyone's
    for name in others:
        client.set(name, "kept")

    RedisGate(client).clear()

    assert set(client.scan_iter(count=1000)) == others


def test_every_key_has_a_ttl(backend: Backend) -> None:
    client = backend.client
    assert client is not None
    exercise(RedisGate(client, state_ttl_s=2 * 86_400), backend)
    gate = RedisGate(client)
    gate.check("unconfigured", "key")  # usage only: lives until its bucket has refilled
    gate.check("unconfigured", "key")

    ttls = {name.decode(): client.pttl(name) for name in client.scan_iter(count=1000)}

    assert len(ttls) == 2 * 3 + 1
    assert all(ttl > 0 for ttl in ttls.values()), ttls
    for name, ttl in ttls.items():
        if name == "{a:unconfigured}:gate":
            assert ttl <= 120_000
        elif name.endswith(":gate"):
            assert 2 * 86_400_000 - 60_000 < ttl <= 2 * 86_400_000
        elif name.endswith(":dkeys"):
            assert 60_000 - 5_000 < ttl <= 60_000
        else:
            assert name.endswith(":dtimes") and 600_000 - 5_000 < ttl <= 600_000


def test_token_usage_keeps_its_key_until_the_window_ends(backend: Backend) -> None:
    client = backend.client
    assert client is not None
    gate = RedisGate(client, token_window_s=3600)

    decision = gate.check("acct", "key", tokens=5)

    ttl_s = client.pttl("{a:acct}:gate") / 1000
    # Until the token window ends, or the usage TTL when that is later (the window's last two
    # minutes: the request's TAT must outlive it too).
    kept = max(decision.reset_tokens_s, redis_gate.USAGE_TTL_S)
    assert decision.reset_tokens_s - 0.5 <= ttl_s <= kept + 1


def test_the_key_layout(backend: Backend) -> None:
    client = backend.client
    assert client is not None
    gate = RedisGate(client)
    gate.set_limits("acct", "k1", rpm=1, tpd=100, version=1)
    gate.set_limits("acct", None, rpm=50, tpd=5000, version=3)
    gate.set_status("acct", "suspended", backend.at(-1), version=4)  # already over
    gate.apply_throttle("acct", "t1", None, 0.25, None, version=2)
    gate.check("acct", "k1", tokens=3)
    gate.check("acct", "k1", tokens=3)

    assert sorted(client.keys()) == [
        b"{a:acct}:dkeys",
        b"{a:acct}:dtimes",
        b"{a:acct}:gate",
    ]
    # Every value fits a listpack entry (64 bytes): the hash stays one compact allocation.
    assert client.object("encoding", "{a:acct}:gate") == b"listpack"
    state = client.hgetall("{a:acct}:gate")
    assert set(state) == {b"a", b"k:k1", b"thr", b"u"}
    status, until_ms, status_v, rpm, tpd, limits_v, ppm, thr_until, key_thr = struct.unpack(
        "<bddiddidb", state[b"a"]
    )
    assert (status, status_v, rpm, tpd, limits_v) == (3, 4, 50, 5000, 3)
    assert until_ms == pytest.approx(time.time() * 1000 - 1000, abs=1000)
    assert (ppm, thr_until, key_thr) == (250_000, 0, 0)  # the throttle summary
    assert b'"f":250000' in state[b"thr"]
    tat, window, used, key_rpm, key_tpd, key_v = struct.unpack("<dddidd", state[b"k:k1"])
    assert (key_rpm, key_tpd, key_v) == (1, 100, 1)
    assert tat == int(tat) and tat == pytest.approx(time.time() * 1e6 + 60e6, abs=5e6)
    assert used == 3
    # The window is that of the first check's instant (the TAT less the key's 60 s interval),
    # not of the TAT itself: they differ in the last minute of a day.
    assert window == int((tat - 60_000_000) // 86_400_000_000)
    acct_tat, acct_window, acct_used, expires = struct.unpack("<4d", state[b"u"])
    assert acct_tat == int(acct_tat) and acct_tat < tat  # 1.2 s per request, the key 60 s
    assert (acct_window, acct_used) == (window, 3)  # the second check was denied
    assert expires == pytest.approx(time.time() * 1000 + client.pttl(b"{a:acct}:gate"), abs=50)
    [denied_at] = client.lrange("{a:acct}:dtimes", 0, -1)  # the denial's time, whole µs
    assert denied_at.isdigit() and int(denied_at) == pytest.approx(time.time() * 1e6, abs=5e6)
    # The denied key, with the time of its last denial.
    assert client.zrange("{a:acct}:dkeys", 0, -1, withscores=True) == [(b"k1", int(denied_at))]


def set_usage_expiry(client: redis.Redis, name: str, usage: tuple[float, ...], ms: int) -> int:
    """Set an account's usage record to ``usage`` with its mirrored expiry, and the hash's own,
    ``ms`` ahead on Redis's clock; that expiry (ms since the epoch)."""
    seconds, micros = client.time()
    expires = int(seconds * 1000 + micros // 1000 + ms)
    client.hset(name, "u", struct.pack("<4d", *usage, expires))
    client.pexpireat(name, expires)
    return expires


def test_a_denial_moves_the_hash_expiry_only_when_it_is_due(backend: Backend) -> None:
    # A denied check counts nothing, but a configured account's hash must not expire under
    # its checks: the expiry (mirrored in the usage record) moves once it falls within the
    # slack of the state TTL, and only then. Set by hand here, rather than waiting for days.
    client = backend.client
    assert client is not None
    gate, name = RedisGate(client), "{a:acct}:gate"
    gate.set_limits("acct", None, rpm=1, tpd=100, version=1)
    assert gate.check("acct", "key").allowed
    ttl_ms = redis_gate.DEFAULT_STATE_TTL_S * 1000
    counted = struct.unpack("<4d", client.hget(name, "u"))[:3]

    def deny_with_expiry_in(ms: int) -> tuple[float, int]:
        """The mirrored expiry and the hash's TTL after a denial, the expiry ``ms`` ahead."""
        expires = set_usage_expiry(client, name, counted, ms)
        assert gate.check("acct", "key").reason == "rate_limited"
        *usage, mirrored = struct.unpack("<4d", client.hget(name, "u"))
        assert tuple(usage) == counted
        return mirrored - expires + ms, client.pttl(name)

    for later in (ttl_ms + 86_400_000, ttl_ms - 60_000):  # not due: left alone
        assert deny_with_expiry_in(later) == (later, pytest.approx(later, abs=1000))
    mirrored, ttl = deny_with_expiry_in(3_600_000)  # due: moved to the state TTL from now
    assert mirrored == pytest.approx(ttl_ms, abs=1000) and ttl == pytest.approx(mirrored, abs=500)


def test_an_allowed_check_moves_the_usage_expiry_only_when_it_is_due(
    backend: Backend,
) -> None:
    # An unconfigured account's hash lives USAGE_TTL_S after its last request; an allowed check
    # moves the expiry (mirrored in the usage record) once it falls within USAGE_SLACK_S of
    # that, and only then. Set by hand here.
    client = backend.client
    assert client is not None
    gate, name = RedisGate(client), "{a:acct}:gate"
    ttl_ms = redis_gate.USAGE_TTL_S * 1000

    def check_with_expiry_in(ms: int) -> tuple[float, int]:
        """The mirrored expiry and the hash's TTL after a check, the expiry ``ms`` ahead."""
        *usage, _ = struct.unpack("<4d", client.hget(name, "u"))
        expires = set_usage_expiry(client, name, tuple(usage), ms)
        assert gate.check("acct", "key").allowed
        *_, mirrored = struct.unpack("<4d", client.hget(name, "u"))
        return mirrored - expires + ms, client.pttl(name)

    assert gate.check("acct", "key").allowed
    later = ttl_ms - redis_gate.USAGE_SLACK_S * 1000 + 10_000  # not due: left alone
    assert check_with_expiry_in(later) == (later, pytest.approx(later, abs=1000))
    mirrored, ttl = check_with_expiry_in(10_000)  # due: moved to the usage TTL from now
    assert mirrored == pytest.approx(ttl_ms, abs=1000) and ttl == pytest.approx(ttl_ms, abs=1000)


def test_the_denial_times_are_bounded_by_the_count_and_the_window(
    backend: Backend,
) -> None:
    # An account's denials are a list of its latest `count` denial times, newest first, which
    # loses those that leave the window; never every denial.
    client = backend.client
    assert client is not None
    gate = RedisGate(client, denial_window_s=1, denial_count=5)
    gate.set_limits("acct", None, rpm=600, tpd=0, version=1)  # every check is denied
    lengths = []
    for _ in range(12):
        assert not gate.check("acct", "key").allowed
        lengths.append(client.llen("{a:acct}:dtimes"))

    assert lengths == [1, 2, 3, 4, 5] + [5] * 7
    times = [int(at) for at in client.lrange("{a:acct}:dtimes", 0, -1)]
    assert times == sorted(times, reverse=True)
    assert 0 < client.pttl("{a:acct}:dtimes") <= 1000

    backend.advance(1.1)  # all five have left the window

    assert gate.check("acct", "key").denials_in_window == 1
    assert client.llen("{a:acct}:dtimes") == 1


def test_a_gate_with_a_lower_count_counts_no_more_than_its_count(
    backend: Backend,
) -> None:
    # Given an account's denial times pushed by a gate of a larger count (the policy's count
    # lowered since, or a process of the older policy still running)
    client = backend.client
    assert client is not None
    larger = RedisGate(client, denial_count=5)
    larger.set_limits("acct", None, rpm=600, tpd=0, version=1)  # every check is denied
    assert [larger.check("acct", "key").denials_in_window for _ in range(5)][-1] == 5
    lower = RedisGate(client, denial_count=3)

    # Then a gate of count 3 reads at most 3 of them, before its next denial as at it
    # (DenialStats, as GateDecision: exact up to the gate's count, and never more)
    assert lower.denial_stats("acct").denials_in_window == 3
    assert lower.check("acct", "key").denials_in_window == 3
    assert lower.denial_stats("acct").denials_in_window == 3


def test_idle_keys_are_dropped_when_a_new_window_starts(backend: Backend) -> None:
    client = backend.client
    assert client is not None
    gate = RedisGate(client, token_window_s=1, state_ttl_s=120)
    gate.set_limits("acct", None, rpm=600, tpd=1000, version=1)
    for key in ("a", "b", "c"):
        gate.check("acct", key, tokens=1)
    assert set(client.hgetall("{a:acct}:gate")) == {b"a", b"u", b"k:a", b"k:b", b"k:c"}

    backend.advance(1.1)  # next window; the buckets refilled (0.1 s each)
    gate.check("acct", "a", tokens=1)

    assert set(client.hgetall("{a:acct}:gate")) == {b"a", b"u", b"k:a"}


def test_one_evalsha_per_check_and_the_script_is_loaded_once(backend: Backend) -> None:
    client = backend.client
    assert client is not None
    client.script_flush()
    gate = RedisGate(client)
    client.config_resetstat()

    for i in range(50):
        gate.check("acct", f"key{i % 3}", tokens=1)

    stats = client.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 51  # one NOSCRIPT, then one per check
    assert stats["cmdstat_script|load"]["calls"] == 1
    assert "cmdstat_eval" not in stats
    # Inside the script, an allowed check is TIME, HMGET, HSET; once, the account's first
    # request of a token window also sweeps idle keys (HGETALL) and sets the expiry.
    assert stats["cmdstat_time"]["calls"] == 50
    assert stats["cmdstat_hmget"]["calls"] == 50
    assert stats["cmdstat_hset"]["calls"] == 50
    assert stats["cmdstat_pexpireat"]["calls"] == 1
    assert stats["cmdstat_hgetall"]["calls"] == 1


@pytest.mark.parametrize("tokens", [-1, True, 1.5, "1", None])
def test_bad_tokens_are_refused_after_the_pair_was_checked(
    backend: Backend, tokens: object
) -> None:
    # A pair's EVALSHA arguments are cached after its first check; the token count is not.
    gate = RedisGate(backend.client)
    assert gate.check("acct", "key", tokens=1).allowed
    with pytest.raises(ValueError, match="tokens"):
        gate.check("acct", "key", tokens=tokens)  # type: ignore[arg-type]
    assert gate.check("acct", "key", tokens=1).remaining_tokens == 1_000_000 - 2


def test_the_argument_cache_is_bounded_and_never_mixes_pairs(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_gate, "CALL_CACHE_SIZE", 4)
    gate = RedisGate(backend.client)
    pairs = [(f"acct{i % 3}", f"key{i}") for i in range(10)]
    for rounds in range(1, 4):
        for account, key in pairs:
            decision = gate.check(account, key, tokens=key_tokens(key))
            assert decision.allowed
            # The key's own token use: only its own checks were counted on it.
            left = 1_000_000 - rounds * key_tokens(key)
            assert decision.remaining_tokens <= left
        assert len(gate._calls) <= 4
    for account, key in pairs:
        used = struct.unpack("<dddidd", backend.client.hget(f"{{a:{account}}}:gate", f"k:{key}"))[2]
        assert used == 3 * key_tokens(key)


def test_resets_count_to_the_end_of_the_window_in_redis_time(backend: Backend) -> None:
    client = backend.client
    assert client is not None
    clear_of_window_end(client, window_s=3600, margin_s=1)  # one window for the test
    gate = RedisGate(client, token_window_s=3600)
    gate.set_limits("acct", "key", rpm=1, tpd=10, version=1)

    def window_left() -> float:
        seconds, micros = client.time()
        return 3600 - (seconds + micros / 1e6) % 3600

    before = window_left()
    allowed = gate.check("acct", "key", tokens=10)
    denied = gate.check("acct", "key", tokens=1)
    after = window_left()

    assert allowed.reset_requests_s == 60  # one request a minute, just taken
    for reset in (allowed.reset_tokens_s, denied.reset_tokens_s):
        assert after <= reset <= before + 0.001  # rounded up to the millisecond


def test_tats_beyond_a_whole_period_leave_no_request_not_fewer_than_none(
    backend: Backend,
) -> None:
    # Redis's clock stepped back (a failover to a replica whose clock runs behind): the stored
    # TATs are further ahead than a whole period, here by half an interval of each scope. The
    # check is denied and reports 0 requests left in each scope, never -1.
    client = backend.client
    assert client is not None
    gate, name = RedisGate(client), "{a:acct}:gate"
    gate.set_limits("acct", "key", rpm=60, tpd=100, version=1)  # the account at 600 rpm
    assert gate.check("acct", "key").allowed
    seconds, micros = client.time()
    ahead = seconds * 1_000_000 + micros + 60_050_000  # the period, then 0.05 s more
    _, *usage = struct.unpack("<4d", client.hget(name, "u"))
    _, *record = struct.unpack("<dddidd", client.hget(name, "k:key"))
    client.hset(
        name,
        mapping={
            "u": struct.pack("<4d", ahead, *usage),
            "k:key": struct.pack("<dddidd", ahead, *record),
        },
    )

    denied = gate.check("acct", "key")

    assert (denied.reason, denied.limit_requests, denied.remaining_requests) == (
        "rate_limited",
        60,
        0,
    )


def test_with_as_much_left_and_the_same_limit_the_key_reset_is_reported(
    backend: Backend,
) -> None:
    # core.binding: the account is reported only with less left, or as much and a lower limit.
    # Here both scopes have 60 rpm and 58 requests left after the check, the key 0.2 s of its
    # minute in use and the account 0.7 s (TATs set by hand): the key's reset is reported.
    client = backend.client
    assert client is not None
    gate, name = RedisGate(client), "{a:acct}:gate"
    gate.set_limits("acct", None, rpm=60, tpd=100, version=1)
    gate.set_limits("acct", "key", rpm=60, tpd=100, version=1)
    assert gate.check("acct", "key").allowed
    seconds, micros = client.time()
    now = seconds * 1_000_000 + micros
    _, *usage = struct.unpack("<4d", client.hget(name, "u"))
    _, *record = struct.unpack("<dddidd", client.hget(name, "k:key"))
    client.hset(
        name,
        mapping={
            "u": struct.pack("<4d", now + 700_000, *usage),
            "k:key": struct.pack("<dddidd", now + 200_000, *record),
        },
    )

    decision = gate.check("acct", "key")

    assert (decision.limit_requests, decision.remaining_requests) == (60, 58)
    assert decision.reset_requests_s == pytest.approx(1.2, abs=0.1)  # not 1.7 s


def test_a_throttle_ends_in_the_millisecond_of_its_expiry(backend: Backend) -> None:
    # Redis's clock cannot be set: checks run back to back across the expiry, and the first
    # one in the expiry's millisecond must be unthrottled, as the standing is at ``expires_at``.
    # A check's token reset tells its millisecond (the day ends on a whole one). Most attempts
    # have a check land there (a check takes a fraction of a millisecond); others are repeated,
    # up to 200 times: under a load that stretches a check to several milliseconds, still a
    # vanishing chance that none lands there.
    client = backend.client
    assert client is not None
    gate = RedisGate(client)
    for key in (None, "key"):
        gate.set_limits("acct", key, rpm=10_000_000, tpd=10**9, version=1)
    for version in range(2, 202):
        seconds, micros = client.time()
        day_end_ms = (seconds // 86_400 + 1) * 86_400_000
        expires_ms = seconds * 1000 + micros // 1000 + 20
        expires = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=expires_ms)
        gate.apply_throttle("acct", f"t{version}", None, 0.5, expires, version)
        while True:
            decision = gate.check("acct", "key")
            at_ms = day_end_ms - round(decision.reset_tokens_s * 1000)
            if at_ms >= expires_ms:
                break
            assert decision.limit_requests == 5_000_000
        if at_ms == expires_ms:
            assert decision.limit_requests == 10_000_000
            return
    pytest.fail("no first check after an expiry fell in its millisecond")


def test_the_state_must_outlive_the_token_window(backend: Backend) -> None:
    with pytest.raises(ValueError, match="state_ttl_s"):
        RedisGate(backend.client, state_ttl_s=86_399)
    assert RedisGate(backend.client, state_ttl_s=86_400).check("acct", "key").allowed


def key_tokens(key: str) -> int:
    return 1 + int(key.removeprefix("key"))


def test_script_cache_loss_is_survived(backend: Backend) -> None:
    client = backend.client
    assert client is not None
    gate = RedisGate(client)
    gate.set_limits("acct", "key", rpm=2, tpd=100, version=1)
    assert gate.check("acct", "key").allowed

    client.script_flush()

    assert gate.check("acct", "key").allowed
    assert not gate.check("acct", "key").allowed


def test_a_restarted_server_reloads_the_script(redis_server: RedisServer, redis_url: str) -> None:
    gate = RedisGate.from_url(redis_url)
    gate.set_limits("acct", "key", rpm=2, tpd=100, version=1)
    gate.check("acct", "key")

    redis_server.stop()
    with pytest.raises(GateUnavailable):
        gate.check("acct", "key")
    redis_server.start()

    decision = gate.check("acct", "key")  # the state went with the server: defaults again
    assert decision.allowed and decision.limit_requests == 600


def test_close_closes_the_client_only_when_the_gate_made_it(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[str] = []
    client = redis.Redis.from_url(redis_url)
    monkeypatch.setattr(client, "close", lambda: closed.append("the caller's"))
    made = RedisGate.from_url(redis_url)
    monkeypatch.setattr(made._client, "close", lambda: closed.append("the gate's"))
    RedisGate(client).close()
    made.close()
    assert closed == ["the gate's"]


def test_every_call_is_unavailable_while_redis_is_down(
    redis_server: RedisServer, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    gate = RedisGate.from_url(redis_url)
    redis_server.stop()
    for call in (
        lambda: gate.check("acct", "key"),
        lambda: gate.set_limits("acct", None, rpm=1, tpd=1, version=1),
        lambda: gate.lift_throttle("acct", "t", version=1),
        lambda: gate.denial_stats("acct"),
        lambda: gate.holds_status("acct"),
        lambda: gate.throttle_ids("acct"),
        gate.clear,
    ):
        with pytest.raises(GateUnavailable):
            call()
    # Refused, not silent: no check is made to wait for another (RedisGate.check).
    assert "did not answer" not in caplog.text


@pytest.fixture
def cluster() -> Iterator[RedisServer]:
    with RedisServer(cluster=True) as server:
        yield server


def test_it_runs_on_redis_cluster(cluster: RedisServer) -> None:
    # A cluster node refuses (CROSSSLOT) any script whose keys are not all in one slot.
    client = RedisCluster(host="127.0.0.1", port=cluster.port)
    gate = RedisGate(client)
    assert gate._wire is None  # checks go through the cluster client, which routes by slot

    exercise(gate, Backend("cluster", lambda **_: gate, time.time, time.sleep))
    client.script_flush()  # and NOSCRIPT is survived through the cluster client too

    assert gate.check("acct", "key").reason == "suspended"
    assert gate.check("other", "key").allowed
    assert gate.denial_stats("acct").denials_in_window > 0
    client.close()
