"""The frame of `/api` (contract section 5): a bearer-token guard around `routes`.

The ledger's read API adds its routes to `routes` (GET /invoices/{id}, /balances...). Its
handlers find the database engine at `request.state.engine` (see receiver.app.ReceiverState).
"""

from __future__ import annotations

import hmac

from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Mount
from starlette.types import ASGIApp, Receive, Scope, Send

from vinr_recon.settings import Settings

# Mounted at /api, behind the token guard.
routes: list[BaseRoute] = []


def token_matches(presented: str, tokens: list[str]) -> bool:
    """Constant-time comparison against every configured token, with no early exit."""
    candidate = presented.encode("latin-1", "replace")
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(token.encode(), candidate)
    return matched


class RequireBearerToken:
    """ASGI middleware: `Authorization: Bearer <token>` with a configured token, or no entry.

    With no token configured the API answers 503: it never serves openly.
    """

    def __init__(self, app: ASGIApp, tokens: list[str]) -> None:
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self.tokens:
            response = JSONResponse({"error": "LEDGER_API_TOKEN is not configured"}, 503)
        elif token_matches(_bearer(scope), self.tokens):
            await self.app(scope, receive, send)
            return
        else:
            response = JSONResponse(
                {"error": "missing or invalid bearer token"}, 401, headers={"www-authenticate": "Bearer"}
            )
        await response(scope, receive, send)


def _bearer(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return ""


def api_mount(settings: Settings) -> Mount:
    """`/api` with `routes`, guarded by the tokens of `LEDGER_API_TOKEN`."""
    return Mount("/api", routes=routes, middleware=[Middleware(RequireBearerToken, tokens=settings.api_tokens)])
