"""``gradq keys create|revoke|list``: API keys, written to the database directly (the
settings' ``GRADQ_DATABASE_URL``). A key is printed once; only its sha256 is stored."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from api.cli.tables import add, listing
from api.settings import Settings
from db.keys import KeyStore
from db.migrate import upgrade
from db.session import make_engine

keys_app = typer.Typer(
    help="API keys (GRADQ_AUTH=keys): create, revoke, list.", no_args_is_help=True
)
console = Console()
err = Console(stderr=True)


def _keys() -> KeyStore:
    settings = Settings()
    upgrade(settings.database_url)
    return KeyStore(make_engine(settings.database_url))


@keys_app.command("create")
def create(
    tenant: Annotated[str, typer.Option(help="who the key acts for; jobs belong to a tenant")],
) -> None:
    """Make a key for TENANT and print it (it cannot be shown again)."""
    name = tenant.strip()
    if not name or len(name) > 100:
        err.print("[red]--tenant must be 1 to 100 characters[/]")
        raise typer.Exit(2)
    key_id, key = _keys().create(tenant=name)
    err.print(f"key {key_id} for tenant {name!r} (shown once; send as 'Authorization: Bearer'):")
    typer.echo(key)


@keys_app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="the key's id, or its prefix (gq_…)")],
) -> None:
    """Revoke a key: requests with it get 401 from then on."""
    keys = _keys()
    n = keys.revoke(prefix=key_id[:11]) if key_id.startswith("gq_") else keys.revoke(key_id=key_id)
    if not n:
        err.print(f"[red]no active key {key_id}[/]")
        raise typer.Exit(1)
    typer.echo(f"revoked {key_id}")


@keys_app.command("list")
def list_keys(tenant: Annotated[str | None, typer.Option(help="only this tenant")] = None) -> None:
    """Keys (ids, tenants, prefixes), never their secrets."""
    keys = _keys().list(tenant=tenant)
    table = listing(console, [k.id for k in keys], "tenant", "prefix", "created", "revoked")
    for k in keys:
        revoked = f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else ""
        add(table, {"id": k.id, "tenant": k.tenant, "prefix": k.prefix,
                    "created": f"{k.created_at:%Y-%m-%d %H:%M}", "revoked": revoked})  # fmt: skip
    console.print(table)
