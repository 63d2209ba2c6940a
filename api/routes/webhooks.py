"""``/v1/webhooks``: register a URL for the events of the tenant's jobs and sweeps, list,
delete, rotate its secret, read its delivery log.

A URL must be http(s) and resolve to public addresses only (422 naming ``url``; see
``api.webhooks.check_url``). The secret is in the answer to the creation and to each
rotation, never again. A webhook is its tenant's: another tenant gets 404.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from api import schemas
from api.deps import SettingsDep, TenantDep, WebhooksDep
from api.errors import ApiError
from api.routes.common import AUTHENTICATED, errors
from api.webhooks import UnsafeUrl, check_url
from db.webhooks import EVENTS, DeliveryView, WebhookView

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], dependencies=AUTHENTICATED)


def present(view: WebhookView) -> schemas.Webhook:
    return schemas.Webhook(
        id=view.id, url=view.url, events=view.events, created_at=view.created_at,
        rotated_at=view.rotated_at, secret=view.secret,
    )  # fmt: skip


def wanted_events(asked: list[str] | None) -> list[str]:
    """The events named, ``job.*``, ``sweep.*`` and ``*`` expanded (None: every event);
    422 naming ``events[i]`` for a name that is none of them."""
    if asked is None:
        return list(EVENTS)
    if not asked:
        raise ApiError(
            422, "invalid", "name at least one event, or leave events out", field="events"
        )
    out: list[str] = []
    for i, name in enumerate(asked):
        prefix = "" if name == "*" else name.removesuffix("*")
        matched = [e for e in EVENTS if e == name or (name.endswith("*") and e.startswith(prefix))]
        if not matched or (name.endswith("*") and prefix not in ("", "job.", "sweep.")):
            raise ApiError(
                422,
                "invalid",
                f"not an event: {name!r}; one of {', '.join(EVENTS)}, job.*, sweep.* or *",
                field=f"events[{i}]",
            )
        out.extend(matched)
    return list(dict.fromkeys(out))


@router.post("", status_code=201, response_model=schemas.Webhook, responses=errors(422))
def create_webhook(
    body: schemas.WebhookCreate, webhooks: WebhooksDep, settings: SettingsDep, tenant: TenantDep
) -> schemas.Webhook:
    """Register ``url`` for ``events``; the answer holds the signing secret, shown this once."""
    events = wanted_events(body.events)
    try:
        check_url(body.url, allow_private=settings.webhooks_allow_private)
    except UnsafeUrl as exc:
        raise ApiError(422, "invalid_url", str(exc), field="url") from None
    if len(webhooks.list(tenant=tenant)) >= settings.webhooks_max_per_tenant:
        raise ApiError(
            422,
            "too_many_webhooks",
            f"tenant {tenant} has {settings.webhooks_max_per_tenant} webhooks, the most it may;"
            " delete one first",
            field="url",
        )
    return present(webhooks.create(tenant=tenant, url=body.url, events=events))


@router.get("", response_model=schemas.WebhookList, responses=errors())
def list_webhooks(webhooks: WebhooksDep, tenant: TenantDep) -> schemas.WebhookList:
    """The tenant's webhooks, oldest first (without their secrets)."""
    return schemas.WebhookList(items=[present(v) for v in webhooks.list(tenant=tenant)])


@router.get("/{webhook_id}", response_model=schemas.Webhook, responses=errors(404))
def get_webhook(webhook_id: str, webhooks: WebhooksDep, tenant: TenantDep) -> schemas.Webhook:
    return present(webhooks.get(webhook_id=webhook_id, tenant=tenant))


@router.delete("/{webhook_id}", status_code=204, responses=errors(404))
def delete_webhook(webhook_id: str, webhooks: WebhooksDep, tenant: TenantDep) -> Response:
    """Remove it and its delivery log: nothing more is sent to it, not even retries."""
    webhooks.delete(webhook_id=webhook_id, tenant=tenant)
    return Response(status_code=204)


@router.post("/{webhook_id}/rotate", response_model=schemas.Webhook, responses=errors(404))
def rotate_secret(webhook_id: str, webhooks: WebhooksDep, tenant: TenantDep) -> schemas.Webhook:
    """A new signing secret, in the answer: every attempt from now on is signed with it,
    retries of earlier events too; the old secret signs nothing more."""
    return present(webhooks.rotate(webhook_id=webhook_id, tenant=tenant))


@router.get(
    "/{webhook_id}/deliveries", response_model=schemas.DeliveryPage, responses=errors(404, 422)
)
def list_deliveries(
    webhook_id: str,
    webhooks: WebhooksDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=18, description="from next_cursor")] = None,
) -> schemas.DeliveryPage:
    """The delivery log, newest event first: each event's id, attempts, the last status
    code or error, the next attempt."""
    if cursor is not None and not (cursor.isascii() and cursor.isdigit()):
        raise ApiError(422, "invalid_cursor", "not a cursor this service gave", field="cursor")
    items, before = webhooks.deliveries(
        webhook_id=webhook_id,
        tenant=tenant,
        limit=limit,
        before=int(cursor) if cursor is not None else None,
    )
    return schemas.DeliveryPage(
        items=[delivery(d) for d in items], next_cursor=None if before is None else str(before)
    )


def delivery(d: DeliveryView) -> schemas.Delivery:
    return schemas.Delivery(
        event_id=d.event_id, event=d.event, subject_id=d.subject_id, occurred_at=d.occurred_at,
        attempts=d.attempts, uncertain=d.uncertain, last_attempt_at=d.last_attempt_at,
        last_status_code=d.last_status_code, last_error=d.last_error,
        next_attempt_at=d.next_attempt_at, delivered_at=d.delivered_at, gave_up_at=d.gave_up_at,
    )  # fmt: skip
