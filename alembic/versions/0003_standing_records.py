"""Stored standings split into a head row and one row per record, so an append writes only what
it changed (issue: the per-violation cost must not grow with the account's history).

The ``standings`` row keeps the account's scalars (``StandingState.head_json``, state schema 2);
``standing_records`` holds every record of the state's tables, ordered by ``seq`` (event order).
Existing rows of state schema 1 (the whole state in one document) are converted in place; schema
2 also marks a remediation whose violations were all dismissed as ``dismissed``.

Revision ID: 0003_standing_records
Revises: 0002_read_models
Create Date: 2026-11-25
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision = "0003_standing_records"
down_revision = "0002_read_models"
branch_labels = None
depends_on = None

_json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
# The state's tables and the field that keys each (projections.standing.TABLES at schema 2).
_TABLE_KEYS = {
    "violations": "violation_id",
    "remediations": "remediation_id",
    "throttles": "throttle_id",
    "decisions": "event_id",
    "appeals": "appeal_id",
    "abuse_reports": "report_id",
    "key_rate_limits": "key_id",
}


_standings = sa.table(
    "standings",
    sa.column("account_id", sa.String),
    sa.column("version", sa.Integer),
    sa.column("state", _json),
)
_records = sa.table(
    "standing_records",
    sa.column("account_id", sa.String),
    sa.column("kind", sa.String),
    sa.column("record_key", sa.String),
    sa.column("seq", sa.BigInteger),
    sa.column("data", _json),
)


def upgrade() -> None:
    op.create_table(
        "standing_records",
        sa.Column("account_id", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("record_key", sa.String(200), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("data", _json, nullable=False),
        sa.PrimaryKeyConstraint("account_id", "kind", "record_key", name="pk_standing_records"),
    )
    conn = op.get_bind()
    after = ""
    while True:  # convert schema-1 rows in pages, in account order
        rows = conn.execute(
            sa.select(_standings.c.account_id, _standings.c.state)
            .where(_standings.c.account_id > after)
            .order_by(_standings.c.account_id)
            .limit(500)
        ).all()
        for account_id, state in rows:
            if state.get("schema") != 1:
                continue
            head = {k: v for k, v in state.items() if k not in _TABLE_KEYS}
            head["schema"] = 2
            _mark_dismissed_remediations(state)
            records = [
                {
                    "account_id": account_id,
                    "kind": kind,
                    "record_key": item[key],
                    "seq": seq,
                    "data": item,
                }
                for kind, key in _TABLE_KEYS.items()
                for seq, item in enumerate(state.get(kind, []))
            ]
            if records:
                conn.execute(_records.insert(), records)
            conn.execute(
                _standings.update().where(_standings.c.account_id == account_id).values(state=head)
            )
        if len(rows) < 500:
            break
        after = rows[-1][0]


def _mark_dismissed_remediations(state: dict[str, Any]) -> None:
    """Schema 2 records a remediation whose violations were all dismissed as ``dismissed``
    (schema 1 worked it out on every read)."""
    dismissed = {v["violation_id"] for v in state.get("violations", []) if v["dismissed"]}
    for remediation in state.get("remediations", []):
        ids = remediation["violation_ids"]
        if remediation["status"] == "open" and ids and all(i in dismissed for i in ids):
            remediation["status"] = "dismissed"


def downgrade() -> None:
    # Schema-2 heads are not schema-1 states: drop them; loads fold the log until rows are
    # written again (``enforcement replay`` rebuilds them at once).
    op.execute("DELETE FROM standings")
    op.drop_table("standing_records")
