"""Crash soak of the embedded default: ``enforcement serve`` on one SQLite file, with its
in-process relay, notice workers (``.eml`` files and webhooks) and deadline sweep, killed with
SIGKILL under concurrent load round after round, then checked.

Each round starts the real ``serve`` on the same database, and up to four client threads post
violations (single and in batches), abuse reports and operator commands, each with an
``Idempotency-Key`` and a marker that names the one event it records; the server is killed at a
random moment with requests in flight, and every request without an answer is sent again after
the restart, key and body as they were. A last start takes those, settles, and is stopped with
SIGTERM. Then: each request answered 2xx recorded exactly once and one answered 4xx not at all,
``enforcement verify`` intact, every notice delivered on each of its channels (duplicates
counted, and only where a kill cut a delivery off), deadlines escalated once, ``enforcement
replay`` giving the same standings, no stray files, ``PRAGMA integrity_check`` ok, and more:
``benchmarks/README.md`` lists every check.

    .venv/bin/python benchmarks/soak_embedded.py --rounds 20 --seconds 8

Exit status 0 when every check passed, 1 otherwise (the working directory is then kept).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from soak_checks import Ending, age_parts, check_all, settle  # noqa: E402
from soak_clients import (  # noqa: E402
    REPORTS,
    Actions,
    ClientThread,
    Ledger,
    send,
    settle_answer,
)
from soak_services import (  # noqa: E402
    POLICY,
    MailWatch,
    Receiver,
    Serve,
    Soak,
    kill_while_starting,
)

from events.timefmt import format_time  # noqa: E402

# ------------------------------------------------------------------ the rounds


@dataclass
class Result:
    figures: dict[str, Any]
    checks: list[tuple[str, bool, str]]
    notes: list[str]
    workdir: Path

    @property
    def ok(self) -> bool:
        return all(passed for _, passed, _ in self.checks)

    @property
    def failures(self) -> list[str]:
        return [f"{name}: {detail}" for name, passed, detail in self.checks if not passed]


def _tokens(soak: Soak) -> dict[str, str]:
    tokens = {}
    for role in ("reporter", "operator", "gateway"):
        done = soak.cli("tokens", "create", "--role", role, "--name", f"soak-{role}")
        if done.returncode != 0:
            raise RuntimeError(f"tokens create failed: {done.stderr}")
        tokens[role] = done.stdout.strip().splitlines()[-1]
    return tokens


def _add_accounts(
    soak: Soak, ledger: Ledger, server: Serve, token: str, round_no: int, receiver: Receiver
) -> None:
    """New accounts for this round, each with its contact (e-mail, webhook, or both) set before
    anything is reported on it."""
    with httpx.Client(
        base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:
        for i in range(soak.accounts_per_round):
            account = f"soak-r{round_no}-a{i}"
            email, webhook = ((True, False), (False, True), (True, True))[i % 3]
            body = {
                "email": f"owner-{account}@example.test" if email else None,
                "webhook_url": receiver.url if webhook else None,
            }
            answer = client.put(f"/v1/accounts/{account}/contact", json=body)
            if answer.status_code != 200:
                raise RuntimeError(f"setting a contact failed: {answer.status_code} {answer.text}")
            with ledger.lock:
                ledger.accounts.append(account)
                ledger.contacts[account] = (email, webhook)


# A standing that may change by itself within this many seconds (a deadline due) is not asked
# of the gate: the scheduler may be changing it as the gate is asked.
GATE_MARGIN_SECONDS = 5.0


def gate_agrees(
    ledger: Ledger, server: Serve, tokens: dict[str, str], rng: random.Random, count: int
) -> int:
    """Ask the gate of a just restarted server about up to ``count`` accounts, each after its
    standing: a suspended or terminated account must be refused from the first check (the
    gate's memory died with the process), one restricted by no suspension must be allowed.
    Returns how many were asked; each answer that disagrees is a note and a figure."""
    with ledger.lock:
        accounts = rng.sample(ledger.accounts, min(count, len(ledger.accounts)))
    soon = format_time(datetime.now(UTC) + timedelta(seconds=GATE_MARGIN_SECONDS))
    asked = 0
    with (
        httpx.Client(base_url=server.base_url, timeout=30) as client,
        ledger.lock,  # no client runs now: the lock only guards the figures
    ):
        for account in accounts:
            standing = client.get(
                f"/v1/accounts/{account}/standing",
                headers={"Authorization": f"Bearer {tokens['operator']}"},
            ).json()
            suspension = standing["suspension"]
            due = [r["due_at"] for r in standing["open_remediations"]]
            if standing["terminated"]:
                expected = "terminated"
            elif suspension is not None and (suspension["until"] or "9999") > soon:
                expected = "suspended"
            elif suspension is None and all(d > soon for d in due):
                expected = "ok"
            else:
                continue  # a deadline due any moment
            answer = client.post(
                "/v1/gate/check",
                json={"account_id": account, "key_id": "soak-key"},
                headers={"Authorization": f"Bearer {tokens['gateway']}"},
            ).json()
            asked += 1
            reason = answer.get("reason")
            if reason != expected:
                ledger.figures["gate answers that disagree with the standing"] += 1
                if len(ledger.notes) < 50:
                    ledger.notes.append(
                        f"gate: {account} answered {reason!r}, its standing says {expected!r}"
                    )
    return asked


def _clients(
    soak: Soak,
    ledger: Ledger,
    tokens: dict[str, str],
    server: Serve,
    rng: random.Random,
    round_no: int,
    new_calls: bool,
) -> tuple[list[ClientThread], threading.Event]:
    """The round's clients, started: the first is an operator (reports and commands), the
    others reporters; with ``new_calls`` false they only send again what waits."""
    stop = threading.Event()
    threads = []
    for i in range(soak.clients):
        role = "operator" if i == 0 else "reporter"
        window = 2 * soak.accounts_per_round  # this round's accounts and the last round's
        actions = Actions(ledger, random.Random(rng.random()), f"r{round_no}c{i}", window)
        if role == "reporter":
            actions.makers = [m for m in actions.makers if m[0].__name__ in REPORTS]
        thread = ClientThread(ledger, actions if new_calls else None, server.base_url, tokens, stop)
        thread.start()
        threads.append(thread)
    return threads, stop


def _kill_under_load(
    soak: Soak,
    ledger: Ledger,
    tokens: dict[str, str],
    server: Serve,
    rng: random.Random,
    round_no: int,
) -> None:
    """Load the server, then SIGKILL it at a random moment, once a request is in flight."""
    threads, stop = _clients(soak, ledger, tokens, server, rng, round_no, True)
    time.sleep(rng.uniform(0.1, soak.seconds))
    deadline = time.monotonic() + 10
    while ledger.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    in_flight = ledger.in_flight
    killed_at = server.kill()
    stop.set()
    for thread in threads:
        thread.join()
    with ledger.lock:
        ledger.kills.append(killed_at)
        ledger.figures["kills"] += 1
        ledger.figures["kills with a request in flight"] += in_flight > 0


def _send_what_waits(
    soak: Soak, ledger: Ledger, tokens: dict[str, str], server: Serve, rng: random.Random
) -> None:
    """Send again every request without a definitive answer, until none is left."""
    threads, stop = _clients(soak, ledger, tokens, server, rng, soak.rounds, False)
    deadline = time.monotonic() + soak.settle_seconds
    while time.monotonic() < deadline:
        with ledger.lock:
            if not ledger.retry and ledger.in_flight == 0:
                break
        time.sleep(0.05)
    stop.set()
    for thread in threads:
        thread.join()


def _a_notice(ledger: Ledger, server: Serve, tokens: dict[str, str], soak: Soak) -> None:
    """Report a first violation on a new account with an e-mail contact: its warning is a
    notice written as an ``.eml`` file (the last start's first, if nothing else wrote one)."""
    account = f"soak-r{soak.rounds}-a0"  # e-mail only (``_add_accounts``)
    call = Actions(ledger, random.Random(0), "last", 1).violation("last-1", account, "spam")
    ledger.calls.append(call)
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        if not settle_answer(ledger, call, send(client, call, tokens)):
            raise RuntimeError(f"the last violation was not recorded: {call.answer}")


def _replay_some(ledger: Ledger, server: Serve, tokens: dict[str, str], count: int) -> list[str]:
    """Send again (key and body) up to ``count`` acknowledged requests: each must answer 200
    with what it answered first. Returns what differed."""
    acked = [c for c in ledger.calls if c.acknowledged and c.kind != "batch"]
    sample = random.Random(0).sample(acked, min(count, len(acked)))
    differ = []
    for call in sample:
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            answer = send(client, call, tokens)
        call.replay_checked = True
        first, again = call.answer, answer.json() if answer.status_code < 500 else None
        if answer.status_code != 200 or again is None or _ids(first) != _ids(again):
            differ.append(f"{call.kind} {call.key}: {answer.status_code} {answer.text[:200]}")
    return differ


def _ids(answer: Any) -> Any:
    """What identifies an answer: its violation, report, or events."""
    if "violation_id" in answer:
        return answer["violation_id"], [e["event_id"] for e in answer["decisions"]]
    if "report_id" in answer:
        return answer["report_id"]
    return [e["event_id"] for e in answer.get("events", [])]


# ------------------------------------------------------------------ the soak


def run(soak: Soak, console: Console) -> Result:
    """Run the soak in ``soak.workdir`` (made if missing) and check what it left."""
    (soak.workdir / "logs").mkdir(parents=True, exist_ok=True)
    soak.database.parent.mkdir(exist_ok=True)
    (soak.workdir / "policy.toml").write_text(POLICY)
    init = soak.cli("init")
    if init.returncode != 0:
        raise RuntimeError(f"enforcement init failed: {init.stderr}")
    tokens = _tokens(soak)
    ledger = Ledger()
    rng = random.Random(soak.seed)
    receiver = Receiver(soak.webhook_fail_rate, soak.seed)
    mail = MailWatch(soak.mail_dir)
    mail.start()
    started = time.monotonic()
    try:
        for round_no in range(soak.rounds):
            log_path = soak.workdir / "logs" / f"serve-{round_no}.log"
            if rng.random() < soak.startup_kills:
                ledger.kills.append(
                    kill_while_starting(soak, log_path.with_suffix(".start.log"), rng)
                )
                ledger.figures["kills while starting"] += 1
            server = Serve(soak, log_path)
            ledger.figures["gate checks after a restart"] += gate_agrees(
                ledger, server, tokens, rng, 20
            )
            _add_accounts(soak, ledger, server, tokens["operator"], round_no, receiver)
            waiting = len(ledger.retry)
            _kill_under_load(soak, ledger, tokens, server, rng, round_no)
            console.print(
                f"round {round_no + 1}/{soak.rounds}: {len(ledger.calls)} requests so far, "
                f"{waiting} sent again, {len(ledger.retry)} without an answer at the kill"
            )
        # As if 11 minutes had passed: the last start's first notice must sweep what kills left.
        parts_aged = age_parts(soak, 660)
        server = Serve(soak, soak.workdir / "logs" / f"serve-{soak.rounds}.log")
        ledger.figures["gate checks after a restart"] += gate_agrees(
            ledger, server, tokens, rng, 20
        )
        _add_accounts(soak, ledger, server, tokens["operator"], soak.rounds, receiver)
        _send_what_waits(soak, ledger, tokens, server, rng)
        _a_notice(ledger, server, tokens, soak)
        _, late = settle(soak, ledger)
        replays_differ = _replay_some(ledger, server, tokens, 25)
        stop_status = server.stop()
    finally:
        mail.close()
        receiver.close()
    elapsed = time.monotonic() - started
    ending = Ending(late, replays_differ, parts_aged, stop_status)
    checks, figures, notes = check_all(soak, ledger, receiver, mail, ending)
    figures = {
        "rounds (kills)": ledger.figures["kills"],
        "kills with a request in flight": ledger.figures["kills with a request in flight"],
        "kills while starting": ledger.figures["kills while starting"],
        "wall time": f"{elapsed:.0f} s",
        **figures,
    }
    return Result(figures, checks, notes, soak.workdir)


def show(result: Result, console: Console) -> None:
    table = Table(title="embedded crash soak: figures", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name, value in result.figures.items():
        table.add_row(name, str(value))
    console.print(table)
    checks = Table(title="checks")
    for column in ("check", "", "detail"):
        checks.add_column(column, overflow="fold")
    for name, passed, detail in result.checks:
        checks.add_row(name, "[green]ok[/]" if passed else "[red]FAILED[/]", detail)
    console.print(checks)
    if result.notes:
        console.print(f"[yellow]{len(result.notes)} notes[/] (answers and log lines to look at):")
        for note in result.notes[:20]:
            console.print(f"  {note}", markup=False, highlight=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="kills (default 20)")
    parser.add_argument(
        "--seconds", type=float, default=8.0, help="longest load before a kill (default 8)"
    )
    parser.add_argument("--clients", type=int, default=4, choices=range(1, 5), metavar="1-4")
    parser.add_argument("--accounts", type=int, default=30, help="new accounts per round")
    parser.add_argument(
        "--webhook-failures", type=float, default=0.2, help="share of first receipts answered 500"
    )
    parser.add_argument(
        "--startup-kills",
        type=float,
        default=0.2,
        help="share of rounds that also kill a serve in its first seconds (default 0.2)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, help="kept afterwards (default: a temporary one)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="soak-embedded-"))
    soak = Soak(
        workdir,
        rounds=args.rounds,
        seconds=args.seconds,
        clients=args.clients,
        accounts_per_round=args.accounts,
        webhook_fail_rate=args.webhook_failures,
        startup_kills=args.startup_kills,
        seed=args.seed,
    )
    console = Console()
    console.print(
        f"embedded crash soak: {soak.rounds} rounds of up to {soak.seconds:g} s, "
        f"{soak.clients} clients, in {workdir} (load {os.getloadavg()[0]:.2f})"
    )
    result = run(soak, console)
    show(result, console)
    if result.ok and args.workdir is None:
        shutil.rmtree(workdir)
    elif not result.ok:
        console.print(f"[red]failed[/]; the working directory is kept: {workdir}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
