"""A deterministic population of accounts recorded through the use cases (no tests here).

Every event goes through ``EnforcementService``, so the stored standings are the inline ones the
write path keeps. The stories mix what the ladder decides with what operators, appeals, deadlines
and delivery workers record, so that replays and reports meet every kind of event.
"""

from __future__ import annotations

import inspect
import random
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from test_service_support import OPERATOR, REPORTER, FakeClock, open_system

from enforcement import operator_decisions as ops
from enforcement.bootstrap import Container
from enforcement.errors import DomainError
from enforcement.migrations import upgrade
from enforcement.policy import ViolationReport
from enforcement.service import Actor
from events.timefmt import format_time
from projections import aup_events as ev
from projections.standing import active_suspension, remediation_is_open
from tests.conftest import create_pg_database, drop_pg_database

WORKER = Actor(name="worker:notices", correlation_id="corr-delivery", source="worker")
MINOR = ["spam", "ip_infringement", "disinformation", "impersonation", "safety_probing"]
OTHER = ["phishing", "sustained_abuse", "unapproved_adult_content", "model_extraction"]


@dataclass
class Population:
    accounts: list[str]
    actions: dict[str, int] = field(default_factory=dict)

    def count(self, action: str) -> None:
        self.actions[action] = self.actions.get(action, 0) + 1


def populate(
    system: Container, clock: FakeClock, accounts: int = 10, steps: int = 7, seed: int = 5
) -> Population:
    """``accounts`` accounts, ``steps`` steps each, interleaved (account order varies by round)."""
    rng = random.Random(seed)
    names = [f"acct_{i:03d}" for i in range(accounts)]
    population = Population(names)
    for _ in range(steps):
        clock.advance(timedelta(days=rng.randint(1, 4), minutes=rng.randint(0, 59)))
        for account in rng.sample(names, len(names)):
            clock.advance(timedelta(seconds=rng.randint(1, 30)))
            _step(system, rng, account, population)
    return population


def _step(system: Container, rng: random.Random, account: str, population: Population) -> None:
    service = system.service
    state = system.standings.load(account)
    now = system.clock()
    open_remediations = [r for r in state.remediations.values() if remediation_is_open(state, r)]
    appealable = [
        d for d in state.decisions.values() if d.open_appeal_id is None and not d.overturned
    ]
    roll = rng.random()
    try:
        if state.version == 0:
            service.operator(account, ops.ConfigureLimits(600, 1_000_000), OPERATOR)
            population.count("limits")
        elif open_remediations and roll < 0.2:
            overdue = [r for r in open_remediations if r.due_at <= format_time(now)]
            if overdue:
                service.expire_remediation(account, overdue[0].remediation_id, OPERATOR)
                population.count("expire")
            else:
                complete = ops.CompleteRemediation(open_remediations[0].remediation_id, "fixed")
                service.operator(account, complete, OPERATOR)
                population.count("complete")
        elif appealable and roll < 0.3:
            decision = rng.choice(appealable)
            filed = service.file_appeal(account, decision.event_id, "please review", OPERATOR)
            appeal_id = filed.events[0].data["appeal_id"]
            outcome = rng.choice(["upheld", "overturned"])
            service.decide_appeal(account, appeal_id, outcome, "reviewed", OPERATOR)
            population.count(f"appeal_{outcome}")
        elif roll < 0.35 and active_suspension(state, now) is None and not state.terminated:
            service.operator(account, ops.Suspend("operator review"), OPERATOR)
            population.count("operator_suspend")
        elif roll < 0.4 and state.violations:
            violation = rng.choice(list(state.violations.values()))
            if not violation.dismissed:
                dismiss = ops.DismissViolation(violation.violation_id, "false positive")
                service.operator(account, dismiss, OPERATOR)
                population.count("dismiss")
        else:
            _report(system, rng, account)
            population.count("report")
    except DomainError:
        population.count("refused")
    deliver_notices(system, account)


