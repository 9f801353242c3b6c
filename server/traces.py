"""Run traces for operators: every step of a conversation's turns, from its durable log.

    GET /admin/conversations/{conversation_id}/trace[?turn=N]      (X-Admin-Key)

The log is the trace: prompts (the messages sent), responses, tool calls and results, tokens, cost and
latency are all recorded by the actor; this endpoint groups them by turn and adds the totals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from server.auth import ADMIN_KEY_USER, Principal
from server.callers import require_admin
from server.redaction import EventView, event_view
from server.rest import json_response
from server.services import services
from store.conversations import ConversationMeta, identifier
from store.events import LLMCompleted, ToolResult, UserMessage
from store.exceptions import InputError, NotFound
from store.log import AsyncConversationLog

if TYPE_CHECKING:
    from server.services import Services


class TurnTotals(msgspec.Struct, kw_only=True):
    llm_calls: int = 0
    tool_calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    llm_ms: float = 0.0
    tool_ms: float = 0.0


def _add(totals: TurnTotals, event: Any) -> None:
    if isinstance(event, LLMCompleted):
        totals.llm_calls += 1
        totals.tokens_in += event.tokens_in
        totals.tokens_out += event.tokens_out
        totals.cost_usd += event.cost_usd
        totals.llm_ms += event.latency_ms
    elif isinstance(event, ToolResult):
        totals.tool_calls += 1
        totals.tool_ms += event.latency_ms


def _turn_filter(request: Request) -> int | None:
    raw = request.query_params.get("turn")
    if raw is None:
        return None
    if not raw.isdigit():
        raise InputError("turn must be a non-negative integer", field="turn")
    return int(raw)


async def conversation_trace(request: Request) -> Response:
    require_admin(request, "operator")
    conv_id = identifier(request.path_params["conversation_id"], "conversation_id")
    only_turn = _turn_filter(request)
    entries = await AsyncConversationLog(services(request).redis).read(conv_id)
    if not entries:
        raise NotFound(f"no conversation {conv_id}")
    entries = [(i, e) for i, e in entries if only_turn is None or int(getattr(e, "turn", 0)) == only_turn]
    view = await _admin_view(services(request), conv_id, _log_tenant(entries))
    steps = await view.events([msgspec.to_builtins(event) for _, event in entries])
    turns: dict[int, dict[str, Any]] = {}
    for (entry_id, event), step in zip(entries, steps, strict=True):
        turn = int(getattr(event, "turn", 0))
        record = turns.setdefault(turn, {"turn": turn, "steps": [], "totals": TurnTotals()})
        record["steps"].append({"id": entry_id, **step})
        _add(record["totals"], event)
    return json_response({"conversation_id": conv_id, "turns": list(turns.values())})


def _log_tenant(entries: list[tuple[str, Any]]) -> str:
    return next((e.tenant for _, e in entries if isinstance(e, UserMessage)), "")


async def _admin_view(services: Services, conv_id: str, log_tenant: str) -> EventView:
    """The admin key reads with its own ACL: no groups, on the conversation's tenant (its meta's, else its
    log's)."""
    meta = await services.conversations.get(conv_id) or ConversationMeta(
        id=conv_id, tenant=log_tenant, user="", created_ms=0
    )
    reader = Principal(tenant=meta.tenant, user=ADMIN_KEY_USER, roles=("admin",))
    return await event_view(services.redis, services.settings.data_path, meta, reader)


def trace_routes() -> list[BaseRoute]:
    return [Route("/admin/conversations/{conversation_id}/trace", conversation_trace, methods=["GET"])]
