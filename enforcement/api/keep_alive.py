"""The HTTP protocol ``serve`` runs: uvicorn's own (httptools when installed, else h11, as
uvicorn's ``auto`` picks), except that an idle keep-alive connection is not closed while a
request waits unread in its socket.

uvicorn closes a keep-alive connection when no request came within ``timeout_keep_alive`` (5 s)
of the last answer, by a timer on the event loop. A process that was frozen (SIGSTOP, a paused
VM, a long swap-in) resumes with that timer long due and its clients' next requests already in
their sockets, and the event loop (uvloop's and asyncio's alike) runs due timers before it
reads sockets: uvicorn closed each such connection with its request unread, and the kernel
answered the request with a reset (``docs/operations.md``, "When an API process froze"). Here
the timer first asks whether the socket has bytes waiting; if it has, the connection gets one
more period, and reading them (the next turn of the loop) starts the request, which cancels
the timer as any request does.
"""

from __future__ import annotations

import asyncio
import select

from uvicorn.protocols.http.h11_impl import H11Protocol


def _spared(protocol: H11Protocol | HttpToolsProtocol) -> bool:
    """Whether ``protocol``'s connection has bytes waiting to be read: then its keep-alive
    timer is armed again instead of closing it. Not once it is closing: the socket's number
    may then be another connection's (uvloop's keeps it after the close)."""
    if protocol.transport.is_closing():
        return False
    sock = protocol.transport.get_extra_info("socket")
    if sock is None or not _readable(sock.fileno()):
        return False
    protocol.timeout_keep_alive_task = protocol.loop.call_later(
        protocol.timeout_keep_alive, protocol.timeout_keep_alive_handler
    )
    return True


def _readable(fd: int) -> bool:
    """Whether socket ``fd`` has bytes to read, without waiting (``poll``: no limit on the
    descriptor's number, as ``select`` has, where there is one)."""
    if fd < 0:  # closed meanwhile
        return False
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return any(events & select.POLLIN for _, events in poller.poll(0))
    readable, _, _ = select.select([fd], [], [], 0)
    return bool(readable)


class H11KeepAlive(H11Protocol):
    def timeout_keep_alive_handler(self) -> None:
        if not _spared(self):
            super().timeout_keep_alive_handler()


HTTP_PROTOCOL: type[asyncio.Protocol]
try:
    import httptools  # noqa: F401  (uvicorn's test for "auto")
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover (httptools is a dependency; uvicorn falls back too)
    HTTP_PROTOCOL = H11KeepAlive
else:

    class HttpToolsKeepAlive(HttpToolsProtocol):
        def timeout_keep_alive_handler(self) -> None:
            if not _spared(self):
                super().timeout_keep_alive_handler()

    HTTP_PROTOCOL = HttpToolsKeepAlive
