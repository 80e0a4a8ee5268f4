"""The gate on Redis: one Lua script per check, shared by every gateway process.

Scripts run by EVALSHA; the first NOSCRIPT (a fresh or restarted server, SCRIPT FLUSH) loads the
script and retries. Every key the gate writes carries a TTL (``keys.py``); configuration expires
``state_ttl_s`` after its last write or check, so the gate-state worker's periodic resync from
the standings must run more often than that.
"""

from __future__ import annotations

import itertools
import json
import logging
import struct
import threading
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError

from enforcement import redis_client
from enforcement.gate import core, keys, lua, wire
from enforcement.gate.base import Gate, GateUnavailable, Seeder, well_formed
from enforcement.gate.decision import REASONS, DenialStats, GateDecision

log = logging.getLogger("enforcement.gate")

DEFAULT_STATE_TTL_S = 30 * 86_400
USAGE_TTL_S = 120  # renewed when under 90 s: more than a TAT can run ahead (60 s + 10 s)
USAGE_SLACK_S = 30
CALL_CACHE_SIZE = 8192  # (account, key) pairs whose check arguments are kept built
CLEAR_PAGE = 1000  # keys asked for per SCAN, and removed per pipeline, by ``clear``
# What makes the gate unavailable (``GateUnavailable``, HTTP 503): Redis down, silent, or
# refusing writes for now (``redis_client.REFUSING_FOR_NOW``: out of memory, a replica after a
# failover ...; a script stops at its first refused write, before it has counted anything).
UNAVAILABLE = redis_client.UNAVAILABLE


