"""Embedded mode end to end: one ``enforcement serve`` process (no ENFORCEMENT_REDIS_URL, no
SMTP) records a violation posted over HTTP, and its own relay and worker threads deliver the
notice as an ``.eml`` file under ENFORCEMENT_MAIL_DIR, recorded as ``NoticeDelivered``."""

from __future__ import annotations

import email
import email.policy
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from enforcement.migrations import upgrade
from enforcement.settings import Settings
from tests.processes import served_port
from tests.workers.system import CLI, cli_env, wait_until

pytestmark = pytest.mark.e2e


def run_cli(env: dict[str, str], cwd: Path, *args: str) -> str:
    done = subprocess.run(
        [CLI, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def healthy(base_url: str, proc: subprocess.Popen[bytes], log: Path) -> bool:
    assert proc.poll() is None, f"serve exited with {proc.returncode}:\n{log.read_text()}"
    try:
        return httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_serve_alone_records_a_violation_and_delivers_its_notice_as_an_eml_file(
    tmp_path: Path,
) -> None:
    # Given `enforcement serve` in embedded mode and an admin token from the CLI
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'enforcement.db'}",
        mail_dir=str(tmp_path / "mail"),
        sweep_seconds=3600,
    )
    env = cli_env(settings)
    assert "ENFORCEMENT_REDIS_URL" not in env and "ENFORCEMENT_SMTP_URL" not in env
    upgrade(settings.database_url)  # `enforcement init` is the e2e suite's business
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(  # on a port the system gives it (tests/processes.py)
            [CLI, "serve", "--port", "0"],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        token = run_cli(env, tmp_path, "tokens", "create", "--role", "admin", "--name", "e2e")
        token = token.strip().splitlines()[-1]
        base_url = f"http://127.0.0.1:{served_port(log, proc)}"
        wait_until(lambda: healthy(base_url, proc, log), "serve to answer /healthz", timeout=30)
        client = httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )

        # When the account has an email contact and a violation is posted over HTTP
        contact = client.put(
            "/v1/accounts/acct_e2e/contact", json={"email": "security@customer.test"}
        )
        assert contact.status_code == 200, contact.text
        posted = client.post(
            "/v1/violations",
            json={
                "account_id": "acct_e2e",
                "category": "phishing",
                "severity": "medium",
                "description": "credential-harvesting pages generated at scale",
            },
        )
        assert posted.status_code == 201, posted.text
        [notice] = [d for d in posted.json()["decisions"] if d["type"] == "NoticeIssued"]

        # Then the server's own workers record the delivery
        def delivered() -> list[dict[str, Any]]:
            events = client.get("/v1/accounts/acct_e2e/events").json()["events"]
            return [e for e in events if e["type"] == "NoticeDelivered"]

        [receipt] = wait_until(delivered, "NoticeDelivered over the API", timeout=30)
        assert receipt["data"]["notice_event_id"] == notice["event_id"]
        assert (receipt["data"]["channel"], receipt["data"]["attempt"]) == ("email", 1)
        assert receipt["metadata"]["causation_id"] == notice["event_id"]

        # and the notice is an .eml file named after the NoticeIssued event
        [eml] = list((tmp_path / "mail").glob("*.eml"))
        assert eml.name == f"{notice['event_id']}.eml"
        message = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
        assert message["To"] == "security@customer.test"
        assert message["X-Enforcement-Event-Id"] == notice["event_id"]
        text = message.get_content()
        assert "Account: acct_e2e" in text
        assert "AUP §2 (phishing)" in text
        assert f"Deadline: {notice['data']['deadline']}" in text
        assert "credential-harvesting pages generated at scale" in text
        assert "How to appeal" in text
        client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # uvicorn re-raises the SIGTERM it handled once it has shut down cleanly
    assert proc.returncode in (0, -signal.SIGTERM), log.read_text()
    assert "Finished server process" in log.read_text()
