"""The processes the tests start (servers, the service itself): a port for one, and stopping one.

``free_port`` only finds a port that is free when it looks: another process (the suite runs in
two) may take it before the server the test starts listens on it. So a server the tests start
says when its port was taken (``PortTaken``), and ``on_free_ports`` starts it again on another;
``enforcement serve`` is started on port 0 instead, and tells which port it got
(``served_port``). Each also makes sure that what answers on its port is itself, not the
process that took it.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
PORT_ATTEMPTS = 5


class PortTaken(RuntimeError):
    """A server could not listen on its port: another process has it."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (see the module's docstring)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def on_free_ports(launch: Callable[[int], T], port: int | None = None, keep: bool = False) -> T:
    """``launch(port)`` on ``port`` (none: one that ``free_port`` finds), and again on another
    free port each time it raises ``PortTaken`` (on the same one with ``keep``: a port its
    clients know already), ``PORT_ATTEMPTS`` times at most."""
    port = port or free_port()
    for attempt in range(1, PORT_ATTEMPTS + 1):
        try:
            return launch(port)
        except PortTaken:
            if attempt == PORT_ATTEMPTS:
                raise
            if not keep:
                port = free_port()
    raise AssertionError("unreachable")


# What uvicorn logs once it listens: with ``--port 0``, the port the system gave it.
_SERVING = re.compile(r"Uvicorn running on http://[^\s:]+:(\d+)")


def served_port(log: Path, process: subprocess.Popen[bytes], timeout: float = 30) -> int:
    """The port ``enforcement serve --port 0``, writing its log to ``log``, listens on."""
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text(errors="replace") if log.exists() else ""
        if found := _SERVING.search(text):
            return int(found[1])
        if process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}:\n{text}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the server named no port in {timeout}s:\n{text}")
        time.sleep(0.02)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """Terminate ``process`` and wait for it to end; kill it after ``timeout`` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
