"""The check's own transport (``enforcement/gate/wire.py``) against a real Redis: the packed
command is redis-py's, a killed connection is replaced, a timed-out reply is never read as a
later check's, and a forked child does not share the parent's sockets."""

from __future__ import annotations

import itertools
import multiprocessing
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from redis.connection import Connection

from enforcement.gate import GateUnavailable, RedisGate
from enforcement.gate.wire import Packed, Wire, usable
from tests.gate.harness import clear_of_window_end

pytestmark = pytest.mark.redis

ARG = st.one_of(st.text(), st.binary(), st.integers(min_value=-(2**63), max_value=2**63 - 1))


@given(
    name=st.sampled_from(["EVALSHA", "ECHO", "HSET"]),
    args=st.lists(ARG, max_size=8),
    last=st.integers(min_value=0, max_value=2**62),
)
def test_a_packed_command_is_what_redis_py_sends(
    name: str, args: list[str | bytes | int], last: int
) -> None:
    # (redis-py splits its first argument, the command's name, on spaces: a plain word here.)
    expected = b"".join(Connection().pack_command(name, *args, last))
    assert Packed((name, *args)).with_last(last) == expected


@pytest.fixture
def gate(redis_url: str) -> Iterator[RedisGate]:
    client = redis.Redis.from_url(redis_url, socket_timeout=0.3)
    clear_of_window_end(client)  # the tests count tokens across checks: one UTC day
    gate = RedisGate(client)
    gate.set_limits("acct", "key", rpm=10_000, tpd=10**6, version=1)
    yield gate
    client.close()


def test_a_plain_client_uses_the_wire(redis_url: str) -> None:
    plain = redis.Redis.from_url(redis_url)
    assert usable(plain) and RedisGate(plain)._wire is not None  # cluster: test_gate_redis
    plain.close()


def test_a_connection_the_server_closed_is_replaced(gate: RedisGate, redis_url: str) -> None:
    left = gate.check("acct", "key", tokens=10).remaining_tokens
    admin = redis.Redis.from_url(redis_url)
    assert admin.client_kill_filter(_type="normal", skipme=True) >= 1

    assert gate.check("acct", "key", tokens=100).remaining_tokens == left - 100
    admin.close()


def wait_until_held(redis_url: str) -> None:
    """Until Redis is seen busy (a script holds it): a PING gets no answer within 0.2 s."""
    url = urlsplit(redis_url)
    patience = time.monotonic() + 10
    while time.monotonic() < patience:
        with socket.create_connection((url.hostname, url.port or 6379), timeout=5) as probe:
            probe.sendall(b"PING\r\n")
            probe.settimeout(0.2)
            try:
                assert probe.recv(64) == b"+PONG\r\n"
            except TimeoutError:
                return
        time.sleep(0.005)
    raise AssertionError("Redis was never held by the script")


def test_a_timed_out_reply_is_never_read_as_a_later_one(gate: RedisGate, redis_url: str) -> None:
    admin = redis.Redis.from_url(redis_url)
    busy = "local s = redis.call('TIME') repeat local t = redis.call('TIME') until " + (
        "(t[1] - s[1]) * 1000000 + t[2] - s[2] > 1500000"
    )
    gate.check("acct", "key", tokens=1)
    blocker = threading.Thread(target=admin.eval, args=(busy, 0))
    blocker.start()
    wait_until_held(redis_url)  # the script now holds Redis, for 1.5 s from its start

    with pytest.raises(GateUnavailable):
        gate.check("acct", "key", tokens=10)  # 0.3 s socket timeout; it may still run later
    blocker.join()
    first = gate.check("acct", "key", tokens=100)
    second = gate.check("acct", "key", tokens=1000)

    assert first.remaining_tokens in (1_000_000 - 101, 1_000_000 - 111)
    assert second.remaining_tokens == first.remaining_tokens - 1000
    admin.close()


def _child(gate: RedisGate, results: multiprocessing.Queue[int]) -> None:
    results.put(sum(gate.check("acct", "key", tokens=1).allowed for _ in range(20)))


