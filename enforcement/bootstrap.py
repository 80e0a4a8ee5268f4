"""The composition root: settings → engine, store, policy, service, gate, broker.

``serve``, ``worker``, the CLI and the tests all build their objects here; nothing creates an
engine or a broker at import time.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from enforcement import policy_activations
from enforcement.closing import close_once_ended
from enforcement.gate import Gate, GateDecision
from enforcement.gatekeeping import (
    AbuseDetector,
    GateApplier,
    GatePush,
    GateSeeder,
    build_gate,
    build_push_gate,
)
from enforcement.policy import Policy, load_policy
from enforcement.service import EnforcementService
from enforcement.settings import Settings
from enforcement.tokens import TokenAuthenticator
from events import EventStore, create_engine
from events.timefmt import to_utc
from projections.stored import StandingRepository

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass
class Container:
    settings: Settings
    engine: Engine
    store: EventStore
    policy: Policy
    standings: StandingRepository
    service: EnforcementService
    tokens: TokenAuthenticator
    clock: Clock
    gate: Gate
    abuse: AbuseDetector
    # The gate the use cases push their decisions to: ``gate`` itself, or on Redis the same
    # store through a client of its own (``build_push_gate``).
    push_gate: Gate
    extras: dict[str, object] = field(default_factory=dict)
    # Threads that may still use the engine and the gates: the workers' threads still busy when
    # their stop returned (``runtime.start_background``). ``close`` waits for them.
    users: list[threading.Thread] = field(default_factory=list)

    def gate_check(self, account_id: str, key_id: str, tokens: int = 0) -> GateDecision:
        """The gate's check as ``POST /v1/gate/check`` makes it, for a gateway written in
        Python (CONTRACT.md: "the same check is a Python call"): a denial also feeds the AUP §3
        reports (``AbuseDetector``), and an account the gate does not hold is learned from the
        database first. ``GateUnavailable`` when the gate's store is down."""
        decision = self.gate.check(account_id, key_id, tokens)
        if not decision.allowed:
            self.abuse.observe(account_id, key_id, decision)
        return decision

    def close(self) -> None:
        """Close the database pool and the gates' Redis connections: at once, or, while one of
        ``users`` still runs, from a thread of its own once they have ended (``closing``)."""
        close_once_ended(self.users, self._close_now, "closing-container")

    def _close_now(self) -> None:
        self.engine.dispose()
        self.gate.close()
        if self.push_gate is not self.gate:
            self.push_gate.close()


# SQLite connections the pool keeps besides one per worker thread: the API's request threads,
# the relay, the sweep. SQLAlchemy's default keeps 5 and closes every connection beyond them
# when it is returned; the next one opened runs the connection PRAGMAs and reads the schema
# again, which under concurrent requests and embedded workers happened hundreds of times a
# second. An idle SQLite connection is a file handle and a page cache.
SQLITE_POOL_EXTRA = 16


def engine_options(settings: Settings) -> dict[str, Any]:
    """Options for ``create_engine`` beyond the URL: on SQLite, a pool that keeps a connection
    for each thread that may hold one at a time."""
    url = sa.make_url(settings.database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return {}  # another database, or SQLite in memory (one connection per thread)
    if "memory" in str(url.query.get("mode", "")):
        return {}
    return {"pool_size": settings.worker_threads + SQLITE_POOL_EXTRA, "max_overflow": 40}


def _seconds(clock: Clock) -> Callable[[], float]:
    return lambda: to_utc(clock()).timestamp()  # a naive datetime is UTC here, as everywhere


def bootstrap(settings: Settings | None = None, clock: Clock = system_clock) -> Container:
    """Wire the application from ``settings`` (default: the environment)."""
    settings = settings or Settings.from_env()
    policy = load_policy(settings.policy_file)
    engine = create_engine(
        settings.database_url,
        answer_timeout=settings.database_timeout_ms / 1000,
        **engine_options(settings),
    )
    store = EventStore(engine, clock=clock)
    standings = StandingRepository(store)
    # The embedded gate reads the use cases' clock (as seconds), so that a throttle they
    # record ends in the gate when it ends for them; the system clock's seconds are time.time.
    gate = build_gate(settings, policy, time.time if clock is system_clock else _seconds(clock))
    push_gate = build_push_gate(settings, policy, gate)
    service = EnforcementService(
        store=store,
        standings=standings,
        policy=policy,
        clock=clock,
        after_commit=GatePush(push_gate),
        policy_start=functools.partial(policy_activations.in_force, engine),
    )
    container = Container(
        settings=settings,
        engine=engine,
        store=store,
        policy=policy,
        standings=standings,
        service=service,
        tokens=TokenAuthenticator(engine),
        clock=clock,
        gate=gate,
        abuse=AbuseDetector(service, policy),
        push_gate=push_gate,
    )
    container.extras["gate_applier"] = GateApplier(gate, store, standings, clock)
    gate.set_seeder(GateSeeder(gate, standings, clock))
    return container
