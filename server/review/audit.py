"""GET /admin/decisions?tenant=&tool=&since=&until=&outcome=&limit= — who decided what about which call,
newest first (the admin key with `tenant`, or an admin token of the tenant)."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from server.callers import require_admin
from server.rest import json_response
from server.review.service import reviews
from store.approvals import ApprovalRecord, State
from store.conversations import is_identifier
from store.exceptions import InputError

DECISIONS_LIMIT_DEFAULT = 100
DECISIONS_LIMIT_MAX = 1_000


class DecisionOut(msgspec.Struct, frozen=True, kw_only=True):
    """One audit row: who decided what about which call, when and why."""

    approval_id: str
    conv_id: str
    tenant: str
    room: str
    tool: str
    args_hash: str
    requested_by: str
    outcome: State
    reviewer: str
    reason: str
    decided_ms: int
    created_ms: int


def _row(r: ApprovalRecord) -> DecisionOut:
    return DecisionOut(
        approval_id=r.approval_id,
        conv_id=r.conv_id,
        tenant=r.tenant,
        room=r.room,
        tool=r.tool,
        args_hash=r.args_hash,
        requested_by=r.requested_by,
        outcome=r.state,
        reviewer=r.reviewer,
        reason=r.decision_reason,
        decided_ms=r.decided_ms,
        created_ms=r.created_ms,
    )


def _time_param(request: Request, name: str) -> int | None:
    """Milliseconds since the epoch, or an ISO 8601 time (UTC when it names no zone)."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if raw.isdigit():
        return int(raw)
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"{name} must be epoch milliseconds or an ISO 8601 time", field=name) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _tool(request: Request) -> str | None:
    tool = request.query_params.get("tool") or None
    if tool is not None and not is_identifier(tool):
        raise InputError("tool must be a tool name", field="tool")
    return tool


def _outcome(request: Request) -> State | None:
    match request.query_params.get("outcome") or None:
        case None:
            return None
        case "approved" | "denied" | "expired" as word:
            return word
    raise InputError("outcome must be approved, denied or expired", field="outcome")


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", str(DECISIONS_LIMIT_DEFAULT))
    if not raw.isdigit() or not 1 <= int(raw) <= DECISIONS_LIMIT_MAX:
        raise InputError(f"limit must be 1-{DECISIONS_LIMIT_MAX}", field="limit")
    return int(raw)


async def admin_decisions(request: Request) -> Response:
    me = require_admin(request)
    records = await reviews(request.app).ledger.list_decisions(
        me.tenant,
        tool=_tool(request),
        since_ms=_time_param(request, "since") or 0,
        until_ms=_time_param(request, "until"),
        state=_outcome(request),
        limit=_limit(request),
    )
    return json_response({"tenant": me.tenant, "decisions": [_row(r) for r in records]})
