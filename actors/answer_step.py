"""A turn's answer: its sources (checked once more against what the reader may read now), attribution of
its sentences, one `AnswerCompleted`, and the answer cache fed when the policy allows."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import msgspec

from actors import attribution, qa_steps
from actors.activation import ActivationCore
from actors.sources import agent_sources, qa_sources
from index.types import Hit
from store.events import AnswerCompleted, CacheHit, Citation
from store.exceptions import DocentError

log = logging.getLogger(__name__)


async def finish(act: ActivationCore, text: str) -> None:
    hit = act.turn.cache_hit
    if hit is not None:
        await finish_from_cache(act, hit)
        return
    if act.turn.route == "qa":
        sources = recorded_sources(act, await qa_steps.qa_hits(act))
    elif act.turn.route == "workflow":
        sources = act.flows.sources(act.turn)
    else:
        sources = agent_sources(act.turn.results.values())
    sources = await readable(act, sources)  # the user must (still) be allowed to read every one cited
    passages = qa_steps.numbered(act.hits or []) if act.turn.route == "qa" else {}
    attribute = attribution.enabled(act.rt.settings) and act.turn.route != "workflow"  # cited by code
    embed = act.rt.knowledge().embed if attribute else None
    question = act.turn.question.text
    answer = await attribution.final_answer(text, sources, passages, embed, question, act.scorer)
    act.emit([answer])
    await remember(act, answer)


def recorded_sources(act: ActivationCore, hits: Sequence[Hit]) -> list[Citation]:
    """The Q&A sources as the turn's `RetrievalDone` recorded them for these very hits (typed data, built
    once), else built from the hits (a replay that recalled fewer chunks)."""
    retrieval = act.turn.retrieval
    if retrieval is not None and [c.chunk_id for c in retrieval.sources] == [h.chunk_id for h in hits]:
        return list(retrieval.sources)
    return qa_sources(hits)


async def readable(act: ActivationCore, sources: Sequence[Citation]) -> list[Citation]:
    """The sources whose documents the principal may (still) read."""
    if not sources:
        return []
    doc_ids = sorted({c.doc_id for c in sources})
    docs = await act.rt.knowledge().readable_documents(doc_ids, act.principal)
    return [c for c in sources if c.doc_id in docs]


async def finish_from_cache(act: ActivationCore, hit: CacheHit) -> None:
    """The cached answer, streamed and completed like a fresh one; its sources checked once more."""
    sources = await readable(act, hit.sources)
    await act.delta(0, hit.text)
    answer = await attribution.final_answer(hit.text, sources, {}, None)
    unsupported = hit.unsupported if answer.text == hit.text else ()
    act.emit([msgspec.structs.replace(answer, unsupported=unsupported)])


async def remember(act: ActivationCore, answer: AnswerCompleted) -> None:
    """Cache a fresh Q&A answer when the policy allows (a failure only costs the next hit)."""
    retrieval = act.turn.retrieval
    if act.turn.route != "qa" or retrieval is None or not qa_steps.cache_decision(act, retrieval.query).use:
        return
    try:
        await act.rt.answers().store_answer(
            retrieval.query, act.principal, retrieval.index_version, retrieval.chunk_ids, answer
        )
    except DocentError as exc:
        log.warning("answer not cached: %s: %s", exc.code, exc.message)
