"""`GET /admin/usage`: tokens, cost and turns per tenant, user and UTC day (`store.usage`).

    GET /admin/usage?from=YYYY-MM-DD&to=YYYY-MM-DD[&tenant=T][&user=U]
        -> {"days": [...], "rows": [{day, tenant, user, tokens_in, tokens_out, tokens, cost_usd, turns}],
            "truncated": false}

    GET /admin/latency?from=YYYY-MM-DD&to=YYYY-MM-DD[&tenant=T][&route=qa|agent|workflow]
        -> {"route", "tenant", "points": [{hour, answers, first_token_p50_ms, first_token_p95_ms,
            answer_p50_ms, answer_p95_ms}]}   one point per UTC hour (store.latency); null without answers

`from` and `to` default to today (UTC) and span at most 31 days. A row with `user: ""` is the tenant's
total for the day, followed by its users' rows (at most 5,000 rows in all: past that `truncated` is true;
ask for one tenant or one user). Without `tenant`, the operator's admin key (`X-Admin-Key`) sees every
tenant; with it, the tenant's admin (an admin token, or the key) sees that tenant only.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from server.callers import require_admin
from server.rest import json_response
from server.services import services
from store.clock import now_ms
from store.exceptions import InputError
from store.latency import AsyncLatencyLedger, hours_of_days
from store.usage import AsyncUsageLedger, day_of, days_between

MAX_USER_CHARS = 200


async def usage_endpoint(request: Request) -> Response:
    tenant = request.query_params.get("tenant")
    me = require_admin(request) if tenant else require_admin(request, "operator")
    today = day_of(now_ms())
    days = days_between(request.query_params.get("from", today), request.query_params.get("to", today))
    user = request.query_params.get("user")
    if user is not None and not 1 <= len(user) <= MAX_USER_CHARS:
        raise InputError(f"user must be 1-{MAX_USER_CHARS} characters", field="user")
    report = await AsyncUsageLedger(services(request).redis).report(days, me.tenant if tenant else None, user)
    return json_response(report)


async def latency_endpoint(request: Request) -> Response:
    """Ask -> first token and ask -> answer percentiles per hour, with `usage_endpoint`'s access rules."""
    tenant = request.query_params.get("tenant")
    me = require_admin(request) if tenant else require_admin(request, "operator")
    today = day_of(now_ms())
    days = days_between(request.query_params.get("from", today), request.query_params.get("to", today))
    route = request.query_params.get("route", "qa")
    ledger = AsyncLatencyLedger(services(request).redis)
    return json_response(await ledger.series(hours_of_days(days), me.tenant if tenant else None, route))


def usage_routes() -> list[BaseRoute]:
    return [
        Route("/admin/usage", usage_endpoint, methods=["GET"]),
        Route("/admin/latency", latency_endpoint, methods=["GET"]),
    ]
