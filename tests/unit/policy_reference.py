"""An independent reference model of POLICY.md's ladder, for the differential oracle.

Written from POLICY.md, the AUP, docs/design.md and README.md's "Decisions" list only, never from
``enforcement/policy*.py``, ``enforcement/decider.py`` or ``projections/standing*.py``, so that
``test_policy_oracle.py`` compares two readings of the same text. It is meant to be obviously
correct, not fast: plain lists, one rule per line, every number from POLICY.md's policy file
(``RefPolicy``: the shipped default, or any other file's numbers).

Readings taken where the texts leave a choice (each one checked against the product by the
oracle; see the module docstring of ``test_policy_oracle.py`` for how they were settled):

- Under another policy file the table's rows keep their order: critical first, then
  ``termination_after_strikes`` prior strikes or more (so at 1 any second strike terminates),
  then high (the first one for ``first_high_suspension``, any later one indefinitely), then minor
  (none prior: a warning and a remediation; one: the throttle; two or more, below the
  termination count: ``third_minor_suspension``).
- An operator's suspension, throttle or termination records its notice unless it is taken with
  ``notify: false`` (POLICY.md, "with or without notice"); nothing else differs.
- An abuse report is recorded and decides nothing (no strike) until an operator triages it,
  once; rejected, nothing more; confirmed, it is a violation of its category and the triage's
  severity decided by the ladder as any other. It occurred when the report was received (the
  texts do not say; triage time is the other reading, which would make a report triaged late
  count for longer; the product takes the reception, and so does the reference). The gate files
  no report while one of its category is open (README).
- A throttle of one key (an operator's) is listed in the standing as any throttle and makes the
  account ``throttled`` (CONTRACT.md names no exception: "the most severe that holds").
- A strike counts for ``strike_lookback`` from when it occurred: active at ``t`` while
  ``t < occurred_at + lookback`` (and not dismissed), from when it is recorded, even when it
  occurred up to the 5 minutes after that CONTRACT.md allows (a reporter's clock ahead).
- "Prior strikes" are active strikes recorded before the new violation, counted at the decision
  time (README).
- "A longer suspension replaces a shorter one": strictly longer (indefinite is longer than any
  timed one). A ladder suspension that is not longer than the one in force is still recorded,
  held behind it (README), and the one in force stays current.
- A suspension or throttle is in force at ``t`` while ``t < until`` ("whose until has passed no
  longer counts").
- Critical is checked before the strike count, so a critical violation with 3 prior strikes is
  still referred to the authorities when its category calls for it.
- ``sustained_abuse`` always takes its own row, whatever its severity and the strikes (README).
- On a terminated account a violation is recorded and nothing else; it is a strike unless it is
  ``sustained_abuse`` or adult content on an approved account. When an appeal reverses that
  termination, each such violation not dismissed by the reversal is decided then, in the order
  recorded, as on an account not terminated: its prior strikes are the active strikes recorded
  before it (POLICY.md's rows then apply: a critical one terminates again).
- A remediation is open until completed, expired, or all its violations are dismissed; the
  expiry fires once the clock is at or past ``due_at`` and suspends for 7 days from when it is
  recorded (design.md), or suspends nothing on a terminated account.
- A remediation can be completed only before its due time: from ``due_at`` on it is "not
  completed by its due time" and only the expiry closes it.
- An operator's dismissal removes the strike and closes remediations whose violations are all
  dismissed; the decisions already taken on it stand (README).
- An appeal may be filed until ``appeal_window`` after its decision, inclusive, and not against
  a decision already overturned. Overturned, it reverses that decision alone (a throttle is
  lifted, a remediation closed, a termination reversed, a suspension ended) and dismisses the
  violations it was taken on (a remediation request's reversal also ends, in the same way, the
  suspension its expiry imposed, if that still runs: POLICY.md's "reverses the decision", whose
  penalty for not meeting it goes with it); when the suspension it ends is the one in force, the
  longest other
  one that still runs is in force again, unless it had been dropped: by running out of the one in
  force (that ends every suspension), a reinstatement, or an operator's strictly shorter
  suspension replacing the one in force (README: "winning an appeal must not leave the account
  worse off"), which drops every suspension that would outlast it, held ones included.
- Limits (CONTRACT.md's ``PUT …/keys/{key_id}/limits`` and ``PUT …/limits``, AUP §3) are the
  operator's configuration, not a restriction: no notice, no decision an appeal may target, and
  taken on any account, a terminated one too (nothing in the texts refuses them). The latest
  configured for a key, or for the account (its ceiling across all keys), is the one that holds,
  for good: limits do not end by themselves, and no status or appeal changes them. A key or an
  account with none has the deployment's default. Effective at ``t``: a key's limits times the
  most restrictive throttle in force on the account or on that key, the ceiling's times the most
  restrictive account-wide one; a request must fit both (the gate test holds the gate to it).
- The policy file's ``categories`` (policy_file.py) set a category's default severity, floor
  and ``refer_to_authorities``. A referred category is referred only when a critical violation
  of it terminates (POLICY.md's table names the referral in the critical row only; AUP §6: severe
  violations "may be reported"), not when a lesser one terminates by the strike count.
- Gate denials (rate or quota, the only ones counted) raise ``sustained_abuse`` at a denial when
  the account's ``count`` most recent denials fall less than ``window`` before it (README: read
  strictly; one exactly ``window`` old does not count), unless a sustained-abuse throttle is in
  force (README: "once a bout") or the account is terminated (the gate denies it otherwise
  then, with nothing counted). It is decided as any ``sustained_abuse`` at that instant.
- An operator's suspension replaces whatever is in force (design.md); an operator's suspension,
  throttle or termination on a terminated account, a reinstatement of an account that is
  terminated or not suspended, and the lift of a throttle no longer in force are refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

SEVERITIES = ("low", "medium", "high", "critical")

# POLICY.md's category table: (default severity, floor).
CATEGORY_TABLE: dict[str, tuple[str, str]] = {
    "csam": ("critical", "critical"),
    "weapons_development": ("critical", "critical"),
    "violence_facilitation": ("high", "high"),
    "illegal_content": ("high", "medium"),
    "ip_infringement": ("medium", "low"),
    "spam": ("medium", "low"),
    "phishing": ("high", "medium"),
    "cyberweapons": ("high", "high"),
    "disinformation": ("medium", "low"),
    "safety_circumvention": ("high", "medium"),
    "personal_data_harvesting": ("high", "medium"),
    "impersonation": ("medium", "low"),
    "surveillance": ("high", "high"),
    "rate_limit_circumvention": ("medium", "low"),
    "sustained_abuse": ("low", "low"),
    "unapproved_adult_content": ("low", "low"),
    "missing_content_filtering": ("low", "low"),
    "safety_probing": ("medium", "low"),
    "model_extraction": ("high", "medium"),
    "training_data_extraction": ("high", "medium"),
}
REFERRED = ("csam", "weapons_development")
# A category as a policy file may set it: (default severity, floor, refer to the authorities).
CategoryRule = tuple[str, str, bool]
DEFAULT_CATEGORIES: dict[str, CategoryRule] = {
    name: (default, floor, name in REFERRED) for name, (default, floor) in CATEGORY_TABLE.items()
}


@dataclass(frozen=True)
class RefPolicy:
    """The numbers of POLICY.md's policy file; the defaults are the shipped ``aup-2026-11``. A
    file that leaves a key out (or a throttle's ``factor`` or ``duration``) keeps its default."""

    version: str = "aup-2026-11"
    strike_lookback: timedelta = timedelta(days=90)
    remediation_window: timedelta = timedelta(days=7)
    first_high_suspension: timedelta = timedelta(days=7)
    second_minor_throttle: tuple[float, timedelta] = (0.25, timedelta(days=7))
    third_minor_suspension: timedelta = timedelta(days=30)
    missed_remediation_suspension: timedelta = timedelta(days=7)
    sustained_abuse_throttle: tuple[float, timedelta] = (0.5, timedelta(hours=24))
    sustained_abuse_denials: tuple[int, timedelta] = (100, timedelta(minutes=10))
    termination_after_strikes: int = 3
    appeal_window: timedelta = timedelta(days=20)
    categories: dict[str, CategoryRule] = field(default_factory=lambda: dict(DEFAULT_CATEGORIES))


DEFAULT = RefPolicy()

# A decision as the oracle compares it: the event type and its key numbers.
Decision = tuple[object, ...]


def _notice(kind: str, notify: bool) -> list[Decision]:
    return [("NoticeIssued", kind)] if notify else []


def effective_severity(category: str, reported: str | None, policy: RefPolicy = DEFAULT) -> str:
    default, floor, _ = policy.categories[category]
    if reported is None:
        return default
    return max(reported, floor, key=SEVERITIES.index)


@dataclass
class Violation:
    key: str
    category: str
    severity: str
    occurred_at: datetime
    strike: bool
    dismissed: bool = False
    held: bool = False  # recorded on a terminated account: nothing decided on it yet


@dataclass
class Suspension:
    until: datetime | None  # None: indefinite
    overturned: bool = False
    dropped: bool = False  # ended for good: run out, reinstated, or replaced by a shorter one

    def in_force(self, at: datetime) -> bool:
        return self.until is None or at < self.until

    def longer_than(self, other: Suspension) -> bool:
        if other.until is None:
            return False
        return self.until is None or self.until > other.until


@dataclass
class Remediation:
    key: str
    due_at: datetime
    violations: list[str]
    closed: bool = False
    missed: Suspension | None = None  # the suspension its expiry imposed


@dataclass
class Throttle:
    factor: float
    expires_at: datetime | None  # None: until lifted
    lifted: bool = False
    key_id: str | None = None  # None: account-wide (every throttle of the ladder)
    sustained: bool = False  # the sustained_abuse row's

    def in_force(self, at: datetime) -> bool:
        return not self.lifted and (self.expires_at is None or at < self.expires_at)


@dataclass
class Recorded:
    """A decision an appeal may target (POLICY.md: throttle, suspension, termination,
    remediation request), with the violations behind it."""

    type: str
    recorded_at: datetime
    violations: list[str]
    target: Suspension | Throttle | Remediation | None
    overturned: bool = False


@dataclass
class RefStanding:
    status: str
    strikes: int
    open_violations: frozenset[str]
    open_remediations: frozenset[tuple[str, datetime]]
    throttles: frozenset[tuple[str | None, float, datetime | None]]  # (key_id, factor, expires)
    suspension: tuple[datetime | None] | None  # (until,) or None
    terminated: bool
    adult_content_approved: bool
    open_abuse_reports: int
    # Configured limits, (key_id or None for the account's ceiling, rpm, tokens per day).
    limits: frozenset[tuple[str | None, int, int]] = frozenset()


@dataclass
class AbuseReport:
    """A third party's report (CONTRACT.md, AUP §7), or the gate's (README): no strike until an
    operator triages it."""

    key: str
    category: str
    received_at: datetime
    status: str = "open"  # or the triage's outcome


@dataclass
class Reference:
    """One account under ``policy``. Keys (violation and remediation) are the caller's."""

    policy: RefPolicy = field(default_factory=RefPolicy)
    violations: list[Violation] = field(default_factory=list)
    remediations: list[Remediation] = field(default_factory=list)
    throttles: list[Throttle] = field(default_factory=list)
    abuse_reports: list[AbuseReport] = field(default_factory=list)
    suspension: Suspension | None = None  # the one in force, if it has not run out
    suspensions: list[Suspension] = field(default_factory=list)  # every one recorded
    decisions: list[Recorded] = field(default_factory=list)  # in the order recorded
    terminated: bool = False
    adult_approved: bool = False
    limits: dict[str | None, tuple[int, int]] = field(default_factory=dict)  # key (None: ceiling)
    denials: list[datetime] = field(default_factory=list)  # the gate's, counted ones
    # The decisions the last overturned termination took on the violations it had held.
    held_decisions: list[Decision] = field(default_factory=list)

    # --- reading ------------------------------------------------------------------------------

    def strike_active(self, v: Violation, at: datetime) -> bool:
        return v.strike and not v.dismissed and at < v.occurred_at + self.policy.strike_lookback

    def strikes(self, at: datetime) -> int:
        return sum(1 for v in self.violations if self.strike_active(v, at))

    def standing(self, at: datetime) -> RefStanding:
        """The standing at ``at``, everything recorded so far being recorded at or before it."""
        suspended = self.suspension is not None and self.suspension.in_force(at)
        throttles = frozenset(
            (t.key_id, t.factor, t.expires_at) for t in self.throttles if t.in_force(at)
        )
        remediations = frozenset((r.key, r.due_at) for r in self.remediations if not r.closed)
        strikes = self.strikes(at)
        if self.terminated:
            status = "terminated"
        elif suspended:
            status = "suspended"
        elif throttles:
            status = "throttled"
        elif remediations:
            status = "remediation_due"
        elif strikes:
            status = "warned"
        else:
            status = "good_standing"
        open_violations = frozenset(
            v.key
            for v in self.violations
            if not v.dismissed and at < v.occurred_at + self.policy.strike_lookback
        )
        return RefStanding(
            status=status,
            strikes=strikes,
            open_violations=open_violations,
            open_remediations=remediations,
            throttles=throttles,
            suspension=(self.suspension.until,) if suspended and self.suspension else None,
            terminated=self.terminated,
            adult_content_approved=self.adult_approved,
            open_abuse_reports=sum(1 for a in self.abuse_reports if a.status == "open"),
            limits=frozenset((key, rpm, tpd) for key, (rpm, tpd) in self.limits.items()),
        )

    # --- deciding -----------------------------------------------------------------------------

    def _settle(self, now: datetime) -> None:
        """A suspension that has run out ends every suspension (design.md): none comes back."""
        if self.suspension is not None and not self.suspension.in_force(now):
            for s in self.suspensions:
                s.dropped = True
            self.suspension = None

    def _suspend(self, until: datetime | None, now: datetime, behind: list[str]) -> Decision:
        new = Suspension(until)
        current = self.suspension
        held = current is not None and current.in_force(now) and not new.longer_than(current)
        if not held:
            self.suspension = new
        self.suspensions.append(new)
        self.decisions.append(Recorded("AccountSuspended", now, behind, new))
        return ("AccountSuspended", until, held)

    def _throttle(
        self, factor: float, duration: timedelta, now: datetime, behind: list[str]
    ) -> Decision:
        throttle = Throttle(factor, now + duration)
        self.throttles.append(throttle)
        self.decisions.append(Recorded("ThrottleApplied", now, behind, throttle))
        return ("ThrottleApplied", None, factor, now + duration)

    def _remediate(self, key: str, violation: str, now: datetime) -> Decision:
        due = now + self.policy.remediation_window
        remediation = Remediation(key, due, [violation])
        self.remediations.append(remediation)
        self.decisions.append(Recorded("RemediationRequested", now, [violation], remediation))
        return ("RemediationRequested", due)

    def _terminate(self, now: datetime, behind: list[str]) -> Decision:
        self.terminated = True
        self.decisions.append(Recorded("AccountTerminated", now, behind, None))
        return ("AccountTerminated",)

    def report(
        self,
        key: str,
        category: str,
        severity: str | None,
        occurred_at: datetime,
        now: datetime,
    ) -> list[Decision]:
        """A violation reported and decided at ``now``; its remediation's key is ``rem_<key>``."""
        self._settle(now)
        sev = effective_severity(category, severity, self.policy)
        adult_ok = category == "unapproved_adult_content" and self.adult_approved
        strike = category != "sustained_abuse" and not adult_ok
        prior = self.strikes(now)
        violation = Violation(key, category, sev, occurred_at, strike)
        self.violations.append(violation)
        out: list[Decision] = [("ViolationReported", sev, strike)]
        if self.terminated:
            violation.held = True
            return out
        return [*out, *self._ladder(violation, prior, now)]

    def _ladder(self, violation: Violation, prior: int, now: datetime) -> list[Decision]:
        """The decisions on ``violation`` (already recorded) at ``now``, after ``prior``
        strikes."""
        key, category, sev = violation.key, violation.category, violation.severity
        if category == "sustained_abuse":
            factor, duration = self.policy.sustained_abuse_throttle
            throttle = self._throttle(factor, duration, now, [key])
            self.throttles[-1].sustained = True
            return [throttle, ("NoticeIssued", "throttle")]
        if category == "unapproved_adult_content" and not violation.strike:
            violation.dismissed = True  # approved when recorded (a held one too)
            return [("ViolationDismissed", "adult_content_approved")]
        if sev == "critical" or prior >= self.policy.termination_after_strikes:
            out = [self._terminate(now, [key])]
            if sev == "critical" and self.policy.categories[category][2]:
                out.append(("AuthorityReferralOpened", category))
            return [*out, ("NoticeIssued", "termination")]
        if sev == "high":
            until = now + self.policy.first_high_suspension if prior == 0 else None
            return [self._suspend(until, now, [key]), ("NoticeIssued", "suspension")]
        # minor: low or medium
        if prior == 0:
            return [("NoticeIssued", "warning"), self._remediate(f"rem_{key}", key, now)]
        if prior == 1:
            factor, duration = self.policy.second_minor_throttle
            return [
                self._throttle(factor, duration, now, [key]),
                ("NoticeIssued", "throttle"),
                self._remediate(f"rem_{key}", key, now),
            ]
        until = now + self.policy.third_minor_suspension
        return [self._suspend(until, now, [key]), ("NoticeIssued", "suspension")]

    def _decide_held(self, now: datetime) -> list[Decision]:
        """The violations held by a termination just reversed, decided at ``now`` in order."""
        out: list[Decision] = []
        for i, violation in enumerate(self.violations):
            if not violation.held or self.terminated:
                continue
            violation.held = False
            if violation.dismissed:
                continue
            prior = sum(1 for v in self.violations[:i] if self.strike_active(v, now))
            out += self._ladder(violation, prior, now)
        return out

    def due_remediations(self, now: datetime) -> list[str]:
        return [r.key for r in self.remediations if not r.closed and r.due_at <= now]

    def expire(self, key: str, now: datetime) -> list[Decision]:
        """The deadline of remediation ``key`` handled at ``now`` (at or after its due time)."""
        (rem,) = [r for r in self.remediations if r.key == key]
        if rem.closed or now < rem.due_at:
            return []
        self._settle(now)
        rem.closed = True
        out: list[Decision] = [("RemediationExpired",)]
        if self.terminated:
            return out
        until = now + self.policy.missed_remediation_suspension
        suspended = self._suspend(until, now, list(rem.violations))
        rem.missed = self.suspensions[-1]
        return [*out, suspended, ("NoticeIssued", "suspension")]

    def dismiss(self, key: str) -> None:
        """An operator dismisses violation ``key`` (or an overturn does)."""
        (violation,) = [v for v in self.violations if v.key == key]
        violation.dismissed = True
        for rem in self.remediations:
            if not rem.closed and all(
                v.dismissed for v in self.violations if v.key in rem.violations
            ):
                rem.closed = True

    def complete(self, key: str, now: datetime) -> bool:
        """An operator completes remediation ``key``: refused once it is due (``False``)."""
        (rem,) = [r for r in self.remediations if r.key == key]
        if now >= rem.due_at:
            return False
        rem.closed = True
        return True

    def approve_adult_content(self, approved: bool) -> None:
        self.adult_approved = approved

    def appeal(self, index: int, outcome: str, now: datetime) -> bool:
        """An appeal against ``decisions[index]`` filed at ``now`` and decided at once; ``False``
        when it may not be filed (its window has closed, or it was overturned already)."""
        self._settle(now)
        record = self.decisions[index]
        if record.overturned or now > record.recorded_at + self.policy.appeal_window:
            return False
        if outcome == "upheld":
            return True
        record.overturned = True
        target = record.target
        if isinstance(target, Throttle):
            target.lifted = True
        elif isinstance(target, Remediation):
            target.closed = True
            if target.missed is not None and target.missed.in_force(now):
                self._overturn_suspension(target.missed, now)
        elif isinstance(target, Suspension):
            self._overturn_suspension(target, now)
        else:
            self.terminated = False
        for key in record.violations:
            self.dismiss(key)
        self.held_decisions = [] if target is not None else self._decide_held(now)
        return True

    def _overturn_suspension(self, target: Suspension, now: datetime) -> None:
        target.overturned = True
        if target is self.suspension:
            # Reversed alone: whichever other suspension still runs is in force again.
            running = [
                s for s in self.suspensions if not (s.overturned or s.dropped) and s.in_force(now)
            ]
            longest = None
            for s in running:
                if longest is None or s.longer_than(longest):
                    longest = s
            self.suspension = longest

    # --- operators' restrictions (CONTRACT.md; design.md: "an operator's [suspension] replaces
    # whatever is in force"; README: one that an operator's shorter suspension replaced never
    # comes back) -------------------------------------------------------------------------------

    def suspended(self, at: datetime) -> bool:
        return self.suspension is not None and self.suspension.in_force(at)

    def operator_suspend(
        self, until: datetime | None, now: datetime, notify: bool = True
    ) -> list[Decision] | None:
        """``None`` when refused; else the decisions, a notice unless ``notify`` is false
        (POLICY.md: "every restriction produces a notice unless the operator asks for none")."""
        self._settle(now)
        if self.terminated:
            return None
        new = Suspension(until)
        for s in self.suspensions:
            # Replaced by a shorter one (or held behind one so replaced): never back, as left
            # alone the shorter one would free the account when it ends (README).
            if s.longer_than(new):
                s.dropped = True
        self.suspension = new
        self.suspensions.append(new)
        self.decisions.append(Recorded("AccountSuspended", now, [], new))
        return [("AccountSuspended", until, False), *_notice("suspension", notify)]

    def reinstate(self, now: datetime) -> bool:
        self._settle(now)
        if self.terminated or not self.suspended(now):
            return False
        for s in self.suspensions:
            s.dropped = True
        self.suspension = None
        return True

    def operator_terminate(self, now: datetime, notify: bool = True) -> list[Decision] | None:
        if self.terminated:
            return None
        return [self._terminate(now, []), *_notice("termination", notify)]

    def operator_throttle(
        self,
        factor: float,
        expires_at: datetime | None,
        now: datetime,
        notify: bool = True,
        key_id: str | None = None,
    ) -> list[Decision] | None:
        """Account-wide, or one key's (``key_id``; CONTRACT.md's throttle body)."""
        if self.terminated:
            return None
        throttle = Throttle(factor, expires_at, key_id=key_id)
        self.throttles.append(throttle)
        self.decisions.append(Recorded("ThrottleApplied", now, [], throttle))
        return [("ThrottleApplied", key_id, factor, expires_at), *_notice("throttle", notify)]

    def lift(self, index: int, now: datetime) -> bool:
        """Lifting a throttle that is no longer in force (run out, or lifted) is refused."""
        throttle = self.throttles[index]
        if not throttle.in_force(now):
            return False
        throttle.lifted = True
        return True

    def configure_limits(self, key_id: str | None, rpm: int, tpd: int) -> list[Decision]:
        """An operator sets a key's limits (``key_id``) or the account's ceiling (None)."""
        self.limits[key_id] = (rpm, tpd)
        return [("RateLimitsConfigured", key_id, rpm, tpd)]

    # --- the gate's denials (POLICY.md: ``sustained_abuse_denials``, AUP §3) -------------------

    def deny(self, key: str, at: datetime) -> list[Decision]:
        """A rate or quota denial at ``at`` (not before the last); raises ``sustained_abuse``
        (violation ``key``) when ``count`` denials fall within ``window``, once a bout."""
        self.denials.append(at)
        count, window = self.policy.sustained_abuse_denials
        recent = [d for d in self.denials if at - d < window]
        throttled = any(t.sustained and t.in_force(at) for t in self.throttles)
        if len(recent) < count or throttled or self.terminated:
            return []
        return self.report(key, "sustained_abuse", None, at, at)

    # --- abuse reports (CONTRACT.md: "no strike until an operator triages it") ---------------

    def receive_abuse_report(
        self, key: str, category: str, now: datetime, gate: bool = False
    ) -> list[Decision]:
        """Recorded, nothing decided. The gate files none while one of its category is open
        (README: "no second one while it is open")."""
        if gate and any(a.status == "open" and a.category == category for a in self.abuse_reports):
            return []
        self.abuse_reports.append(AbuseReport(key, category, now))
        return [("AbuseReportReceived", category)]

    def triage(
        self, key: str, outcome: str, severity: str | None, now: datetime
    ) -> list[Decision] | None:
        """``None`` when refused (already triaged). Confirmed, the report becomes a violation of
        its category and the triage's severity, decided by the ladder as any other; its key is
        ``<key>_v``, and it occurred when the report was received."""
        (report,) = [a for a in self.abuse_reports if a.key == key]
        if report.status != "open":
            return None
        report.status = outcome
        out: list[Decision] = [("AbuseReportTriaged", outcome)]
        if outcome == "rejected":
            return out
        violation = f"{key}_v"
        return [*out, *self.report(violation, report.category, severity, report.received_at, now)]
