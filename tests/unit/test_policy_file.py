"""The policy from a TOML document: defaults are POLICY.md's, a document overrides keys, a bad one
names the key. (Reading the file: ``tests/integration/test_policy_file_loading.py``.)"""

from __future__ import annotations

import tomllib
from dataclasses import FrozenInstanceError
from datetime import timedelta

import pytest

from enforcement.errors import PolicyError
from enforcement.policy import DEFAULT_POLICY, load_policy
from enforcement.policy_file import (
    CategoryRule,
    DenialRule,
    ThrottleRule,
    parse_duration,
    policy_from_mapping,
)

# The block from POLICY.md, verbatim but for two comments shortened to fit a line.
POLICY_MD_TOML = """
version = "aup-2026-11"          # recorded on every decision
strike_lookback = "90d"
remediation_window = "7d"
first_high_suspension = "7d"
second_minor_throttle = { factor = 0.25, duration = "7d" }
third_minor_suspension = "30d"
missed_remediation_suspension = "7d"
sustained_abuse_throttle = { factor = 0.5, duration = "24h" }
sustained_abuse_denials = { count = 100, window = "10m" }   # gate denials: sustained_abuse
termination_after_strikes = 3     # prior strikes at which any violation terminates
appeal_window = "20d"             # an appeal filed later than this after its decision is refused
"""


def from_toml(text: str) -> object:
    return policy_from_mapping(tomllib.loads(text))


def test_the_default_policy_is_policy_md() -> None:
    p = load_policy(None)
    assert p is DEFAULT_POLICY
    assert p.version == "aup-2026-11"
    assert p.strike_lookback == timedelta(days=90)
    assert p.remediation_window == timedelta(days=7)
    assert p.first_high_suspension == timedelta(days=7)
    assert p.second_minor_throttle == ThrottleRule(0.25, timedelta(days=7))
    assert p.third_minor_suspension == timedelta(days=30)
    assert p.missed_remediation_suspension == timedelta(days=7)
    assert p.sustained_abuse_throttle == ThrottleRule(0.5, timedelta(hours=24))
    assert p.sustained_abuse_denials == DenialRule(100, timedelta(minutes=10))
    assert p.termination_after_strikes == 3
    assert p.appeal_window == timedelta(days=20)


def test_the_shipped_default_cannot_be_changed_in_place() -> None:
    """Every ``load_policy(None)`` gives the same ``DEFAULT_POLICY``: its categories too."""
    with pytest.raises(FrozenInstanceError):
        DEFAULT_POLICY.version = "changed"  # type: ignore[misc]
    with pytest.raises(TypeError):
        DEFAULT_POLICY.categories["spam"] = CategoryRule((2,), "low", "low")  # type: ignore[index]
    with pytest.raises(FrozenInstanceError):
        DEFAULT_POLICY.categories["csam"].floor = "low"  # type: ignore[misc]


# POLICY.md's table of violation categories, without its "what it covers" column.
POLICY_MD_CATEGORIES = """
| `csam` | 2, 6 | critical | critical |
| `weapons_development` | 6 | critical | critical |
| `violence_facilitation` | 2 | high | high |
| `illegal_content` | 2 | high | medium |
| `ip_infringement` | 2 | medium | low |
| `spam` | 2 | medium | low |
| `phishing` | 2 | high | medium |
| `cyberweapons` | 2 | high | high |
| `disinformation` | 2 | medium | low |
| `safety_circumvention` | 2 | high | medium |
| `personal_data_harvesting` | 2 | high | medium |
| `impersonation` | 2 | medium | low |
| `surveillance` | 2 | high | high |
| `rate_limit_circumvention` | 3 | medium | low |
| `sustained_abuse` | 3 | low | low |
| `unapproved_adult_content` | 4 | low | low |
| `missing_content_filtering` | 4 | low | low |
| `safety_probing` | 5 | medium | low |
| `model_extraction` | 5 | high | medium |
| `training_data_extraction` | 5 | high | medium |
"""


def test_the_default_categories_are_policy_md() -> None:
    table = {}
    for row in POLICY_MD_CATEGORIES.strip().splitlines():
        name, sections, default, floor = (cell.strip(" `") for cell in row.strip("|").split("|"))
        referred = name in ("csam", "weapons_development")  # the critical row's referral
        table[name] = CategoryRule(
            tuple(int(n) for n in sections.split(",")), default, floor, referred
        )
    assert dict(DEFAULT_POLICY.categories) == table


