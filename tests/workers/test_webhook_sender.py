"""The webhook sender on the wire: what it sends to a receiver on loopback (private targets
allowed), what it refuses, and its deadline against a receiver that drips its answer or a name
whose lookup never ends. (The signature and the SSRF guard: ``tests/unit/test_webhook.py``.)"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from enforcement.notices import webhook
from enforcement.notices.webhook import WebhookRefused, WebhookSender, account_key, signature
from tests.drip import DripServer
from tests.unit.test_webhook import KEY_OF_ACCT_42
from tests.webhook_receiver import receiver

# ------------------------------------------------------------------ the sender


class Sink:
    """A loopback HTTP server: records requests, answers ``status`` (and ``location``); over
    TLS with ``tls``, the server's side."""

    def __init__(
        self, status: int = 204, location: str | None = None, tls: ssl.SSLContext | None = None
    ) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                sink.requests.append((self.path, dict(self.headers), body))
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "http" if tls is None else "https"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    yield s
    s.close()


def test_the_sender_posts_the_json_body_signed_with_the_event_id(sink: Sink) -> None:
    payload = {"notice_id": "ntc_1", "text": "AUP §2 — spam", "deadline": None}
    WebhookSender("s3cret", allow_private=True).send(sink.url(), "evt-1", "acct_42", payload)

    [(path, headers, body)] = sink.requests
    assert path == "/hook"
    assert json.loads(body) == payload
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Enforcement-Event-Id"] == "evt-1"
    # The contract's signature, with the platform-wide secret, as it always was
    global_hmac = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert headers["X-Enforcement-Signature"] == f"sha256={global_hmac}"
    # and the account's own, with its key (tests/unit/test_webhook.py: KEY_OF_ACCT_42)
    assert headers["X-Enforcement-Account-Signature"] == signature(KEY_OF_ACCT_42, body)


class AccountReceiver:
    """The example receiver account owners are pointed to (``docs/webhook_receiver.py``), on
    loopback, checking ``X-Enforcement-Account-Signature`` with one account's key."""

    def __init__(self, key: str) -> None:
        self.notices: list[tuple[str, dict[str, Any]]] = []
        notices = self.notices

        class Handler(receiver.NoticeReceiver):
            def accept(self, notice: dict[str, Any], event_id: str) -> None:
                notices.append((event_id, notice))

            def log_message(self, *args: Any) -> None:
                pass

        Handler.key = key
        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_an_accounts_receiver_takes_its_own_notices_and_refuses_another_accounts() -> None:
    # Given acct_a's receiver, checking with acct_a's key only
    secret = "platform-secret"
    receiver_a = AccountReceiver(account_key(secret, "acct_a"))
    sender = WebhookSender(secret, allow_private=True)
    try:
        # When the service sends acct_a's notice, the receiver takes it
        notice_a = {"account_id": "acct_a", "kind": "warning", "subject": "to a"}
        sender.send(receiver_a.url, "evt-a", "acct_a", notice_a)
        assert receiver_a.notices == [("evt-a", notice_a)]

        # A notice signed with acct_b's key (the service's, misdirected) is refused
        notice_b = {"account_id": "acct_b", "kind": "warning", "subject": "to b"}
        with pytest.raises(ConnectionError, match="HTTP 401"):
            sender.send(receiver_a.url, "evt-b", "acct_b", notice_b)

        # and so is one that acct_b's owner forges with its key, the global header copied
        # from a genuine notice of its own: acct_b no longer needs the platform's secret
        forged = json.dumps({"account_id": "acct_a", "kind": "termination"}).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Enforcement-Event-Id": "evt-forged",
            "X-Enforcement-Account-Signature": signature(account_key(secret, "acct_b"), forged),
        }
        conn = http.client.HTTPConnection("127.0.0.1", receiver_a.server.server_port, timeout=5)
        try:
            conn.request("POST", "/hook", body=forged, headers=headers)
            assert conn.getresponse().status == 401
        finally:
            conn.close()
        assert receiver_a.notices == [("evt-a", notice_a)]
    finally:
        receiver_a.close()