class RedisGate(Gate):
    """Same behaviour as ``EmbeddedGate``, shared through Redis.

    On Redis Cluster pass a ``redis.cluster.RedisCluster``: an account's keys share one slot.
    """

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        *,
        state_ttl_s: int = DEFAULT_STATE_TTL_S,
        owns_client: bool = False,
        **settings: int,
    ) -> None:
        """``owns_client``: ``close`` closes ``client`` (and its pool); else the caller does."""
        super().__init__(**settings)
        if state_ttl_s < max(self.token_window_s, USAGE_TTL_S):
            raise ValueError("state_ttl_s must cover the token window")
        self._client = client
        self._owns_client = owns_client
        self._command: Callable[..., Any] = client.execute_command
        common = {
            "STATE_TTL_MS": state_ttl_s * 1000,
            "STATE_SLACK_MS": min(state_ttl_s * 100, 3_600_000),  # renew at most every 10 %
            "USAGE_TTL_MS": USAGE_TTL_S * 1000,
            "USAGE_SLACK_MS": USAGE_SLACK_S * 1000,
            "DENIAL_WINDOW_US": self.denial_window_s * core.US,
        }
        check = {
            "DEFAULT_RPM": self.default_rpm,
            "DEFAULT_TPD": self.default_tpd,
            "WINDOW_US": self.token_window_s * core.US,
            "DENIAL_COUNT": self.denial_count,
            "DENIED_KEYS_US": core.DENIED_KEYS_WINDOW_US,
            "DENIED_KEYS_CAP": core.DENIED_KEYS_CAP,
            **common,
        }
        # Checks with a seeder run the second, which answers "unknown" for an account without
        # a status; the first checks any account (and an account just seeded, once).
        self._any_check_script = lua.render(lua.CHECK, REQUIRE_STATUS=0, **check)
        self._known_check_script = lua.render(lua.CHECK, REQUIRE_STATUS=1, **check)
        self._check_script = self._any_check_script
        self._stats_script = lua.render(
            lua.HELPERS + lua.DENIAL_STATS,
            DENIAL_COUNT=self.denial_count,
            DENIED_KEYS_US=core.DENIED_KEYS_WINDOW_US,
            **common,
        )
        self._check_sha = self._check_script.sha
        # A plain client: checks go over the gate's own connections, packed (wire.py); on
        # Redis Cluster through the client. (account_id, key_id) -> the check's EVALSHA
        # command but the token count, packed or as arguments: built once per pair, which was
        # validated then (bounded: cleared when full).
        self._wire = wire.Wire(client) if wire.usable(client) else None
        self._calls: dict[tuple[str, str], Any] = {}
        # The timeout with which Redis last left a check unanswered, until one is answered
        # (``check``); the lock is held by the one check that waits for it meanwhile.
        self._unanswered: redis.TimeoutError | None = None
        self._probing = threading.Lock()
        self._key_limits_script = lua.render(lua.HELPERS + lua.SET_KEY_LIMITS, **common)
        self._account_script = lua.render(lua.HELPERS + lua.SET_ACCOUNT, **common)
        self._throttle_script = lua.render(
            lua.HELPERS + lua.THROTTLE,
            LIFTED_CAP=core.LIFTED_THROTTLES_CAP,
            **common,
        )

    @classmethod
    def from_url(
        cls, url: str, timeout_s: float = redis_client.DEFAULT_TIMEOUT_S, **settings: int
    ) -> RedisGate:
        """A gate on the Redis of ``url``, whose commands wait at most ``timeout_s`` for it
        (``redis_client``): a check then raises ``GateUnavailable``."""
        client = redis_client.bounded_client(url, timeout_s)
        return cls(client, owns_client=True, **settings)

    def close(self) -> None:
        """Close the client (its connection pool too) if the gate made it (``from_url``)."""
        if self._owns_client:
            self._client.close()

    def set_seeder(self, seeder: Seeder | None) -> None:
        super().set_seeder(seeder)
        self._check_script = self._any_check_script if seeder is None else self._known_check_script
        self._check_sha = self._check_script.sha
        self._calls = {}  # built with the other script

    def _run(self, script: lua.Script, keys_: Sequence[str], args: Sequence[object]) -> Any:
        try:
            return self._command("EVALSHA", script.sha, len(keys_), *keys_, *args)
        except NoScriptError:
            return self._load_and_run(script, keys_, args)
        except UNAVAILABLE as exc:
            raise GateUnavailable(f"gate store unavailable: {exc}") from exc

    def _load_and_run(
        self, script: lua.Script, keys_: Sequence[str], args: Sequence[object]
    ) -> Any:
        """After NOSCRIPT (a fresh or restarted server, SCRIPT FLUSH): load, then run again."""
        try:
            self._client.script_load(script.source)
            return self._command("EVALSHA", script.sha, len(keys_), *keys_, *args)
        except UNAVAILABLE as exc:
            raise GateUnavailable(f"gate store unavailable: {exc}") from exc

    def check(self, account_id: str, key_id: str, tokens: int = 0) -> GateDecision:
        """``Gate.check``; ``GateUnavailable`` when Redis is down or does not answer in time.

        Once a check found Redis silent (no answer within the client's timeout), one check at
        a time waits for it again and every other fails at once, until one is answered: each
        would otherwise hold a thread for the whole timeout, and checks that come faster than
        the timeout allows would take every thread the API has and wait in line behind them,
        for ever longer (``docs/operations.md``)."""
        if self._unanswered is None:
            try:
                return self._check_now(account_id, key_id, tokens)
            except GateUnavailable as exc:
                self._note_unanswered(exc)
                raise
        if not self._probing.acquire(blocking=False):
            raise GateUnavailable(
                f"gate store unavailable: it did not answer ({self._unanswered}), and another "
                "check is waiting for it"
            )
        try:
            decision = self._check_now(account_id, key_id, tokens)
        except GateUnavailable as exc:
            self._note_unanswered(exc)
            raise
        finally:
            self._probing.release()
        if self._unanswered is not None:
            log.warning("the gate's Redis answers again")
            self._unanswered = None
        return decision

    def _note_unanswered(self, exc: GateUnavailable) -> None:
        if isinstance(exc.__cause__, redis.TimeoutError):
            if self._unanswered is None:
                log.warning(
                    "the gate's Redis did not answer in time (%s): checks fail at once while "
                    "one at a time waits for it",
                    exc.__cause__,
                )
            self._unanswered = exc.__cause__

    def _check_now(self, account_id: str, key_id: str, tokens: int) -> GateDecision:
        """The check, with the hot path inlined: the EVALSHA arguments of an (account, key)
        pair are built (and the ids validated) once and cached, a check then looks them up,
        checks ``tokens`` and sends them through ``execute_command``; the decision is built from
        the packed reply without per-field setattr."""
        call = (
            self._calls.get((account_id, key_id))
            if type(account_id) is str and type(key_id) is str
            else None
        )
        if call is None or type(tokens) is not int or tokens < 0:
            if not well_formed(account_id, key_id, tokens):
                return super().check(account_id, key_id, tokens)  # raises the precise error
            call = self._call(account_id, key_id)
        try:
            if self._wire is not None:
                raw = self._wire.call(call.with_last(tokens))
            else:
                raw = self._command(*call, tokens)
        except NoScriptError:
            raw = self._load_and_run(
                self._check_script, keys.check_keys(account_id), (key_id, tokens)
            )
        except UNAVAILABLE as exc:
            raise GateUnavailable(f"gate store unavailable: {exc}") from exc
        if len(raw) == _UNKNOWN_SIZE:
            raw = self._check_after_seeding(account_id, key_id, tokens)
        return _decision(raw)

    def _check_after_seeding(self, account_id: str, key_id: str, tokens: int) -> bytes:
        """The account had no status: learn its standing, then check it (counting once)."""
        self._seed(account_id)
        raw: bytes = self._run(
            self._any_check_script, keys.check_keys(account_id), (key_id, tokens)
        )
        return raw

    def _call(self, account_id: str, key_id: str) -> Any:
        """The check's EVALSHA command for a well-formed pair but the token count, packed
        (``wire.Packed``) or as arguments (Redis Cluster); cached."""
        args = ("EVALSHA", self._check_sha, 3, *keys.check_keys(account_id), key_id)
        call = args if self._wire is None else wire.Packed(args)
        if len(self._calls) >= CALL_CACHE_SIZE:
            self._calls.clear()
        self._calls[account_id, key_id] = call
        return call

    def _check(self, account_id: str, key_id: str, tokens: int) -> GateDecision:
        # ``check`` above replaces ``Gate.check``, the only caller of this step.
        return self._check_now(account_id, key_id, tokens)

    def _denial_stats(self, account_id: str) -> DenialStats:
        names = (keys.denials(account_id), keys.denied_keys(account_id))
        count, denied = self._run(self._stats_script, names, ())
        return DenialStats(count, self.denial_window_s, denied)

    def _set_limits(
        self, account_id: str, key_id: str | None, rpm: int, tpd: int, version: int
    ) -> bool:
        if key_id is None:
            script, args = self._account_script, ("limits", rpm, tpd, version)
        else:
            script, args = self._key_limits_script, (key_id, rpm, tpd, version)
        return bool(self._run(script, (keys.state(account_id),), args))

    def _set_status(self, account_id: str, status: str, until_ms: int, version: int) -> bool:
        args = ("status", _STATUS_CODES[status], until_ms, version)
        return bool(self._run(self._account_script, (keys.state(account_id),), args))

    def _apply_throttle(
        self,
        account_id: str,
        throttle_id: str,
        key_id: str | None,
        ppm: int,
        expires_ms: int,
        version: int,
    ) -> bool:
        args = (throttle_id, version, key_id or "", ppm, expires_ms)
        return bool(self._run(self._throttle_script, (keys.state(account_id),), args))

    def _lift_throttle(self, account_id: str, throttle_id: str, version: int) -> bool:
        args = (throttle_id, version)
        return bool(self._run(self._throttle_script, (keys.state(account_id),), args))

    def _clear(self) -> None:
        """Remove every account's keys, a page of ``SCAN`` at a time (on Redis Cluster, node
        by node: one ``UNLINK`` per key, as no two accounts share a slot)."""
        try:
            names = self._client.scan_iter(match=keys.EVERY_ACCOUNT, count=CLEAR_PAGE)
            while page := list(itertools.islice(names, CLEAR_PAGE)):
                pipe = self._client.pipeline(transaction=False)
                for name in page:
                    pipe.unlink(name)
                pipe.execute()
        except UNAVAILABLE as exc:
            raise GateUnavailable(f"gate store unavailable: {exc}") from exc

    def _holds_status(self, account_id: str) -> bool:
        try:
            raw = self._command("HGET", keys.state(account_id), "a")
        except UNAVAILABLE as exc:
            raise GateUnavailable(f"gate store unavailable: {exc}") from exc
        return bool(raw) and _status_version(raw)[0] >= 0  # lua.CHECK's `a_sv < 0` test

    def _throttle_ids(self, account_id: str) -> set[str]:
        try:
            raw = self._command("HGET", keys.state(account_id), "thr")
        except UNAVAILABLE as exc:
            raise GateUnavailable(f"gate store unavailable: {exc}") from exc
        if not raw:
            return set()
        # keys.py: {throttle id: {k, f, e, v, l (1: lifted)}}
        return {str(i) for i, t in json.loads(raw).items() if not t.get("l")}


