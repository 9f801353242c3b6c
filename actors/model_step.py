"""One model call of a turn: the prompt for the route, `LLMRequested` before it, the streamed deltas (paced:
at most one every `delta_interval_ms`, `actors.delta_pacer`), and `LLMCompleted` (reused on replay, never
requested again) or `LLMFailed` after it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from actors import attribution, qa_steps
from actors.activation import REASON_CHARS, ActivationCore, LeaseLost, LiveOnly, sha
from actors.delta_pacer import DeltaPacer
from actors.llm.types import (
    ChatMessage,
    Completion,
    LLMBackend,
    ToolSpec,
    messages_to_builtins,
    price_usd,
    prompt_hash,
)
from actors.plan import REWRITE_STEP
from actors.prompts import agent_messages, qa_messages, rewrite_messages
from store.events import LimitHit, LLMCompleted, LLMFailed, LLMRequested, TurnFailed
from store.exceptions import LLMError, LLMTimeout, LLMUnavailable, MalformedToolCall, StaleEpoch
from store.retry import RetryPolicy

PROMPT_ESTIMATE_TOKENS = 2_000  # a first call's prompt, for its budget hold (retrieved passages and history)
LLM_RETRY = RetryPolicy(max_retries=0, first_s=0.2, max_s=3.0, factor=5.0)  # 0.2, 1, 3 s; the plan retries


async def call_llm(act: ActivationCore, step: int) -> None:
    attempt = act.turn.llm_failures.get(step, 0)
    request_id = sha(act.conv_id, act.turn.number, step, attempt)[:32]
    tokens_in, tokens_out = estimate(act)
    if act.spend.budgets is not None:
        act.count_usage()  # the budget read sees what this activation spent so far
    over = act.spend.overspent(
        act.principal, act.rt.clock(), hold_id=request_id, tokens=tokens_in + tokens_out,
        cost_usd=price_usd(act.rt.settings, tokens_in, tokens_out),
    )  # fmt: skip
    if over is not None:  # a budget is spent: hand off before the model is called (or even loaded)
        act.emit([LimitHit(limit="budget", value=over.used, cap=over.cap, handed_off=True)])
        return
    backend = act.rt.llm()
    try:
        await _call(act, step, backend, attempt, request_id)
    finally:
        act.spend.settle(request_id)  # counted (LLMCompleted) or failed: the hold goes


def estimate(act: ActivationCore) -> tuple[int, int]:
    """What the next call may spend (its budget hold): the turn's last prompt or a typical one, and the
    longest answer the backend may write."""
    last = max(act.turn.llm_completed.values(), key=lambda c: c.step, default=None)
    prompt_tokens = last.tokens_in + last.tokens_out if last is not None else PROMPT_ESTIMATE_TOKENS
    return prompt_tokens, act.rt.settings.llm_max_tokens


async def _call(act: ActivationCore, step: int, backend: LLMBackend, attempt: int, request_id: str) -> None:
    messages, tools = await prompt(act, step)
    if step != REWRITE_STEP:
        backend = qa_steps.answer_backend(act, backend)
    digest = prompt_hash(messages, tools)
    requested = LLMRequested(
        step=step, model=backend.model_name, prompt_hash=digest,
        messages=messages_to_builtins(messages), tools=tuple(t.name for t in tools),
    )  # fmt: skip
    act.emit([requested])
    act.before_effect()  # with replicas to wait for: the request's record is on them before the call

    streaming = qa_steps.streaming_attribution(act, step)

    async def send_delta(text: str) -> None:
        await act.delta(step, text)
        if streaming is not None:
            act.live(await streaming.feed(text))

    pacer = DeltaPacer(send_delta, act.rt.settings.delta_interval_ms)
    streamed = pacer.feed if step != REWRITE_STEP else None  # a rewritten query is not the answer
    try:
        completion, rest = await _complete(backend, messages, tools, streamed, request_id, pacer)
    except (LeaseLost, StaleEpoch):
        raise LeaseLost() from None
    except LLMError as exc:
        await llm_failed(act, step, exc, attempt)
        return
    act.rt.crash("llm_response")  # a crash here: the response is lost and the step is requested again
    act.check_lease()
    tail = await last_delta(act, step, rest, streaming)
    act.emit([completed(act, step, completion, digest, backend)], live_first=tail)


async def _complete(
    backend: LLMBackend,
    messages: list[ChatMessage],
    tools: tuple[ToolSpec, ...],
    on_delta: Callable[[str], Awaitable[None]] | None,
    request_id: str,
    pacer: DeltaPacer,
) -> tuple[Completion, str]:
    """The completion, and the streamed text the pacer still held (it goes out in the completion's own
    append); on a failure what is held goes out first, before the failure is recorded."""
    try:
        completion = await backend.complete(messages, tools=tools, on_delta=on_delta, request_id=request_id)
    except BaseException:
        await pacer.close()
        raise
    return completion, await pacer.rest()


async def last_delta(
    act: ActivationCore, step: int, rest: str, streaming: attribution.Streaming | None
) -> list[LiveOnly]:
    """The held end of the streamed answer as the live items it becomes: its delta, then the sentences it
    finishes (attributed as they would have been streamed)."""
    if not rest:
        return []
    marks = await streaming.feed(rest) if streaming is not None else []
    return [act.delta_item(step, rest), *marks]


async def prompt(act: ActivationCore, step: int) -> tuple[list[ChatMessage], tuple[ToolSpec, ...]]:
    turn = act.turn
    if turn.route == "qa" and step == REWRITE_STEP:
        return rewrite_messages(act.state.history, turn.question.text), ()
    if turn.route == "qa":
        return qa_messages(await qa_steps.qa_hits(act), act.state.history, turn.question.text), ()
    if turn.route == "workflow":
        return act.flows.prompt(turn, step), ()  # the model only writes text here
    return agent_messages(turn, act.state.history, step), act.agent_specs


async def llm_failed(act: ActivationCore, step: int, exc: LLMError, attempt: int) -> None:
    """Malformed replies and lost transports are recoverable (a pause after lost ones); others end it."""
    recoverable = isinstance(exc, MalformedToolCall | LLMTimeout | LLMUnavailable)
    message = exc.message[:REASON_CHARS]
    failed = LLMFailed(step=step, code=exc.code, message=message, recoverable=recoverable)
    ended = [] if recoverable or step == REWRITE_STEP else [TurnFailed(code=exc.code, message=message)]
    act.emit([failed, *ended])
    if isinstance(exc, LLMTimeout | LLMUnavailable):
        await asyncio.sleep(LLM_RETRY.delay_s(attempt))


def completed(
    act: ActivationCore, step: int, completion: Completion, digest: str, backend: LLMBackend
) -> LLMCompleted:
    return LLMCompleted(
        step=step,
        model=completion.model or backend.model_name,
        prompt_hash=digest,
        text=completion.text,
        tool_calls=completion.tool_calls if act.turn.route == "agent" else (),
        finish_reason=completion.finish_reason,
        tokens_in=completion.tokens_in,
        tokens_out=completion.tokens_out,
        cost_usd=backend.price(completion.tokens_in, completion.tokens_out),
        latency_ms=round(completion.latency_ms, 3),
        first_token_ms=round(completion.first_token_ms, 3),
    )
