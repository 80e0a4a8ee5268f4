"""``enforcement serve`` frozen (SIGSTOP) while its keep-alive clients send, then let go on
(SIGCONT): every request that waited in a socket is answered, none cut off.

uvicorn's keep-alive timer (5 s after an answer) falls due while the process is frozen, and on
resume the event loop runs due timers before it reads sockets: uvicorn closed each idle
connection with the request already waiting in it, and the client got a connection reset
(``enforcement/api/keep_alive.py``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import CLI, cli_env, run_cli
from tests.processes import served_port, stop_process

CLIENTS = 3
# `serve --keep-alive` (5 s by default): a freeze must outlast it.
KEEP_ALIVE = 1
TCP_ESTABLISHED = "01"

pytestmark = pytest.mark.skipif(
    not Path("/proc/net/tcp").exists(), reason="reads the sockets' queues from /proc/net/tcp"
)


@pytest.fixture
def frozen_server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``serve --no-workers --keep-alive 1`` on SQLite, and its port; SIGCONT and SIGTERM
    when done."""
    env = cli_env(f"sqlite:///{tmp_path / 'enforcement.db'}", tmp_path)
    assert run_cli(env, tmp_path, "init").returncode == 0
    log = tmp_path / "server.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [CLI, "serve", "--no-workers", "--port", "0", "--keep-alive", str(KEEP_ALIVE)],
            env=env,
            cwd=tmp_path,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc, served_port(log, proc)
    finally:
        proc.send_signal(signal.SIGCONT)  # a failed test may leave it frozen
        stop_process(proc)


def unread_requests(port: int) -> int:
    """How many of the server's established connections on ``port`` hold bytes it has not
    read (``/proc/net/tcp``: local address, state, receive queue)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        rx_queue = int(fields[4].split(":")[1], 16)
        if local_port == port and fields[3] == TCP_ESTABLISHED and rx_queue > 0:
            count += 1
    return count


def stopped(pid: int) -> bool:
    """Whether every thread of process ``pid`` is stopped (SIGSTOP takes effect a moment after
    ``kill`` returns)."""
    tasks = Path(f"/proc/{pid}/task")
    return all(
        (task / "stat").read_text().rsplit(")", 1)[1].split()[0] == "T" for task in tasks.iterdir()
    )


def wait_for(condition: Callable[[], bool], failure: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, failure
        time.sleep(0.01)


def test_requests_sent_while_frozen_past_the_keep_alive_are_answered(
    frozen_server: tuple[subprocess.Popen[bytes], int],
) -> None:
    proc, port = frozen_server
    clients = [
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) for _ in range(CLIENTS)
    ]
    try:
        # Given a keep-alive connection per client, idle after an answer
        for client in clients:
            assert client.get("/healthz").status_code == 200
        last_answer = time.monotonic()

        # When the server is frozen, each client sends its next request on its connection,
        os.kill(proc.pid, signal.SIGSTOP)
        wait_for(lambda: stopped(proc.pid), "the server never stopped")
        outcomes: dict[int, str] = {}

        def send(n: int) -> None:
            try:
                outcomes[n] = str(clients[n].get("/healthz").status_code)
            except httpx.TransportError as error:
                outcomes[n] = repr(error)

        threads = [threading.Thread(target=send, args=(n,)) for n in range(CLIENTS)]
        for thread in threads:
            thread.start()
        wait_for(lambda: unread_requests(port) == CLIENTS, "the requests never reached it")
        # and the freeze outlasts the keep-alive timeout of the last answers
        time.sleep(max(0.0, last_answer + KEEP_ALIVE + 1.0 - time.monotonic()))
        os.kill(proc.pid, signal.SIGCONT)
        for thread in threads:
            thread.join(timeout=30)

        # Then every request is answered, none cut off
        assert outcomes == {n: "200" for n in range(CLIENTS)}
    finally:
        for client in clients:
            client.close()


def test_an_idle_connection_is_closed_after_the_keep_alive_given(
    frozen_server: tuple[subprocess.Popen[bytes], int],
) -> None:
    _, port = frozen_server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        # Given a connection that got its answer
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200")
        answered = time.monotonic()

        # When it stays idle: then the server closes it after `--keep-alive 1`, long before
        # uvicorn's default 5 s
        while sock.recv(65536):
            pass
        assert time.monotonic() - answered < 3.5