def test_the_policy_md_block_is_the_default() -> None:
    assert policy_from_mapping(tomllib.loads(POLICY_MD_TOML)) == DEFAULT_POLICY


def test_keys_a_file_leaves_out_keep_their_defaults() -> None:
    p = policy_from_mapping(
        tomllib.loads(
            'version = "strict-1"\nstrike_lookback = "180d"\n'
            "second_minor_throttle = { factor = 0.1 }\n"
            "sustained_abuse_denials = { window = '30s' }\n"
            "termination_after_strikes = 2\n"
        )
    )
    assert p.version == "strict-1"
    assert p.strike_lookback == timedelta(days=180)
    assert p.second_minor_throttle == ThrottleRule(0.1, timedelta(days=7))
    assert p.sustained_abuse_denials == DenialRule(100, timedelta(seconds=30))
    assert p.termination_after_strikes == 2
    assert p.appeal_window == DEFAULT_POLICY.appeal_window
    assert p.categories == DEFAULT_POLICY.categories


def test_a_file_may_override_a_category() -> None:
    p = policy_from_mapping(
        tomllib.loads(
            '[categories.spam]\ndefault_severity = "high"\nfloor = "medium"\n'
            "[categories.phishing]\nrefer_to_authorities = true\nsections = [2, 7]\n"
        )
    )
    assert (p.categories["spam"].default_severity, p.categories["spam"].floor) == (
        "high",
        "medium",
    )
    assert p.categories["spam"].sections == (2,)
    assert p.categories["phishing"].refer_to_authorities is True
    assert p.categories["phishing"].sections == (2, 7)
    assert p.categories["csam"] == DEFAULT_POLICY.categories["csam"]
    with pytest.raises(TypeError):  # as read-only as the shipped table
        p.categories["spam"] = DEFAULT_POLICY.categories["spam"]  # type: ignore[index]
    assert DEFAULT_POLICY.categories["spam"].default_severity == "medium"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("colour = 'blue'", "colour"),
        ("version = ''", "version"),
        ("version = 3", "version"),
        ("strike_lookback = '90 days'", "strike_lookback"),
        ("strike_lookback = '2w'", "strike_lookback"),
        ("strike_lookback = '0d'", "strike_lookback"),
        ("strike_lookback = '-1d'", "strike_lookback"),
        ("strike_lookback = 90", "strike_lookback"),
        ("appeal_window = '1.5d'", "appeal_window"),
        ('appeal_window = "20d\\n"', "appeal_window"),
        ("second_minor_throttle = { factor = 0 }", "second_minor_throttle.factor"),
        ("second_minor_throttle = { factor = 1.5 }", "second_minor_throttle.factor"),
        ("second_minor_throttle = { factor = true }", "second_minor_throttle.factor"),
        ("second_minor_throttle = { factor = '0.5' }", "second_minor_throttle.factor"),
        ("sustained_abuse_throttle = { duration = '1y' }", "sustained_abuse_throttle.duration"),
        ("sustained_abuse_throttle = { speed = 1 }", "sustained_abuse_throttle.speed"),
        ("sustained_abuse_throttle = 0.5", "sustained_abuse_throttle"),
        ("sustained_abuse_denials = { count = 0 }", "sustained_abuse_denials.count"),
        ("sustained_abuse_denials = { window = 'x' }", "sustained_abuse_denials.window"),
        ("termination_after_strikes = 0", "termination_after_strikes"),
        ("termination_after_strikes = '3'", "termination_after_strikes"),
        ("termination_after_strikes = true", "termination_after_strikes"),
        ("[categories.jaywalking]\nfloor = 'low'", "categories.jaywalking"),
        ("[categories.spam]\nfloor = 'severe'", "categories.spam.floor"),
        ("[categories.spam]\ndefault_severity = 'x'", "categories.spam.default_severity"),
        ("[categories.spam]\nfloor = 'high'", "categories.spam.floor"),
        ("[categories.spam]\nsections = []", "categories.spam.sections"),
        ("[categories.spam]\nsections = [9]", "categories.spam.sections"),
        ("[categories.spam]\nsections = [2, 9]", "categories.spam.sections"),
        ("[categories.spam]\nsections = 2", "categories.spam.sections"),
        ("[categories.spam]\nsections = [0]", "categories.spam.sections"),
        ("[categories.spam]\nsections = [8]", "categories.spam.sections"),
        ("[categories.spam]\nsections = [2.0]", "categories.spam.sections"),
        ("[categories.spam]\nsections = [true]", "categories.spam.sections"),
        ("[categories.spam]\nrefer_to_authorities = 'yes'", "categories.spam.refer_to_authorities"),
        ("[categories.spam]\ncolour = 'red'", "categories.spam.colour"),
        ("[categories.csam]\nfloor = 'high'", "categories.csam.floor"),
        ("[categories.csam]\ndefault_severity = 'high'", "categories.csam.default_severity"),
        (
            "[categories.weapons_development]\ndefault_severity = 'low'\nfloor = 'low'",
            "categories.weapons_development.default_severity",
        ),
        (
            "[categories.weapons_development]\nfloor = 'high'",
            "categories.weapons_development.floor",
        ),
        ("categories = 3", "categories"),
    ],
)
def test_a_bad_file_names_the_offending_key(text: str, key: str) -> None:
    with pytest.raises(PolicyError) as caught:
        from_toml(text)
    assert key in str(caught.value)


