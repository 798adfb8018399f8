"""The dashboard's pages (Starlette + Jinja2 templates, no script) and its mount."""

from __future__ import annotations

import io
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from arq.connections import ArqRedis
from redis.exceptions import RedisError
from sqlalchemy import Row
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route, Router
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ledger import dashboard as queries
from ledger.accounts import ACCOUNTS
from ledger.book import trial_balance
from ledger.deadletters import pending
from ledger.money import field_amount, format_balance, format_money
from ledger.runs import write_csv
from ledger.views import invoice_view
from receiver.api import MAX_ID, MAX_INVOICE_ID
from receiver.dashboard import access, aging
from receiver.dashboard.activity import ActivityCache
from vinr_recon.jobs import queue_replays
from vinr_recon.settings import Settings
from vinr_recon.tokens import token_matches

log = structlog.get_logger("receiver.dashboard")

HERE = Path(__file__).parent
MAX_QUERY = 100
MAX_PAGE = 100_000


def _when(value: datetime | int | str | None) -> str:
    """A datetime or a Unix time, as `2026-11-22 02:00:05 UTC`; an em dash for none."""
    if value is None or value == "":
        return "—"
    if isinstance(value, int):
        value = datetime.fromtimestamp(value, UTC)
    elif isinstance(value, str):
        value = datetime.fromisoformat(value)
    # The ledger's moments are aware (UTCDateTime); a naive one from elsewhere is read as UTC.
    moment = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _money(amount: int | str | None, currency: str | None, locale: str | None = None) -> str:
    if amount is None or not currency:
        return "—"
    return format_money(int(amount), currency, locale)


def _secrets(settings: Settings) -> list[str]:
    """Every configured secret value, to be blotted out of any text a page shows."""
    values = [*settings.webhook_secrets, *settings.api_tokens, *settings.metrics_tokens]
    for name in ("vinr_api_key", "fulfilment_secret", "smtp_url", "alert_webhook_url"):
        secret = getattr(settings, name, None)
        if secret is not None:
            values.append(secret.get_secret_value() if hasattr(secret, "get_secret_value") else str(secret))
    return [v for v in values if v and len(v) >= 4]


def make_templates(settings: Settings) -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    secret_values = _secrets(settings)

    def redact(text: object) -> str:
        text = "" if text is None else str(text)
        for value in secret_values:
            text = text.replace(value, "[redacted]")
        return text

    locale = settings.money_locale

    def finding_value(finding: Row[Any], value: str | None) -> str:
        """A finding's value; an amount as people read it, its minor units beside."""
        shown = field_amount(finding.field, value, finding.currency, locale)
        return f"{shown} ({value})" if shown else (value or "—")

    templates.env.filters.update(money=lambda amount, currency: _money(amount, currency, locale),
                                 balance=lambda row: format_balance(row["debits"], row["credits"], row["currency"],
                                                                    locale),
                                 when=_when,
                                 redact=redact, finding_value=finding_value)
    templates.env.globals.update(accounts=ACCOUNTS, statuses=queries.STATUSES, csrf_field=access.CSRF_FIELD)
    return templates


