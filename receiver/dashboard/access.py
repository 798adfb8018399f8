"""Who may see the dashboard: a sign-in with a `LEDGER_API_TOKEN` token, kept in a signed session
that the server can end.

The session cookie is Starlette's (itsdangerous-signed JSON, `HttpOnly`, `SameSite=Lax`, path
`/dashboard`, `Secure` over HTTPS). Its signing secret is derived from the configured tokens with
HMAC, so no secret is stored anywhere and rotating the tokens signs everybody out. The cookie holds
no token: only the sign-in time, a random session id and a CSRF token, which every POST form
carries back as a hidden field (compared in constant time), on top of `SameSite` and an `Origin`
check against the public origin.

The session is live while Redis holds its record, `{QUEUE_NAME}:dashboard:session:<sha256 of the
id>`, written once at the sign-in with an expiry 12 hours on and never renewed: the lifetime is
absolute, the sign-out deletes the record, and every receiver process sharing the Redis agrees.
Failed sign-ins are counted per client address in Redis too; past `SIGNIN_LIMIT` in
`SIGNIN_WINDOW` seconds the sign-in answers 429 until the window ends.

Every response gets headers that keep pages out of caches and frames, a CSP with no script, and
HSTS when served over HTTPS.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any
from urllib.parse import quote

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger("receiver.dashboard")

SESSION_COOKIE = "vinr_dashboard"
SESSION_MAX_AGE = 12 * 3600  # seconds from the sign-in, however busy the session
SIGNIN_LIMIT = 10  # sign-in attempts per client address ...
SIGNIN_WINDOW = 15 * 60  # ... in this many seconds, from its first
CSRF_FIELD = "csrf"
# Reachable signed out: the sign-in itself and the stylesheet.
PUBLIC = ("/signin", "/static/")
# Set by RequireSignIn: whether this request carries a live session.
SIGNED_IN = "vinr.dashboard.signed_in"

SECURITY_HEADERS = {
    "cache-control": "no-store",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "content-security-policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
}
HSTS = "max-age=31536000"  # a year; the host's other names are not this service's to decide


def session_secret(tokens: list[str]) -> str:
    """The session-signing key: HMAC-SHA256 of a fixed label, keyed by the configured tokens."""
    key = "\n".join(sorted(tokens)).encode()
    return hmac.new(key, b"vinr-recon dashboard session v1", hashlib.sha256).hexdigest()


def session_key(queue_name: str, sid: str) -> str:
    """The Redis key of a session's record; the id itself is not stored, only its hash."""
    return f"{queue_name}:dashboard:session:{hashlib.sha256(sid.encode()).hexdigest()}"


def attempts_key(queue_name: str, client: str) -> str:
    return f"{queue_name}:dashboard:signin-attempts:{client}"


def signed_in(request: Request) -> bool:
    return bool(request.scope.get(SIGNED_IN))


async def start_session(request: Request, redis: Redis, queue_name: str, now: int) -> None:
    """A new session (a new id: nothing of a previous one carries over), live for SESSION_MAX_AGE."""
    await end_session(request, redis, queue_name)
    sid = secrets.token_urlsafe(32)
    await redis.set(session_key(queue_name, sid), now, ex=SESSION_MAX_AGE)
    request.session.update({"signed_in": now, "sid": sid, "csrf": secrets.token_urlsafe(32)})


async def end_session(request: Request, redis: Redis, queue_name: str) -> None:
    """Revoke the session server-side (its cookie opens nothing any more) and clear the cookie."""
    sid = request.session.get("sid")
    if isinstance(sid, str):
        await redis.delete(session_key(queue_name, sid))
    request.session.clear()


async def session_live(session: dict[str, Any], redis: Redis, queue_name: str, now: float) -> bool:
    """The cookie's session was signed in less than SESSION_MAX_AGE ago and is not revoked."""
    sid, since = session.get("sid"), session.get("signed_in")
    if not isinstance(sid, str) or not isinstance(since, int) or not 0 <= now - since < SESSION_MAX_AGE:
        return False
    return bool(await redis.exists(session_key(queue_name, sid)))