def test_a_forked_child_uses_connections_of_its_own(gate: RedisGate) -> None:
    before = gate.check("acct", "key", tokens=1000).remaining_tokens
    ctx = multiprocessing.get_context("fork")
    results: multiprocessing.Queue[int] = ctx.Queue()
    child = ctx.Process(target=_child, args=(gate, results))
    child.start()
    during = [gate.check("acct", "key", tokens=1000).remaining_tokens for _ in range(20)]
    assert results.get(timeout=30) == 20
    child.join(timeout=10)
    after = gate.check("acct", "key", tokens=1000).remaining_tokens

    assert child.exitcode == 0
    assert all(a - b >= 1000 for a, b in itertools.pairwise(during))  # each reply its own
    assert after == before - 21 * 1000 - 20


def _wire_state(wire: Wire, results: multiprocessing.Queue[tuple[int, int, bool]]) -> None:
    results.put((len(wire._idle), wire._kept, wire._keeping.locked()))


def test_a_forked_child_starts_with_no_connection_and_a_free_lock(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    wire = Wire(client)
    wire.call(Packed(("ECHO",)).with_last(1))  # one connection kept, idle
    ctx = multiprocessing.get_context("fork")
    results: multiprocessing.Queue[tuple[int, int, bool]] = ctx.Queue()
    with wire._keeping:  # held by another thread of the parent as it forks
        child = ctx.Process(target=_wire_state, args=(wire, results))
        child.start()
    assert results.get(timeout=30) == (0, 0, False)
    child.join(timeout=10)
    assert (len(wire._idle), wire._kept) == (1, 1)  # the parent's, untouched
    client.close()


def test_the_wire_returns_error_replies_and_keeps_the_connection(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    wire = Wire(client)
    with pytest.raises(redis.ResponseError):
        wire.call(Packed(("EVAL", "return redis.error_reply('no')")).with_last(0))
    assert wire.call(Packed(("ECHO",)).with_last(7)) == b"7"
    assert len(wire._idle) == 1
    client.close()


def test_the_wire_keeps_at_most_half_the_pool_and_borrows_beyond(redis_url: str) -> None:
    # A blocking pool of 4: the wire keeps 2, so the client's other commands always find one.
    client = redis.Redis(
        connection_pool=redis.BlockingConnectionPool.from_url(
            redis_url, max_connections=4, timeout=2
        )
    )
    wire = Wire(client)
    slow = "local s = redis.call('TIME') repeat local t = redis.call('TIME') until " + (
        "(t[1] - s[1]) * 1000000 + t[2] - s[2] > 30000 return ARGV[1]"
    )
    echo = Packed(("EVAL", slow, 0))  # 30 ms each: the six calls hold connections together
    start, results = threading.Barrier(6), []

    def check(i: int) -> None:
        start.wait()
        results.append(int(wire.call(echo.with_last(i))))

    threads = [threading.Thread(target=check, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)

    assert sorted(results) == list(range(6))
    assert wire._kept <= 2 and len(wire._idle) <= 2
    assert client.ping()  # not starved: at most 2 of the 4 are kept
    client.close()


def test_a_pool_of_one_is_left_to_the_client(redis_url: str) -> None:
    # The wire keeps none of it: the script still loads (NOSCRIPT) and checks go through.
    client = redis.Redis(
        connection_pool=redis.ConnectionPool.from_url(redis_url, max_connections=1)
    )
    client.script_flush()
    gate = RedisGate(client)
    assert gate.check("acct", "key", tokens=5).remaining_tokens == 1_000_000 - 5
    assert gate._wire is not None and gate._wire._kept == 0
    client.close()


def test_an_interrupted_call_leaves_no_reply_for_the_next(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    wire = Wire(client)
    echo = Packed(("ECHO",))
    assert wire.call(echo.with_last(1)) == b"1"
    [conn] = wire._idle
    real_read = conn.read_response

    def interrupted(*args: object, **kwargs: object) -> object:
        raise KeyboardInterrupt  # after the send, before the reply was read

    conn.read_response = interrupted
    with pytest.raises(KeyboardInterrupt):
        wire.call(echo.with_last(2))
    conn.read_response = real_read

    assert wire.call(echo.with_last(3)) == b"3"  # not the "2" left behind
    client.close()
