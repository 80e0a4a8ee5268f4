"""A policy change over the real server, on SQLite and PostgreSQL: a server with the default
policy (strikes count for 90 days) decides a violation; the next server on the same database
runs a policy whose strikes count for 30, and records as it starts that this policy is in force.
Over HTTP and the CLI, its standing now, and a standing as of now, count with its own lookback;
a standing as of an instant before it started, with the lookback the log recorded. POLICY.md:
"replaying the log gives the standing that the policy of the day produced"."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from events.timefmt import format_time
from tests.conftest import create_pg_database, drop_pg_database
from tests.e2e.harness import Server, cli_env, run_cli, settled_events, start_server

served = contextmanager(start_server)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database of each backend, for two servers one after the other."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'enforcement.db'}"
        return
    url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(url)


def post_spam(server: Server, acct: str, occurred_at: datetime) -> list[dict[str, Any]]:
    body = {"account_id": acct, "category": "spam", "occurred_at": format_time(occurred_at)}
    response = server.client("reporter").post("/v1/violations", json=body)
    assert response.status_code == 201, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


def test_a_policy_change_leaves_the_standing_the_log_recorded(
    database_url: str, tmp_path: Path
) -> None:
    acct = f"policy_{uuid.uuid4().hex[:10]}"
    backend = "sqlite" if database_url.startswith("sqlite") else "postgres"
    forty_days_ago = datetime.now(UTC) - timedelta(days=40)

    first_dir = tmp_path / "default"
    first_dir.mkdir()
    with served(database_url, first_dir, backend) as default:
        first = post_spam(default, acct, forty_days_ago)
    assert [e["type"] for e in first] == [
        "ViolationReported",
        "NoticeIssued",
        "RemediationRequested",
    ]

    short = tmp_path / "short.toml"
    short.write_text('version = "aup-short"\nstrike_lookback = "30d"\n', encoding="utf-8")
    second_dir = tmp_path / "short"
    second_dir.mkdir()
    before_second = format_time(datetime.now(UTC))
    with served(database_url, second_dir, backend, policy_file=short) as server:
        gateway = server.client("gateway")
        now = gateway.get(f"/v1/accounts/{acct}/standing").json()
        as_of_now = gateway.get(
            f"/v1/accounts/{acct}/standing", params={"as_of": now["as_of"]}
        ).json()
        before = gateway.get(
            f"/v1/accounts/{acct}/standing", params={"as_of": before_second}
        ).json()
        # The running policy's 30 days, in force since this server started: the strike of 40
        # days ago has run out. Before it started, the log's 90 days: it still counted.
        assert (now["strikes"], as_of_now["strikes"], before["strikes"]) == (0, 0, 1)
        assert as_of_now["open_violations"] == []
        assert before["open_violations"] == [first[0]["data"]["violation_id"]]

        activations = server.client("auditor").get("/v1/policy-activations")
        assert activations.status_code == 200, activations.text
        listed = activations.json()["activations"]
        assert [(a["policy_version"], a["strike_lookback"]) for a in listed] == [
            ("aup-2026-11", "90d"),
            ("aup-short", "30d"),
        ]
        assert before_second < listed[1]["activated_at"] < now["as_of"]

        env = cli_env(database_url, second_dir, short)
        for instant, strikes in ((before_second, 1), (now["as_of"], 0)):
            cli = run_cli(env, second_dir, "standing", acct, "--as-of", instant, "--json")
            assert cli.returncode == 0, cli.stderr
            assert json.loads(cli.stdout)["strikes"] == strikes, instant
        cli = run_cli(env, second_dir, "policy-activations", "--json")
        assert cli.returncode == 0, cli.stderr
        assert json.loads(cli.stdout) == {"activations": listed}

        # The running policy decides with its own lookback: no prior strike, a first-time minor
        # (under the default policy, a second strike's throttle).
        second = post_spam(server, acct, datetime.now(UTC))
        assert [e["type"] for e in second] == [e["type"] for e in first]
        events = settled_events(server.client("auditor"), acct)
        lookbacks = {
            (e["metadata"]["policy_version"], e["metadata"]["strike_lookback"])
            for e in events
            if e["type"] in {"ViolationReported", "NoticeIssued", "RemediationRequested"}
        }
        assert lookbacks == {("aup-2026-11", "90d"), ("aup-short", "30d")}
        later = gateway.get(f"/v1/accounts/{acct}/standing").json()
        assert later["strikes"] == 1
