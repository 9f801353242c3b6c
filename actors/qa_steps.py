"""A Q&A turn's retrieval: the answer cache first when the policy allows, else a search of the knowledge
base recorded as one `RetrievalDone` (the hits are kept for the prompt; a replay recalls them by id)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import msgspec

from actors import attribution, extractive
from actors.activation import ActivationCore
from actors.answer_policy import CacheDecision
from actors.llm.types import LLMBackend
from actors.sources import qa_sources
from index.types import Hit
from store import metrics
from store.events import CacheHit, RetrievalDone, TurnFailed
from store.exceptions import DocentError

log = logging.getLogger(__name__)


def cache_decision(act: ActivationCore, query: str) -> CacheDecision:
    turn = act.turn
    return act.rt.cache_policy().decide(turn.question, act.principal.tenant, turn.route, query)


async def retrieve(act: ActivationCore, query: str) -> None:
    decision = cache_decision(act, query)
    if decision.use and await answer_from_cache(act, query, decision):
        return
    started = time.perf_counter()
    try:
        result = await act.rt.knowledge().retrieve(
            query, act.principal, act.rt.settings.qa_top_k, act.turn.question.filters
        )
    except DocentError as exc:
        act.emit([TurnFailed(code="retrieval_failed", message=f"{exc.code}: {exc.message}")])
        return
    act.hits = list(result.hits)
    metrics.observe_retrieval(result.timings_ms)
    latency_ms = round((time.perf_counter() - started) * 1000, 3)
    act.trace.retrieval(act.state, result.timings_ms, latency_ms, len(result.hits), result.stage_starts_ms)
    act.emit(
        [
            RetrievalDone(
                step=0,
                query=query,
                chunk_ids=tuple(h.chunk_id for h in result.hits),
                index_version=result.index_version,
                latency_ms=latency_ms,
                sources=tuple(qa_sources(result.hits)),
            )
        ],
        defer=True,  # appended with the model call's request, which follows
    )


async def answer_from_cache(act: ActivationCore, query: str, decision: CacheDecision) -> bool:
    """Look the question up in the answer cache; True when a `CacheHit` was recorded (the answer)."""
    try:
        found = await act.rt.answers().lookup(query, act.principal, threshold=decision.threshold)
    except DocentError as exc:  # the cache is an optimisation: without it the turn is answered fresh
        log.warning("answer cache lookup skipped: %s: %s", exc.code, exc.message)
        metrics.observe_answer_cache("error")
        return False
    metrics.observe_answer_cache(found.outcome)
    record = found.record
    if found.outcome != "hit" or record is None:
        return False
    act.emit(
        [
            CacheHit(
                entry_id=record.entry_id, similarity=found.similarity, cached_question=record.question,
                index_version=record.index_version, chunk_ids=record.chunk_ids, text=record.text,
                sources=record.sources, unsupported=record.unsupported, created_ms=record.created_ms,
                latency_ms=found.latency_ms,
            )
        ]
    )  # fmt: skip
    return True


async def qa_hits(act: ActivationCore) -> list[Hit]:
    """The recorded retrieval's hits: this activation's, else recalled by id (a replay, another worker)."""
    retrieval = act.turn.retrieval
    if retrieval is None or not retrieval.chunk_ids:
        return []
    if act.hits is None or [h.chunk_id for h in act.hits] != list(retrieval.chunk_ids):
        act.hits = await act.rt.knowledge().recall(
            retrieval.query, act.principal, retrieval.chunk_ids, act.turn.question.filters
        )
    return act.hits


def numbered(hits: Sequence[Hit]) -> dict[int, str]:
    """The passages' texts by their number in the prompt."""
    return {n: h.text for n, h in enumerate(hits, 1)}


def streaming_attribution(act: ActivationCore, step: int) -> attribution.Streaming | None:
    """A Q&A answer's sentences attributed as they finish; its scorer then attributes the whole answer."""
    act.scorer = None
    if act.turn.route != "qa" or not act.hits or not attribution.enabled(act.rt.settings):
        return None
    passages = attribution.passage_texts(qa_sources(act.hits), numbered(act.hits))
    act.scorer = attribution.Scorer(passages, act.rt.knowledge().embed, act.turn.question.text)
    turn = act.turn.number
    clock = act.rt.clock
    return attribution.Streaming(
        act.scorer,
        lambda mark: msgspec.structs.replace(mark, step=step, turn=turn, at_ms=clock()),
    )


def answer_backend(act: ActivationCore, backend: LLMBackend) -> LLMBackend:
    """Who writes a Q&A answer: the embedded model's is extractive first (`actors.extractive`)."""
    retrieval = act.turn.retrieval
    if act.turn.route != "qa" or not act.hits or retrieval is None or not extractive.enabled(act.rt.settings):
        return backend
    embed = act.rt.knowledge().embed
    return extractive.ExtractiveBackend(act.hits, retrieval.query, embed, backend, act.rt.settings)
