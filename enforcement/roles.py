"""Roles and what they may do (CONTRACT.md, "Auth and roles")."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    REPORTER = "reporter"
    OPERATOR = "operator"
    AUDITOR = "auditor"
    GATEWAY = "gateway"
    ADMIN = "admin"


class Permission(StrEnum):
    REPORT = "report"  # post violations and abuse reports
    COMMAND = "command"  # every account command
    READ = "read"  # events, verify, exports, standing
    READ_STANDING = "read_standing"
    GATE = "gate"


GRANTS: dict[Role, frozenset[Permission]] = {
    Role.REPORTER: frozenset({Permission.REPORT}),
    Role.OPERATOR: frozenset(
        {Permission.REPORT, Permission.COMMAND, Permission.READ, Permission.READ_STANDING}
    ),
    Role.AUDITOR: frozenset({Permission.READ, Permission.READ_STANDING}),
    Role.GATEWAY: frozenset({Permission.GATE, Permission.READ_STANDING}),
    Role.ADMIN: frozenset(Permission),
}


def allows(role: Role, permission: Permission) -> bool:
    return permission in GRANTS[role]
