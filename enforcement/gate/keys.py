"""Where the Redis gate keeps an account's state.

Every key of an account starts with the hash tag ``{a:<account_id>}``, so all of them live in one
Redis Cluster slot and one script can check key, account and throttles atomically. Account ids
cannot contain braces (``base.ACCOUNT_ID``), so the tag is always exactly the account's.

``{a:<acct>}:cfg`` (hash)
    ``st``: status|until_ms|version; ``lim`` and ``lim:<key>``: rpm|tpd|version;
    ``thr``: JSON {throttle_id: {k: key id or "", f: factor ppm, e: expires ms, v, l: lifted}}.
    TTL ``state_ttl_s``, renewed by every update and every check.
``{a:<acct>}:use`` (hash), the account ceiling's usage, and ``{a:<acct>}:use:<key>``, a key's
    ``t``: GCRA theoretical arrival time (µs); ``w``: token window index; ``n``: tokens used.
    TTL: until the request bucket has refilled, or the token window's end if tokens were used.
``{a:<acct>}:den`` (hash)
    denial bucket index -> count, at most the window's buckets + 1 (61).
    TTL: the denial window plus one bucket.
``{a:<acct>}:dkeys`` (sorted set)
    key id -> last rate/quota denial (ms), at most 32 members, pruned to 60 s. TTL 60 s.
"""

from __future__ import annotations


def tag(account_id: str) -> str:
    return "{a:" + account_id + "}"


def config(account_id: str) -> str:
    return tag(account_id) + ":cfg"


def account_usage(account_id: str) -> str:
    return tag(account_id) + ":use"


def key_usage(account_id: str, key_id: str) -> str:
    return tag(account_id) + ":use:" + key_id


def denials(account_id: str) -> str:
    return tag(account_id) + ":den"


def denied_keys(account_id: str) -> str:
    return tag(account_id) + ":dkeys"


def check_keys(account_id: str, key_id: str) -> tuple[str, str, str, str, str]:
    """The KEYS of the check script, in its order."""
    prefix = "{a:" + account_id + "}"
    return (
        prefix + ":cfg",
        prefix + ":use:" + key_id,
        prefix + ":use",
        prefix + ":den",
        prefix + ":dkeys",
    )


def limits_field(key_id: str | None) -> str:
    return "lim" if key_id is None else "lim:" + key_id
