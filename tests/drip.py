"""A loopback server for one connection that may drip what it sends one byte at a time (each
byte well within a socket timeout): how the notice senders' deadlines are tested."""

from __future__ import annotations

import socket
import threading


class DripServer:
    """Accepts one connection on a free loopback port and hands it to ``handle`` (a
    subclass's) in a thread of its own; ``close`` stops a drip under way."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(5)
        self.port = int(self.listener.getsockname()[1])
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def drip(self, conn: socket.socket, data: bytes) -> None:
        """Send ``data`` one byte every ``every`` seconds, until all is sent or ``close``."""
        for byte in data:
            if self.stopped.wait(self.every):
                return
            conn.sendall(bytes([byte]))

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            try:
                self.handle(conn)
            except OSError:
                return  # the sender gave up and closed the connection

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()
        self.thread.join(5)