def _report(system: Container, rng: random.Random, account: str) -> None:
    category = rng.choice(MINOR) if rng.random() < 0.7 else rng.choice(OTHER)
    if rng.random() < 0.03:
        category = "csam"
    report = ViolationReport(
        category=category,
        occurred_at=system.clock() - timedelta(minutes=rng.randint(1, 120)),
        severity=rng.choice([None, None, "low", "medium", "high"]),
        source=rng.choice(["mail-classifier", "abuse-desk", "gate"]),
        detection=rng.choice(["automated", "automated", "human_review", "user_report"]),
        description=f"{category} seen in batch {rng.randint(1, 999)}",
    )
    system.service.report_violation(account, report, REPORTER)


def deliver_notices(system: Container, account: str) -> None:
    """What the delivery worker records: one ``NoticeDelivered`` per notice not yet delivered."""
    log = system.store.read_stream(account)
    delivered = {e.data["notice_event_id"] for e in log if e.type == "NoticeDelivered"}
    for event in log:
        if event.type == "NoticeIssued" and event.event_id not in delivered:
            receipt = ev.NoticeDelivered(event.data["notice_id"], event.event_id, "email", 1)
            system.service.record_fact(
                account,
                receipt,
                WORKER,
                causation_id=event.event_id,
                idempotency_key=event.event_id,
            )


# --------------------------------------------------------------------------- shared databases


@dataclass
class Template:
    """A populated, migrated database that tests copy rather than rebuild (population is slow)."""

    backend: str
    url: str
    now: datetime
    population: Population

    @classmethod
    def build(
        cls, backend: str, directory: Path, fill: Callable[[Container, FakeClock], Population]
    ) -> Template:
        if backend == "sqlite":
            url = f"sqlite:///{directory / 'template.db'}"
        else:
            url = create_pg_database()
        upgrade(url)
        clock = FakeClock()
        with open_system(url, clock) as system:
            population = fill(system, clock)
        return cls(backend, url, clock(), population)

    def copy(self, directory: Path) -> str:
        """A fresh database holding the template's data."""
        if self.backend == "sqlite":
            target = directory / "copy.db"
            shutil.copyfile(sa.make_url(self.url).database or "", target)
            return f"sqlite:///{target}"
        return create_pg_database(template=sa.make_url(self.url).database)

    def discard(self, url: str | None = None) -> None:
        """Drop a copy (or, without ``url``, the template itself) on PostgreSQL."""
        if self.backend == "postgres":
            drop_pg_database(url or self.url)


@contextmanager
def copied_system(template: Template, directory: Path) -> Iterator[Container]:
    """The application on a copy of ``template``, its fake clock where the population ended."""
    url = template.copy(directory)
    try:
        with open_system(url, FakeClock(template.now)) as system:
            yield system
    finally:
        if template.backend == "postgres":
            template.discard(url)


# --------------------------------------------------------------------------- fixtures

# Every populated template is built once per module on each backend.
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
Fill = Callable[[Container, FakeClock], Population]


def template_fixture(label: str, fill: Fill) -> Any:
    """A module-scoped fixture: a ``Template`` filled by ``fill``, on each backend."""

    @pytest.fixture(scope="module", params=BACKENDS)
    def template(
        request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[Template]:
        built = Template.build(request.param, tmp_path_factory.mktemp(label), fill)
        yield built
        built.discard()

    return template


def system_fixture(template: str = "template") -> Any:
    """A fixture: the application on a fresh copy of the fixture named ``template``."""

    def system(tmp_path: Path, **templates: Template) -> Iterator[Container]:
        with copied_system(templates[template], tmp_path) as container:
            yield container

    # pytest reads a fixture's dependencies from its signature: name the template there.
    keyword = inspect.Parameter.KEYWORD_ONLY
    system.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("tmp_path", keyword), inspect.Parameter(template, keyword)]
    )
    return pytest.fixture(system)
