"""``gradq keys create|revoke|list``: API keys, written to the database directly (the
settings' ``GRADQ_DATABASE_URL``). A key is printed once; only its sha256 is stored."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from api.cli.serve import warn_new_store
from api.cli.tables import add, listing

if TYPE_CHECKING:  # the database's modules load with the command that uses them (a fast start)
    from db.keys import KeyStore

keys_app = typer.Typer(
    help="API keys (GRADQ_AUTH=keys): create, revoke, list.",
    no_args_is_help=True,
)
console = Console()
ROLES_WIDE = 140  # a narrower terminal's list leaves out the role and caps columns
err = Console(stderr=True)


def _keys() -> KeyStore:
    from api.settings import Settings
    from db.keys import KeyStore
    from db.migrate import upgrade
    from db.session import make_engine

    settings = Settings()
    warn_new_store(settings)
    upgrade(settings.database_url)
    return KeyStore(make_engine(settings.database_url))


@keys_app.command("create")
def create(
    tenant: Annotated[str, typer.Option(help="who the key acts for; jobs belong to a tenant")],
    role: Annotated[
        str, typer.Option(help="tenant, or operator (may also read /metrics)")
    ] = "tenant",
    max_running: Annotated[
        int | None,
        typer.Option(help="cap on the tenant's running jobs (its others wait); default: none"),
    ] = None,
    max_priority: Annotated[
        int | None,
        typer.Option(help="highest priority the tenant may submit (-1000 to 1000); default: none"),
    ] = None,
) -> None:
    """Make a key for TENANT and print it (it cannot be shown again). A tenant's caps are the
    strictest its active keys set; where none sets one, GRADQ_TENANT_MAX_RUNNING and
    GRADQ_TENANT_MAX_PRIORITY."""
    from api.access import DEFAULT_TENANT
    from db.keys import check_grant

    name = tenant.strip()
    if not name or len(name) > 100:
        err.print("[red]--tenant must be 1 to 100 characters[/]")
        raise typer.Exit(2)
    try:
        check_grant(role, max_running, max_priority)
    except ValueError as exc:
        err.print(f"[red]--{str(exc).split()[0].replace('_', '-')}: {exc}[/]")
        raise typer.Exit(2) from None
    key_id, key = _keys().create(
        tenant=name, role=role, max_running=max_running, max_priority=max_priority
    )
    err.print(f"key {key_id} for tenant {name!r} (shown once; send as 'Authorization: Bearer'):")
    typer.echo(key)
    if name != DEFAULT_TENANT:
        err.print(
            f"note: jobs submitted before GRADQ_AUTH=keys belong to tenant {DEFAULT_TENANT!r}; "
            f"to see them, make a key for it: gradq keys create --tenant {DEFAULT_TENANT}",
            highlight=False,
            soft_wrap=True,
        )


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
    """Keys (ids, tenants, prefixes; in a wide terminal also their times, from 140 columns
    their roles and caps), never their secrets."""
    keys = _keys().list(tenant=tenant)
    wide = console.width >= ROLES_WIDE  # the role and caps, like the times, where they fit
    revoked_column = ["revoked"] if any(k.revoked_at for k in keys) else []
    columns = ("tenant", *(["role", "caps"] if wide else []), "prefix", "created", *revoked_column)
    table = listing(console, [k.id for k in keys], *columns)
    for k in keys:
        revoked = f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else ""
        caps = ", ".join(
            f"{name} {value}"
            for name, value in (("running", k.max_running), ("priority", k.max_priority))
            if value is not None
        )
        add(table, {"id": k.id, "tenant": k.tenant, "role": k.role, "caps": caps,
                    "prefix": k.prefix, "created": f"{k.created_at:%Y-%m-%d %H:%M}",
                    "revoked": revoked})  # fmt: skip
    console.print(table)
