#!/usr/bin/env python3
"""Check one account's hash chain from the public API, with nothing but the standard library.

This is CONTRACT.md's recipe, written for auditors; it uses no code of the service:

    hash = sha256_hex(prev_hash + canonical)

where ``canonical`` is the UTF-8 JSON of the event's ``event_id, account_id, version, type,
schema_version, data, metadata, occurred_at, recorded_at``, keys sorted, separators ``,`` and
``:``, non-ASCII kept as is; the first event's ``prev_hash`` is 64 zeros.

Usage (a token of the auditor, operator or admin role):

    python3 verify_account.py --url http://127.0.0.1:8000 --token "$TOKEN" acct_42
    python3 verify_account.py --file events.json acct_42     # pages saved from the API

``--file`` takes what ``GET /v1/accounts/{id}/events`` answered (one page, or a JSON list of
pages, or a list of events), or the JSON lines of ``enforcement export --format jsonl``.
Prints the head hash and exits 0 when every event recomputes, else names the first version
that does not and exits 1 (2 for a usage or network error).
Compare the head hash with one you noted earlier (or with ``GET …/verify``): a chain that
recomputes can still have been rewritten whole, which only a hash kept elsewhere shows.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

HASHED = (
    "event_id",
    "account_id",
    "version",
    "type",
    "schema_version",
    "data",
    "metadata",
    "occurred_at",
    "recorded_at",
)
GENESIS = "0" * 64


def event_hash(event: dict[str, Any]) -> str:
    canonical = json.dumps(
        {key: event[key] for key in HASHED},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256((event["prev_hash"] + canonical).encode("utf-8")).hexdigest()


def first_break(events: list[dict[str, Any]], account_id: str) -> tuple[int, str] | None:
    """``(version, reason)`` of the first event that breaks the chain, or None."""
    prev = GENESIS
    for expected, event in enumerate(events, start=1):
        if event.get("account_id") != account_id:
            return expected, f"belongs to account {event.get('account_id')!r}"
        if event.get("version") != expected:
            return expected, f"version {event.get('version')} found where {expected} was expected"
        if event.get("prev_hash") != prev:
            return expected, "prev_hash is not the previous event's hash"
        if event_hash(event) != event.get("hash"):
            return expected, "the hash does not recompute from the event's content"
        prev = event["hash"]
    return None


def pages_from_api(url: str, token: str, account_id: str) -> Iterator[dict[str, Any]]:
    after = 0
    while True:
        query = urllib.parse.urlencode({"after_version": after, "limit": 100})
        path = f"/v1/accounts/{urllib.parse.quote(account_id, safe='')}/events?{query}"
        request = urllib.request.Request(
            url.rstrip("/") + path, headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            page = json.loads(response.read().decode("utf-8"))
        yield page
        if page.get("next_after_version") is None:
            return
        after = page["next_after_version"]


def events_from_file(path: str, account_id: str) -> tuple[list[dict[str, Any]], int | None]:
    """The saved events, and the last saved page's ``next_after_version`` (None: the account's
    last page, or events saved without their pages). JSON lines, one event each (what
    ``enforcement export --format jsonl`` writes), give the account's events among them."""
    with open(path, encoding="utf-8") as source:
        text = source.read()
    lines = False
    try:
        saved = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg != "Extra data":
            raise
        # One JSON value a line: an export's events (every account's), or pages saved so.
        # Lines end at "\n" only: ``str.splitlines`` also splits at U+2028, U+2029 and U+0085,
        # which JSON keeps unescaped inside strings (a description may hold them).
        saved, lines = [json.loads(line) for line in text.split("\n") if line.strip()], True
    pages = saved if isinstance(saved, list) else [saved]
    events: list[dict[str, Any]] = []
    more: int | None = None
    for item in pages:
        if isinstance(item, dict) and "events" in item:
            events.extend(item["events"])
            more = item.get("next_after_version")
        elif not lines or (isinstance(item, dict) and item.get("account_id") == account_id):
            events.append(item)
    return events, more


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("account_id")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--url", help="the API's base URL, e.g. http://127.0.0.1:8000")
    source.add_argument("--file", help="events saved from GET /v1/accounts/{id}/events")
    parser.add_argument("--token", help="a bearer token (with --url)")
    args = parser.parse_args(argv)
    more: int | None = None
    try:
        if args.url:
            if not args.token:
                parser.error("--url needs --token")
            pages = pages_from_api(args.url, args.token, args.account_id)
            events = [e for page in pages for e in page["events"]]
        else:
            events, more = events_from_file(args.file, args.account_id)
    except (OSError, ValueError, KeyError, urllib.error.URLError) as exc:
        print(f"Cannot read the events: {exc}.", file=sys.stderr)
        return 2
    broken = first_break(events, args.account_id)
    if broken is not None:
        version, reason = broken
        print(f"{args.account_id}: broken at version {version}: {reason}.")
        return 1
    last = events[-1]["hash"] if events else GENESIS
    if more is not None:
        print(
            f"{args.account_id}: {len(events)} events intact up to version {more}, whose hash "
            f"is {last}; the last saved page says more may follow (next_after_version {more}): "
            "save every page to check the account's head."
        )
    else:
        print(f"{args.account_id}: {len(events)} events intact, head hash {last}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