def test_without_a_secret_nothing_is_sent(sink: Sink) -> None:
    with pytest.raises(WebhookRefused, match="ENFORCEMENT_WEBHOOK_SECRET"):
        WebhookSender(None, allow_private=True).send(sink.url(), "evt-1", "acct_1", {})
    assert sink.requests == []


def test_a_private_target_is_refused_before_any_request(sink: Sink) -> None:
    with pytest.raises(WebhookRefused):
        WebhookSender("s3cret", allow_private=False).send(sink.url(), "evt-1", "acct_1", {})
    assert sink.requests == []


def test_an_error_status_is_a_retryable_failure() -> None:
    failing = Sink(status=503)
    try:
        with pytest.raises(ConnectionError, match="HTTP 503"):
            WebhookSender("s3cret", allow_private=True).send(failing.url(), "evt-1", "acct_1", {})
    finally:
        failing.close()


def test_a_redirect_is_not_followed(sink: Sink) -> None:
    # The redirect could lead past the SSRF check to another (private) address.
    redirecting = Sink(status=307, location=sink.url("/elsewhere"))
    try:
        with pytest.raises(ConnectionError, match="HTTP 307"):
            WebhookSender("s3cret", allow_private=True).send(
                redirecting.url(), "evt-1", "acct_1", {}
            )
    finally:
        redirecting.close()
    assert len(redirecting.requests) == 1
    assert sink.requests == []


@pytest.mark.parametrize(
    ("status", "delivered"), [(199, False), (200, True), (299, True), (300, False)]
)
def test_only_a_2xx_answer_is_a_delivery(status: int, delivered: bool) -> None:
    answering = Sink(status=status)
    try:
        sender = WebhookSender("s3cret", allow_private=True)
        if delivered:
            sender.send(answering.url(), "evt-1", "acct_1", {})
        else:
            with pytest.raises(ConnectionError, match=f"HTTP {status}"):
                sender.send(answering.url(), "evt-1", "acct_1", {})
    finally:
        answering.close()
    assert len(answering.requests) == 1


class Drip(DripServer):
    """A slow-drip receiver on loopback: reads one request, sends ``head`` at once, then
    ``drip`` one byte every ``every`` seconds, and closes the connection."""

    def __init__(self, head: bytes, drip: bytes, every: float) -> None:
        self.head, self.dripped = head, drip
        super().__init__(every)

    def handle(self, conn: socket.socket) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += conn.recv(65536)
        head, _, body = request.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += conn.recv(65536)
        conn.sendall(self.head)
        self.drip(conn, self.dripped)


