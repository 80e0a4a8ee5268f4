"""A login to an ``smtp://`` server goes only over STARTTLS, verified: never in cleartext; and
an ``smtps://`` server's certificate is verified too.

Each test runs a real SMTP server (aiosmtpd) on loopback. Its certificate, for 127.0.0.1 and
localhost, is signed by a throwaway CA (``tests/pki.py``, the ``pki`` fixture); the sender trusts
that CA through ``SSL_CERT_FILE``, which ``ssl.create_default_context`` honours.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from enforcement.bootstrap import bootstrap
from enforcement.notices.email import EmailSender, build_message
from enforcement.notices.templates import render
from enforcement.workers.runtime import build_actors
from tests.pki import Pki, server_tls
from tests.unit.test_templates import warning
from tests.workers.system import SmtpSink, fast_settings, report, set_contact

PASSWORD = "s3cret-pw"
TO = "abuse-desk@customer.test"


@pytest.fixture
def starttls_sink(pki: Pki) -> Iterator[SmtpSink]:
    """A server that offers STARTTLS, and AUTH only once the connection is TLS."""
    sink = SmtpSink(tls_context=server_tls(pki))
    yield sink
    sink.close()


def send(url: str) -> None:
    notice = warning()
    EmailSender(url, "/nonexistent").send(build_message(notice, render(notice), TO), "evt")


def test_a_login_goes_over_starttls_to_a_server_whose_certificate_is_trusted(
    starttls_sink: SmtpSink, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
    send(f"smtp://notices:{PASSWORD}@127.0.0.1:{starttls_sink.port}")

    assert starttls_sink.logins == [("notices", PASSWORD, True)]  # the login, over TLS
    [(rcpts, message)] = starttls_sink.messages
    assert (rcpts, message["To"], starttls_sink.over_tls) == ([TO], TO, [True])


def test_a_server_whose_certificate_is_not_trusted_gets_no_login(
    starttls_sink: SmtpSink, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The certificate is verified: signed by a CA the sender does not trust, it is refused
    before the password is sent (a retry may follow: a certificate may be renewed)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.other_ca))
    with pytest.raises(ssl.SSLCertVerificationError):
        send(f"smtp://notices:{PASSWORD}@127.0.0.1:{starttls_sink.port}")
    assert (starttls_sink.logins, starttls_sink.messages) == ([], [])


def test_a_server_without_starttls_gets_no_login_and_the_notice_fails_for_good(
    sqlite_db: str, tmp_path: Path
) -> None:
    """A server that offers no STARTTLS (but AUTH in cleartext) would get the password in the
    clear: there is no login, and the failure is final, as a retry cannot change the server (as
    for a webhook without its secret). The error says why, without the password."""
    sink = SmtpSink(auth_require_tls=False)
    url = f"smtp://notices:{PASSWORD}@127.0.0.1:{sink.port}"
    system = bootstrap(fast_settings(sqlite_db, tmp_path, smtp_url=url, notice_retries=3))
    try:
        set_contact(system.engine, "acct_tls", email=TO)
        [notice] = [e for e in report(system, "acct_tls").events if e.type == "NoticeIssued"]
        deliver = build_actors(system).by_name["deliver_notice"].fn
        deliver(notice.event_id, "email")  # no DeliveryFailed: nothing to retry

        assert sink.logins == []  # the password never went over the wire
        assert sink.messages == []
        [failure] = [
            e for e in system.store.read_stream("acct_tls") if e.type == "NoticeDeliveryFailed"
        ]
        assert (failure.data["attempt"], failure.data["final"]) == (1, True)
        error = failure.data["error"]
        assert f"smtp://127.0.0.1:{sink.port} offers no STARTTLS" in error
        assert "cleartext" in error and "smtps://" in error
        assert PASSWORD not in error and "notices:" not in error
    finally:
        system.close()
        sink.close()


def test_without_a_login_mail_goes_as_before_without_starttls(
    starttls_sink: SmtpSink, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No password to protect: the message goes without STARTTLS, as it always has, so a relay
    with a certificate that would not verify (self-signed, another name) keeps working. Here
    the sender does not trust the server's CA: an upgrade would fail."""
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.other_ca))
    send(f"smtp://127.0.0.1:{starttls_sink.port}")

    [(rcpts, _)] = starttls_sink.messages
    assert (rcpts, starttls_sink.over_tls, starttls_sink.logins) == ([TO], [False], [])


@pytest.mark.parametrize("trusted", [True, False])
def test_an_smtps_server_s_certificate_is_verified(
    pki: Pki, monkeypatch: pytest.MonkeyPatch, trusted: bool
) -> None:
    """``smtplib.SMTP_SSL`` without a context verifies nothing (Python 3.11: CERT_NONE): a
    server with any certificate would get the password."""
    sink = SmtpSink(ssl_context=server_tls(pki), auth_require_tls=False)  # all of it is TLS
    try:
        monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca if trusted else pki.other_ca))
        url = f"smtps://notices:{PASSWORD}@127.0.0.1:{sink.port}"
        if trusted:
            send(url)
        else:
            with pytest.raises(ssl.SSLCertVerificationError):
                send(url)
        assert (len(sink.logins), len(sink.messages)) == (int(trusted), int(trusted))
    finally:
        sink.close()