class Pages:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.public_origin = settings.public_origin
        self.templates = make_templates(settings)
        self.activity = ActivityCache()

    def render(self, request: Request, name: str, code: int = 200, headers: dict[str, str] | None = None,
               **context: Any) -> Response:
        base = request.scope.get("root_path", "")
        flash = request.session.pop("flash", None) if "session" in request.scope else None
        context.update(base=base, csrf=access.csrf_token(request), flash=flash,
                       signed_in=access.signed_in(request))
        return self.templates.TemplateResponse(request, name, context, status_code=code, headers=headers)

    def not_found(self, request: Request, what: str) -> Response:
        return self.render(request, "not_found.html", 404, what=what)

    # --- sign-in ------------------------------------------------------------------------

    async def signin_form(self, request: Request) -> Response:
        base = request.scope["root_path"]
        return self.render(request, "signin.html", next=access.safe_next(base, request.query_params.get("next")))

    async def signin(self, request: Request) -> Response:
        """Sign in with a token; every attempt counts against the client's brake (a right token
        clears it), every failure is logged (never the token) and counted in /metrics."""
        base = request.scope["root_path"]
        form = await request.form()
        given_next = form.get("next")
        token = form.get("token", "")
        target = access.safe_next(base, given_next if isinstance(given_next, str) else None)  # a file names no page
        if not access.same_origin(request, self.public_origin):
            return Response("cross-site sign-in refused", 403)
        redis, queue, signins = request.state.redis, self.settings.queue_name, request.state.metrics.signins
        # The peer, or with uvicorn's --proxy-headers the client a trusted proxy names.
        client = request.client.host if request.client else "unknown"
        try:
            attempts, window_left = await access.count_attempt(redis, queue, client)
            if attempts > access.SIGNIN_LIMIT:
                signins.labels("braked").inc()
                log.warning("dashboard sign-in braked", client=client, attempts=attempts, retry_after=window_left)
                minutes = -(-window_left // 60)
                return self.render(request, "signin.html", 429, next=target, headers={"retry-after": str(window_left)},
                                   error=f"Too many sign-in attempts from this address: try again in {minutes} min.")
            if not isinstance(token, str) or not token_matches(token.strip(), self.settings.api_tokens):
                signins.labels("failed").inc()
                log.warning("dashboard sign-in failed", client=client, attempts=attempts)
                return self.render(request, "signin.html", 401, next=target, error="That token is not valid.")
            await access.forget_attempts(redis, queue, client)
            await access.start_session(request, redis, queue, int(time.time()))
        except (RedisError, OSError):
            return self.render(request, "signin.html", 503, next=target,
                               error="Redis did not answer, so no session can be opened. Try again.")
        signins.labels("ok").inc()
        log.info("dashboard sign-in", client=client)
        return RedirectResponse(target, 303)

    async def signout(self, request: Request) -> Response:
        if not await access.csrf_ok(request, self.public_origin):
            return Response("cross-site request refused", 403)
        try:
            await access.end_session(request, request.state.redis, self.settings.queue_name)
        except (RedisError, OSError):
            return Response("Redis did not answer: the session is still open. Try again.", 503)
        return RedirectResponse(request.scope["root_path"] + "/signin", 303)

    # --- pages --------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        now = datetime.now(UTC)
        async with request.state.engine.connect() as conn:
            trial = await trial_balance(conn)
            money, balances = queries.money_from(trial), queries.account_balances(trial)
            failed_count, failed = await queries.failed_payments(conn, now)
            run = await queries.last_run(conn)
            waiting = await queries.waiting(conn)
            charts, drawn_at = await self.activity.get(conn, now.date())
        return self.render(request, "overview.html", money=money, balances=balances, failed=failed,
                           failed_count=failed_count,
                           failed_days=queries.FAILED_DAYS, run=run, waiting=waiting, activity=charts,
                           activity_drawn_at=datetime.fromtimestamp(drawn_at, UTC))

    async def invoices(self, request: Request) -> Response:
        params = request.query_params
        q = params.get("q", "").strip()[:MAX_QUERY]
        status = params.get("status") or None
        if status not in (None, *queries.STATUSES):
            status = None
        try:
            page = min(max(int(params.get("page", 1)), 1), MAX_PAGE)
        except ValueError:
            page = 1
        if q and not q.isprintable():
            q = ""
        narrowed, narrowing, narrowing_text = aging.list_filter(params, self.settings.alert_default_recipient)
        async with request.state.engine.connect() as conn:
            rows, more = await queries.invoices(conn, q, status, page, narrowed=narrowed)
            total = await queries.invoice_count(conn, q, status, narrowed)
        if q and total == 1 and page == 1 and rows:
            # One match: straight to the invoice.
            return RedirectResponse(f"{request.scope['root_path']}/invoices/{rows[0].invoice_id}", 303)
        return self.render(request, "invoices.html", rows=rows, more=more, page=page, q=q, status=status,
                           total=total, narrowing=narrowing, narrowing_text=narrowing_text)

    async def invoice(self, request: Request) -> Response:
        invoice_id = request.path_params["invoice_id"]
        if len(invoice_id) > MAX_INVOICE_ID or not invoice_id.isprintable():
            return self.not_found(request, "invoice")
        async with request.state.engine.connect() as conn:
            view = await invoice_view(conn, invoice_id)
            if view is None:
                return self.not_found(request, f"invoice {invoice_id}")
            notices = await queries.invoice_notices(conn, invoice_id)
            found = await queries.invoice_findings(conn, invoice_id)
            named = await queries.customer_name(conn, view.customer)
        return self.render(request, "invoice.html", inv=view, notices=notices, findings=found, named=named)

    async def runs(self, request: Request) -> Response:
        try:
            before = int(request.query_params["before"]) if "before" in request.query_params else None
        except ValueError:
            before = None
        if before is not None and not 0 <= before <= MAX_ID:
            before = None
        async with request.state.engine.connect() as conn:
            rows, more = await queries.run_list(conn, before)
        return self.render(request, "runs.html", runs=rows, more=more)

    async def run(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        if run_id > MAX_ID:
            return self.not_found(request, f"reconciliation run {run_id}")
        async with request.state.engine.connect() as conn:
            run, rows, count = await queries.run_with_findings(conn, run_id)
        if run is None:
            return self.not_found(request, f"reconciliation run {run_id}")
        return self.render(request, "run.html", run=run, findings=rows, count=count)

    async def run_csv(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        if run_id > MAX_ID:
            return self.not_found(request, f"reconciliation run {run_id}")
        out = io.StringIO()
        async with request.state.engine.connect() as conn:
            run, _, _ = await queries.run_with_findings(conn, run_id, limit=0)
            if run is None:
                return self.not_found(request, f"reconciliation run {run_id}")
            await write_csv(conn, run_id, out)
        return Response(out.getvalue(), media_type="text/csv", headers={
            "content-disposition": f'attachment; filename="reconciliation-run-{run_id}.csv"'})

    async def dead_letters(self, request: Request) -> Response:
        async with request.state.engine.connect() as conn:
            waiting, replayed = await queries.dead_letter_list(conn)
            notices = (await queries.waiting(conn))["notices"]
        return self.render(request, "dead_letters.html", waiting=waiting, replayed=replayed, notices=notices)

    async def replay_letter(self, request: Request) -> Response:
        """Queue the dead letter again (vinr_recon.jobs.queue_replays); the worker applies it."""
        if not await access.csrf_ok(request, self.public_origin):
            return Response("cross-site request refused", 403)
        letter_id = request.path_params["letter_id"]
        back = RedirectResponse(request.scope["root_path"] + "/dead-letters", 303)
        letter = None
        if letter_id <= MAX_ID:
            async with request.state.engine.connect() as conn:
                event_id = await queries.letter_event_id(conn, letter_id)
                if event_id is not None:
                    letter = next((x for x in await pending(conn, [event_id]) if x.id == letter_id), None)
        if letter is None:
            request.session["flash"] = f"Dead letter {letter_id} is not waiting (already replayed?)."
            return back
        redis = ArqRedis(connection_pool=request.state.redis.connection_pool)
        try:
            ((_, job_id, fresh),) = await queue_replays(redis, self.settings.queue_name, [letter])
        except (RedisError, OSError):
            request.session["flash"] = "Redis did not answer: nothing was queued. Try again."
            return back
        request.session["flash"] = (f"Queued {letter.event_id} again (job {job_id}); the worker applies it."
                                    if fresh else f"{letter.event_id} is already queued (job {job_id}).")
        return back


def dashboard_mount(settings: Settings) -> Mount:
    """`/dashboard`: the pages, behind the sign-in; 503 while no `LEDGER_API_TOKEN` is configured."""
    pages = Pages(settings)
    tokens = settings.api_tokens
    routes = [
        Route("/", pages.overview, methods=["GET"], name="overview"),
        Route("/signin", pages.signin_form, methods=["GET"]),
        Route("/signin", pages.signin, methods=["POST"]),
        Route("/signout", pages.signout, methods=["POST"]),
        Route("/invoices", pages.invoices, methods=["GET"]),
        Route("/invoices/{invoice_id}", pages.invoice, methods=["GET"]),
        *aging.routes(pages),
        Route("/runs", pages.runs, methods=["GET"]),
        Route("/runs/{run_id:int}", pages.run, methods=["GET"]),
        Route("/runs/{run_id:int}/findings.csv", pages.run_csv, methods=["GET"]),
        Route("/dead-letters", pages.dead_letters, methods=["GET"]),
        Route("/dead-letters/{letter_id:int}/replay", pages.replay_letter, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    # A secret nobody knows while no token is configured (the guard answers 503 before it matters).
    secret = access.session_secret(tokens) if tokens else secrets.token_hex(32)
    # No trailing-slash redirects: Starlette builds them from the Host header.
    return Mount("/dashboard", app=Router(routes, redirect_slashes=False), middleware=[
        Middleware(access.DashboardGuard, tokens=tokens, public_origin=pages.public_origin),
        Middleware(SessionMiddleware, secret_key=secret, session_cookie=access.SESSION_COOKIE,
                   max_age=access.SESSION_MAX_AGE, path="/dashboard", same_site="lax"),
        Middleware(access.RequireSignIn, queue_name=settings.queue_name),
    ])
