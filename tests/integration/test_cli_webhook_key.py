"""``enforcement webhook-key ACCOUNT``: the installed console script prints an account's webhook
key alone on its last line, reading no database, and says in one sentence when there is no
webhook secret to derive it from."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_webhook import KEY_OF_ACCT_42

CLI = str(Path(sys.executable).with_name("enforcement"))


def webhook_key(tmp_path: Path, *args: str, secret: str | None) -> subprocess.CompletedProcess[str]:
    """The command, with ``secret`` as ENFORCEMENT_WEBHOOK_SECRET (None: unset) and a database
    file that does not exist."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENFORCEMENT_")}
    env["ENFORCEMENT_DATABASE_URL"] = f"sqlite:///{tmp_path / 'none.db'}"
    env["COLUMNS"] = "40"  # a narrow terminal: the sentence before the key stays one line
    if secret is not None:
        env["ENFORCEMENT_WEBHOOK_SECRET"] = secret
    return subprocess.run(
        [CLI, "webhook-key", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_the_key_is_printed_alone_on_the_last_line(tmp_path: Path) -> None:
    result = webhook_key(tmp_path, "acct_42", secret="s3cret")

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    *said, last = result.stdout.splitlines()
    assert last == KEY_OF_ACCT_42
    assert "acct_42" in said[-1] and "X-Enforcement-Account-Signature" in said[-1]
    assert not (tmp_path / "none.db").exists()  # no database is read, nor created
    # The secret as the service reads it: surrounding spaces are not part of it
    spaced = webhook_key(tmp_path, "acct_42", secret=" s3cret\n")
    assert spaced.stdout.splitlines()[-1] == KEY_OF_ACCT_42


@pytest.mark.parametrize("secret", [None, "", "   "])
def test_without_a_secret_it_says_so_in_one_sentence(tmp_path: Path, secret: str | None) -> None:
    result = webhook_key(tmp_path, "acct_42", secret=secret)

    assert result.returncode == 2
    assert result.stdout == ""
    [sentence] = result.stderr.splitlines()
    assert sentence.startswith("ENFORCEMENT_WEBHOOK_SECRET is unset") and sentence.endswith(".")


def test_an_account_id_the_contract_does_not_allow_is_a_usage_error(tmp_path: Path) -> None:
    result = webhook_key(tmp_path, "acct 42", secret="s3cret")

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip() == (
        "ACCOUNT must be an account id: 1 to 128 characters of A-Za-z0-9._:-."
    )
