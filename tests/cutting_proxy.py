"""A TCP proxy in front of PostgreSQL that cuts a connection at a chosen moment of a
transaction, for the tests of what an append does when its connection is lost."""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

import sqlalchemy as sa

# A process id no server process has (Linux gives at most 2**22).
MADE_UP_PID = 2_000_000_000


def _forward_startup(server: socket.socket, client: socket.socket, pid: int) -> None:
    """Forward the server's messages up to and including its BackendKeyData (type ``K``:
    Int32 length 12, Int32 process id, Int32 secret key), with ``pid`` as the process id."""
    buffer = b""
    while data := server.recv(65536):
        buffer += data
        forward = b""
        while len(buffer) >= 5 and len(buffer) >= (end := 1 + int.from_bytes(buffer[1:5], "big")):
            message, buffer = buffer[:end], buffer[end:]
            if message[:1] == b"K":
                assert len(message) == 13, "a BackendKeyData of protocol 3.0"
                client.sendall(forward + message[:5] + pid.to_bytes(4, "big") + message[9:])
                client.sendall(buffer)
                return
            forward += message
        client.sendall(forward)
    raise OSError("the server closed the connection before its BackendKeyData")


class CuttingProxy:
    """Forwards connections to the server of ``url`` until armed. Armed with ``after_commit``,
    the next connection whose client sends COMMIT has it forwarded, waits for the server's
    answer to it, and is then cut without passing that answer on: the transaction committed,
    and the client never learns it. Armed with ``before`` (a piece of SQL), the next connection
    that sends it is cut without forwarding it: the server never sees it. ``refuse_new``
    makes the proxy close every connection it accepts from then on (the server unreachable).
    ``pose_as_pooler`` makes it give the connections it accepts from then on a process id of
    its own making, as a connection pooler (PgBouncer) does.
    """

    def __init__(self, url: str) -> None:
        target = sa.make_url(url)
        self._target = (target.host or "127.0.0.1", target.port or 5432)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        # In clear text: the proxy reads (and rewrites) what passes.
        query = {**target.query, "sslmode": "disable", "gssencmode": "disable"}
        self.url = target.set(host="127.0.0.1", port=self.port, query=query).render_as_string(
            hide_password=False
        )
        self._lock = threading.Lock()
        self._after_commit = False
        self._before: bytes | None = None
        self._pooler_pid: int | None = None
        self.refuse_new = False
        self.cut = threading.Event()
        self._closed = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def arm_after_commit(self) -> None:
        with self._lock:
            self._after_commit, self._before = True, None
            self.cut.clear()

    def arm_before(self, sql: str) -> None:
        with self._lock:
            self._after_commit, self._before = False, sql.encode()
            self.cut.clear()

    def pose_as_pooler(self, pid: int = MADE_UP_PID) -> None:
        """Give each connection accepted from now on ``pid`` as its server process id (in the
        server's BackendKeyData message), not the server's own."""
        self._pooler_pid = pid

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.refuse_new:
                client.close()
                continue
            server = socket.create_connection(self._target)
            self._sockets += [client, server]
            cutting = threading.Event()  # this connection's COMMIT went to the server
            threading.Thread(
                target=self._upstream, args=(client, server, cutting), daemon=True
            ).start()
            threading.Thread(
                target=self._downstream,
                args=(server, client, cutting, self._pooler_pid),
                daemon=True,
            ).start()

    def _upstream(
        self, client: socket.socket, server: socket.socket, cutting: threading.Event
    ) -> None:
        try:
            while data := client.recv(65536):
                with self._lock:
                    if self._before is not None and self._before in data:
                        self._before = None
                        self._cut(client, server)
                        return
                    if self._after_commit and b"COMMIT" in data:
                        self._after_commit = False
                        cutting.set()
                server.sendall(data)
        except OSError:
            pass
        self._close(client, server)

    def _downstream(
        self,
        server: socket.socket,
        client: socket.socket,
        cutting: threading.Event,
        pooler_pid: int | None,
    ) -> None:
        try:
            if pooler_pid is not None:
                _forward_startup(server, client, pooler_pid)
            seen = b""
            while data := server.recv(65536):
                if cutting.is_set():
                    seen += data
                    if b"COMMIT\x00" in seen:  # the server's CommandComplete of the COMMIT
                        self._cut(client, server)
                        return
                    continue
                client.sendall(data)
        except OSError:
            pass
        self._close(client, server)

    def _cut(self, client: socket.socket, server: socket.socket) -> None:
        self._close(client, server)
        self.cut.set()

    @staticmethod
    def _close(*sockets: socket.socket) -> None:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self._close(*self._sockets)

    def __enter__(self) -> CuttingProxy:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.close()
