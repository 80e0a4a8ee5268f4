"""A TCP proxy in front of PostgreSQL that cuts a connection at a chosen moment of a
transaction, for the tests of what an append does when its connection is lost."""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

import sqlalchemy as sa


class CuttingProxy:
    """Forwards connections to the server of ``url`` until armed. Armed with ``after_commit``,
    the next connection whose client sends COMMIT has it forwarded, waits for the server's
    answer to it, and is then cut without passing that answer on: the transaction committed,
    and the client never learns it. Armed with ``before`` (a piece of SQL), the next connection
    that sends it is cut without forwarding it: the server never sees it. ``refuse_new``
    makes the proxy close every connection it accepts from then on (the server unreachable).
    """

    def __init__(self, url: str) -> None:
        target = sa.make_url(url)
        self._target = (target.host or "127.0.0.1", target.port or 5432)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.url = target.set(host="127.0.0.1", port=self.port).render_as_string(
            hide_password=False
        )
        self._lock = threading.Lock()
        self._after_commit = False
        self._before: bytes | None = None
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
                target=self._downstream, args=(server, client, cutting), daemon=True
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
        self, server: socket.socket, client: socket.socket, cutting: threading.Event
    ) -> None:
        try:
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
