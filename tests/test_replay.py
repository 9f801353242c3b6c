"""The pure core replayed over recorded event logs, as Temporal's replayer tests replay recorded histories.

Each file in tests/fixtures/event_logs/ is a durable log the conversation actor wrote during a run of
tests/test_conversation.py, decoded here with the real schema (`store.events.Event`). No Redis, no HTTP,
no index: `fold` (actors/state.py), `next_action` and `validate_citations` (actors/plan.py) alone.

- every prefix of a log makes `next_action` decide the event the actor wrote next (replay = the same
  decisions), and the whole log leaves the conversation idle or waiting for a human;
- `fold` of each log reaches the recorded outcome;
- `validate_citations` over each answer's raw model text and recorded sources reproduces the answer;
- tables of edited logs (denied, expired, failing, over a cap) and of citation texts pin the rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest

from actors import plan
from actors.plan import CallCheck, Caps, next_action, validate_citations
from actors.state import ConversationState, fold
from store import events as ev
from store.settings import Settings

FIXTURES = Path(__file__).parent / "fixtures" / "event_logs"
NAMES = sorted(path.stem for path in FIXTURES.glob("*.json"))
INBOX = (ev.UserMessage, ev.ApprovalDecided, ev.ApprovalExpired, ev.TurnCancelled)  # not decided: posted
DEFAULTS = Settings.from_env({})
CAPS = Caps(
    max_steps=DEFAULTS.max_steps,
    max_tokens=DEFAULTS.max_run_tokens,
    max_cost_usd=DEFAULTS.max_run_cost_usd,
    max_seconds=DEFAULTS.max_run_seconds,
)


class RecordedLog(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    recorded_from: str
    note: str
    verdicts: dict[str, CallCheck]
    events: list[tuple[str, ev.Event]]


_decoder = msgspec.json.Decoder(RecordedLog)


def recorded(name: str) -> RecordedLog:
    return _decoder.decode((FIXTURES / f"{name}.json").read_bytes())


def folded(events: Sequence[tuple[str, ev.Event]], conv_id: str = "replay") -> ConversationState:
    state = ConversationState(conversation_id=conv_id)
    for entry_id, event in events:
        fold(state, entry_id, event)
    return state


def judge(verdicts: dict[str, CallCheck]) -> Any:
    def check(call: ev.ToolCall) -> CallCheck:
        return verdicts.get(call.id, CallCheck(ok=False, error=f"no verdict recorded for {call.id}"))

    return check


def decide(
    log: RecordedLog, events: Sequence[tuple[str, ev.Event]], now_ms: int, caps: Caps = CAPS
) -> plan.Action:
    return next_action(folded(events), caps, judge(log.verdicts), now_ms)


def wrote(action: plan.Action, event: ev.Event) -> bool:
    """Whether `event` is what the actor writes when it performs `action` (a re-issue included: a call
    requested but not completed is requested again, an intent without a result runs again)."""
    match action, event:
        case plan.StartTurn(route=route), ev.TurnStarted():
            return route == event.route
        case plan.Retrieve(query=query), ev.RetrievalDone():
            return query == event.query
        case plan.CallLLM(step=step), ev.LLMRequested() | ev.LLMCompleted() | ev.LLMFailed():
            return step == event.step
        case plan.RunTool(call=call), ev.ToolIntent() | ev.ToolResult():
            ran = isinstance(event, ev.ToolIntent) or event.idempotency_key != ""
            return call.id == event.call_id and ran
        case plan.RejectTool(call=call, error=error), ev.ToolResult():
            return call.id == event.call_id and error == event.error and event.idempotency_key == ""
        case plan.RequestApproval(call=call), ev.ApprovalRequested():
            return call.id == event.call_id
        case plan.Finish(), ev.AnswerCompleted():
            return True
        case plan.Fail(code=code), ev.TurnFailed():
            return code == event.code
        case plan.Limit(limit=limit), ev.LimitHit():
            return limit == event.limit
    return False


def written_with_the_previous(previous: ev.Event | None, event: ev.Event) -> bool:
    """A turn that ends on a non-recoverable model error is written in the same append as the error."""
    fatal = isinstance(previous, ev.LLMFailed) and not previous.recoverable
    return isinstance(event, ev.TurnFailed) and fatal


# ---- every decision in every recorded log ---------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_each_prefix_decides_the_event_the_actor_wrote_next(name: str) -> None:
    log = recorded(name)
    checked = 0
    for i, (_, event) in enumerate(log.events):
        previous = log.events[i - 1][1] if i else None
        if isinstance(event, INBOX) or written_with_the_previous(previous, event):
            continue
        action = decide(log, log.events[:i], event.at_ms)
        assert wrote(action, event), f"{name} #{i}: decided {action!r}, the log has {event!r}"
        checked += 1
    assert checked >= 4


@pytest.mark.parametrize("name", NAMES)
def test_a_whole_log_leaves_the_conversation_idle_or_waiting_for_a_human(name: str) -> None:
    log = recorded(name)
    last = log.events[-1][1]
    action = decide(log, log.events, last.at_ms)
    if isinstance(last, ev.ApprovalRequested):
        assert action == plan.AwaitApproval(approval_ids=(last.approval_id,))
    else:
        assert action == plan.Idle()


# ---- the fold -------------------------------------------------------------------------------------------


FOLDED: list[tuple[str, dict[str, Any]]] = [
    ("qa_answered_with_citations", {"turns": 1, "route": "qa", "outcome": "answer_completed", "history": 2}),
    ("qa_citation_to_an_ungiven_passage_dropped", {"turns": 1, "route": "qa", "outcome": "answer_completed"}),
    ("agent_two_tools_then_answer", {"turns": 1, "route": "agent", "results": 2, "last_step": 2}),
    ("agent_approval_approved_then_sent", {"approvals": ["approved"], "results": 1, "history": 2}),
    ("agent_cancelled_while_waiting_then_qa", {"turns": 2, "route": "qa", "history": 2, "approvals": []}),
    ("agent_injection_waits_for_a_human", {"ended": False, "approvals": ["pending"], "failures": {1: 1}}),
    ("agent_malformed_reply_retried", {"failures": {0: 1}, "unusable": {0: 1}, "ended": True}),
    ("agent_transport_failure_retried", {"failures": {0: 1}, "unusable": {}, "outcome": "answer_completed"}),
    ("agent_then_qa_two_turns", {"turns": 2, "route": "qa", "history": 4}),
    ("agent_sources_from_typed_payload", {"route": "agent", "results": 1, "outcome": "answer_completed"}),
]


def summary(state: ConversationState) -> dict[str, Any]:
    turn = state.current
    assert turn is not None
    return {
        "turns": state.turns,
        "route": turn.route,
        "ended": turn.ended,
        "outcome": turn.outcome,
        "history": len(state.history),
        "results": len(turn.results),
        "last_step": turn.last_step,
        "approvals": [a.status for a in turn.approvals.values()],
        "failures": turn.llm_failures,
        "unusable": turn.unusable_replies,
    }


def test_the_fold_table_covers_every_recorded_log() -> None:
    assert sorted(name for name, _ in FOLDED) == NAMES


@pytest.mark.parametrize(("name", "expected"), FOLDED)
def test_fold_reaches_the_recorded_outcome(name: str, expected: dict[str, Any]) -> None:
    log = recorded(name)
    state = folded(log.events)
    got = summary(state)
    assert {key: got[key] for key in expected} == expected
    assert state.events == len(log.events) and state.last_event_id == log.events[-1][0]
    turn = state.current
    assert turn is not None
    completed = [e for _, e in log.events if isinstance(e, ev.LLMCompleted) and e.turn == turn.number]
    assert turn.tokens == sum(e.tokens_in + e.tokens_out for e in completed)


@pytest.mark.parametrize("name", NAMES)
def test_fold_is_deterministic_and_snapshots_round_trip(name: str) -> None:
    from actors.state import dump_state, load_state

    log = recorded(name)
    whole = folded(log.events)
    half = len(log.events) // 2
    resumed = load_state(dump_state(folded(log.events[:half])))
    for entry_id, event in log.events[half:]:
        fold(resumed, entry_id, event)
    assert dump_state(resumed) == dump_state(whole) == dump_state(folded(log.events))


# ---- every recorded answer's citations ------------------------------------------------------------------


def answers(log: RecordedLog) -> list[tuple[str, ev.AnswerCompleted]]:
    """(the raw text the model wrote, the answer the actor recorded) for each answered turn."""
    found = []
    for i, (_, event) in enumerate(log.events):
        if isinstance(event, ev.AnswerCompleted):
            turn = folded(log.events[:i]).current
            assert turn is not None
            found.append((turn.llm_completed[turn.last_step].text, event))
    return found


@pytest.mark.parametrize("name", NAMES)
def test_validate_citations_reproduces_every_recorded_answer(name: str) -> None:
    for raw, answer in answers(recorded(name)):
        cleaned, citations, dropped = validate_citations(raw, list(answer.sources))
        assert (cleaned, citations, dropped) == (answer.text, answer.citations, answer.dropped_citations)


def test_the_recorded_logs_include_kept_and_dropped_citations() -> None:
    kept = [a for name in NAMES for _, a in answers(recorded(name)) if a.citations]
    dropped = [a for name in NAMES for _, a in answers(recorded(name)) if a.dropped_citations]
    assert kept and dropped


# ---- edited logs: the rules the recordings do not reach -------------------------------------------------


def cut_after(name: str, kind: type) -> tuple[RecordedLog, list[tuple[str, ev.Event]]]:
    """The log up to and including its first event of `kind`."""
    log = recorded(name)
    end = next(i for i, (_, e) in enumerate(log.events) if isinstance(e, kind))
    return log, list(log.events[: end + 1])


def appended(events: list[tuple[str, ev.Event]], *more: ev.Event) -> list[tuple[str, ev.Event]]:
    last = events[-1][1]
    stamped = [msgspec.structs.replace(e, turn=last.turn, at_ms=last.at_ms) for e in more]
    return events + [(f"{last.at_ms}-{100 + n}", e) for n, e in enumerate(stamped)]


def approval(events: list[tuple[str, ev.Event]]) -> ev.ApprovalRequested:
    last = events[-1][1]
    assert isinstance(last, ev.ApprovalRequested)
    return last


MAIL = "agent_approval_approved_then_sent"


def test_a_pending_approval_ends_the_activation() -> None:
    log, events = cut_after(MAIL, ev.ApprovalRequested)
    waiting = plan.AwaitApproval(approval_ids=(approval(events).approval_id,))
    assert decide(log, events, events[-1][1].at_ms) == waiting


@pytest.mark.parametrize(
    ("outcome", "error"),
    [
        (ev.ApprovalDecided(approval_id="", decision="denied", reviewer="rita", reason="not to HR"),
         "denied by reviewer rita: not to HR"),
        (ev.ApprovalDecided(approval_id="", decision="denied", reviewer="rita"), "denied by reviewer rita"),
        (ev.ApprovalExpired(approval_id=""), "the approval request expired (counts as denied)"),
    ],
)  # fmt: skip
def test_a_denied_or_expired_approval_rejects_the_call(outcome: ev.Event, error: str) -> None:
    log, events = cut_after(MAIL, ev.ApprovalRequested)
    request = approval(events)
    events = appended(events, msgspec.structs.replace(outcome, approval_id=request.approval_id))
    action = decide(log, events, events[-1][1].at_ms)
    assert isinstance(action, plan.RejectTool) and action.call.id == request.call_id and action.error == error


def test_only_the_first_outcome_of_an_approval_counts() -> None:
    log, events = cut_after(MAIL, ev.ApprovalRequested)
    request = approval(events)
    events = appended(
        events,
        ev.ApprovalDecided(approval_id=request.approval_id, decision="approved", reviewer="rita"),
        ev.ApprovalExpired(approval_id=request.approval_id),
    )
    assert isinstance(decide(log, events, events[-1][1].at_ms), plan.RunTool)


def test_a_tool_intent_without_a_result_is_reissued() -> None:
    log, events = cut_after("agent_two_tools_then_answer", ev.ToolIntent)
    intent = events[-1][1]
    assert isinstance(intent, ev.ToolIntent)
    action = decide(log, events, intent.at_ms)
    assert isinstance(action, plan.RunTool)
    assert (action.call.id, action.step) == (intent.call_id, intent.step)


def test_a_call_code_refuses_is_rejected_not_run() -> None:
    log, events = cut_after("agent_two_tools_then_answer", ev.LLMCompleted)
    refused = msgspec.structs.replace(log, verdicts={})
    action = decide(refused, events, events[-1][1].at_ms)
    assert isinstance(action, plan.RejectTool) and action.error.startswith("no verdict recorded")


RETRIES: list[tuple[int, plan.Action]] = [
    (1, plan.CallLLM(step=0)),
    (2, plan.CallLLM(step=0)),
    (3, plan.Fail(code="llm_unavailable", message="the model failed 3 times")),
]


@pytest.mark.parametrize(("failures", "expected"), RETRIES)
def test_a_step_is_retried_until_three_failures(failures: int, expected: plan.Action) -> None:
    log, events = cut_after("qa_answered_with_citations", ev.LLMRequested)
    failed = ev.LLMFailed(step=0, code="llm_unavailable", recoverable=True)
    events = appended(events, *[failed] * failures)
    assert decide(log, events, events[-1][1].at_ms) == expected


CAP_CASES: list[tuple[str, type, dict[str, Any], int, plan.Action]] = [
    ("agent_two_tools_then_answer", ev.LLMCompleted, {"max_tokens": 10}, 0,
     plan.Limit(limit="tokens", value=0, cap=10)),
    ("agent_two_tools_then_answer", ev.LLMCompleted, {"max_cost_usd": 0.0}, 0,
     plan.Limit(limit="cost", value=0, cap=0.0)),
    ("agent_two_tools_then_answer", ev.ToolResult, {"max_steps": 1}, 0,
     plan.Limit(limit="steps", value=1, cap=1)),
    ("qa_answered_with_citations", ev.RetrievalDone, {}, 601_000,
     plan.Limit(limit="wall_clock", value=0, cap=600)),
    (MAIL, ev.ApprovalRequested, {}, 10**9, plan.AwaitApproval(approval_ids=())),  # a human decides: no clock
]  # fmt: skip


@pytest.mark.parametrize(("name", "kind", "caps", "later_ms", "expected"), CAP_CASES)
def test_caps_end_the_turn(
    name: str, kind: type, caps: dict[str, Any], later_ms: int, expected: plan.Action
) -> None:
    log, events = cut_after(name, kind)
    started = folded(events).current
    assert started is not None
    action = decide(log, events, started.started_ms + later_ms, msgspec.structs.replace(CAPS, **caps))
    assert type(action) is type(expected)
    if isinstance(expected, plan.Limit):
        assert isinstance(action, plan.Limit) and (action.limit, action.cap) == (expected.limit, expected.cap)


def test_a_finished_or_empty_conversation_is_idle() -> None:
    log = recorded("qa_answered_with_citations")
    assert decide(log, [], 0) == plan.Idle()
    assert decide(log, log.events, log.events[-1][1].at_ms) == plan.Idle()


# ---- citations table -------------------------------------------------------------------------------------


def source(n: int) -> ev.Citation:
    return ev.Citation(n=n, chunk_id=f"c{n}", doc_id=f"d{n}")


CITATIONS: list[tuple[str, list[int], str, list[int], tuple[int, ...]]] = [
    ("Sixteen weeks [1].", [1, 2], "Sixteen weeks [1].", [1], ()),
    ("A [1] and B [2].", [1], "A [1] and B .", [1], (2,)),
    ("Both [2][1], again [1].", [1, 2], "Both [2][1], again [1].", [1, 2], ()),
    ("Made up [9] twice [9] and [0].", [1], "Made up  twice  and .", [], (9, 0)),
    ("No markers at all.", [1], "No markers at all.", [], ()),
    ("Nothing was given [1].", [], "Nothing was given .", [], (1,)),
    ("Not a marker: [1234] or [a] or [ 1 ].", [1], "Not a marker: [1234] or [a] or [ 1 ].", [], ()),
]


@pytest.mark.parametrize(("text", "given", "cleaned", "cited", "dropped"), CITATIONS)
def test_validate_citations(text: str, given: list[int], cleaned: str, cited: list[int],
                            dropped: tuple[int, ...]) -> None:  # fmt: skip
    got_text, citations, got_dropped = validate_citations(text, [source(n) for n in given])
    assert (got_text, [c.n for c in citations], got_dropped) == (cleaned, cited, dropped)
    assert all(c == source(c.n) for c in citations)
