"""What a conversation does next, decided from its folded state alone (pure, no I/O).

`next_action` is the whole replay rule set: a recorded LLM response is reused (its step is past), a
recorded tool result is reused, a tool intent without a result is re-issued with the same idempotency
key, an approval that is pending ends the activation, and a cap that is hit ends the turn.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal, Protocol

import msgspec

from actors.state import ConversationState, TurnState
from index.followup import is_follow_up, retrieval_query, rewritten_query
from store.events import Citation, LimitName, Risk, Route, ToolCall, UserMessage

MAX_LLM_FAILURES_PER_STEP = 3
# A Q&A turn's optional first model call: a follow-up rewritten as a standalone search query (index.followup).
# It streams nothing to the user; if it fails once, the deterministic rule's query is searched instead.
REWRITE_STEP = -1
CITATION = re.compile(r"\[(\d{1,3})\]")

AGENT_HINTS = re.compile(
    r"\b(e-?mail|send|mail|compare|table|delete|remove|post|upload|notify|draft|summari[sz]e (?:these|all)|"
    r"for each|step by step|then)\b",
    re.IGNORECASE,
)


class CallCheck(msgspec.Struct, frozen=True, kw_only=True):
    """What code (never the model) decided about a proposed tool call."""

    ok: bool
    risk: Risk = "low"
    needs_approval: bool = False
    args: dict[str, object] = {}
    error: str = ""


CheckCall = Callable[[ToolCall], CallCheck]


class Idle(msgspec.Struct, frozen=True):
    pass


class StartTurn(msgspec.Struct, frozen=True):
    route: Route
    reason: str
    workflow: str = ""  # route "workflow": which one (actors.workflows)


class Retrieve(msgspec.Struct, frozen=True):
    query: str


class CallLLM(msgspec.Struct, frozen=True):
    step: int


class RunTool(msgspec.Struct, frozen=True):
    step: int
    call: ToolCall
    check: CallCheck


class RejectTool(msgspec.Struct, frozen=True):
    """Record a tool call that will not run (invalid, denied or expired) as a result with an error."""

    step: int
    call: ToolCall
    error: str


class RequestApproval(msgspec.Struct, frozen=True):
    step: int
    call: ToolCall
    check: CallCheck
    reason: str = ""  # what the reviewer is told; empty: the agent's own words at this step


class AwaitApproval(msgspec.Struct, frozen=True):
    approval_ids: tuple[str, ...]


class Finish(msgspec.Struct, frozen=True):
    text: str


class Fail(msgspec.Struct, frozen=True):
    code: str
    message: str


class Limit(msgspec.Struct, frozen=True):
    limit: LimitName
    value: float
    cap: float


Action = (
    Idle | StartTurn | Retrieve | CallLLM | RunTool | RejectTool | RequestApproval | AwaitApproval | Finish
    | Fail | Limit
)  # fmt: skip


class Caps(msgspec.Struct, frozen=True, kw_only=True):
    max_steps: int
    max_tokens: int
    max_cost_usd: float
    max_seconds: float


class Flows(Protocol):
    """Workflows beside the agent loop (`actors.workflows.Workflows`): pure, like everything here."""

    def route(self, question: UserMessage, default: StartTurn) -> StartTurn: ...

    def next(self, turn: TurnState, caps: Caps, check: CheckCall) -> Action: ...

    def agent_refusal(self) -> Finish | None: ...


def choose_route(text: str, mode: Literal["auto", "qa", "agent"]) -> tuple[Route, str]:
    """The client's explicit mode wins; otherwise a cheap, auditable rule: a request to *do* something
    (send, compare, tabulate, delete, ...) goes to the agent, a question goes to Q&A."""
    if mode != "auto":
        return mode, f"client asked for {mode}"
    match = AGENT_HINTS.search(text)
    if match:
        return "agent", f"task verb '{match.group(0).lower()}'"
    return "qa", "a question: retrieve and answer"


def check_caps(turn: TurnState, caps: Caps, now_ms: int) -> Limit | None:
    if turn.tokens > caps.max_tokens:
        return Limit(limit="tokens", value=turn.tokens, cap=caps.max_tokens)
    if turn.cost_usd > caps.max_cost_usd:
        return Limit(limit="cost", value=round(turn.cost_usd, 6), cap=caps.max_cost_usd)
    elapsed_s = (now_ms - turn.started_ms) / 1000
    if elapsed_s > caps.max_seconds and not _waiting_on_human(turn):
        return Limit(limit="wall_clock", value=round(elapsed_s, 1), cap=caps.max_seconds)
    return None


def _waiting_on_human(turn: TurnState) -> bool:
    return any(a.status == "pending" for a in turn.approvals.values())


def next_action(
    state: ConversationState,
    caps: Caps,
    check: CheckCall,
    now_ms: int,
    flows: Flows | None = None,
    *,
    rewrite: bool = False,
) -> Action:
    """The next step; `rewrite`: follow-ups are rewritten by the model before retrieval (REWRITE_STEP)."""
    turn = state.current
    if turn is None or turn.ended:
        return Idle()
    if turn.route is None:
        route, reason = choose_route(turn.question.text, turn.question.mode)
        default = StartTurn(route=route, reason=reason)
        return flows.route(turn.question, default) if flows else default
    if (limit := check_caps(turn, caps, now_ms)) is not None:
        return limit
    if turn.route == "qa":
        return _next_qa(turn, earlier_questions(state), rewrite)
    if flows is not None:
        return _with_flows(turn, caps, check, flows)
    return _next_agent(turn, caps, check)


def _with_flows(turn: TurnState, caps: Caps, check: CheckCall, flows: Flows) -> Action:
    if turn.route == "workflow":
        return flows.next(turn, caps, check)
    if turn.last_step < 0 and (refusal := flows.agent_refusal()) is not None:
        return refusal
    return _next_agent(turn, caps, check)


def earlier_questions(state: ConversationState) -> list[str]:
    return [m["content"] for m in state.history if m.get("role") == "user"]


def _next_qa(turn: TurnState, earlier: list[str], rewrite: bool) -> Action:
    if turn.cache_hit is not None:
        return Finish(text=turn.cache_hit.text)
    if turn.retrieval is None:
        return _rewrite_or_retrieve(turn, earlier, rewrite)
    return _llm_or_fail(turn, 0) or Finish(text=turn.llm_completed[0].text)


def _rewrite_or_retrieve(turn: TurnState, earlier: list[str], rewrite: bool) -> Action:
    question = turn.question.text
    if not (rewrite and earlier and is_follow_up(question)):
        return Retrieve(query=retrieval_query(question, earlier))
    done = turn.llm_completed.get(REWRITE_STEP)
    if done is None and not turn.llm_failures.get(REWRITE_STEP):
        return CallLLM(step=REWRITE_STEP)
    return Retrieve(query=rewritten_query(done.text if done else "", question, earlier))


def _llm_or_fail(turn: TurnState, step: int) -> Action | None:
    if step in turn.llm_completed:
        return None
    if turn.llm_failures.get(step, 0) >= MAX_LLM_FAILURES_PER_STEP:
        return Fail(code="llm_unavailable", message=f"the model failed {MAX_LLM_FAILURES_PER_STEP} times")
    return CallLLM(step=step)


def _next_agent(turn: TurnState, caps: Caps, check: CheckCall) -> Action:
    step = turn.last_step
    if step < 0:
        return _llm_or_fail(turn, 0) or Fail(code="internal", message="unreachable")
    completion = turn.llm_completed[step]
    if not completion.tool_calls:
        return Finish(text=completion.text)
    waiting: list[str] = []
    for call in completion.tool_calls:
        if call.id in turn.results:
            continue
        action = next_for_call(turn, step, call, check)
        if isinstance(action, AwaitApproval):
            waiting.extend(action.approval_ids)
            continue
        return action
    if waiting:
        return AwaitApproval(approval_ids=tuple(waiting))
    if step + 1 >= caps.max_steps:
        return Limit(limit="steps", value=step + 1, cap=caps.max_steps)
    return _llm_or_fail(turn, step + 1) or Fail(code="internal", message="unreachable")


def next_for_call(turn: TurnState, step: int, call: ToolCall, check: CheckCall) -> Action:
    """One proposed call: rejected, run, or gated by its approval (agent and workflow steps alike)."""
    verdict = check(call)
    if not verdict.ok:
        return RejectTool(step=step, call=call, error=verdict.error)
    if not verdict.needs_approval:
        return RunTool(step=step, call=call, check=verdict)
    approval_id = turn.approval_for_call.get(call.id)
    if approval_id is None:
        return RequestApproval(step=step, call=call, check=verdict)
    approval = turn.approvals[approval_id]
    match approval.status:
        case "approved":
            return RunTool(step=step, call=call, check=verdict)
        case "pending":
            return AwaitApproval(approval_ids=(approval_id,))
        case "denied":
            why = f": {approval.reason}" if approval.reason else ""
            return RejectTool(step=step, call=call, error=f"denied by reviewer {approval.reviewer}{why}")
        case _:
            return RejectTool(step=step, call=call, error="the approval request expired (counts as denied)")


def validate_citations(
    text: str, sources: list[Citation]
) -> tuple[str, tuple[Citation, ...], tuple[int, ...]]:
    """Keep `[n]` markers that point at a source the model was given; strip and report the others."""
    by_n = {c.n: c for c in sources}
    used: dict[int, Citation] = {}
    dropped: list[int] = []

    def keep_or_drop(match: re.Match[str]) -> str:
        n = int(match.group(1))
        if n in by_n:
            used.setdefault(n, by_n[n])
            return match.group(0)
        dropped.append(n)
        return ""

    cleaned = CITATION.sub(keep_or_drop, text)
    return cleaned, tuple(used[n] for n in sorted(used)), tuple(dict.fromkeys(dropped))
