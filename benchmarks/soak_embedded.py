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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from soak_checks import Ending, Result, age_parts, check_all, settle, show  # noqa: E402
from soak_clients import (  # noqa: E402
    Ledger,
    a_notice,
    add_accounts,
    gate_agrees,
    kill_under_load,
    make_tokens,
    replay_some,
    send_what_waits,
)
from soak_services import (  # noqa: E402
    POLICY,
    MailWatch,
    Receiver,
    Serve,
    Soak,
    kill_while_starting,
    soak_arguments,
    soak_from,
)

# ------------------------------------------------------------------ the rounds


# ------------------------------------------------------------------ the soak


def run(soak: Soak, console: Console) -> Result:
    """Run the soak in ``soak.workdir`` (made if missing) and check what it left."""
    (soak.workdir / "logs").mkdir(parents=True, exist_ok=True)
    soak.database.parent.mkdir(exist_ok=True)
    (soak.workdir / "policy.toml").write_text(POLICY)
    init = soak.cli("init")
    if init.returncode != 0:
        raise RuntimeError(f"enforcement init failed: {init.stderr}")
    tokens = make_tokens(soak)
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
                ledger, [server.base_url], tokens, rng, 20
            )
            add_accounts(soak, ledger, server.base_url, tokens["operator"], round_no, receiver)
            waiting = len(ledger.retry)
            kill_under_load(
                soak,
                ledger,
                tokens,
                [server.base_url],
                rng,
                round_no,
                lambda: ("serve", server.kill),  # noqa: B023 - called in this iteration
            )
            console.print(
                f"round {round_no + 1}/{soak.rounds}: {len(ledger.calls)} requests so far, "
                f"{waiting} sent again, {len(ledger.retry)} without an answer at the kill"
            )
        # As if 11 minutes had passed: the last start's first notice must sweep what kills left.
        parts_aged = age_parts(soak, 660)
        server = Serve(soak, soak.workdir / "logs" / f"serve-{soak.rounds}.log")
        ledger.figures["gate checks after a restart"] += gate_agrees(
            ledger, [server.base_url], tokens, rng, 20
        )
        add_accounts(soak, ledger, server.base_url, tokens["operator"], soak.rounds, receiver)
        send_what_waits(soak, ledger, tokens, [server.base_url], rng)
        a_notice(ledger, server.base_url, tokens, soak)
        replays_differ = replay_some(ledger, [server.base_url], tokens, 25)
        _, late = settle(soak, ledger)
        stop_status = server.stop()
    finally:
        mail.close()
        receiver.close()
    elapsed = time.monotonic() - started
    ending = Ending(late, replays_differ, parts_aged, {"serve": stop_status})
    checks, figures, notes = check_all(soak, ledger, receiver, mail, ending)
    figures = {
        "rounds (kills)": ledger.figures["kills"],
        "kills with a request in flight": ledger.figures["kills with a request in flight"],
        "kills while starting": ledger.figures["kills while starting"],
        "wall time": f"{elapsed:.0f} s",
        **figures,
    }
    return Result(figures, checks, notes, soak.workdir)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    soak_arguments(parser, rounds=20, seconds=8.0)
    parser.add_argument(
        "--startup-kills",
        type=float,
        default=0.2,
        help="share of rounds that also kill a serve in its first seconds (default 0.2)",
    )
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="soak-embedded-"))
    soak = soak_from(args, workdir, startup_kills=args.startup_kills)
    console = Console()
    console.print(
        f"embedded crash soak: {soak.rounds} rounds of up to {soak.seconds:g} s, "
        f"{soak.clients} clients, in {workdir} (load {os.getloadavg()[0]:.2f})"
    )
    result = run(soak, console)
    show(result, console, "embedded crash soak")
    if result.ok and args.workdir is None:
        shutil.rmtree(workdir)
    elif not result.ok:
        console.print(f"[red]failed[/]; the working directory is kept: {workdir}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
