"""The e2e harness: ``enforcement serve`` as a subprocess, a token made by the real CLI, clients
that check ``X-Request-Id`` on every response, and helpers to read the feed and check errors.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from enforcement.roles import Role
from enforcement.tokens import create_token
from events import create_engine
from tests.processes import served_port, stop_process

ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).with_name("enforcement"))
ROLES = ("reporter", "operator", "auditor", "gateway", "admin")
CLI_ROLE = "reporter"
STARTUP_SECONDS = 30


def cli_env(database_url: str, workdir: Path, policy_file: Path | None = None) -> dict[str, str]:
    """The environment of a command on ``database_url`` (with the policy of ``policy_file``,
    else the default one): none of this process' own ``ENFORCEMENT_`` settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENFORCEMENT_")}
    env.update(
        {
            "ENFORCEMENT_DATABASE_URL": database_url,
            "ENFORCEMENT_MAIL_DIR": str(workdir / "notices"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    if policy_file is not None:
        env["ENFORCEMENT_POLICY_FILE"] = str(policy_file)
    return env


def run_cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def create_tokens(env: dict[str, str], cwd: Path) -> dict[str, str]:
    """A token for each role: the reporter's by ``enforcement tokens create`` (the token is its
    last line), the rest meanwhile by ``create_token`` (``issue_token``, which that command
    calls, less the token's id). The reporter's is the one most requests carry, so a command
    that makes a token the server refuses fails nearly every test here; a command process per
    role cost about 0.6 s of CPU each, at each of a run's 14 or so server starts
    (``test_cli`` tests the command itself)."""
    proc = subprocess.Popen(
        [CLI, "tokens", "create", "--role", CLI_ROLE, "--name", f"e2e-{CLI_ROLE}"],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    engine = create_engine(env["ENFORCEMENT_DATABASE_URL"])
    try:
        tokens = {
            role: create_token(engine, Role(role), f"e2e-{role}")
            for role in ROLES
            if role != CLI_ROLE
        }
    finally:
        engine.dispose()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, f"tokens create --role {CLI_ROLE} failed: {err}"
    tokens[CLI_ROLE] = out.strip().splitlines()[-1]
    assert tokens[CLI_ROLE].startswith("enf_"), out
    return {role: tokens[role] for role in ROLES}


def _require_request_id(response: httpx.Response) -> None:
    assert response.headers.get("x-request-id"), (
        f"{response.request.method} {response.request.url} answered without X-Request-Id"
    )


@dataclass
class Server:
    """A running ``enforcement serve`` and an authenticated client per role."""

    backend: str
    base_url: str
    tokens: dict[str, str]
    clients: dict[str, httpx.Client] = field(default_factory=dict)
    # A command's environment and working directory on the server's database (``run_cli``).
    env: dict[str, str] = field(default_factory=dict)
    workdir: Path = Path()

    def client(self, role: str | None = None, token: str | None = None) -> httpx.Client:
        """A client for ``role`` (``None``: no token), or for an explicit ``token``."""
        key = f"token:{token}" if token is not None else (role or "anonymous")
        if key not in self.clients:
            headers = {}
            bearer = token if token is not None else (self.tokens[role] if role else None)
            if bearer is not None:
                headers["Authorization"] = f"Bearer {bearer}"
            self.clients[key] = httpx.Client(
                base_url=self.base_url,
                headers=headers,
                timeout=30,
                event_hooks={"response": [_require_request_id]},
            )
        return self.clients[key]

    def close(self) -> None:
        for c in self.clients.values():
            c.close()


def _wait_healthy(base_url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            response = httpx.get(f"{base_url}/healthz", timeout=1)
            if response.status_code == 200:
                assert response.json() == {"status": "ok"}
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(
        f"the server did not answer /healthz in {STARTUP_SECONDS}s:\n{log.read_text()}"
    )


def start_server(
    database_url: str,
    workdir: Path,
    backend: str,
    *serve_args: str,
    policy_file: Path | None = None,
) -> Iterator[Server]:
    """``init``, then ``serve`` (with ``serve_args``, and the policy of ``policy_file``) while
    the tokens are being created; stopped when done."""
    env = cli_env(database_url, workdir, policy_file)
    init = run_cli(env, workdir, "init")
    assert init.returncode == 0, init.stderr
    log = workdir / "server.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen(  # on a port the system gives it: no other process has it
            [CLI, "serve", "--port", "0", *serve_args],
            env=env,
            cwd=workdir,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        tokens = create_tokens(env, workdir)
        port = served_port(log, proc, STARTUP_SECONDS)
        server = Server(backend, f"http://127.0.0.1:{port}", tokens, env=env, workdir=workdir)
        _wait_healthy(server.base_url, proc, log)
        yield server
        server.close()
    finally:
        stop_process(proc, timeout=15)


# ------------------------------------------------------------------ helpers for the tests


def feed(client: httpx.Client) -> list[dict[str, Any]]:
    """The whole global feed, page by page."""
    out: list[dict[str, Any]] = []
    after: int | None = 0
    while after is not None:
        response = client.get("/v1/events", params={"after_position": after, "limit": 500})
        assert response.status_code == 200, response.text
        body = response.json()
        out.extend(body["events"])
        after = body["next_after_position"]
    return out


def requested_events(client: httpx.Client) -> list[str]:
    """Ids of the events that requests recorded (the background workers' own are left out:
    they record notice deliveries at their own pace)."""
    return [e["event_id"] for e in feed(client) if e["metadata"].get("source") != "worker"]


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is ``status`` with exactly ``{"error": {"code", "message", "details"}}``;
    a 422's details list each field (CONTRACT.md, "Errors")."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"], body
    error = body["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert isinstance(error["code"], str) and error["code"].replace("_", "").isalpha()
    assert error["code"] == error["code"].lower()
    message = error["message"]
    # CONTRACT.md: "<human sentence>": a capital (or a quote, a digit) first, a full stop last.
    assert isinstance(message, str) and not message[:1].islower() and message.endswith("."), error
    if status == 422:
        assert isinstance(error["details"], list) and error["details"], error
        assert all({"field", "message"} <= set(item) for item in error["details"]), error
    if code is not None:
        assert error["code"] == code, error
    return error


def settled_events(
    client: httpx.Client, account_id: str, timeout: float = 15
) -> list[dict[str, Any]]:
    """The account's events once the workers have recorded an outcome for each of its notices
    (they append ``NoticeDelivered``/``NoticeDeliveryFailed`` at their own pace)."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/v1/accounts/{account_id}/events", params={"limit": 1000})
        assert response.status_code == 200, response.text
        events = response.json()["events"]
        notices = {e["event_id"] for e in events if e["type"] == "NoticeIssued"}
        answered = {
            e["metadata"]["causation_id"]
            for e in events
            if e["type"] in ("NoticeDelivered", "NoticeDeliveryFailed")
        }
        if notices <= answered:
            return events
        assert time.monotonic() < deadline, f"notices of {account_id} were never attempted"
        time.sleep(0.05)
