"""History-aware retrieval: which questions are follow-ups, what they are searched as, the planner."""

from __future__ import annotations

import pytest

from actors.plan import REWRITE_STEP, CallCheck, CallLLM, Caps, Retrieve, next_action
from actors.state import ConversationState, TurnState
from index.followup import is_follow_up, retrieval_query, rewritten_query
from store.events import LLMCompleted, ToolCall, UserMessage

CAPS = Caps(max_steps=12, max_tokens=100_000, max_cost_usd=1.0, max_seconds=600)


@pytest.mark.parametrize(
    ("question", "follow_up"),
    [
        ("and how do I write them?", True),  # a continuation
        ("What about on Windows?", True),
        ("how do I delete it", True),  # a pronoun and nothing else to go on
        ("Which version of it should I use?", True),  # nothing before the pronoun names a subject
        ("How do I send email?", False),  # short, but it names its subject
        ("What is variable suicide in Perl and how can I prevent it?", False),  # its antecedent is here
        ("How do I print to more than one file at once?", False),
        ("", False),
    ],
)
def test_what_counts_as_a_follow_up(question: str, follow_up: bool) -> None:
    assert is_follow_up(question) is follow_up


def test_a_follow_up_is_searched_with_the_previous_subject_and_a_new_topic_as_it_is() -> None:
    earlier = ["How do I parse dates?", "How do I read CSV files?"]
    assert retrieval_query("and how do I write them?", earlier) == "and how do I write them? read csv files"
    assert retrieval_query("How do I send email?", earlier) == "How do I send email?"
    assert retrieval_query("and how do I write them?", []) == "and how do I write them?"
    long_subject = "Quarterly revenue numbers for the northern sales region " * 50
    assert retrieval_query("what about them?", [long_subject]).split()[3:] == [
        "quarterly",
        "revenue",
        "numbers",
        "northern",
    ]


def _turn(number: int, text: str) -> TurnState:
    return TurnState(number=number, question=UserMessage(turn=number, text=text), route="qa")


def _no_tools(call: ToolCall) -> CallCheck:
    raise AssertionError("a Q&A turn calls no tool")


def test_the_planner_retrieves_a_follow_up_with_the_earlier_question() -> None:
    state = ConversationState(
        conversation_id="c1",
        history=[
            {"role": "user", "content": "How do I read CSV files?"},
            {"role": "assistant", "content": "Use the csv module [1]."},
        ],
        current=_turn(2, "and how do I write them?"),
    )
    assert next_action(state, CAPS, _no_tools, 0) == Retrieve(query="and how do I write them? read csv files")
    state.current = _turn(2, "How do I send email?")
    assert next_action(state, CAPS, _no_tools, 0) == Retrieve(query="How do I send email?")


def _history_state(question: str) -> ConversationState:
    return ConversationState(
        conversation_id="c1",
        history=[
            {"role": "user", "content": "How do I read CSV files?"},
            {"role": "assistant", "content": "Use the csv module [1]."},
        ],
        current=_turn(2, question),
    )


def test_with_a_model_configured_a_follow_up_is_rewritten_once_then_searched_as_rewritten() -> None:
    state = _history_state("and how do I write them?")
    assert next_action(state, CAPS, _no_tools, 0, rewrite=True) == CallLLM(step=REWRITE_STEP)
    assert state.current is not None
    reply = 'Query: "how do I write CSV files"\n(the subject is CSV files)'
    state.current.llm_completed[REWRITE_STEP] = LLMCompleted(
        step=REWRITE_STEP, model="m", prompt_hash="h", text=reply
    )
    assert next_action(state, CAPS, _no_tools, 0, rewrite=True) == Retrieve(query="how do I write CSV files")
    # A question that names its subject, or a first question, never costs a model call.
    state.current = _turn(2, "How do I send email?")
    assert next_action(state, CAPS, _no_tools, 0, rewrite=True) == Retrieve(query="How do I send email?")


def test_a_failed_or_unusable_rewrite_falls_back_to_the_rule() -> None:
    rule = "and how do I write them? read csv files"
    state = _history_state("and how do I write them?")
    assert state.current is not None
    state.current.llm_failures[REWRITE_STEP] = 1  # one failure is enough: the rule is searched
    assert next_action(state, CAPS, _no_tools, 0, rewrite=True) == Retrieve(query=rule)
    for reply in ("", "   \n", "x" * 400, "Query: ?"):
        assert rewritten_query(reply, "and how do I write them?", ["How do I read CSV files?"]) == rule