def test_the_aups_severe_categories_stay_critical_but_their_referral_may_change() -> None:
    """AUP §6: "Severe violations (e.g. CSAM, weapons development) result in immediate
    permanent termination and may be reported to relevant authorities"."""
    with pytest.raises(PolicyError) as caught:
        from_toml("[categories.csam]\nfloor = 'high'")
    assert str(caught.value) == (
        "categories.csam.floor must stay critical, not high: AUP §6 terminates severe "
        "violations (e.g. CSAM, weapons development) immediately and permanently"
    )
    p = from_toml("[categories.csam]\nrefer_to_authorities = false\nsections = [2]")
    assert p.categories["csam"] == CategoryRule((2,), "critical", "critical", False)


@pytest.mark.parametrize("sub", ["default_severity", "floor"])
def test_an_unknown_severity_is_refused_naming_its_key_and_the_severities(sub: str) -> None:
    with pytest.raises(PolicyError) as caught:
        from_toml(f"[categories.spam]\n{sub} = 'severe'")
    assert str(caught.value) == (
        f"categories.spam.{sub} must be one of low, medium, high, critical, not 'severe'"
    )


def test_the_values_at_each_bound_are_accepted() -> None:
    p = policy_from_mapping(
        tomllib.loads(
            "termination_after_strikes = 1\n"
            "second_minor_throttle = { factor = 1 }\n"
            "sustained_abuse_denials = { count = 1 }\n"
            "[categories.spam]\ndefault_severity = 'medium'\nfloor = 'medium'\nsections = [1, 7]\n"
        )
    )
    assert p.termination_after_strikes == 1
    assert p.second_minor_throttle == ThrottleRule(1.0, timedelta(days=7))
    # Written as an integer, the factor is still the float events and what-if reports carry.
    assert isinstance(p.second_minor_throttle.factor, float)
    assert p.sustained_abuse_denials == DenialRule(1, timedelta(minutes=10))
    assert p.categories["spam"] == CategoryRule((1, 7), "medium", "medium")


@pytest.mark.parametrize(
    ("text", "span"),
    [
        ("30s", timedelta(seconds=30)),
        ("10m", timedelta(minutes=10)),
        ("24h", timedelta(hours=24)),
        ("90d", timedelta(days=90)),
    ],
)
def test_durations(text: str, span: timedelta) -> None:
    assert parse_duration(text, "k") == span


@pytest.mark.parametrize("text", ["36501d", "876025h", "99999999999d", "3153600001s", "52560001m"])
def test_a_duration_beyond_a_hundred_years_is_refused_naming_its_key(text: str) -> None:
    # Longer would make a decision's end a time no datetime (nor the log) can hold.
    with pytest.raises(PolicyError, match=r"first_high_suspension must be at most 36500 days"):
        policy_from_mapping({"first_high_suspension": text})


def test_a_hundred_years_is_the_longest_duration() -> None:
    longest = timedelta(days=36_500)
    for text in ("36500d", "876000h", "52560000m", "3153600000s"):
        assert parse_duration(text, "k") == longest


def test_a_denial_count_beyond_ten_thousand_is_refused_naming_its_key() -> None:
    # The gate keeps the times of an account's last `count` denials: the count bounds them.
    with pytest.raises(PolicyError, match=r"sustained_abuse_denials.count must be at most 10000"):
        from_toml("sustained_abuse_denials = { count = 10001 }")
    most = policy_from_mapping({"sustained_abuse_denials": {"count": 10_000}})
    assert most.sustained_abuse_denials == DenialRule(10_000, timedelta(minutes=10))
