"""The gate on Redis: one Lua script per check, shared by every gateway process.

Scripts run by EVALSHA; the first NOSCRIPT (a fresh or restarted server, SCRIPT FLUSH) loads the
script and retries. Every key the gate writes carries a TTL (``keys.py``); configuration expires
``state_ttl_s`` after its last write or check, so the gate-state worker's periodic resync from
the standings must run more often than that.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError

from enforcement.gate import core, keys, lua
from enforcement.gate.base import Gate, GateUnavailable
from enforcement.gate.decision import REASONS, DenialStats, GateDecision

DEFAULT_STATE_TTL_S = 30 * 86_400
USAGE_TTL_S = 120  # renewed when under 90 s: more than a TAT can run ahead (60 s + 10 s)
USAGE_SLACK_S = 30


class RedisGate(Gate):
    """Same behaviour as ``EmbeddedGate``, shared through Redis.

    On Redis Cluster pass a ``redis.cluster.RedisCluster``: an account's keys share one slot.
    """

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        *,
        state_ttl_s: int = DEFAULT_STATE_TTL_S,
        **settings: int,
    ) -> None:
        super().__init__(**settings)
        if state_ttl_s < max(self.token_window_s, USAGE_TTL_S):
            raise ValueError("state_ttl_s must cover the token window")
        self._client = client
        self._command: Callable[..., Any] = client.execute_command
        bucket_s, buckets = core.denial_buckets(self.denial_window_s)
        common = {
            "STATE_TTL_MS": state_ttl_s * 1000,
            "STATE_SLACK_MS": min(state_ttl_s * 100, 3_600_000),  # renew at most every 10 %
            "USAGE_TTL_MS": USAGE_TTL_S * 1000,
            "USAGE_SLACK_MS": USAGE_SLACK_S * 1000,
            "BUCKET_US": bucket_s * core.US,
        }
        self._check_script = lua.render(
            lua.CHECK,
            DEFAULT_RPM=self.default_rpm,
            DEFAULT_TPD=self.default_tpd,
            WINDOW_US=self.token_window_s * core.US,
            BUCKETS=buckets,
            DENIED_KEYS_MS=core.DENIED_KEYS_WINDOW_MS,
            DENIED_KEYS_CAP=core.DENIED_KEYS_CAP,
            **common,
        )
        self._stats_script = lua.render(
            lua.HELPERS + lua.DENIAL_STATS,
            BUCKETS=buckets,
            DENIED_KEYS_MS=core.DENIED_KEYS_WINDOW_MS,
            **common,
        )
        self._set_script = lua.render(lua.HELPERS + lua.CONFIGURED + lua.SET_VERSIONED, **common)
        self._throttle_script = lua.render(
            lua.HELPERS + lua.CONFIGURED + lua.THROTTLE,
            LIFTED_CAP=core.LIFTED_THROTTLES_CAP,
            **common,
        )

    @classmethod
    def from_url(cls, url: str, **settings: int) -> RedisGate:
        return cls(redis.Redis.from_url(url), **settings)

    def _run(self, script: lua.Script, keys_: Sequence[str], args: Sequence[object]) -> Any:
        try:
            try:
                return self._command("EVALSHA", script.sha, len(keys_), *keys_, *args)
            except NoScriptError:
                self._client.script_load(script.source)
                return self._command("EVALSHA", script.sha, len(keys_), *keys_, *args)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise GateUnavailable(f"gate store unavailable: {exc}") from exc

    def _check(self, account_id: str, key_id: str, tokens: int) -> GateDecision:
        r = self._run(self._check_script, keys.check_keys(account_id), (key_id, tokens))
        return GateDecision.from_values(
            (
                r[0] == core.OK,
                REASONS[r[0]],
                r[1],
                r[2],
                r[3] / 1000,
                r[4],
                r[5],
                r[6] / 1000,
                r[7] / 1000,
                r[8],
                r[9],
            )
        )

    def _denial_stats(self, account_id: str) -> DenialStats:
        names = (keys.denials(account_id), keys.denied_keys(account_id))
        count, denied = self._run(self._stats_script, names, ())
        return DenialStats(count, self.denial_window_s, denied)

    def _set_limits(
        self, account_id: str, key_id: str | None, rpm: int, tpd: int, version: int
    ) -> bool:
        args = (keys.limits_field(key_id), f"{rpm}|{tpd}", version)
        return bool(self._run(self._set_script, (keys.state(account_id),), args))

    def _set_status(self, account_id: str, status: str, until_ms: int, version: int) -> bool:
        args = ("st", f"{status}|{until_ms}", version)
        return bool(self._run(self._set_script, (keys.state(account_id),), args))

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