# The account record stores the status as the reason code it refuses with (lua.HELPERS).
_STATUS_CODES = {"active": core.OK, "suspended": core.SUSPENDED, "terminated": core.TERMINATED}
_new = object.__new__
_set = object.__setattr__  # a frozen dataclass refuses its own __setattr__
_unpack_allowed = struct.Struct("<6q").unpack  # lua.CHECK's reply when allowed
_unpack_denied = struct.Struct("<10q").unpack  # and when denied
_status_version = struct.Struct("<9xd").unpack_from  # the account record's status version
_ALLOWED_SIZE = 48
_UNKNOWN_SIZE = 8  # lua.CHECK with REQUIRE_STATUS: the account holds no status
_OK = REASONS[core.OK]


def _decision(raw: bytes) -> GateDecision:
    """The decision from lua.CHECK's reply: six numbers when allowed, ten when denied."""
    decision = _new(GateDecision)
    if len(raw) == _ALLOWED_SIZE:
        limit_req, left_req, reset_req, limit_tok, left_tok, reset_tok = _unpack_allowed(raw)
        _set(
            decision,
            "__dict__",
            {
                "allowed": True,
                "reason": _OK,
                "limit_requests": limit_req,
                "remaining_requests": left_req,
                "reset_requests_s": reset_req / 1000,
                "limit_tokens": limit_tok,
                "remaining_tokens": left_tok,
                "reset_tokens_s": reset_tok / 1000,
                "retry_after_s": 0.0,
                # denials_in_window, denied_keys_last_minute: the class defaults (0)
            },
        )
        return decision
    reason, limit_req, left_req, reset_req, limit_tok, left_tok, reset_tok, retry, den, dk = (
        _unpack_denied(raw)
    )
    _set(
        decision,
        "__dict__",
        {
            "allowed": reason == 0,
            "reason": REASONS[reason],
            "limit_requests": limit_req,
            "remaining_requests": left_req,
            "reset_requests_s": reset_req / 1000,
            "limit_tokens": limit_tok,
            "remaining_tokens": left_tok,
            "reset_tokens_s": reset_tok / 1000,
            "retry_after_s": retry / 1000,
            "denials_in_window": den,
            "denied_keys_last_minute": dk,
        },
    )
    return decision
