"""The composition root: settings → engine, store, policy, service, gate, broker.

``serve``, ``worker``, the CLI and the tests all build their objects here; nothing creates an
engine or a broker at import time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.engine import Engine

from enforcement.gate import Gate
from enforcement.gatekeeping import AbuseDetector, GateApplier, build_gate
from enforcement.policy import Policy, load_policy
from enforcement.service import EnforcementService
from enforcement.settings import Settings
from enforcement.tokens import TokenAuthenticator
from events import EventStore, create_engine
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
    extras: dict[str, object] = field(default_factory=dict)

    def close(self) -> None:
        self.engine.dispose()


def bootstrap(settings: Settings | None = None, clock: Clock = system_clock) -> Container:
    """Wire the application from ``settings`` (default: the environment)."""
    settings = settings or Settings.from_env()
    policy = load_policy(settings.policy_file)
    engine = create_engine(settings.database_url)
    store = EventStore(engine, clock=clock)
    standings = StandingRepository(store)
    service = EnforcementService(store=store, standings=standings, policy=policy, clock=clock)
    gate = build_gate(settings, policy)
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
    )
    container.extras["gate_applier"] = GateApplier(gate, store, standings, clock)
    return container
