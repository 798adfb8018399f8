"""The aging pages: `/dashboard/aging` (per currency and per account manager, each bucket a link to
its invoices) and `/dashboard/managers/{manager}` (that person's aging and worklist).

The figures come from ledger.aging; links are built here, with every value URL-encoded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode

from sqlalchemy import ColumnElement
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ledger.aging import BUCKETS, KEYS, aging, invoice_filter, parse_as_of, worklist

if TYPE_CHECKING:
    from receiver.dashboard.pages import Pages  # which imports this module

MAX_MANAGER = 200


def invoices_link(base: str, as_of: date, today: date, **filters: str | None) -> str:
    """The invoice list filtered to an aging cell (bucket, currency, manager)."""
    params = {k: v for k, v in filters.items() if v}
    if as_of != today:
        params["asOf"] = as_of.isoformat()
    return f"{base}/invoices?{urlencode(params)}"


def manager_link(base: str, manager: str, as_of: date, today: date) -> str:
    link = f"{base}/managers/{quote(manager, safe='@')}"
    return link if as_of == today else f"{link}?asOf={as_of.isoformat()}"


def _as_of(request: Request) -> tuple[date | None, date]:
    today = datetime.now(UTC).date()
    # A date field left empty submits `asOf=`: today.
    return parse_as_of(request.query_params.get("asOf") or None, today), today


def list_filter(params: Mapping[str, str],
                default_manager: str | None) -> tuple[ColumnElement[bool] | None, dict[str, str], str]:
    """The invoice list's aging filters (`aging`, `currency`, `manager`, `asOf`): the SQL clause
    (None without any), and the parameters to carry over to other pages of the list."""
    today = datetime.now(UTC).date()
    key = params.get("aging")
    key = key if key in (*KEYS, "all") else None
    code = params.get("currency", "")
    currency = code.upper() if len(code) == 3 and code.isalpha() and code.isascii() else None
    manager = params.get("manager") or None
    if manager is not None and (len(manager) > MAX_MANAGER or not manager.isprintable()):
        manager = None
    as_of = parse_as_of(params.get("asOf") or None, today) or today
    given = {"aging": key, "currency": currency, "manager": manager,
             "asOf": as_of.isoformat() if key and as_of != today else None}
    kept = {k: v for k, v in given.items() if v}
    return invoice_filter(as_of, default_manager, key, currency, manager), kept, _describe(kept)


def _describe(kept: dict[str, str]) -> str:
    """`31–60 days past due on 2026-11-30 · EUR · account manager am@x`, for the list's heading."""
    key = kept.get("aging")
    parts: list[str] = []
    if key:
        label = next((b.label for b in BUCKETS if b.key == key), "owed")
        parts.append("owed" if key == "all" else label.lower() if key == KEYS[0] else f"{label} past due")
        if "asOf" in kept:
            parts[-1] += f" on {kept['asOf']}"
    if kept.get("currency"):
        parts.append(kept["currency"])
    if kept.get("manager"):
        parts.append(f"account manager {kept['manager']}")
    return " · ".join(parts)


class AgingPages:
    def __init__(self, pages: Pages) -> None:
        self.pages = pages
        self.default = pages.settings.alert_default_recipient

    def _links(self, request: Request, as_of: date,
               today: date) -> tuple[Callable[..., str], Callable[[str], str]]:
        base = request.scope["root_path"]

        def cell(key: str | None, currency: str, manager: str | None = None) -> str:
            return invoices_link(base, as_of, today, aging=key or "all", currency=currency, manager=manager)

        return cell, (lambda manager: manager_link(base, manager, as_of, today))

    async def aging(self, request: Request) -> Response:
        as_of, today = _as_of(request)
        if as_of is None:
            return self.pages.render(request, "aging.html", 400, error="That is not a date (YYYY-MM-DD).",
                                     as_of=today, figures=None, buckets=BUCKETS, keys=KEYS)
        async with request.state.engine.connect() as conn:
            figures = await aging(conn, as_of, self.default)
        cell, manager_url = self._links(request, as_of, today)
        return self.pages.render(request, "aging.html", as_of=as_of, today=today, figures=figures,
                                 buckets=BUCKETS, keys=KEYS, cell=cell, manager_url=manager_url)

    async def manager(self, request: Request) -> Response:
        manager = request.path_params["manager"]
        if not manager or len(manager) > MAX_MANAGER or not manager.isprintable():
            return self.pages.not_found(request, "account manager")
        as_of, today = _as_of(request)
        if as_of is None:
            as_of = today
        async with request.state.engine.connect() as conn:
            figures = await aging(conn, as_of, self.default, manager=manager)
            work, count = await worklist(conn, manager, as_of, self.default)
        cell, _ = self._links(request, as_of, today)
        return self.pages.render(request, "manager.html", manager=manager, as_of=as_of, today=today,
                                 figures=figures, work=work, count=count, buckets=BUCKETS, keys=KEYS, cell=cell)


def routes(pages: Pages) -> list[Route]:
    views = AgingPages(pages)
    return [
        Route("/aging", views.aging, methods=["GET"]),
        Route("/managers/{manager:path}", views.manager, methods=["GET"]),
    ]
