"""Webhook notices: a signed POST, refusing private targets unless allowed (SSRF guard)."""

from __future__ import annotations

import functools
import hashlib
import hmac
import http.client
import io
import ipaddress
import json
import socket
import ssl
import threading
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from enforcement.notices.deadline import Deadline, DeadlineReader


class WebhookRefused(Exception):
    """The target may not be called (private address, bad scheme): retrying will not help."""


def signature(secret: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256 of the raw body>``, keyed with ``secret``'s UTF-8 bytes."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


# ``X-Enforcement-Signature`` is keyed with the one platform-wide secret, so every receiver that
# checks it holds that secret and could sign a notice to any other account's receiver. The
# account's own header is keyed with a key derived for that account alone: its owner can check
# it, and can sign nothing another account's receiver accepts.
SIGNATURE_HEADER = "X-Enforcement-Signature"
ACCOUNT_SIGNATURE_HEADER = "X-Enforcement-Account-Signature"
ACCOUNT_KEY_CONTEXT = "enforcement-webhook-account-key:v1:"


def account_key(secret: str, account_id: str) -> str:
    """The account's webhook key: the hex HMAC-SHA256, keyed with ``secret``'s UTF-8 bytes, of
    the UTF-8 bytes of ``"enforcement-webhook-account-key:v1:" + account_id``. It is used as
    the global secret is, its 64 hex characters' bytes as the HMAC key
    (``signature(account_key(secret, account_id), body)``). It changes with the secret."""
    message = (ACCOUNT_KEY_CONTEXT + account_id).encode("utf-8")
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def signature_headers(secret: str, account_id: str, body: bytes) -> dict[str, str]:
    """Both signatures of a notice to ``account_id``: the contract's, with the platform-wide
    secret, and the account's own, with ``account_key``."""
    return {
        SIGNATURE_HEADER: signature(secret, body),
        ACCOUNT_SIGNATURE_HEADER: signature(account_key(secret, account_id), body),
    }


@dataclass(frozen=True, slots=True)
class Target:
    """Where a webhook goes: the URL's parts and, when checked, the address to connect to."""

    scheme: str
    host: str
    port: int
    path: str
    host_header: str
    addresses: tuple[str, ...]  # the checked ones, tried in order; () connects by name


def _response_class(deadline: Deadline) -> type[http.client.HTTPResponse]:
    """``HTTPResponse`` reading through a ``DeadlineReader`` by ``deadline``."""

    class Response(http.client.HTTPResponse):
        def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
            super().__init__(sock, *args, **kwargs)
            self.fp = io.BufferedReader(DeadlineReader(sock, self.fp.detach(), deadline))

    return Response


def _connect(
    target_host: str, addresses: tuple[str, ...], port: int, deadline: Deadline
) -> socket.socket:
    """A TCP connection to the first of ``addresses`` that answers (by name if none)."""
    error: OSError | None = None
    for address in addresses or (target_host,):
        try:
            sock = socket.create_connection((address, port), deadline.left())
        except OSError as exc:
            error = exc
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    assert error is not None
    raise error


# Global unicast IPv6 is 2000::/3; outside it only NAT64's well-known prefix (RFC 6052) may
# reach a public host: a translator on an IPv6-only network turns ``64:ff9b::a.b.c.d`` into
# the IPv4 address in its last 32 bits.
_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether a webhook may go to ``address``: a global unicast address. For IPv6 that is one
    in 2000::/3 that is global (not Teredo, documentation, …) and, for 6to4, whose IPv4
    address is public; or one in NAT64's well-known prefix whose IPv4 address is public
    (``64:ff9b::a9fe:a9fe`` reaches 169.254.169.254). So IPv4-mapped, -compatible and
    -translated forms, NAT64's local-use prefix, site-local and reserved addresses are
    refused. A NAT64 prefix of a network's own choosing cannot be told from a public
    address."""
    if not address.is_global or address.is_multicast:
        return False
    if isinstance(address, ipaddress.IPv4Address):
        return True
    if address in _NAT64:
        return is_public(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address not in _GLOBAL_UNICAST:
        return False
    return address.sixtofour is None or is_public(address.sixtofour)


def _shown(url: str) -> str:
    """``url`` as an error names it: the error is recorded in the log for good, so only its
    scheme, host and port. A user and password, a query, and the path too may hold secrets (a
    chat service's webhook carries its token in the path)."""
    scheme, netloc, _path, _query, _fragment = urlsplit(url)
    return repr(f"{scheme}://{netloc.rpartition('@')[2]}")


def _getaddrinfo(host: str, port: int, flags: int = 0) -> list[Any]:
    """The TCP addresses of ``host`` (``socket.getaddrinfo``, looked up at call time)."""
    return socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP, flags=flags)


class _Lookup:
    """One name's lookup, in a thread of its own, which ends by itself when the resolver gives
    up (``_resolve``)."""

    def __init__(self, host: str, port: int) -> None:
        self.key = (host, port)
        self.done = threading.Event()
        self.answer: list[Any] = []
        self.failure: BaseException | None = None
        name = f"webhook-dns-{host}"
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def _run(self) -> None:
        try:
            self.answer = _getaddrinfo(*self.key)
        except BaseException as exc:  # handed to whoever still waits
            self.failure = exc
        finally:
            with _lookups_guard:
                _lookups.pop(self.key, None)
            self.done.set()


# The lookups in flight, one per name and port: an attempt for a name already being looked up
# waits on that lookup rather than start another, and at most MAX_LOOKUPS run at once (names
# whose servers never answer cannot pile up threads without bound).
MAX_LOOKUPS = 64
_lookups: dict[tuple[str, int], _Lookup] = {}
_lookups_guard = threading.Lock()


def _resolve(host: str, port: int, seconds: float | None) -> list[Any]:
    """``getaddrinfo(host, port)`` for TCP, waited on for ``seconds`` at most (None: as long as
    it takes); a ``TimeoutError`` after that. The resolver has no timeout of its own (glibc: 5 s
    a server, 2 tries, up to 3 servers), so the lookup runs in a thread of its own
    (``_Lookup``): one name whose servers never answer holds no other lookup back. An address
    is parsed, not looked up."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return _getaddrinfo(host, port, socket.AI_NUMERICHOST)
    if seconds is None:
        return _getaddrinfo(host, port)
    with _lookups_guard:
        lookup = _lookups.get((host, port))
        if lookup is None:
            if len(_lookups) >= MAX_LOOKUPS:
                raise TimeoutError(
                    f"{MAX_LOOKUPS} name lookups are waiting on their servers; {host} is not "
                    "looked up now"
                )
            lookup = _lookups[(host, port)] = _Lookup(host, port)
    if not lookup.done.wait(seconds):
        raise TimeoutError(f"resolving {host} took longer than {seconds:g} s")
    if lookup.failure is not None:
        raise lookup.failure
    return list(lookup.answer)


def check_target(url: str, allow_private: bool, deadline: Deadline | None = None) -> Target:
    """Refuse non-HTTP(S) URLs and, unless allowed, hosts resolving to non-public addresses.

    The address that passed the check is the one connected to: a name that resolves again to a
    private address between the check and the request (DNS rebinding) is never reached. The
    name is resolved within ``deadline`` (``_resolve``), private targets' too."""
    parsed = urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise WebhookRefused(f"webhook URL {_shown(url)} is not an http(s) URL with a host")
    try:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
    except ValueError as exc:
        raise WebhookRefused(f"webhook URL {_shown(url)} has an invalid port") from exc
    if not all("!" <= c <= "~" for c in url):
        # As the API now refuses it (a contact stored before): http.client would refuse a space
        # or control character with the whole URL in its error, and cannot send other
        # characters at all, so the notice would only be retried.
        raise WebhookRefused(f"webhook URL {_shown(url)} is not printable ASCII")
    path = (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
    # Host: the host and port only (never the URL's user:password), IPv6 in brackets.
    host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
    host_header = host if parsed.port is None else f"{host}:{parsed.port}"
    target = Target(parsed.scheme, parsed.hostname, port, path, host_header, ())
    if "%" in parsed.hostname:  # fe80::1%eth0: the checked address would lose its zone
        raise WebhookRefused(f"webhook URL {_shown(url)} names a zone: link-local is not served")
    try:
        # The whole attempt's time left, not one step's: glibc waits 5 s for a first server
        # that does not answer before it asks the next.
        infos = _resolve(parsed.hostname, port, deadline.time_left() if deadline else None)
    except socket.gaierror as exc:
        raise ConnectionError(f"cannot resolve {parsed.hostname}: {exc}") from exc
    except UnicodeError as exc:  # a label empty or over 63 characters: never resolvable
        raise WebhookRefused(f"webhook URL {_shown(url)} has an invalid host name") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not allow_private and not is_public(address):
            raise WebhookRefused(
                f"webhook host {parsed.hostname} resolves to non-public address {address}; "
                "set ENFORCEMENT_WEBHOOK_ALLOW_PRIVATE=true to allow it"
            )
    checked = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
    return replace(target, addresses=checked)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to a checked address; the Host header still names the URL's host. Every
    socket operation ends by ``deadline`` (the request is sent right after connecting)."""

    def __init__(self, target: Target, deadline: Deadline, **kwargs: Any):
        super().__init__(target.host, target.port, timeout=deadline.timeout, **kwargs)
        self.addresses = target.addresses
        self.deadline = deadline
        self.response_class = _response_class(deadline)

    def connect(self) -> None:
        self.sock = self._pinned_socket()

    def _pinned_socket(self) -> socket.socket:
        sock = _connect(self.host, self.addresses, self.port, self.deadline)
        sock.settimeout(self.deadline.left())
        return sock


class _PinnedHTTPSConnection(_PinnedHTTPConnection, http.client.HTTPSConnection):
    """As ``_PinnedHTTPConnection``, with TLS verified against the URL's host name."""

    def __init__(self, target: Target, deadline: Deadline, tls: ssl.SSLContext):
        super().__init__(target, deadline, context=tls)
        self.tls = tls

    def connect(self) -> None:
        self.sock = self.tls.wrap_socket(self._pinned_socket(), server_hostname=self.host)
        self.sock.settimeout(self.deadline.left())


_MAX_ANSWER = 64 * 1024


class WebhookSender:
    """Sends webhooks: each socket operation may take ``timeout`` seconds, and one attempt
    (connecting, sending, reading the answer) ``deadline`` seconds in all."""

    def __init__(
        self, secret: str | None, allow_private: bool, timeout: float = 5.0, deadline: float = 30.0
    ):
        self.secret = secret
        self.allow_private = allow_private
        self.timeout = timeout
        self.deadline = deadline

    @functools.cached_property
    def _tls(self) -> ssl.SSLContext:
        """The TLS context, made once per sender (loading the CAs takes ~20 ms): it verifies the
        receiver's certificate and name against the system's CAs, or ``SSL_CERT_FILE``'s."""
        return ssl.create_default_context()

    def send(
        self, url: str, notice_event_id: str, account_id: str, payload: dict[str, Any]
    ) -> None:
        """One POST of ``payload``, a notice to ``account_id``, signed with the platform-wide
        secret and with the account's key (``signature_headers``); redirects are not followed
        (one could lead to a private address)."""
        if self.secret is None:
            raise WebhookRefused("ENFORCEMENT_WEBHOOK_SECRET is unset: webhooks are not sent")
        # From the name's lookup on.
        deadline = Deadline(f"the webhook at {_shown(url)}", self.deadline, self.timeout)
        try:
            response = self._post(self.secret, url, notice_event_id, account_id, payload, deadline)
        except TimeoutError as exc:  # a retryable failure, as any other but a refusal
            if deadline.passed():
                raise deadline.error() from exc
            raise
        if not 200 <= response.status < 300:
            raise ConnectionError(f"webhook answered HTTP {response.status}")

    def _post(
        self,
        secret: str,
        url: str,
        notice_event_id: str,
        account_id: str,
        payload: dict[str, Any],
        deadline: Deadline,
    ) -> http.client.HTTPResponse:
        """Resolve and check the target, then POST the signed payload, all by ``deadline``."""
        target = check_target(url, self.allow_private, deadline)
        body = json.dumps(payload, ensure_ascii=False, sort_keys=True).encode("utf-8")
        headers = {
            "Host": target.host_header,
            "Content-Type": "application/json",
            "User-Agent": "taas-enforcement/1",
            "X-Enforcement-Event-Id": notice_event_id,
            **signature_headers(secret, account_id, body),
        }
        conn = (
            _PinnedHTTPSConnection(target, deadline, self._tls)
            if target.scheme == "https"
            else _PinnedHTTPConnection(target, deadline)
        )
        try:
            conn.request("POST", target.path, body=body, headers=headers)
            response = conn.getresponse()
            response.read(_MAX_ANSWER)  # the status is what counts; the body is not kept
            return response
        finally:
            conn.close()
