"""The policy as data (POLICY.md): its keys, the shipped defaults, and loading a TOML file.

``load_policy(None)`` is the shipped default (``aup-2026-11``). A file overrides any subset of the
keys, and per category its ``sections``, ``default_severity``, ``floor`` and
``refer_to_authorities``; what it leaves out keeps its default. A file that cannot be used raises
``PolicyError`` naming the offending key, so a deployment never starts on a half-read policy.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from types import MappingProxyType
from typing import Any

from enforcement.errors import PolicyError
from enforcement.gate.base import MAX_DENIAL_COUNT
from projections.aup_events import SEVERITIES
from projections.durations import DURATION, UNITS

SEVERITY_RANK: Mapping[str, int] = MappingProxyType({s: i for i, s in enumerate(SEVERITIES)})


@dataclass(frozen=True, slots=True)
class CategoryRule:
    """How the policy treats one violation category."""

    sections: tuple[int, ...]
    default_severity: str
    floor: str
    refer_to_authorities: bool = False


def _rule(sections: tuple[int, ...], default: str, floor: str, refer: bool = False) -> CategoryRule:
    return CategoryRule(sections, default, floor, refer)


CATEGORIES: Mapping[str, CategoryRule] = MappingProxyType(
    {
        "csam": _rule((2, 6), "critical", "critical", refer=True),
        "weapons_development": _rule((6,), "critical", "critical", refer=True),
        "violence_facilitation": _rule((2,), "high", "high"),
        "illegal_content": _rule((2,), "high", "medium"),
        "ip_infringement": _rule((2,), "medium", "low"),
        "spam": _rule((2,), "medium", "low"),
        "phishing": _rule((2,), "high", "medium"),
        "cyberweapons": _rule((2,), "high", "high"),
        "disinformation": _rule((2,), "medium", "low"),
        "safety_circumvention": _rule((2,), "high", "medium"),
        "personal_data_harvesting": _rule((2,), "high", "medium"),
        "impersonation": _rule((2,), "medium", "low"),
        "surveillance": _rule((2,), "high", "high"),
        "rate_limit_circumvention": _rule((3,), "medium", "low"),
        "sustained_abuse": _rule((3,), "low", "low"),
        "unapproved_adult_content": _rule((4,), "low", "low"),
        "missing_content_filtering": _rule((4,), "low", "low"),
        "safety_probing": _rule((5,), "medium", "low"),
        "model_extraction": _rule((5,), "high", "medium"),
        "training_data_extraction": _rule((5,), "high", "medium"),
    }
)


@dataclass(frozen=True, slots=True)
class ThrottleRule:
    """Multiply the limits by ``factor`` for ``duration``."""

    factor: float
    duration: timedelta


@dataclass(frozen=True, slots=True)
class DenialRule:
    """``count`` gate denials within ``window``."""

    count: int
    window: timedelta


@dataclass(frozen=True, slots=True)
class Policy:
    """Every number of the ladder, and the category table. Defaults are POLICY.md's."""

    version: str = "aup-2026-11"
    strike_lookback: timedelta = timedelta(days=90)
    remediation_window: timedelta = timedelta(days=7)
    first_high_suspension: timedelta = timedelta(days=7)
    second_minor_throttle: ThrottleRule = ThrottleRule(0.25, timedelta(days=7))
    third_minor_suspension: timedelta = timedelta(days=30)
    missed_remediation_suspension: timedelta = timedelta(days=7)
    sustained_abuse_throttle: ThrottleRule = ThrottleRule(0.5, timedelta(hours=24))
    sustained_abuse_denials: DenialRule = DenialRule(100, timedelta(minutes=10))
    termination_after_strikes: int = 3
    appeal_window: timedelta = timedelta(days=20)
    categories: Mapping[str, CategoryRule] = field(default_factory=lambda: CATEGORIES)


DEFAULT_POLICY = Policy()

MAX_DURATION = timedelta(days=36_500)  # a hundred years: longer is as good as indefinite
_DURATION_KEYS = {
    "strike_lookback",
    "remediation_window",
    "first_high_suspension",
    "third_minor_suspension",
    "missed_remediation_suspension",
    "appeal_window",
}


def parse_duration(text: object, key: str) -> timedelta:
    """``"90d"``, ``"24h"``, ``"10m"``, ``"30s"``: a positive whole number and one unit, at most
    ``MAX_DURATION`` (a decision's end must stay a time the log can hold)."""
    match = DURATION.fullmatch(text) if isinstance(text, str) else None
    if match is None or int(match.group(1)) == 0:
        raise PolicyError(f'{key} must be a positive duration like "7d" or "24h", not {text!r}')
    amount, unit = int(match.group(1)), UNITS[match.group(2)]
    if amount > MAX_DURATION // timedelta(**{unit: 1}):
        raise PolicyError(f"{key} must be at most {MAX_DURATION.days} days, not {text!r}")
    return timedelta(**{unit: amount})


