"""Where the Redis gate keeps an account's state.

Every key of an account starts with the hash tag ``{a:<account_id>}``, so all of them live in one
Redis Cluster slot and one script can check key, account and throttles atomically. Account ids
cannot contain braces (``base.ACCOUNT_ID``), so the tag is always exactly the account's.

``{a:<acct>}:state`` (hash), read and written by every check
    ``st``: status|until_ms|version; ``lim`` and ``lim:<key>``: rpm|tpd|version;
    ``thr``: JSON {throttle_id: {k: key id or "", f: factor ppm, e: expires ms, v, l: lifted}};
    ``c``: present once any of those was written; ``x``: the hash's expiry (ms), mirrored so a
    check renews the TTL only when it must move later;
    ``u`` (the account ceiling) and ``u:<key>``: usage, tat|window|used: the GCRA theoretical
    arrival time (µs), the token window's index and the tokens used in it. A key's usage is
    dropped at the account's first request of a new window when it is idle.
    TTL: when configured, ``state_ttl_s``, renewed by updates and by checks (once less than
    ``state_ttl_s`` minus 10 %, at most 1 h, is left); otherwise until every request bucket has
    refilled (about 2 min) or, if tokens were used, the token window ends.
``{a:<acct>}:den`` (hash)
    denial bucket index -> count, at most the window's buckets + 1 (61).
    TTL: the denial window plus one bucket.
``{a:<acct>}:dkeys`` (sorted set)
    key id -> last rate/quota denial (ms), at most 32 members, pruned to 60 s. TTL 60 s.
"""

from __future__ import annotations


def tag(account_id: str) -> str:
    return "{a:" + account_id + "}"


def state(account_id: str) -> str:
    return tag(account_id) + ":state"


def denials(account_id: str) -> str:
    return tag(account_id) + ":den"


def denied_keys(account_id: str) -> str:
    return tag(account_id) + ":dkeys"


def check_keys(account_id: str) -> tuple[str, str, str]:
    """The KEYS of the check script, in its order."""
    prefix = "{a:" + account_id + "}"
    return prefix + ":state", prefix + ":den", prefix + ":dkeys"


def limits_field(key_id: str | None) -> str:
    return "lim" if key_id is None else "lim:" + key_id
