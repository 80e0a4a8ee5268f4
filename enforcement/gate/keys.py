"""Where the Redis gate keeps an account's state.

Every key of an account starts with the hash tag ``{a:<account_id>}``, so all of them live in one
Redis Cluster slot and one script can check key, account and throttles atomically. Account ids
cannot contain braces (``base.ACCOUNT_ID``), so the tag is always exactly the account's.

Records are packed little-endian with Lua's ``struct`` (formats in ``lua.PRELUDE``): doubles
(``d``, exact for the integers the gate stores, all below 2**53), and ``i4``/``b`` for rpm,
factors and flags, so that every value stays under Redis's 64-byte listpack limit.

``{a:<acct>}:gate`` (hash), read and written by every check
    ``a``: the account record, written only by state updates, in the shape the check reads:
    status (0 active, 3 suspended, 4 terminated), until ms (0: indefinite), its version;
    the account ceiling's rpm and tpd (-1: the gate's defaults), their version (-1: none);
    the throttle summary: the most restrictive active account-wide factor (ppm), until when it
    holds (ms, the earliest expiry of an active account throttle; 0: none) and 1 while a
    key-specific throttle is active (the check then decodes ``thr``). Present = configured.
    ``thr``: JSON {throttle_id: {k: key id or "", f: factor ppm, e: expires ms, v, l: lifted}},
    the throttles themselves, with tombstones of lifted ones (at most 32).
    ``u`` (the account ceiling): tat, window, used, expiry: the GCRA theoretical arrival time
    (µs), the token window's index and the tokens used in it, and the hash's expiry (ms),
    mirrored so a check renews the TTL only when it must move later.
    ``k:<key>``: a key's tat, window, used (its usage, as for the account) and its configured
    rpm, tpd (-1: the defaults) and their version. An idle key's record without configured
    limits is dropped at the account's first request of a new window.
    TTL: when configured, ``state_ttl_s``, renewed by updates and by checks (once less than
    ``state_ttl_s`` minus 10 %, at most 1 h, is left); otherwise until every request bucket has
    refilled (about 2 min) or, if tokens were used, the token window ends.
    (The name changed with this layout: the earlier ``…:state`` hash is never read again and
    expires by its own TTL; the gate-state worker's resync rebuilds the configuration.)
``{a:<acct>}:dtimes`` (list)
    the times (µs) of the account's most recent rate/quota denials, newest first: at most the
    policy's count, none the denial window or more before the latest denial.
    TTL: the denial window, from the latest denial.
    (Until 2026-12-05 the denials were counted in buckets, in a hash ``…:den``; it is never
    read again and expires by its own TTL.)
``{a:<acct>}:dkeys`` (sorted set)
    key id -> last rate/quota denial (µs), at most 32 members, pruned to 60 s. TTL 60 s.
    (Scores were in ms until 2026-12-05: such a member reads as older than a minute.)
"""

from __future__ import annotations

STATE_SUFFIX = ":gate"
EVERY_ACCOUNT = "{a:*"  # a SCAN pattern: every key of every account, and nothing else


def tag(account_id: str) -> str:
    return "{a:" + account_id + "}"


def state(account_id: str) -> str:
    return tag(account_id) + STATE_SUFFIX


def denials(account_id: str) -> str:
    return tag(account_id) + ":dtimes"


def denied_keys(account_id: str) -> str:
    return tag(account_id) + ":dkeys"


def check_keys(account_id: str) -> tuple[str, str, str]:
    """The KEYS of the check script, in its order."""
    prefix = "{a:" + account_id + "}"
    return prefix + STATE_SUFFIX, prefix + ":dtimes", prefix + ":dkeys"
