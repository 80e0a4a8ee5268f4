"""``load_policy`` reads the policy file: POLICY.md's block as a file is the default, and a file
that is missing, not UTF-8 or not valid names itself in the error. (The document's rules:
``tests/unit/test_policy_file.py``.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from enforcement.errors import PolicyError
from enforcement.policy import DEFAULT_POLICY, load_policy
from tests.unit.test_policy_file import POLICY_MD_TOML


def test_the_policy_md_file_loads_as_the_default(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY_MD_TOML, encoding="utf-8")
    assert load_policy(str(path)) == DEFAULT_POLICY


def test_an_unreadable_or_malformed_file_is_a_policy_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(PolicyError, match=r"missing\.toml"):
        load_policy(str(missing))
    broken = tmp_path / "broken.toml"
    broken.write_text("strike_lookback = ", encoding="utf-8")
    with pytest.raises(PolicyError, match="not valid TOML"):
        load_policy(str(broken))
    latin = tmp_path / "latin.toml"
    latin.write_bytes("version = 'aup-2026-11-\u00e9'\n".encode("latin-1"))
    with pytest.raises(PolicyError, match=r"latin\.toml is not valid TOML: it is not UTF-8"):
        load_policy(str(latin))
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("appeal_window = 'soon'", encoding="utf-8")
    with pytest.raises(PolicyError, match=r"wrong\.toml.*appeal_window"):
        load_policy(str(wrong))
