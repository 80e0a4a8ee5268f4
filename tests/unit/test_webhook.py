"""Webhook notices: the signature recipe and the SSRF guard (``check_target``), as pure
functions. What the sender puts on the wire is tested against loopback servers in
``tests/workers/test_webhook_sender.py``."""

from __future__ import annotations

import hashlib
import hmac
import socket
import threading
from typing import Any

import pytest

from enforcement.notices import webhook
from enforcement.notices.deadline import Deadline
from enforcement.notices.webhook import (
    WebhookRefused,
    account_key,
    check_target,
    signature,
    signature_headers,
)
from tests.webhook_receiver import receiver

# ------------------------------------------------------------------ the signature


def test_the_signature_is_hex_hmac_sha256_of_the_raw_body() -> None:
    # RFC 4231, test case 2
    assert signature("Jefe", b"what do ya want for nothing?") == (
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )
    body = '{"kind": "warning", "text": "AUP §2"}'.encode()
    expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert signature("s3cret", body) == f"sha256={expected}"
    assert signature("s3cret", body + b" ") != signature("s3cret", body)
    assert signature("other", body) != signature("s3cret", body)


# The account's key for ("s3cret", "acct_42"), computed apart from this code:
#   printf %s 'enforcement-webhook-account-key:v1:acct_42' | openssl dgst -sha256 -hmac s3cret
KEY_OF_ACCT_42 = "5c9e8a97efa4d08094b3c9e03f46f768e62f9a2cf510c45ca1b68a23f906df19"


def test_the_account_key_is_hex_hmac_sha256_of_the_context_and_the_account_id() -> None:
    assert account_key("s3cret", "acct_42") == KEY_OF_ACCT_42
    message = b"enforcement-webhook-account-key:v1:acct_42"
    assert hmac.new(b"s3cret", message, hashlib.sha256).hexdigest() == KEY_OF_ACCT_42
    # The example receiver's copy of the recipe (docs/webhook_receiver.py) gives the same key.
    assert receiver.account_key("s3cret", "acct_42") == KEY_OF_ACCT_42


def test_each_account_and_each_secret_has_a_key_of_its_own() -> None:
    accounts = ["acct_42", "acct_43", "acct_4", "acct_42 ", "ACCT_42", "tenant:acct_42", "a"]
    keys = {account_key("s3cret", account) for account in accounts}
    assert len(keys) == len(accounts)
    assert account_key("other", "acct_42") != KEY_OF_ACCT_42
    assert all(len(key) == 64 and set(key) <= set("0123456789abcdef") for key in keys)


def test_a_notice_carries_the_global_signature_unchanged_and_the_accounts_own() -> None:
    body = b"what do ya want for nothing?"
    headers = signature_headers("Jefe", "acct_42", body)
    assert list(headers) == ["X-Enforcement-Signature", "X-Enforcement-Account-Signature"]
    # The contract's header, byte for byte as before: RFC 4231's test case 2
    assert headers["X-Enforcement-Signature"] == (
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )
    # The account's: keyed with the key's 64 hex characters (openssl dgst -sha256 -hmac KEY)
    own = signature_headers("s3cret", "acct_42", body)["X-Enforcement-Account-Signature"]
    assert own == "sha256=b9880aa453319d4dad98c85b5bb587651b91eb07b879193bd5a5566e3102c6a0"
    assert own == signature(KEY_OF_ACCT_42, body)


def test_the_example_receiver_accepts_its_accounts_signature_only() -> None:
    body = b'{"account_id": "acct_42", "kind": "warning"}'
    own = signature_headers("s3cret", "acct_42", body)
    assert receiver.verified(body, own["X-Enforcement-Account-Signature"], KEY_OF_ACCT_42)
    other = signature_headers("s3cret", "acct_43", body)["X-Enforcement-Account-Signature"]
    assert not receiver.verified(body, other, KEY_OF_ACCT_42)
    # nor the global signature, nor a changed body, nor no header, nor one that is not ASCII
    assert not receiver.verified(body, own["X-Enforcement-Signature"], KEY_OF_ACCT_42)
    assert not receiver.verified(
        body + b" ", own["X-Enforcement-Account-Signature"], KEY_OF_ACCT_42
    )
    assert not receiver.verified(body, None, KEY_OF_ACCT_42)
    assert not receiver.verified(body, "sha256=\u00e9\udcff", KEY_OF_ACCT_42)


# ------------------------------------------------------------------ the SSRF guard


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://127.9.9.9/hook",
        "http://localhost/hook",
        "http://10.0.0.1/hook",
        "https://10.255.3.4:8443/hook",
        "http://172.16.5.4/hook",
        "http://192.168.1.20/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/hook",
        "http://0.0.0.0/hook",
        "http://[::1]:9000/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[fc00::1]/hook",
        "http://[fe80::1]/hook",
        # multicast, and IPv6 forms that carry a private IPv4 address
        "http://224.0.0.1/hook",
        "http://[ff02::1]/hook",
        "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",  # NAT64: 169.254.169.254
        "http://[2002:7f00:1::]/hook",  # 6to4: 127.0.0.1
        "http://[::127.0.0.1]/hook",  # IPv4-compatible
        "http://[::ffff:0:a9fe:a9fe]/hook",  # IPv4-translated (SIIT): 169.254.169.254
        "http://[64:ff9b:1::a9fe:a9fe]/hook",  # NAT64's local-use prefix
        "http://[fec0::1]/hook",  # site-local
        "http://[4000::1]/hook",  # reserved: outside global unicast (2000::/3)
        "http://[fe00::1]/hook",
    ],
)
def test_loopback_private_and_link_local_targets_are_refused(url: str) -> None:
    with pytest.raises(WebhookRefused, match="non-public address"):
        check_target(url, allow_private=False)


