"""The gate's interface, shared by the Redis and the embedded backends.

``GateState`` is what the gate-state workers call as they follow the event log; ``Gate`` adds
what gateways call. Arguments are checked here, once, so both backends see the same input.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol, get_args

from enforcement.gate.core import PPM
from enforcement.gate.decision import DenialStats, GateDecision

AccountStatus = Literal["active", "suspended", "terminated"]
STATUSES: frozenset[str] = frozenset(get_args(AccountStatus))

DEFAULT_RPM = 600
DEFAULT_TPD = 1_000_000
DEFAULT_DENIAL_WINDOW_S = 600  # policy `sustained_abuse_denials.window`
DEFAULT_DENIAL_COUNT = 100  # policy `sustained_abuse_denials.count`
MAX_DENIAL_COUNT = 10_000  # bounds the denial times kept per account (that many at most)
DAY_S = 86_400
MAX_RPM = 10**7  # keeps a GCRA period within 70 s
MAX_TPD = 10**15  # keeps token arithmetic exact in Lua's doubles

ACCOUNT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # CONTRACT.md; no braces: see keys.py
_ACCOUNT_MATCH = ACCOUNT_ID.fullmatch
MAX_ID_LEN = 256
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MS = timedelta(milliseconds=1)


class GateUnavailable(Exception):
    """The gate's store did not answer; whether the request was counted is unknown."""


Seeder = Callable[[str], None]
"""``seeder(account_id)`` brings a gate to the account's standing (``Gate.set_seeder``)."""


class GateState(Protocol):
    """Gate state written from the event log.

    Every update carries the account stream version of the event that caused it. An update is
    applied only if its version is higher than the one last applied to the same item (an
    account's status, one key's or the account's limits, one throttle), so redelivery is a no-op
    and a late, stale update never overwrites newer state. Each returns whether it was applied.
    """

    def set_limits(
        self, account_id: str, key_id: str | None, rpm: int, tpd: int, version: int
    ) -> bool: ...

    def apply_throttle(
        self,
        account_id: str,
        throttle_id: str,
        key_id: str | None,
        factor: float,
        expires_at: datetime | None,
        version: int,
    ) -> bool: ...

    def lift_throttle(self, account_id: str, throttle_id: str, version: int) -> bool: ...

    def set_status(
        self, account_id: str, status: AccountStatus, until: datetime | None, version: int
    ) -> bool: ...