@pytest.mark.parametrize(
    ("head", "drip"),
    [
        (b"", b"HTTP/1.1 200 OK\r\n\r\n"),  # the status line
        (b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n", b"x" * 20),  # the body
    ],
    ids=["status-line", "body"],
)
def test_a_slow_drip_receiver_is_cut_off_at_the_deadline(head: bytes, drip: bytes) -> None:
    # Each byte comes well within the per-operation timeout (0.2 s < 0.5 s); without a deadline
    # for the whole attempt the answer would take 4 s, and an endless one a worker's time limit.
    receiver = Drip(head, drip, every=0.2)
    url = f"http://user:secret@127.0.0.1:{receiver.port}/hook/secret?token=secret"
    sender = WebhookSender("s3cret", allow_private=True, timeout=0.5, deadline=1.0)
    started = time.monotonic()
    try:
        with pytest.raises(TimeoutError) as timed_out:
            sender.send(url, "evt-1", "acct_1", {})
    finally:
        took = time.monotonic() - started
        receiver.close()

    # At the deadline, not before; the bound above it leaves a loaded machine a second (the
    # drip alone takes 4 s, and without a deadline the answer would come, not a TimeoutError).
    assert 1.0 <= took < 2.0
    # Not a refusal: the delivery records the failure and retries it (as a dead receiver).
    assert not isinstance(timed_out.value, WebhookRefused)
    assert str(timed_out.value) == (
        f"the webhook at 'http://127.0.0.1:{receiver.port}' did not answer within 1 s"
    )


def test_an_answer_in_many_reads_within_the_deadline_is_delivered() -> None:
    receiver = Drip(b"", b"HTTP/1.1 204 No Content\r\n\r\n", every=0.01)
    try:
        sender = WebhookSender("s3cret", allow_private=True, timeout=0.5, deadline=1.0)
        sender.send(f"http://127.0.0.1:{receiver.port}/hook", "evt-1", "acct_1", {})
    finally:
        receiver.close()


def test_a_fast_receiver_is_delivered_with_a_short_deadline(sink: Sink) -> None:
    WebhookSender("s3cret", allow_private=True, timeout=0.5, deadline=1.0).send(
        sink.url(), "evt-1", "acct_1", {"a": 1}
    )
    [(_path, _headers, body)] = sink.requests
    assert json.loads(body) == {"a": 1}


def test_the_request_goes_to_the_address_that_passed_the_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # DNS rebinding: the name resolves to a public address for the check and to a private one
    # a moment later. The sender must connect to the checked address, never resolve again.
    answers = iter(["93.184.216.34", "127.0.0.1"])

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]

    assert _connections_tried(monkeypatch, getaddrinfo) == [("93.184.216.34", 80)]


def test_the_host_header_and_path_come_from_the_url(sink: Sink) -> None:
    url = sink.url("/hooks/enforcement?tenant=7")
    WebhookSender("s3cret", allow_private=True).send(url, "evt-1", "acct_1", {"a": 1})
    [(path, headers, _body)] = sink.requests
    assert path == "/hooks/enforcement?tenant=7"
    assert headers["Host"] == url.split("/")[2]


def test_the_host_header_never_carries_the_urls_credentials(sink: Sink) -> None:
    port = sink.server.server_port
    url = f"http://user:s3cret@127.0.0.1:{port}/hook;v=2?a=1"
    WebhookSender("s3cret", allow_private=True).send(url, "evt-1", "acct_1", {})
    [(path, headers, _body)] = sink.requests
    assert headers["Host"] == f"127.0.0.1:{port}"
    assert path == "/hook;v=2?a=1"


def test_every_checked_address_is_tried_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2606:2800:220:1::1", port, 0, 0)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
        ]

    tried = _connections_tried(monkeypatch, getaddrinfo)
    assert tried == [("2606:2800:220:1::1", 80), ("93.184.216.34", 80)]


