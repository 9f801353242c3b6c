"""Run traces for operators: every step of a conversation's turns, from its durable log.

    GET /admin/conversations/{conversation_id}/trace[?turn=N]      (X-Admin-Key)

The log is the trace: prompts (the messages sent), responses, tool calls and results, tokens, cost and
latency are all recorded by the actor; this endpoint groups them by turn and adds the totals.
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from server.callers import require_admin, services
from server.rest import json_response
from store.conversations import identifier
from store.events import LLMCompleted, ToolResult
from store.exceptions import InputError, NotFound
from store.log import AsyncConversationLog


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
    turns: dict[int, dict[str, Any]] = {}
    for entry_id, event in entries:
        turn = int(getattr(event, "turn", 0))
        if only_turn is not None and turn != only_turn:
            continue
        record = turns.setdefault(turn, {"turn": turn, "steps": [], "totals": TurnTotals()})
        record["steps"].append({"id": entry_id, **msgspec.to_builtins(event)})
        _add(record["totals"], event)
    return json_response({"conversation_id": conv_id, "turns": list(turns.values())})


def trace_routes() -> list[BaseRoute]:
    return [Route("/admin/conversations/{conversation_id}/trace", conversation_trace, methods=["GET"])]
