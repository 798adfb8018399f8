"""Who may see the dashboard: a sign-in with a `LEDGER_API_TOKEN` token, kept in a signed session.

The session cookie is Starlette's (itsdangerous-signed JSON, `HttpOnly`, `SameSite=Lax`, path
`/dashboard`, 12 hours). Its signing secret is derived from the configured tokens with HMAC, so
no secret is stored anywhere and rotating the tokens signs everybody out. The cookie holds no
token: only the sign-in time and a CSRF token, which every POST form carries back as a hidden
field (compared in constant time), on top of `SameSite` and an `Origin` check.

Every response gets headers that keep pages out of caches and frames, and a CSP with no script.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import quote

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SESSION_COOKIE = "vinr_dashboard"
SESSION_MAX_AGE = 12 * 3600
CSRF_FIELD = "csrf"
# Reachable signed out: the sign-in itself and the stylesheet.
PUBLIC = ("/signin", "/static/")

SECURITY_HEADERS = {
    "cache-control": "no-store",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "content-security-policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
}


def session_secret(tokens: list[str]) -> str:
    """The session-signing key: HMAC-SHA256 of a fixed label, keyed by the configured tokens."""
    key = "\n".join(sorted(tokens)).encode()
    return hmac.new(key, b"vinr-recon dashboard session v1", hashlib.sha256).hexdigest()


def signed_in(request: Request) -> bool:
    return bool(request.session.get("signed_in"))


def start_session(request: Request, now: int) -> None:
    request.session.clear()
    request.session.update({"signed_in": now, "csrf": secrets.token_urlsafe(32)})


def csrf_token(request: Request) -> str:
    return request.session.get("csrf", "")


def same_origin(request: Request) -> bool:
    """The browser's Origin, when it sends one, is this server's."""
    origin = request.headers.get("origin")
    return origin is None or origin == f"{request.url.scheme}://{request.url.netloc}"


async def csrf_ok(request: Request) -> bool:
    """The form's hidden token matches the session's, and the browser's Origin (if sent) is ours."""
    if not same_origin(request):
        return False
    expected = csrf_token(request)
    presented = (await request.form()).get(CSRF_FIELD, "")
    return bool(expected) and isinstance(presented, str) and hmac.compare_digest(expected, presented)


def safe_next(base: str, target: str | None) -> str:
    """Where to go after the sign-in: a path of the dashboard only (no open redirect)."""
    if target and target.startswith(base + "/") and not target.startswith("//") and "\\" not in target:
        return target
    return base + "/"


class DashboardGuard:
    """ASGI middleware, outermost: 503 without tokens, security headers on every answer."""

    def __init__(self, app: ASGIApp, tokens: list[str]) -> None:
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        if not self.tokens:
            response = HTMLResponse("<!doctype html><title>Dashboard unavailable</title>"
                                    "<p>LEDGER_API_TOKEN is not configured: the dashboard is closed.</p>", 503)
            await response(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


class RequireSignIn:
    """ASGI middleware, inside the session's: a page without a signed-in session redirects to the sign-in."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        base = scope.get("root_path", "")
        path = scope["path"][len(base):] if scope["path"].startswith(base) else scope["path"]
        if path.startswith(PUBLIC) or scope.get("session", {}).get("signed_in"):
            await self.app(scope, receive, send)
            return
        target = scope["path"] + (f"?{scope['query_string'].decode('latin-1')}" if scope.get("query_string") else "")
        location = f"{base}/signin?next={quote(target, safe='')}" if scope["method"] == "GET" else f"{base}/signin"
        response: Response = RedirectResponse(location, 303)
        await response(scope, receive, send)
