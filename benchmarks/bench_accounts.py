"""``GET /v1/accounts`` and ``enforcement accounts`` on a deployment of many accounts.

The log is ``bench_replay.py``'s (account histories played through the real policy, copied to
every account, shifted in time), its stored standings rebuilt as ``enforcement replay`` does.
Each backend then measures, in one process and alternately, ``enforcement.account_listing
.accounts_page`` as the route runs it (a page of 100 that match, looking at no more than
``SCAN_LIMIT`` accounts) and as the CLI runs it (every account looked at): the first page of
any status, a page of a common status, a page of a rare one (open appeals: the page looks at
its ``SCAN_LIMIT`` accounts), and every account at once; the best of ``--repeats`` runs each.

Run from the repository root: ``.venv/bin/python benchmarks/bench_accounts.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench_replay import fresh_database, populate  # noqa: E402
from common import add_pg_url_argument, load_average  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from enforcement.account_listing import SCAN_LIMIT, AccountsPage, accounts_page  # noqa: E402
from enforcement.bootstrap import Container, bootstrap  # noqa: E402
from enforcement.settings import Settings  # noqa: E402
from projections.runner import rebuild_standings  # noqa: E402


def measure(container: Container, repeats: int) -> dict[str, tuple[float, AccountsPage]]:
    """Best seconds and the page of each listing."""

    def route_page(status: str | None = None, has: str | None = None) -> AccountsPage:
        """A page as the route asks for it."""
        return accounts_page(container, status=status, has=has, limit=100, scan_limit=SCAN_LIMIT)

    listings: dict[str, Callable[[], AccountsPage]] = {
        "a page of 100, any status (GET /v1/accounts)": route_page,
        "a page of 100 suspended": lambda: route_page(status="suspended"),
        "a page of 100 with open appeals": lambda: route_page(has="open_appeals"),
        "every account (enforcement accounts)": lambda: accounts_page(container),
    }
    best: dict[str, tuple[float, AccountsPage]] = {}
    for _ in range(repeats):
        for name, listing in listings.items():
            started = time.perf_counter()
            page = listing()
            seconds = time.perf_counter() - started
            if name not in best or seconds < best[name][0]:
                best[name] = (seconds, page)
    return best


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--accounts", type=int, default=20_000)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    add_pg_url_argument(parser)
    args = parser.parse_args(argv)
    console = Console(width=110)
    workdir = Path(tempfile.mkdtemp(prefix="bench_accounts_"))
    table = Table(title=f"Listing accounts, {args.accounts:,} accounts ({args.events:,} events)")
    for column in ("backend", "listing", "accounts listed", "next_after", "seconds"):
        table.add_column(column, justify="left" if column in ("backend", "listing") else "right")
    for backend in args.backends.split(","):
        with fresh_database(backend, workdir, args.pg_url) as url:
            started = time.perf_counter()
            populate(url, args.events, args.accounts, args.seed)
            container = bootstrap(Settings(database_url=url))
            try:
                rebuild_standings(container.store, container.standings)
                console.print(
                    f"[bold]{backend}[/]: log and stored standings in "
                    f"{time.perf_counter() - started:.0f}s"
                )
                for name, (seconds, page) in measure(container, args.repeats).items():
                    more = "-" if page.next_after is None else "yes"
                    table.add_row(backend, name, f"{len(page.accounts):,}", more, f"{seconds:.3f}")
            finally:
                container.close()
    console.print(table)
    console.print(
        f"Best of {args.repeats} alternating runs each, in one process; a page looks at no more "
        f"than {SCAN_LIMIT:,} accounts. Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
        f"load average {load_average()}."
    )


if __name__ == "__main__":
    main()
