"""A deadline for one delivery attempt in all, whatever the peer does: each socket operation's
timeout is the per-operation timeout or the time left, whichever is shorter, so a peer that
drips its answer (each read within the timeout) is cut off all the same, well within a
worker's time limit (which would cut the attempt off before its outcome is recorded)."""

from __future__ import annotations

import io
import socket
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer


class Deadline:
    """The time one attempt may take in all; ``peer`` names what did not answer in the error."""

    def __init__(self, peer: str, seconds: float, timeout: float) -> None:
        self.peer = peer
        self.seconds = seconds
        self.timeout = timeout
        self.at = time.monotonic() + seconds

    def left(self) -> float:
        """The next operation's timeout; a ``TimeoutError`` once the deadline has passed."""
        return min(self.timeout, self.time_left())

    def time_left(self) -> float:
        """The attempt's time left; a ``TimeoutError`` once the deadline has passed."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise self.error()
        return left

    def passed(self) -> bool:
        return time.monotonic() >= self.at

    def error(self) -> TimeoutError:
        return TimeoutError(f"{self.peer} did not answer within {self.seconds:g} s")


class DeadlineReader(io.RawIOBase):
    """A socket's file (``raw``), with the socket's timeout cut to the time left before each
    read: every line of an answer is read by the deadline."""

    def __init__(self, sock: socket.socket, raw: io.RawIOBase, deadline: Deadline) -> None:
        super().__init__()
        self.sock = sock
        self.raw = raw
        self.deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int | None:
        self.sock.settimeout(self.deadline.left())
        return self.raw.readinto(buffer)

    def close(self) -> None:
        self.raw.close()
        super().close()
