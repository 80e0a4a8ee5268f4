"""An ``https://`` webhook goes over TLS, the receiver's certificate verified against the CAs
the sender trusts (``SSL_CERT_FILE`` here, the ``pki`` fixture's): a receiver it cannot verify
gets no notice, nor its signatures."""

from __future__ import annotations

import json
import ssl

import pytest

from enforcement.notices.webhook import WebhookSender
from tests.pki import Pki, server_tls
from tests.workers.test_webhook_sender import Sink


@pytest.mark.parametrize("trusted", [True, False])
def test_an_https_receiver_gets_the_notice_only_over_tls_it_can_verify(
    pki: Pki, monkeypatch: pytest.MonkeyPatch, trusted: bool
) -> None:
    sink = Sink(tls=server_tls(pki))
    try:
        monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca if trusted else pki.other_ca))
        sender = WebhookSender("s3cret", allow_private=True, timeout=2.0, deadline=5.0)
        if trusted:
            sender.send(sink.url(), "evt-1", "acct_1", {"a": 1})
        else:
            with pytest.raises(ssl.SSLCertVerificationError):
                sender.send(sink.url(), "evt-1", "acct_1", {"a": 1})
    finally:
        sink.close()
    assert [json.loads(body) for _path, _headers, body in sink.requests] == [{"a": 1}] * trusted
