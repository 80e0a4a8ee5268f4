"""``projections.stored.changed_records``: the rows an append writes, checked against a model of
the ``standing_records`` table (no database): rows holding a state, changed by the difference,
hold the next state, in the same order."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from test_standing import applied_in_steps, histories, records, t, violation

from events import RecordedEvent
from projections import aup_events as ev
from projections.standing import TABLES, StandingState, apply_all, record_json
from projections.stored import StoredRows, changed_records

Rows = dict[tuple[str, str], tuple[int, dict[str, Any]]]  # (kind, key) -> (seq, data)


def rows_of(state: StandingState) -> Rows:
    """What a whole write stores: every record, ``seq`` its place in its table."""
    return {
        (kind, key): (seq, record_json(record))
        for kind in TABLES
        for seq, (key, record) in enumerate(getattr(state, kind).items())
    }


def written(rows: Rows, base: StandingState, new: StandingState) -> Rows:
    changes = changed_records(base, new)
    assert changes is not None
    out = dict(rows)
    for d in changes.deletes:  # deletes first, then upserts (as ``write_states`` does)
        del out[(d["k"], d["r"])]
    for u in changes.upserts:
        key = (u["kind"], u["record_key"])
        seq = out[key][0] if key in out else u["seq"]  # an update keeps its seq
        assert seq >= 0
        out[key] = (seq, u["data"])
    return out


def as_state_json(rows: Rows) -> dict[str, list[dict[str, Any]]]:
    """The tables the rows give back when read in ``seq`` order."""
    return {
        kind: [
            data for (k, _), (_, data) in sorted(rows.items(), key=lambda i: i[1][0]) if k == kind
        ]
        for kind in TABLES
    }


def tables_json(state: StandingState) -> dict[str, list[dict[str, Any]]]:
    full = state.to_json()
    return {kind: full[kind] for kind in TABLES}


@settings(deadline=None, max_examples=300)
@given(histories(), st.data())
def test_rows_changed_append_by_append_hold_the_fold(
    events: list[RecordedEvent], data: st.DataObject
) -> None:
    state = StandingState.empty("acct_1")
    rows = rows_of(state)
    for before, new, _ in applied_in_steps(events, data):
        rows = written(rows, before, new)
        assert as_state_json(rows) == tables_json(new)
        state = new
    assert state == apply_all(StandingState.empty("acct_1"), events)


def test_an_append_writes_only_the_records_it_touched() -> None:
    history = [(violation(f"vio_{i}"), t(i / 100)) for i in range(500)]
    base = apply_all(StandingState.empty("acct_1"), records(history))
    one_more = records([(violation("vio_new"), t(6))], start=base.version)

    changes = changed_records(base, apply_all(base, one_more))

    assert changes is not None
    assert [(u["kind"], u["record_key"], u["seq"]) for u in changes.upserts] == [
        ("violations", "vio_new", 501)
    ]
    assert changes.deletes == []


def test_a_lifted_throttle_is_deleted_and_one_applied_again_moves_to_the_end() -> None:
    sor = {"ground": "AUP §3"}
    base = apply_all(
        StandingState.empty("acct_1"),
        records(
            [
                (ev.ThrottleApplied("thr_1", None, 0.5, None, "a", sor), t()),
                (ev.ThrottleApplied("thr_2", None, 0.5, None, "b", sor), t()),
            ]
        ),
    )
    lift = records([(ev.ThrottleLifted("thr_1", "done"), t(1))], start=2)
    lifted = apply_all(base, lift)
    again = records([(ev.ThrottleApplied("thr_1", None, 0.25, None, "c", sor), t(2))], start=3)

    deleted = changed_records(base, lifted)
    moved = written(written(rows_of(base), base, lifted), lifted, apply_all(lifted, again))

    assert deleted is not None and deleted.deletes == [
        {"a": "acct_1", "k": "throttles", "r": "thr_1"}
    ]
    assert [d["throttle_id"] for d in as_state_json(moved)["throttles"]] == ["thr_2", "thr_1"]


def test_a_throttle_lifted_and_applied_again_in_one_append_moves_to_the_end() -> None:
    sor = {"ground": "AUP §3"}
    applied = [ev.ThrottleApplied(f"thr_{i}", None, 0.5, None, "a", sor) for i in (1, 2)]
    base = apply_all(StandingState.empty("acct_1"), records([(e, t()) for e in applied]))
    again = apply_all(
        base,
        records([(ev.ThrottleLifted("thr_1", "done"), t(1)), (applied[0], t(1))], start=2),
    )

    rows = written(rows_of(base), base, again)

    assert [d["throttle_id"] for d in as_state_json(rows)["throttles"]] == ["thr_2", "thr_1"]
    assert as_state_json(rows) == tables_json(again)


def test_a_state_not_made_from_the_base_by_one_apply_gives_none() -> None:
    first = records([(violation("vio_1"), t())])
    second = records([(violation("vio_2"), t(1))], start=1)
    base = StandingState.empty("acct_1")
    two_steps = apply_all(apply_all(base, first), second)

    assert changed_records(base, two_steps) is None
    assert changed_records(base, StandingState.from_json(two_steps.to_json())) is None


def test_rows_of_a_rebuild_keep_what_orjson_cannot_write() -> None:
    limits = ev.RateLimitsConfigured("key_1", 60, 2**70)  # beyond 64 bits: the stdlib writes it
    state = apply_all(StandingState.empty("acct_1"), records([(limits, t())]))

    rows = StoredRows.of([state])

    assert [json.loads(r[4]) for r in rows.records] == [record_json(state.key_rate_limits["key_1"])]
    assert json.loads(rows.heads[0][2]) == state.head_json()