def test_a_lookup_that_never_answers_ends_at_the_deadline_and_holds_no_other_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The resolver has no timeout of its own: a name whose servers never answer held an
    attempt before its deadline even began. It is waited on until the deadline, nothing is
    connected to, and the lookups of other names and addresses go on meanwhile."""
    answered = threading.Event()

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        if host.endswith(".hang"):
            answered.wait(10)  # servers that do not answer (released when the test ends)
        elif host == "slow.example":
            time.sleep(0.6)  # a first server that does not answer, then one that does
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port))]

    tried: list[Any] = []

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> Any:
        tried.append(address)
        raise ConnectionRefusedError("no route in this test")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    hanging = WebhookSender("s3cret", False, timeout=5.0, deadline=0.4)
    try:
        outcomes: list[BaseException] = []

        def stuck_send(n: int) -> None:
            try:
                hanging.send(f"http://a{n}.hang/h", "evt", "acct_1", {})
            except BaseException as exc:
                outcomes.append(exc)

        stuck = [threading.Thread(target=stuck_send, args=(n,)) for n in range(12)]
        for thread in stuck:
            thread.start()
        started = time.monotonic()
        with pytest.raises(TimeoutError) as caught:
            hanging.send("http://hooks.hang/h", "evt-1", "acct_1", {})
        assert time.monotonic() - started < 2.0  # 0.4 s, not the 10 s the lookup hangs
        assert str(caught.value) == "the webhook at 'http://hooks.hang' did not answer within 0.4 s"
        # Meanwhile: a lookup longer than a step (0.3 s) but within the deadline is waited for,
        # and an address is not looked up at all.
        patient = WebhookSender("s3cret", False, timeout=0.3, deadline=5.0)
        for url in ("http://slow.example/h", "http://93.184.216.34/h"):
            with pytest.raises(ConnectionRefusedError):
                patient.send(url, "evt-2", "acct_1", {})
        assert tried == [("93.184.216.34", 80), ("93.184.216.34", 80)]
        for thread in stuck:
            thread.join()
        assert [type(e) for e in outcomes] == [TimeoutError] * 12
    finally:
        answered.set()


def test_lookups_of_one_name_are_shared_and_lookups_in_flight_are_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each attempt that gives up on a hanging lookup used to leave a thread behind, with no
    bound: attempts for one name now wait on the one lookup in flight, and past MAX_LOOKUPS
    names at once an attempt fails at once (to be retried) rather than start another."""
    release = threading.Event()
    calls: list[str] = []

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        calls.append(host)
        release.wait(10)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(webhook, "MAX_LOOKUPS", 3)
    # Lookups of earlier tests may still wait on a resolver (no network here): not counted.
    monkeypatch.setattr(webhook, "_lookups", {})
    sender = WebhookSender("s3cret", False, timeout=5.0, deadline=0.2)
    try:
        for url in ["http://same.hang/h"] * 4 + ["http://b.hang/h", "http://c.hang/h"]:
            with pytest.raises(TimeoutError, match=r"did not answer within 0\.2 s"):
                sender.send(url, "evt", "acct_1", {})
        # With a deadline of 6 s, "at once" stands out from a wait even on a busy machine.
        patient = WebhookSender("s3cret", False, timeout=5.0, deadline=6.0)
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="3 name lookups are waiting on their servers"):
            patient.send("http://d.hang/h", "evt", "acct_1", {})
        assert time.monotonic() - started < 3.0  # at once, not after the deadline
        assert sorted(calls) == ["b.hang", "c.hang", "same.hang"]
    finally:
        release.set()
    for _ in range(500):  # the lookups end, and make room again
        if not webhook._lookups:
            break
        time.sleep(0.01)
    assert webhook._lookups == {}


def test_an_address_with_a_zone_is_refused_for_good() -> None:
    for url in ("http://[fe80::1%25eth0]/h", "http://[fe80::1%eth0]:8080/h"):
        with pytest.raises(WebhookRefused, match="names a zone"):
            WebhookSender("s3cret", True).send(url, "evt-1", "acct_1", {})


def test_a_host_name_that_can_never_resolve_is_refused_for_good() -> None:
    for url in ("http://a..b/h", f"http://{'x' * 64}.example/h"):
        with pytest.raises(WebhookRefused, match="invalid host name"):
            WebhookSender("s3cret", False).send(url, "evt-1", "acct_1", {})


def test_a_private_target_allowed_is_pinned_to_the_address_looked_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With private targets allowed the name is still resolved once, within the deadline, and
    the addresses it gave are the ones tried (not resolved again by the connection)."""

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", port))]

    tried = _connections_tried(monkeypatch, getaddrinfo, allow_private=True)
    assert tried == [("10.0.0.7", 80)]


def _connections_tried(
    monkeypatch: pytest.MonkeyPatch, getaddrinfo: Any, allow_private: bool = False
) -> list[tuple[str, int]]:
    """Send to hooks.example with ``getaddrinfo`` as the resolver and every connection refused;
    returns the addresses the sender tried to connect to, in order."""
    tried: list[tuple[str, int]] = []

    def create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> Any:
        tried.append(address)
        raise ConnectionRefusedError("no route in this test")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    with pytest.raises(ConnectionRefusedError):
        WebhookSender("s3cret", allow_private).send("http://hooks.example/h", "evt-1", "acct_1", {})
    return tried
