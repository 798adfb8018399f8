"""GET /healthz, /readyz and /metrics: what an orchestrator and Prometheus ask."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from typing import Any, Literal, TypeVar

import structlog
from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import Response

from ledger.runs import ReconciliationFigures, reconciliation_figures
from ledger.views import dead
from receiver.answers import answer, refusal
from receiver.api import bearer_token
from receiver.metrics import CONTENT_TYPE, Metrics
from vinr_recon.redis_connect import primary_answers
from vinr_recon.tokens import token_matches

log = structlog.get_logger("receiver.health")

T = TypeVar("T")

CHECK_TIMEOUT = 1.0  # seconds per dependency; a probe must answer well before its own timeout


# The probes' answers, as receiver/openapi.py publishes them.
class _Probe(BaseModel):
    # A constant field is still always there: the document says so (required).
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


class Liveness(_Probe):
    status: Literal["ok"] = "ok"


class ReadyChecks(_Probe):
    redis: Literal["ok"] = "ok"
    database: Literal["ok"] = "ok"


class Readiness(_Probe):
    status: Literal["ready"] = "ready"
    checks: ReadyChecks = ReadyChecks()


class Checks(_Probe):
    """"ok", "timeout", or the name of the error"""

    redis: str
    database: str


class Unready(_Probe):
    status: Literal["unavailable"] = "unavailable"
    failed: list[Literal["redis", "database"]] = Field(min_length=1)
    checks: Checks


async def healthz(request: Request) -> Response:
    """200 as long as the process serves requests."""
    return answer(Liveness())


async def _select_one(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


_abandoned: set[asyncio.Task[Any]] = set()  # probes given up on, finishing their cleanup


def _forget(task: asyncio.Task[Any]) -> None:
    _abandoned.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: a probe given up on has nobody left to tell


async def _let_go_when_given_up(query: Awaitable[T]) -> T:
    """`query`'s answer. Given up on (a timeout cancels this), the query is cancelled in the
    background, not waited for: its cleanup is a rollback that, behind PgBouncer with no server
    to give it, waits as long as the query did, and the probe would answer that much later."""
    task = asyncio.ensure_future(query)
    try:
        return await asyncio.shield(task)
    finally:
        if not task.done():
            task.cancel()
            _abandoned.add(task)
            task.add_done_callback(_forget)


async def _database_answers(engine: AsyncEngine) -> None:
    await _let_go_when_given_up(_select_one(engine))


async def _check(name: str, probe: Awaitable[object]) -> str | None:
    """None when `probe` finishes within the timeout, else the name of what went wrong."""
    try:
        await asyncio.wait_for(probe, CHECK_TIMEOUT)
    except Exception as exc:  # any failure means "not ready"; the detail goes to the log only
        problem = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
        log.warning("readiness check failed", check=name, error=problem, detail=str(exc)[:200])
        return problem
    return None


async def readyz(request: Request) -> Response:
    """200 when Redis answers PING (with Sentinels: they name a primary, and it answers) and the
    database `SELECT 1`; else 503 naming what failed."""
    redis: Redis = request.state.redis
    engine: AsyncEngine = request.state.engine
    redis_problem, database_problem = await asyncio.gather(
        _check("redis", primary_answers(redis)), _check("database", _database_answers(engine))
    )
    if redis_problem is None and database_problem is None:
        return answer(Readiness())
    failed: list[Literal["redis", "database"]] = []
    if redis_problem is not None:
        failed.append("redis")
    if database_problem is not None:
        failed.append("database")
    checks = Checks(redis=redis_problem or "ok", database=database_problem or "ok")
    return answer(Unready(failed=failed, checks=checks), 503)


async def _read_ledger(engine: AsyncEngine) -> tuple[dict[str, int], ReconciliationFigures]:
    async with engine.connect() as connection:
        return await dead(connection), await reconciliation_figures(connection)


async def metrics(request: Request) -> Response:
    """The Prometheus text format; the queue depth (Redis), what is dead and the reconciliation's
    figures (the ledger) are read at scrape time, each NaN when its store does not answer in time.
    With METRICS_TOKEN, only for `Authorization: Bearer <token>` (401 otherwise)."""
    tokens = request.state.settings.metrics_tokens
    if tokens and not token_matches(bearer_token(request.scope), tokens):
        return refusal(401, "missing or invalid bearer token", {"www-authenticate": "Bearer"})
    registry: Metrics = request.state.metrics
    redis: Redis = request.state.redis
    try:
        depth = await asyncio.wait_for(redis.zcard(request.state.settings.queue_name), CHECK_TIMEOUT)
    except Exception as exc:  # the scrape still answers; NaN says the depth is unknown
        log.warning("queue depth unavailable", error=type(exc).__name__)
        depth = float("nan")
    registry.queue_depth.set(depth)
    counts: Mapping[str, float]
    figures: ReconciliationFigures | None
    try:
        counts, figures = await asyncio.wait_for(_let_go_when_given_up(_read_ledger(request.state.engine)),
                                                 CHECK_TIMEOUT)
    except Exception as exc:
        log.warning("dead counts and reconciliation figures unavailable", error=type(exc).__name__)
        counts, figures = {"events": float("nan"), "notices": float("nan")}, None
    for kind, count in counts.items():
        registry.dead.labels(kind).set(count)
    registry.reconciliation.show(figures)
    return Response(registry.render(), media_type=CONTENT_TYPE)
