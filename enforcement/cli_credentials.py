"""Credentials: ``tokens create|list|revoke`` (API tokens) and ``webhook-key`` (an account's key
to check the webhooks it is sent).

Registered on ``enforcement.cli.app`` when that module is imported (it imports this one last).
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from enforcement.cli import account_option, app, opened_container, settings_or_fail
from enforcement.cli_output import console, fail, say

tokens_app = typer.Typer(help="Manage API tokens.", no_args_is_help=True)
app.add_typer(tokens_app, name="tokens")


@tokens_app.command("create")
def tokens_create(
    role: Annotated[str, typer.Option(help="reporter, operator, auditor, gateway or admin.")],
    name: Annotated[str, typer.Option(help="Who or what uses the token.")],
) -> None:
    """Create a token; it is printed alone on the last line (only its hash is stored)."""
    from enforcement.roles import Role
    from enforcement.tokens import issue_token

    try:
        chosen = Role(role)
    except ValueError:
        fail(f"Unknown role {role!r}; choose one of {', '.join(r.value for r in Role)}.")
    if not name.strip():
        fail("--name must say who or what uses the token; it is empty.")
    try:  # a byte that is not UTF-8 comes as half a surrogate pair, which no text can hold
        name.encode("utf-8")
    except UnicodeEncodeError:
        fail("--name must be UTF-8 text; it holds a byte that is not.")
    with opened_container() as container:
        token_id, token = issue_token(container.engine, chosen, name)
    article = "an" if chosen.value[0] in "aeiou" else "a"
    console.print(
        f"Created {article} {chosen.value} token for {name!r} ({token_id}). Store it now: it is "
        "not shown again.",
        markup=False,
        highlight=False,
    )
    sys.stdout.flush()
    print(token)


@tokens_app.command("list")
def tokens_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the tokens: id, name, role, created (never the token or its hash)."""
    from rich.table import Table
    from rich.text import Text

    from enforcement.tokens import list_tokens
    from events.timefmt import format_time

    with opened_container() as container:
        tokens = list_tokens(container.engine)
    if as_json:
        shown = [
            {
                "token_id": t.token_id,
                "name": t.name,
                "role": t.role,
                "created_at": format_time(t.created_at),
            }
            for t in tokens
        ]
        print(json.dumps(shown, indent=2, ensure_ascii=False))
        return
    table = Table(title=f"{len(tokens)} token(s)")
    for column in ("id", "name", "role", "created"):
        table.add_column(column)
    for t in tokens:
        cells = (t.token_id, t.name, t.role, format_time(t.created_at))
        table.add_row(*map(Text, cells))  # a name is shown as written, not read as markup
    console.print(table)


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id (tok_…), from tokens list.")],
) -> None:
    """Revoke a token: it stops working within 30 seconds (each process remembers a token it
    checked for that long)."""
    from enforcement.tokens import revoke_token

    with opened_container() as container:
        revoked = revoke_token(container.engine, token_id)
    if revoked is None:
        fail(
            f"There is no token {token_id!r} (never created, or revoked already); "
            "`enforcement tokens list` shows those in force."
        )
    console.print(
        f"Revoked {revoked.token_id} ({revoked.role} token for {revoked.name!r}); it stops "
        "working within 30 seconds.",
        markup=False,
        highlight=False,
    )


@app.command("webhook-key")
def webhook_key(account: Annotated[str, typer.Argument(help="Account id.")]) -> None:
    """Print an account's webhook key, alone on the last line.

    Its owner checks X-Enforcement-Account-Signature with it; it is derived from
    ENFORCEMENT_WEBHOOK_SECRET."""
    from enforcement.notices.webhook import ACCOUNT_SIGNATURE_HEADER, account_key

    account_option(account, "ACCOUNT")
    secret = settings_or_fail().webhook_secret
    if secret is None:
        fail(
            "ENFORCEMENT_WEBHOOK_SECRET is unset, so webhooks are not signed and no account has "
            "a key; run this with the service's secret set."
        )
    say(
        f"Webhook key of account {account}, to check {ACCOUNT_SIGNATURE_HEADER} with. Give it "
        "to the account's owner only; it changes when ENFORCEMENT_WEBHOOK_SECRET does."
    )
    sys.stdout.flush()
    print(account_key(secret, account))
