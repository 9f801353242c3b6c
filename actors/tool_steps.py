"""A turn's tool steps: a call runs between its `ToolIntent` (which fixes the idempotency key, so a
re-issue after a crash is recognised downstream) and its `ToolResult`; a risky call first asks a human."""

from __future__ import annotations

import time
from typing import Any

from actors.activation import REASON_CHARS, ActivationCore, sha
from actors.approval_request import approval_record, approval_requested, schedule_expiry
from actors.plan import RequestApproval, RunTool
from actors.tools.registry import Tool, ToolContext, ToolOutput, args_to_builtins, idempotency_key
from store.events import ToolIntent, ToolResult
from store.exceptions import DocentError


async def run_tool(act: ActivationCore, action: RunTool) -> None:
    call = action.call
    tool, args = act.tools.parse(call.name, call.arguments, settings=act.rt.settings)
    key = intend(act, action, tool, args)
    act.before_effect()  # nothing held while it runs, the intent on the replicas (a re-issue appends nothing)
    act.check_lease()
    started = time.perf_counter()
    output, error = await effect(act, tool, args, key)
    act.rt.crash("tool_effect")  # a crash here: the effect happened, its result is not recorded
    result = ToolResult(
        step=action.step, call_id=call.id, tool=tool.name, idempotency_key=key,
        result=output.text if output else "", data=output.data if output else None, error=error,
        latency_ms=round((time.perf_counter() - started) * 1000, 3),
    )  # fmt: skip
    act.emit([result])


def intend(act: ActivationCore, action: RunTool, tool: Tool[Any], args: Any) -> str:
    """The call's idempotency key: the recorded intent's (a re-issue), else a new intent's."""
    turn = act.turn
    intent = turn.intents.get(action.call.id)
    if intent is not None:
        return intent.idempotency_key
    key = idempotency_key(act.conv_id, turn.number, action.step, tool.name, args)
    intent = ToolIntent(
        step=action.step, call_id=action.call.id, tool=tool.name, args=args_to_builtins(args),
        idempotency_key=key, risk=action.check.risk,
    )  # fmt: skip
    act.emit([intent])
    return key


async def effect(
    act: ActivationCore, tool: Tool[Any], args: Any, key: str
) -> tuple[ToolOutput | None, str | None]:
    """Run the tool: (its output, None) or (None, the typed error as text)."""
    context = ToolContext(
        idempotency_key=key,
        principal=act.principal,
        settings=act.rt.settings,
        knowledge=act.rt.knowledge() if tool.needs_knowledge_base else None,
        conversation_id=act.conv_id,
        filters=act.turn.question.filters,
    )
    try:
        return await tool.run(args, context), None
    except DocentError as exc:  # ToolError included
        return None, f"{exc.code}: {exc.message}"


def request_approval(act: ActivationCore, action: RequestApproval) -> None:
    turn = act.turn
    approval_id = sha(act.conv_id, turn.number, action.step, action.call.id)[:32]
    reason = (action.reason or turn.llm_completed[action.step].text)[:REASON_CHARS]
    record = approval_record(
        approval_id, act.conv_id, act.principal, act.rt.policy, action,
        reason=reason, now_ms=act.rt.clock(),
    )  # fmt: skip
    act.before_effect()  # nothing held (and the log on the replicas) while the reviewers' ledger is written
    stored = act.rt.ledger.create(record)  # idempotent: a replay finds the first record
    act.emit([approval_requested(action, stored)])
    schedule_expiry(approval_id, act.conv_id, stored.expires_ms, act.rt.settings)
