"""Webhook notices: a signed POST, refusing private targets unless allowed (SSRF guard)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import socket
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlparse


class WebhookRefused(Exception):
    """The target may not be called (private address, bad scheme): retrying will not help."""


def signature(secret: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256 of the raw body>``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def check_target(url: str, allow_private: bool) -> None:
    """Refuse non-HTTP(S) URLs and, unless allowed, hosts resolving to non-public addresses."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise WebhookRefused(f"webhook URL {url!r} is not an http(s) URL with a host")
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(parsed.hostname, parsed.port or 443, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise ConnectionError(f"cannot resolve {parsed.hostname}: {exc}") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise WebhookRefused(
                f"webhook host {parsed.hostname} resolves to non-public address {address}; "
                "set ENFORCEMENT_WEBHOOK_ALLOW_PRIVATE=true to allow it"
            )


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect could lead to a private address after the check: never follow one."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects())


class WebhookSender:
    def __init__(self, secret: str | None, allow_private: bool, timeout: float = 5.0):
        self.secret = secret
        self.allow_private = allow_private
        self.timeout = timeout

    def send(self, url: str, notice_event_id: str, payload: dict[str, Any]) -> None:
        if self.secret is None:
            raise WebhookRefused("ENFORCEMENT_WEBHOOK_SECRET is unset: webhooks are not sent")
        check_target(url, self.allow_private)
        body = json.dumps(payload, ensure_ascii=False, sort_keys=True).encode("utf-8")
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": "taas-enforcement/1",
                "X-Enforcement-Event-Id": notice_event_id,
                "X-Enforcement-Signature": signature(self.secret, body),
            },
        )
        try:
            with _OPENER.open(request, timeout=self.timeout) as response:
                if not 200 <= response.status < 300:
                    raise ConnectionError(f"webhook answered HTTP {response.status}")
        except urllib.error.HTTPError as exc:
            raise ConnectionError(f"webhook answered HTTP {exc.code}") from exc