@pytest.mark.parametrize(
    "url",
    [
        "https://93.184.216.34/hooks/enforcement",
        "http://8.8.8.8:8080/hook",
        "https://[2001:4860:4860::8888]/hook",
        "https://[64:ff9b::808:808]/hook",  # NAT64 to a public address: 8.8.8.8
    ],
)
def test_a_public_literal_address_is_allowed(url: str) -> None:
    check_target(url, allow_private=False)


def test_allow_private_lets_loopback_and_private_targets_through() -> None:
    for url in ("http://127.0.0.1:8080/hook", "http://10.0.0.1/", "http://[::1]/"):
        check_target(url, allow_private=True)


@pytest.mark.parametrize(
    "url", ["ftp://93.184.216.34/x", "file:///etc/passwd", "http:///no-host", "93.184.216.34"]
)
def test_only_http_urls_with_a_host_are_accepted_even_when_private_is_allowed(url: str) -> None:
    with pytest.raises(WebhookRefused, match="not an http"):
        check_target(url, allow_private=True)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("ftp://user:secret@example.com/x?token=secret", "'ftp://example.com'"),
        ("https://user:secret@example.com:99999/x?token=secret", "'https://example.com:99999'"),
        ("https://example.com/h?token=secret x", "'https://example.com'"),
        ("https://example.com/h?token=secret\x7f", "'https://example.com'"),
        ("https://hooks.example.com/services/T0/B0/secret ", "'https://hooks.example.com'"),
        ("https://example.com/secret/hoök", "'https://example.com'"),
    ],
)
def test_a_refused_url_is_named_without_its_credentials(url: str, shown: str) -> None:
    """The refusal is recorded in the log for good (``NoticeDeliveryFailed.error``): it names
    the URL by its scheme, host and port only (a user and password, a query and a path may
    hold secrets)."""
    with pytest.raises(WebhookRefused) as refused:
        check_target(url, allow_private=False)
    assert shown in str(refused.value)
    assert "secret" not in str(refused.value)


def test_a_name_not_resolved_by_the_deadline_is_never_a_checked_target(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A lookup cut off by the deadline gives no target, not one without addresses: a target
    without addresses would be connected to by name, past the SSRF check."""
    release = threading.Event()

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        release.wait(10)  # servers that do not answer (released when the test ends)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(webhook, "_lookups", {})
    try:
        with pytest.raises(
            TimeoutError, match=r"^resolving hooks\.hang took longer than 0\.\d+ s$"
        ):
            check_target("http://hooks.hang/h", False, Deadline("the webhook", 0.1, timeout=5.0))
    finally:
        release.set()


def test_an_address_is_parsed_and_a_name_without_a_deadline_looked_up_outside_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MAX_LOOKUPS bounds the lookups waited on by a deadline in their own threads: an address
    is never looked up, and a name checked without a deadline is looked up where it is asked
    (as long as it takes), so neither is refused while that bound is reached."""
    monkeypatch.setattr(webhook, "MAX_LOOKUPS", 0)
    deadline = Deadline("the webhook", 5.0, timeout=5.0)
    assert check_target("http://8.8.8.8/h", False, deadline).addresses == ("8.8.8.8",)
    assert "127.0.0.1" in check_target("http://localhost/h", True).addresses


@pytest.mark.parametrize(
    ("url", "host_header", "port"),
    [
        ("https://8.8.8.8/h", "8.8.8.8", 443),
        ("http://8.8.8.8/h", "8.8.8.8", 80),
        ("http://8.8.8.8:8443/h", "8.8.8.8:8443", 8443),
        ("https://[2001:4860:4860::8888]/h", "[2001:4860:4860::8888]", 443),
        ("http://[2001:4860:4860::8888]:8080/h", "[2001:4860:4860::8888]:8080", 8080),
    ],
)
def test_the_host_header_names_the_urls_host_and_only_a_port_it_gives(
    url: str, host_header: str, port: int
) -> None:
    target = check_target(url, False)
    assert (target.host_header, target.port) == (host_header, port)


def test_a_name_that_does_not_resolve_is_a_retryable_connection_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(ConnectionError, match=r"cannot resolve nowhere\.test: "):
        check_target("https://nowhere.test/h", False)


def test_printable_ascii_at_both_ends_of_the_range_is_a_url_s_own() -> None:
    assert check_target("http://8.8.8.8/~ops/hook!", False).path == "/~ops/hook!"
