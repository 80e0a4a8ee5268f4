"""The arithmetic of a delivery attempt's deadline (``enforcement/notices/deadline.py``) on a
clock that moves only when the test says: each operation gets the per-operation timeout or the
time left, whichever is shorter, and nothing once the deadline has passed. (The senders keeping
to it against servers that drip their answers: ``tests/workers/``.)"""

from __future__ import annotations

import io

import pytest

from enforcement.notices import deadline as module
from enforcement.notices.deadline import Deadline, DeadlineReader


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(module.time, "monotonic", fake)
    return fake


def test_each_operation_gets_the_timeout_or_the_time_left(clock: Clock) -> None:
    deadline = Deadline("the webhook", 1.0, timeout=0.5)
    assert deadline.left() == 0.5 and deadline.time_left() == 1.0
    clock.now += 0.25
    assert deadline.left() == 0.5 and deadline.time_left() == 0.75
    clock.now += 0.5
    assert deadline.left() == pytest.approx(0.25)  # less than the timeout is left
    assert not deadline.passed()


def test_once_the_deadline_has_passed_no_operation_may_start(clock: Clock) -> None:
    deadline = Deadline("the webhook", 1.0, timeout=0.5)
    clock.now += 1.0
    assert deadline.passed()
    for ask in (deadline.left, deadline.time_left):
        with pytest.raises(TimeoutError, match=r"^the webhook did not answer within 1 s$"):
            ask()


class Socket:
    def __init__(self) -> None:
        self.timeouts: list[float] = []

    def settimeout(self, seconds: float) -> None:
        self.timeouts.append(seconds)


def test_every_read_of_the_answer_is_bounded_by_the_time_left(clock: Clock) -> None:
    deadline = Deadline("the mail server", 2.0, timeout=0.5)
    sock = Socket()
    reader = DeadlineReader(sock, io.BytesIO(b"220 ok\r\n"), deadline)  # type: ignore[arg-type]
    buffer = bytearray(3)
    assert reader.readinto(buffer) == 3 and bytes(buffer) == b"220"
    clock.now += 1.75
    assert reader.readinto(buffer) == 3
    assert sock.timeouts == [0.5, pytest.approx(0.25)]
    clock.now += 0.25
    with pytest.raises(TimeoutError, match="did not answer within 2 s"):
        reader.readinto(buffer)
    assert len(sock.timeouts) == 2  # no read was started
