#!/usr/bin/env python3
"""Receive an account's enforcement notices and check that the service sent them, with nothing
but the standard library. It uses no code of the service.

Each notice is a POST of JSON signed twice over its raw body:

    X-Enforcement-Signature: sha256=<hex HMAC-SHA256, keyed with ENFORCEMENT_WEBHOOK_SECRET>
    X-Enforcement-Account-Signature: sha256=<hex HMAC-SHA256, keyed with the account's key>

Check the second. The first is keyed with the one secret of the whole platform: whoever holds it
can sign a notice to any account. The account's key is the account's alone; an operator hands it
over (``enforcement webhook-key ACCOUNT``, or ``GET /v1/accounts/{id}/webhook-key``). It is 64
hex characters, and those characters' bytes are the HMAC key. Whoever holds the platform's
secret derives it as ``account_key`` below.

Usage (the key in the environment: on the command line, other users would see it in ``ps``):

    WEBHOOK_KEY=<the account's key> python3 webhook_receiver.py --port 8080

Each notice whose signature checks is printed and answered 204; any other request is answered
401 and dropped. A notice may come more than once: ``X-Enforcement-Event-Id`` tells them apart.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ACCOUNT_SIGNATURE = "X-Enforcement-Account-Signature"
KEY_CONTEXT = "enforcement-webhook-account-key:v1:"


def account_key(secret: str, account_id: str) -> str:
    """The account's key: the hex HMAC-SHA256, keyed with the platform's secret, of
    ``"enforcement-webhook-account-key:v1:" + account_id`` (both UTF-8)."""
    message = (KEY_CONTEXT + account_id).encode("utf-8")
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def verified(body: bytes, header: str | None, key: str) -> bool:
    """Whether ``header`` (``X-Enforcement-Account-Signature``) signs ``body`` with ``key``."""
    if header is None:
        return False
    expected = "sha256=" + hmac.new(key.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(header.encode("utf-8", "replace"), expected.encode("ascii"))


class NoticeReceiver(BaseHTTPRequestHandler):
    """Answers 204 to a notice signed with ``key``, 401 to anything else."""

    key = ""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not verified(body, self.headers.get(ACCOUNT_SIGNATURE), self.key):
            self.send_response(401)
        else:
            self.accept(json.loads(body), self.headers.get("X-Enforcement-Event-Id", ""))
            self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def accept(self, notice: dict[str, Any], event_id: str) -> None:
        """Act on a notice the service sent: here, print it."""
        print(f"{event_id} {notice['account_id']} {notice['kind']}: {notice['subject']}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Receive one account's notices; answer 401 to any not signed with its key."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    key = os.environ.get("WEBHOOK_KEY", "").strip()
    if not key:
        print("Set WEBHOOK_KEY to the account's webhook key.", file=sys.stderr)
        return 2
    handler = type("Receiver", (NoticeReceiver,), {"key": key})
    ThreadingHTTPServer((args.host, args.port), handler).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