class Gate(ABC):
    """Rate limits, token quotas, throttles and account status, checked on every API request.

    Per key and, as a ceiling across all its keys, per account: requests per minute (GCRA,
    burst = the limit) and tokens per UTC day (a fixed window). Effective limits are the
    configured ones (or the defaults) times the most restrictive active throttle factor; an
    account-wide throttle scales the account ceiling and every key, a key throttle that key.
    Suspended and terminated accounts are refused; a suspension with ``until`` and a throttle
    with ``expires_at`` end by themselves. A denial consumes nothing.
    """

    def __init__(
        self,
        *,
        default_rpm: int = DEFAULT_RPM,
        default_tpd: int = DEFAULT_TPD,
        denial_window_s: int = DEFAULT_DENIAL_WINDOW_S,
        denial_count: int = DEFAULT_DENIAL_COUNT,
        token_window_s: int = DAY_S,
    ) -> None:
        """``denial_count`` denials within ``denial_window_s`` is the policy's
        ``sustained_abuse_denials``: a denial's ``denials_in_window`` counts up to it
        (``GateDecision``). ``token_window_s`` is the token quota's window: the UTC day;
        shorter only in tests."""
        _require_limits(default_rpm, default_tpd)
        for name, value in (
            ("denial_window_s", denial_window_s),
            ("denial_count", denial_count),
            ("token_window_s", token_window_s),
        ):
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer")
        if denial_count > MAX_DENIAL_COUNT:
            raise ValueError(f"denial_count must be at most {MAX_DENIAL_COUNT}")
        self.default_rpm = default_rpm
        self.default_tpd = default_tpd
        self.denial_window_s = denial_window_s
        self.denial_count = denial_count
        self.token_window_s = token_window_s
        self._seeder: Seeder | None = None

    def close(self) -> None:  # noqa: B027 (not abstract: a gate in process holds none)
        """Release the connections the gate opened itself (none in process)."""

    def set_seeder(self, seeder: Seeder | None) -> None:
        """Learn an account's standing before checking it, whenever the gate holds no status for
        it: never told (no event since the gate started), expired, or lost (Redis restarted
        without its data, or was flushed). ``seeder(account_id)`` must bring the gate to the
        account's standing, ``set_status`` included (version 0 for an account with no events);
        the check then runs on what it wrote, once. A seeder that fails makes the check raise
        ``GateUnavailable``: the gate cannot say whether the account may be served.

        Without a seeder (the default), such an account is checked as active with the default
        limits, as a gate that was told nothing would."""
        self._seeder = seeder

    def _seed(self, account_id: str) -> None:
        """Run the seeder for an account whose status the gate does not hold."""
        assert self._seeder is not None
        try:
            self._seeder(account_id)
        except GateUnavailable:
            raise
        except Exception as exc:
            raise GateUnavailable(f"could not learn the account's standing: {exc}") from exc

    def check(self, account_id: str, key_id: str, tokens: int = 0) -> GateDecision:
        """Allow and count one request of ``tokens`` tokens on ``key_id``, or refuse it."""
        if not well_formed(account_id, key_id, tokens):
            _require_account(account_id)
            _require_id("key_id", key_id)
            raise ValueError("tokens must be a non-negative integer")
        return self._check(account_id, key_id, tokens)

    def denial_stats(self, account_id: str) -> DenialStats:
        """The account's rate/quota denials now, without recording anything."""
        _require_account(account_id)
        return self._denial_stats(account_id)

    def set_limits(
        self, account_id: str, key_id: str | None, rpm: int, tpd: int, version: int
    ) -> bool:
        """Configure a key's limits, or with ``key_id=None`` the account-wide ceiling."""
        _require_account(account_id)
        if key_id is not None:
            _require_id("key_id", key_id)
        _require_limits(rpm, tpd)
        _require_version(version)
        return self._set_limits(account_id, key_id, rpm, tpd, version)

    def apply_throttle(
        self,
        account_id: str,
        throttle_id: str,
        key_id: str | None,
        factor: float,
        expires_at: datetime | None,
        version: int,
    ) -> bool:
        """Scale a key's limits (or, ``key_id=None``, the whole account's) by ``0 < factor ≤ 1``.

        The factor is kept to six decimal places.
        """
        _require_account(account_id)
        _require_id("throttle_id", throttle_id)
        if key_id is not None:
            _require_id("key_id", key_id)
        if isinstance(factor, bool) or not 0 < factor <= 1:
            raise ValueError("factor must be in (0, 1]")
        ppm = max(round(factor * PPM), 1)
        _require_version(version)
        return self._apply_throttle(
            account_id, throttle_id, key_id, ppm, _epoch_ms(expires_at), version
        )

    def lift_throttle(self, account_id: str, throttle_id: str, version: int) -> bool:
        """End a throttle; also when the lift arrives before the throttle itself."""
        _require_account(account_id)
        _require_id("throttle_id", throttle_id)
        _require_version(version)
        return self._lift_throttle(account_id, throttle_id, version)

    def throttle_ids(self, account_id: str) -> set[str]:
        """The ids of the account's throttles the gate holds and has not lifted (some may have
        expired since). For re-seeding: one the state no longer holds was lifted while its
        message was lost."""
        _require_account(account_id)
        return self._throttle_ids(account_id)

    def set_status(
        self, account_id: str, status: AccountStatus, until: datetime | None, version: int
    ) -> bool:
        """Set the account's status; a suspension with ``until`` ends by itself then."""
        _require_account(account_id)
        if status not in STATUSES:
            raise ValueError(f"status must be one of {sorted(STATUSES)}")
        if until is not None and status != "suspended":
            raise ValueError("only a suspension has an until")
        _require_version(version)
        return self._set_status(account_id, status, _epoch_ms(until), version)

    def holds_status(self, account_id: str) -> bool:
        """Whether the gate holds a status for the account (else a seeder would learn it)."""
        _require_account(account_id)
        return self._holds_status(account_id)

    def clear(self) -> None:
        """Forget every account, as a Redis that lost its data would: with a seeder, each is
        learned again from its stored standing at its next check. For a gate whose state
        follows events that the log no longer has (a database restored from a backup): its
        versions would make it refuse every update older than them."""
        self._clear()

    @abstractmethod
    def _clear(self) -> None: ...

    @abstractmethod
    def _holds_status(self, account_id: str) -> bool: ...

    @abstractmethod
    def _check(self, account_id: str, key_id: str, tokens: int) -> GateDecision: ...

    @abstractmethod
    def _denial_stats(self, account_id: str) -> DenialStats: ...

    @abstractmethod
    def _set_limits(
        self, account_id: str, key_id: str | None, rpm: int, tpd: int, version: int
    ) -> bool: ...

    @abstractmethod
    def _apply_throttle(
        self,
        account_id: str,
        throttle_id: str,
        key_id: str | None,
        ppm: int,
        expires_ms: int,
        version: int,
    ) -> bool: ...

    @abstractmethod
    def _lift_throttle(self, account_id: str, throttle_id: str, version: int) -> bool: ...

    @abstractmethod
    def _throttle_ids(self, account_id: str) -> set[str]: ...

    @abstractmethod
    def _set_status(self, account_id: str, status: str, until_ms: int, version: int) -> bool: ...


def well_formed(account_id: object, key_id: object, tokens: object) -> bool:
    """Whether a check's arguments are valid (one expression: this runs on every request)."""
    return (
        type(tokens) is int
        and tokens >= 0
        and type(key_id) is str
        and 0 < len(key_id) <= MAX_ID_LEN
        and type(account_id) is str
        and _ACCOUNT_MATCH(account_id) is not None
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require_account(account_id: str) -> None:
    if not isinstance(account_id, str) or not ACCOUNT_ID.fullmatch(account_id):
        raise ValueError("account_id must be 1-128 characters of A-Za-z0-9._:-")


def _require_id(name: str, value: str) -> None:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_LEN:
        raise ValueError(f"{name} must be a string of 1-{MAX_ID_LEN} characters")


def _require_limits(rpm: int, tpd: int) -> None:
    if not _is_int(rpm) or not 1 <= rpm <= MAX_RPM:
        raise ValueError(f"rpm must be an integer from 1 to {MAX_RPM}")
    if not _is_int(tpd) or not 0 <= tpd <= MAX_TPD:
        raise ValueError(f"tpd must be an integer from 0 to {MAX_TPD}")


def _require_version(version: int) -> None:
    if not _is_int(version) or version < 0:
        raise ValueError("version must be a non-negative integer")


def _epoch_ms(moment: datetime | None) -> int:
    """Milliseconds since the epoch, rounded up; 0 for none. Naive datetimes are refused, not
    guessed. Rounded up so that a suspension or throttle ending within a millisecond (the
    policy's ``now + span`` keeps microseconds) never ends in the gate before the standing."""
    if moment is None:
        return 0
    if moment.tzinfo is None:
        raise ValueError("datetimes must be timezone-aware (UTC)")
    return max(-((EPOCH - moment) // MS), 1)
