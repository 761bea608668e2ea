"""The tenant's webhook signing secret, and its rotation."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import SessionDep, TenantDep
from app.api.docs import V1_ERRORS
from app.api.guards import GuardedRoute
from app.schemas.webhooks import WebhookSecretPublic
from app.services import webhooks

router = APIRouter(
    prefix="/v1/webhooks", tags=["webhooks"], route_class=GuardedRoute, responses=V1_ERRORS
)


@router.get("/secret", summary="Get the webhook signing secret")
def get_secret(session: SessionDep, tenant: TenantDep) -> WebhookSecretPublic:
    """The `whsec_...` secret that signs this tenant's webhooks (Standard Webhooks): verify
    requests with the `standardwebhooks` or `svix` library."""
    return WebhookSecretPublic(key=webhooks.current_secret(session, tenant))


@router.post("/secret/rotate", summary="Rotate the webhook signing secret")
def rotate_secret(session: SessionDep, tenant: TenantDep) -> WebhookSecretPublic:
    """A new secret; the old one keeps signing beside it for 24 hours."""
    return WebhookSecretPublic(key=webhooks.rotate_secret(session, tenant))
