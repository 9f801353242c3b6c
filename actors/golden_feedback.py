"""A down-voted answer becomes a golden-set candidate (`store.golden_candidates`): the conversation actor,
after it appends a `feedback` event rated `down`, proposes the rated turn's question, the start of its
answer and the passages its model was given, read back from the durable log. One candidate per turn (its
id is the conversation and turn's hash), so a second rating or a replay proposes nothing new.
"""

from __future__ import annotations

import hashlib
import logging

import redis

from store.events import AnswerCompleted, Event, Feedback, RetrievalDone, UserMessage
from store.golden_candidates import ANSWER_CHARS, Candidate, candidate_store
from store.log import ConversationLog

log = logging.getLogger(__name__)


def candidate_id(conversation_id: str, turn: int) -> str:
    return hashlib.sha256(f"{conversation_id}\n{turn}".encode()).hexdigest()[:24]


def candidate_of(
    conversation_id: str, tenant: str, feedback: Feedback, events: list[Event]
) -> Candidate | None:
    """The rated turn's question, answer and passages; None when the log has no question for it."""
    turn = [e for e in events if e.turn == feedback.turn]
    question = next((e for e in turn if isinstance(e, UserMessage)), None)
    if question is None:
        return None
    answer = next((e for e in reversed(turn) if isinstance(e, AnswerCompleted)), None)
    retrieval = next((e for e in reversed(turn) if isinstance(e, RetrievalDone)), None)
    passages = answer.sources if answer and answer.sources else (retrieval.sources if retrieval else ())
    return Candidate(
        id=candidate_id(conversation_id, feedback.turn), tenant=tenant, conversation_id=conversation_id,
        turn=feedback.turn, question=question.text, answer=(answer.text if answer else "")[:ANSWER_CHARS],
        passages=passages, comment=feedback.comment, rated_by=feedback.user, created_ms=feedback.at_ms,
    )  # fmt: skip


def propose(
    conv_log: ConversationLog, redis_url: str, conversation_id: str, tenant: str, event: Feedback
) -> None:
    if event.rating != "down" or not redis_url:
        return
    try:
        candidate = candidate_of(
            conversation_id, tenant, event, [e for _, e in conv_log.read(conversation_id)]
        )
        if candidate is not None:
            candidate_store(redis_url).propose(candidate)
    except redis.RedisError as exc:  # a lost candidate never breaks the turn
        log.warning("conversation %s: golden-set candidate not recorded: %s", conversation_id, exc)