async def count_attempt(redis: Redis, queue_name: str, client: str) -> tuple[int, int]:
    """Count one sign-in attempt of `client`: (attempts in its window so far, seconds the window has
    left). Counted before the token is checked, so concurrent guesses cannot slip past the limit."""
    key = attempts_key(queue_name, client)
    async with redis.pipeline(transaction=True) as pipe:
        # SET NX EX starts a window with its expiry in one command; INCR keeps the expiry.
        pipe.set(key, 0, ex=SIGNIN_WINDOW, nx=True)
        pipe.incr(key)
        pipe.ttl(key)
        _, attempts, ttl = await pipe.execute()
    return int(attempts), max(int(ttl), 1)


async def forget_attempts(redis: Redis, queue_name: str, client: str) -> None:
    await redis.delete(attempts_key(queue_name, client))


def csrf_token(request: Request) -> str:
    token: str = request.session.get("csrf", "")  # written by start_session, a str
    return token


def same_origin(request: Request, public_origin: str | None) -> bool:
    """The browser's Origin, when it sends one, is the configured public origin (PUBLIC_URL), or
    without one the request's own."""
    origin = request.headers.get("origin")
    expected = public_origin or f"{request.url.scheme}://{request.url.netloc}"
    return origin is None or origin == expected


async def csrf_ok(request: Request, public_origin: str | None) -> bool:
    """The form's hidden token matches the session's, and the browser's Origin (if sent) is ours."""
    if not same_origin(request, public_origin):
        return False
    expected = csrf_token(request)
    presented = (await request.form()).get(CSRF_FIELD, "")
    return bool(expected) and isinstance(presented, str) and hmac.compare_digest(expected, presented)


def safe_next(base: str, target: str | None) -> str:
    """Where to go after the sign-in: a path of the dashboard only (no open redirect)."""
    if target and target.startswith(base + "/") and not target.startswith("//") and "\\" not in target:
        return target
    return base + "/"


def _secure_cookies(message: Message) -> None:
    """Mark the session cookie `Secure` (the response goes out over HTTPS)."""
    headers = []
    for name, value in message.get("headers", []):
        if name.lower() == b"set-cookie" and value.startswith(SESSION_COOKIE.encode() + b"=") \
                and b"; secure" not in value.lower():
            value += b"; secure"
        headers.append((name, value))
    message["headers"] = headers


class DashboardGuard:
    """ASGI middleware, outermost: 503 without tokens, security headers on every answer; over
    HTTPS (the public origin's scheme, or the request's), HSTS and a `Secure` session cookie."""

    def __init__(self, app: ASGIApp, tokens: list[str], public_origin: str | None = None) -> None:
        self.app = app
        self.tokens = tokens
        self.https = bool(public_origin and public_origin.startswith("https://"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        https = self.https or scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                if https:
                    _secure_cookies(message)
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                if https:
                    headers.setdefault("strict-transport-security", HSTS)
            await send(message)

        if not self.tokens:
            response = HTMLResponse("<!doctype html><title>Dashboard unavailable</title>"
                                    "<p>LEDGER_API_TOKEN is not configured: the dashboard is closed.</p>", 503)
            await response(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


class RequireSignIn:
    """ASGI middleware, inside the session's: a page without a live session redirects to the
    sign-in (a relative URL, never built from Host). A cookie whose session ended is cleared."""

    def __init__(self, app: ASGIApp, queue_name: str) -> None:
        self.app = app
        self.queue_name = queue_name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        base = scope.get("root_path", "")
        path = scope["path"][len(base):] if scope["path"].startswith(base) else scope["path"]
        public = path.startswith(PUBLIC)
        session = scope.get("session", {})
        live = False
        if session.get("sid"):
            try:
                live = await session_live(session, scope["state"]["redis"], self.queue_name, time.time())
            except (RedisError, OSError) as exc:
                log.warning("dashboard session check failed", error=type(exc).__name__)
                if not public:
                    response: Response = HTMLResponse(
                        "<!doctype html><title>Dashboard unavailable</title>"
                        "<p>Redis did not answer, so the sign-in cannot be checked. Try again.</p>", 503)
                    await response(scope, receive, send)
                    return
            if not live:
                session.clear()  # the browser drops the dead cookie
        scope[SIGNED_IN] = live
        if public or live:
            await self.app(scope, receive, send)
            return
        target = scope["path"] + (f"?{scope['query_string'].decode('latin-1')}" if scope.get("query_string") else "")
        location = f"{base}/signin?next={quote(target, safe='')}" if scope["method"] == "GET" else f"{base}/signin"
        response = RedirectResponse(location, 303)
        await response(scope, receive, send)