def load_policy(path: str | None) -> Policy:
    """The policy in the TOML file at ``path``; ``None`` is the shipped default."""
    if path is None:
        return DEFAULT_POLICY
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise PolicyError(f"policy file {path} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"policy file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # TOML is UTF-8; ``tomllib`` raises this one as it is
        raise PolicyError(
            f"policy file {path} is not valid TOML: it is not UTF-8 ({exc})"
        ) from None
    try:
        return policy_from_mapping(data)
    except PolicyError as exc:
        raise PolicyError(f"policy file {path}: {exc}") from None


def policy_from_mapping(data: Mapping[str, Any], base: Policy = DEFAULT_POLICY) -> Policy:
    """``base`` with the keys of ``data`` (a parsed policy file) applied."""
    changes: dict[str, Any] = {}
    for key, value in data.items():
        if key == "version":
            if not isinstance(value, str) or not value.strip():
                raise PolicyError(f"version must be a non-empty string, not {value!r}")
            changes[key] = value
        elif key in _DURATION_KEYS:
            changes[key] = parse_duration(value, key)
        elif key in ("second_minor_throttle", "sustained_abuse_throttle"):
            changes[key] = _throttle(value, key, getattr(base, key))
        elif key == "sustained_abuse_denials":
            changes[key] = _denials(value, key, base.sustained_abuse_denials)
        elif key == "termination_after_strikes":
            changes[key] = _positive_int(value, key)
        elif key == "categories":
            changes[key] = _categories(value, base.categories)
        else:
            raise PolicyError(f"unknown key {key!r}")
    return replace(base, **changes)


def _table(value: object, key: str, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PolicyError(f"{key} must be a table, not {value!r}")
    for sub in value:
        if sub not in allowed:
            raise PolicyError(f"unknown key {key}.{sub!s}")
    return value


def _positive_int(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PolicyError(f"{key} must be a whole number of at least 1, not {value!r}")
    return value


def _throttle(value: object, key: str, base: ThrottleRule) -> ThrottleRule:
    table = _table(value, key, {"factor", "duration"})
    factor = table.get("factor", base.factor)
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not 0 < factor <= 1:
        raise PolicyError(f"{key}.factor must be a number in (0, 1], not {factor!r}")
    duration = base.duration
    if "duration" in table:
        duration = parse_duration(table["duration"], f"{key}.duration")
    return ThrottleRule(float(factor), duration)


def _denials(value: object, key: str, base: DenialRule) -> DenialRule:
    table = _table(value, key, {"count", "window"})
    count = base.count
    if "count" in table:
        count = _positive_int(table["count"], f"{key}.count")
        if count > MAX_DENIAL_COUNT:
            # The gate keeps the times of the account's last `count` denials.
            raise PolicyError(f"{key}.count must be at most {MAX_DENIAL_COUNT}, not {count!r}")
    window = base.window
    if "window" in table:
        window = parse_duration(table["window"], f"{key}.window")
    return DenialRule(count, window)


# The categories the AUP itself names as severe (§6: "Severe violations (e.g. CSAM, weapons
# development) result in immediate permanent termination"): a policy file may not make them
# less than critical (POLICY.md's critical row terminates).
AUP_SEVERE = frozenset({"csam", "weapons_development"})


def _categories(value: object, base: Mapping[str, CategoryRule]) -> Mapping[str, CategoryRule]:
    table = _table(value, "categories", set(base))
    merged = dict(base)
    for name, override in table.items():
        merged[name] = _category(override, f"categories.{name}", base[name], name in AUP_SEVERE)
    return MappingProxyType(merged)


def _category(value: object, key: str, base: CategoryRule, severe: bool) -> CategoryRule:
    """The rule ``value`` overrides ``base`` with; ``severe``: one of ``AUP_SEVERE``."""
    table = _table(value, key, {"sections", "default_severity", "floor", "refer_to_authorities"})
    sections = table.get("sections", list(base.sections))
    if (
        not isinstance(sections, list)
        or not sections
        or not all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= 7 for s in sections)
    ):
        raise PolicyError(f"{key}.sections must be a list of AUP section numbers, not {sections!r}")
    default = table.get("default_severity", base.default_severity)
    floor = table.get("floor", base.floor)
    for sub, severity in (("default_severity", default), ("floor", floor)):
        if severity not in SEVERITY_RANK:
            allowed = ", ".join(SEVERITIES)
            raise PolicyError(f"{key}.{sub} must be one of {allowed}, not {severity!r}")
    if severe:
        for sub, severity in (("default_severity", default), ("floor", floor)):
            if severity != "critical":
                raise PolicyError(
                    f"{key}.{sub} must stay critical, not {severity}: AUP §6 terminates severe "
                    "violations (e.g. CSAM, weapons development) immediately and permanently"
                )
    if SEVERITY_RANK[floor] > SEVERITY_RANK[default]:
        raise PolicyError(f"{key}.floor ({floor}) is above its default_severity ({default})")
    refer = table.get("refer_to_authorities", base.refer_to_authorities)
    if not isinstance(refer, bool):
        raise PolicyError(f"{key}.refer_to_authorities must be true or false, not {refer!r}")
    return CategoryRule(tuple(sections), default, floor, refer)
