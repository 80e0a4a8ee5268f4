"""``serve``'s HTTP protocols (``enforcement/api/keep_alive.py``) run in-process on a socket
pair: httptools' and h11's alike spare an idle keep-alive connection whose next request waits
unread when its timer fires (as after a freeze), and close it otherwise."""

from __future__ import annotations

import asyncio
import fcntl
import os
import resource
import socket
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from enforcement.api.keep_alive import HTTP_PROTOCOL, H11KeepAlive, _readable

REQUEST = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n"
PROTOCOLS = [H11KeepAlive, HTTP_PROTOCOL]
# uvicorn runs uvloop's event loop when installed (as it is where serve runs), else asyncio's.
LOOPS = ["asyncio", "uvloop"]
# The first descriptor number ``select`` cannot watch (glibc's FD_SETSIZE).
FD_SETSIZE = 1024
T = TypeVar("T")


def run(scenario: Coroutine[Any, Any, T], loop_name: str) -> T:
    if loop_name == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(scenario)
    finally:
        loop.close()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


async def answered_connection(
    protocol_class: type[asyncio.Protocol], lowest_fd: int = 0
) -> tuple[Any, asyncio.Transport, socket.socket]:
    """A connection served by ``protocol_class`` that answered one request and is now idle
    (its keep-alive timer armed): the protocol, its transport, the client's socket. The
    server's socket is numbered ``lowest_fd`` or above."""
    config = Config(app=app, timeout_keep_alive=60, log_config=None, lifespan="off")
    server_side, client = socket.socketpair()
    if lowest_fd:
        with server_side:
            server_side = socket.socket(
                fileno=fcntl.fcntl(server_side.fileno(), fcntl.F_DUPFD, lowest_fd)
            )
    client.setblocking(False)
    loop = asyncio.get_running_loop()
    state = ServerState()
    transport, protocol = await loop.connect_accepted_socket(
        lambda: protocol_class(config=config, server_state=state, app_state={}),  # type: ignore[call-arg]
        server_side,
    )
    await loop.sock_sendall(client, REQUEST)
    assert (await answer(client)).startswith(b"HTTP/1.1 200")
    assert protocol.timeout_keep_alive_task is not None
    return protocol, transport, client


async def answer(client: socket.socket) -> bytes:
    """What the server sent until its answer's body (``ok``) or its close (a reset, when it
    closed with a request unread)."""
    loop = asyncio.get_running_loop()
    received = b""
    while not received.endswith(b"ok"):
        try:
            chunk = await asyncio.wait_for(loop.sock_recv(client, 65536), timeout=5)
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    return received


async def timer_falls_due(
    protocol_class: type[asyncio.Protocol], waiting: bytes, lowest_fd: int = 0
) -> bytes:
    """What the client of an idle connection gets when its keep-alive timer falls due with
    ``waiting`` sent, unread (nothing is awaited in between: the loop reads no socket before
    the timer runs, as after a freeze)."""
    protocol, _, client = await answered_connection(protocol_class, lowest_fd)
    with client:
        if waiting:
            client.send(waiting)
        protocol.timeout_keep_alive_handler()
        return await answer(client)


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("protocol_class", PROTOCOLS, ids=lambda c: c.__name__)
def test_a_request_waiting_when_the_keep_alive_falls_due_is_answered(
    protocol_class: type[asyncio.Protocol], loop_name: str
) -> None:
    assert run(timer_falls_due(protocol_class, REQUEST), loop_name).startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("protocol_class", PROTOCOLS, ids=lambda c: c.__name__)
def test_an_idle_connection_is_closed_when_the_keep_alive_falls_due(
    protocol_class: type[asyncio.Protocol], loop_name: str
) -> None:
    assert run(timer_falls_due(protocol_class, b""), loop_name) == b""


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("protocol_class", PROTOCOLS, ids=lambda c: c.__name__)
def test_a_spared_connection_gets_its_keep_alive_timer_again(
    protocol_class: type[asyncio.Protocol], loop_name: str
) -> None:
    """Else a connection spared for bytes that never become a request is never closed."""

    async def scenario() -> bool:
        protocol, _, client = await answered_connection(protocol_class)
        with client:
            client.send(REQUEST[:5])
            armed = protocol.timeout_keep_alive_task
            protocol.timeout_keep_alive_handler()
            again = protocol.timeout_keep_alive_task
            return again is not None and again is not armed and not again.cancelled()

    assert run(scenario(), loop_name)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_connection_numbered_past_what_select_can_watch_is_spared_too(loop_name: str) -> None:
    """A server with more than a thousand connections open: ``select`` refuses their numbers."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = FD_SETSIZE + 16
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.fail(f"this process may open no descriptor numbered past {FD_SETSIZE} ({hard})")
    # A soft limit of 1024 (a common default) is raised for the test, as a server's would be.
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))
    try:
        answered = run(timer_falls_due(HTTP_PROTOCOL, REQUEST, lowest_fd=FD_SETSIZE), loop_name)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert answered.startswith(b"HTTP/1.1 200")


def test_a_closed_socket_has_nothing_to_read() -> None:
    """Its number is then -1 (closed meanwhile), which ``poll`` would refuse."""
    closed = socket.socket()
    closed.close()
    assert _readable(closed.fileno()) is False


def test_a_socket_numbered_0_is_watched_like_any_other() -> None:
    """As a connection's is when the server started with its standard input closed."""
    server_side, client = socket.socketpair()
    try:
        stdin: int | None = os.dup(0)
    except OSError:  # this process has no standard input
        stdin = None
    with server_side, client:
        os.dup2(server_side.fileno(), 0)
        try:
            idle = _readable(0)
            client.send(REQUEST)
            waiting = _readable(0)
        finally:
            if stdin is None:
                os.close(0)
            else:
                os.dup2(stdin, 0)
                os.close(stdin)
    assert (idle, waiting) == (False, True)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_the_plain_h11_protocol_drops_the_waiting_request(loop_name: str) -> None:
    """What the subclass is for: uvicorn's own protocol closes the connection unanswered."""
    assert run(timer_falls_due(H11Protocol, REQUEST), loop_name) == b""


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("protocol_class", PROTOCOLS, ids=lambda c: c.__name__)
def test_a_closing_connection_is_not_kept_for_bytes_waiting(
    protocol_class: type[asyncio.Protocol],
    loop_name: str,
) -> None:
    async def scenario() -> tuple[object, object]:
        protocol, transport, client = await answered_connection(protocol_class)
        with client:
            # Given a connection already closing (by uvicorn's shutdown, say; the loop has not
            # yet told the protocol it is lost) with bytes waiting
            client.send(REQUEST)
            transport.close()
            armed = protocol.timeout_keep_alive_task
            # When its keep-alive timer runs: it arms no other timer for it
            protocol.timeout_keep_alive_handler()
            return armed, protocol.timeout_keep_alive_task

    armed, after = run(scenario(), loop_name)
    assert after is armed
