"""A TCP proxy in front of PostgreSQL (or Redis) that cuts a connection at a chosen moment of a
transaction, for the tests of what an append does when its connection is lost; or that goes
silent (``silence``): a network partition or a frozen server, where nothing is closed and
nothing answers."""

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

    ``silence`` makes it a black hole until ``resume``: no byte passes either way, on the
    connections open and on those it accepts meanwhile, and none is closed, so neither side
    hears a FIN or a reset; each side's kernel still acknowledges what it is sent (the proxy's
    sockets are alive), so keepalives and ``tcp_user_timeout`` see nothing wrong: only a
    client's own deadline ends its wait. What was sent meanwhile is held, not dropped, and
    passes on ``resume``, as TCP delivers it once a partition heals: a request its client gave
    up on may still reach the server then. ``arm_silence_before`` goes silent once a client
    sends a given piece of SQL, which is held.

    ``answer_once`` has the proxy answer the next request that contains given bytes itself,
    with given bytes, without forwarding it (a Redis proxy's error reply, say); ``answer_every``
    each such request, until ``stop_answering``.

    ``url`` is a PostgreSQL URL (``redis://`` for Redis); ``self.url`` is the same through the
    proxy.
    """

    def __init__(self, url: str) -> None:
        target = sa.make_url(url)
        postgres = target.get_backend_name() == "postgresql"
        self._target = (target.host or "127.0.0.1", target.port or (5432 if postgres else 6379))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        # In clear text: the proxy reads (and rewrites) what passes.
        query = {**target.query, "sslmode": "disable", "gssencmode": "disable"} if postgres else {}
        self.url = target.set(
            host="127.0.0.1", port=self.port, query={**target.query, **query}
        ).render_as_string(hide_password=False)
        self._lock = threading.Lock()
        self._after_commit = False
        self._before: bytes | None = None
        self._pooler_pid: int | None = None
        self.refuse_new = False
        self.cut = threading.Event()
        self._flowing = threading.Event()  # cleared while silent
        self._flowing.set()
        self._silence_before: bytes | None = None
        self._answer: tuple[bytes, bytes, bool] | None = None  # request, reply, once
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

    def silence(self) -> None:
        """Forward nothing from now on, and close nothing, until ``resume``."""
        self._flowing.clear()

    def arm_silence_before(self, sql: str) -> None:
        """``silence`` once a client sends ``sql``, before it is forwarded (it is held)."""
        with self._lock:
            self._silence_before = sql.encode()

    def answer_once(self, request: bytes, reply: bytes) -> None:
        """Answer the next request that contains ``request`` with ``reply``; it is not forwarded."""
        with self._lock:
            self._answer = (request, reply, True)

    def answer_every(self, request: bytes, reply: bytes) -> None:
        """Answer each request that contains ``request`` with ``reply`` until ``stop_answering``."""
        with self._lock:
            self._answer = (request, reply, False)

    def stop_answering(self) -> None:
        with self._lock:
            self._answer = None

    def resume(self) -> None:
        """Forward again, what was held first."""
        self._flowing.set()

    def _pass(self, destination: socket.socket, data: bytes) -> None:
        """Send ``data`` on, once the proxy is not silent (or never, once it is closed)."""
        while not self._flowing.wait(0.05):
            if self._closed:
                raise OSError("the proxy was closed while silent")
        destination.sendall(data)

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
                    if self._silence_before is not None and self._silence_before in data:
                        self._silence_before = None
                        self._flowing.clear()
                    if self._answer is not None and self._answer[0] in data:
                        client.sendall(self._answer[1])
                        if self._answer[2]:
                            self._answer = None
                        continue
                self._pass(server, data)
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
                self._pass(client, data)
        except OSError:
            pass
        self._close(client, server)

    def _cut(self, client: socket.socket, server: socket.socket) -> None:
        # Set before the close: the client sees the close, answers, and the test then asks
        # ``cut.is_set()``, which this thread might not have reached yet after the close.
        self.cut.set()
        self._close(client, server)

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
