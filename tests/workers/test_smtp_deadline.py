"""An SMTP attempt keeps to a deadline in all (``EmailSender(deadline=…)``): a mail server that
drips its replies, each byte well within the per-operation timeout, is cut off at the deadline,
so the attempt fails (and is recorded, and retried) long before a worker's time limit would cut
it off with nothing recorded. Each test runs a scripted SMTP server on loopback."""

from __future__ import annotations

import socket
import time

import pytest

from enforcement.notices.email import EmailSender, _server, build_message
from enforcement.notices.templates import render
from tests.drip import DripServer
from tests.unit.test_templates import warning
from tests.workers.system import SmtpSink

TO = "abuse-desk@customer.test"
REPLIES = {b"EHLO": b"250 slow.test\r\n", b"MAIL": b"250 ok\r\n", b"RCPT": b"250 ok\r\n"}


class DrippingServer(DripServer):
    """Answers one SMTP conversation at once, except the reply named by ``slow`` (``greeting``
    or ``data``: the answer to the message), which it drips one byte every ``every`` seconds."""

    def __init__(self, slow: str, every: float) -> None:
        self.slow = slow
        super().__init__(every)

    def _reply(self, conn: socket.socket, text: bytes, slow: bool) -> None:
        if slow:
            self.drip(conn, text)
        else:
            conn.sendall(text)

    def handle(self, conn: socket.socket) -> None:
        with conn.makefile("rb") as lines:
            self._reply(conn, b"220 slow.test ESMTP\r\n", self.slow == "greeting")
            for line in lines:
                command = line[:4].upper()
                if command == b"DATA":
                    conn.sendall(b"354 go on\r\n")
                    while lines.readline() not in (b".\r\n", b""):
                        pass
                    self._reply(conn, b"250 queued\r\n", self.slow == "data")
                elif command == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(REPLIES.get(command, b"250 ok\r\n"))


def send(port: int, timeout: float, deadline: float) -> None:
    notice = warning()
    sender = EmailSender(f"smtp://127.0.0.1:{port}", "/nonexistent", timeout, deadline=deadline)
    sender.send(build_message(notice, render(notice), TO), "evt")


@pytest.mark.parametrize("slow", ["greeting", "data"])
def test_a_server_that_drips_its_reply_is_cut_off_at_the_deadline(slow: str) -> None:
    # Each byte comes well within the per-operation timeout (0.2 s < 0.5 s); without a deadline
    # for the whole attempt a reply would take seconds, and an endless one a worker's time limit.
    server = DrippingServer(slow, every=0.2)
    started = time.monotonic()
    try:
        with pytest.raises(TimeoutError) as timed_out:
            send(server.port, timeout=0.5, deadline=1.0)
    finally:
        took = time.monotonic() - started
        server.close()
    # At the deadline, not before; the bound above it leaves a loaded machine a second (the
    # dripped reply alone takes 4 s, and without a deadline it would come, not a TimeoutError).
    assert 1.0 <= took < 2.0
    assert str(timed_out.value) == (
        f"the mail server smtp://127.0.0.1:{server.port} did not answer within 1 s"
    )


def test_a_reply_in_many_reads_within_the_deadline_is_delivered() -> None:
    server = DrippingServer("data", every=0.01)
    try:
        send(server.port, timeout=0.5, deadline=2.0)
    finally:
        server.close()


def test_a_fast_server_is_delivered_with_a_short_deadline(smtp: SmtpSink) -> None:
    send(smtp.port, timeout=0.5, deadline=1.0)
    [(rcpts, message)] = smtp.messages
    assert (rcpts, message["To"]) == ([TO], TO)


def test_an_ipv6_mail_server_is_named_with_its_address_in_brackets() -> None:
    assert _server("smtp", "::1", 2525) == "smtp://[::1]:2525"
    assert _server("smtps", "mail.example.com", 465) == "smtps://mail.example.com:465"
