"""The semantic answer cache: the guard and policy (pure), the Redis store (real Redis), and Q&A turns through
the conversation actor (real Redis, a real index with the hash embedder, the scripted LLM over real HTTP):
a paraphrase is served from the cache as a normal turn; another tenant, a reader who may not read a source,
an edited, deleted or re-permissioned source, another index version, a bypass, a sensitive question and
"refund" vs "return" are not."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import redis

from actors.answer_policy import AnswerCachePolicy, CachePolicyConfig
from actors.testing import HttpSink, ScriptedLLMThread, SmtpSink
from index.answer_cache import AnswerCache, entry_id
from index.embed import load_embedder
from index.exactness import same_question
from index.ingest import Ingestor
from index.types import Access, Principal
from store.answer_cache import AnswerRecord, AnswerStore
from store.catalog import Catalog
from store.events import AnswerCompleted, CacheHit, Delta, LLMRequested, RetrievalDone, UserMessage
from store.settings import Settings
from tests.test_conversation import (  # the conversation tests' world: fixtures and helpers, not tests
    ALICE,
    TENANT,
    World,
    build_index,
    llm,
    make_settings,
    of,
    sinks,
)

__all__ = ["llm", "sinks"]  # fixtures used by name

PARAPHRASE = ("How long is parental leave?", "how long is the parental leave")
NO_CLASSIFIERS = {"classifiers": {}}


def policy_file(tmp_path: Path, config: dict[str, object]) -> str:
    path = tmp_path / "cache-policy.json"
    path.write_text(json.dumps(config))
    return str(path)


# ---- the guard and the policy (pure) -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "ok"),
    [
        ("What is the refund policy?", "What is the return policy?", False),
        ("How do I get a refund?", "How can I obtain a refund?", True),
        ("How long is parental leave?", "how long is the parental leave", True),
        ("What is Perl 5?", "What is Perl 6?", False),
        ("Can I delete files?", "Can I not delete files?", False),
        ("Can I delete files?", "Why can't I delete files?", False),
        ("What is Debian?", "What is Ubuntu?", False),
        ("How do I sort a hash by value?", "How do I sort an array by value?", False),
    ],
)
def test_exactness_guard(a: str, b: str, ok: bool) -> None:
    assert same_question(a, b).ok is ok


def _question(text: str, **kw: object) -> UserMessage:
    return UserMessage(text=text, tenant="acme", user="u", **kw)  # type: ignore[arg-type]


def test_policy_off_by_default_on_per_tenant_and_never_for_agents_bypass_followups_or_sensitive() -> None:
    base = Settings.from_env({})
    q = _question("How long is parental leave?")
    assert not AnswerCachePolicy(base).decide(q, "acme", "qa", q.text).use
    config = msgspec.convert({"tenants": {"acme": {"enabled": True, "threshold": 0.95}}}, CachePolicyConfig)
    policy = AnswerCachePolicy(base, config)
    decision = policy.decide(q, "acme", "qa", q.text)
    assert decision.use and decision.threshold == 0.95
    assert not policy.decide(q, "other", "qa", q.text).use
    assert not policy.decide(q, "acme", "agent", q.text).use
    assert not policy.decide(q, "acme", "workflow", q.text).use
    assert not policy.decide(_question(q.text, no_cache=True), "acme", "qa", q.text).use
    assert not policy.decide(q, "acme", "qa", q.text + " leave policy").use  # a rewritten follow-up
    for sensitive in ("Can I get a refund?", "What is my salary?", "Where is the travel policy?",
                      "What is the SSN of Bob?", "What is his home  address?"):  # fmt: skip
        decision = policy.decide(_question(sensitive), "acme", "qa", sensitive)
        assert not decision.use and decision.reason.startswith("sensitive"), sensitive


# ---- the store (real Redis) --------------------------------------------------------------------------------


def _record(eid: str, chunks: tuple[str, ...], tenant: str = "t1") -> AnswerRecord:
    return AnswerRecord(
        entry_id=eid, tenant=tenant, question=f"q {eid}", index_version="v1", chunk_ids=chunks,
        created_ms=1, expires_ms=2**50, text=f"answer {eid}",
    )  # fmt: skip


def test_store_reverse_index_invalidation_and_lru_bound(redis_url: str, r: redis.Redis) -> None:
    store = AnswerStore.from_url(redis_url)
    try:
        vec = b"\x00" * 16
        store.put(_record("e1", ("c1", "c2")), vec, now_ms=1, ttl_ms=60_000, max_entries=2)
        store.put(_record("e2", ("c2", "c3")), vec, now_ms=2, ttl_ms=60_000, max_entries=2)
        store.put(_record("e1", ("c1", "c2"), tenant="t2"), vec, now_ms=1, ttl_ms=60_000, max_entries=2)
        assert store.entries_of_chunk("t1", "c2") == {"e1", "e2"}
        store.touch("t1", "e1", 3)  # e2 is now the least recently used
        assert store.put(_record("e3", ("c4",)), vec, now_ms=4, ttl_ms=60_000, max_entries=2) == 1
        assert store.get("t1", "e2") is None and store.entries_of_chunk("t1", "c3") == set()
        assert store.size("t1") == 2
        generation = store.generation("t1")
        assert store.invalidate_chunks("t1", ["c1"]) == 1
        assert store.get("t1", "e1") is None and store.get("t1", "e3") is not None
        assert store.generation("t1") > generation and set(store.vectors("t1")[1]) == {"e3"}
        assert store.get("t2", "e1") is not None  # another tenant's entry is untouched
        assert all(k.startswith(b"acache:{t") or k == b"acache:cursor" for k in r.keys("acache:*"))
        assert store.advance_cursor(5) == 5 and store.advance_cursor(3) == 5
    finally:
        store.close()


def test_catalog_journal_names_changed_chunks(tmp_path: Path) -> None:
    settings = Settings.from_env({"DOCENT_DATA_DIR": str(tmp_path), "DOCENT_EMBED_MODEL": "hash"})
    embedder = load_embedder(settings, "hash", purpose="offline")
    with Ingestor(settings, embedder) as ingestor:
        ingestor.ingest_document("d1", data=b"# A\n\nalpha beta gamma.\n", fmt="md", title="A",
                                 access=Access(tenant="t", readers=("*",)))  # fmt: skip
        first = ingestor.catalog.chunk_changes_after(0)
        assert first == []  # a new document hides nothing
        ingestor.ingest_document("d1", data=b"# A\n\ndelta epsilon.\n", fmt="md", title="A",
                                 access=Access(tenant="t", readers=("*",)))  # fmt: skip
    catalog = Catalog.for_data_dir(settings.data_path)
    try:
        replaced = catalog.chunk_changes_after(0)
        assert replaced and {c.tenant for c in replaced} == {"t"}
        catalog.set_readers("d1", ["group:x"])
        catalog.delete_everywhere("d1")
        changes = catalog.chunk_changes_after(replaced[-1].seq)
        assert len(changes) >= 2 and [c.seq for c in changes] == sorted(c.seq for c in changes)
    finally:
        catalog.close()


# ---- Q&A turns through the actor ---------------------------------------------------------------------------


@pytest.fixture
def cached(
    tmp_path: Path, redis_url: str, llm: ScriptedLLMThread, sinks: tuple[SmtpSink, HttpSink]
) -> Iterator[World]:
    settings = make_settings(
        tmp_path, redis_url, llm.url, sinks[0].port, answer_cache="true", answer_cache_threshold="0.8",
        answer_cache_policy_path=policy_file(tmp_path, NO_CLASSIFIERS),
    )  # fmt: skip
    build_index(settings)
    w = World(settings, llm, sinks)
    yield w
    w.rt.close()


def ask_as(w: World, conv_id: str, text: str, **who: object) -> list[object]:
    person = {**ALICE, **who}
    w.log.post_inbox(conv_id, UserMessage(text=text, **person))  # type: ignore[arg-type]
    assert w.run(conv_id) == "done"
    return list(w.events(conv_id))


def kinds(events: list[object]) -> list[str]:
    return [type(e).__name__ for e in events]


FRESH = ["UserMessage", "TurnStarted", "RetrievalDone", "LLMRequested", "LLMCompleted", "AnswerCompleted"]
FROM_CACHE = ["UserMessage", "TurnStarted", "CacheHit", "AnswerCompleted"]


def test_a_paraphrase_is_answered_from_the_cache_as_a_normal_turn(cached: World) -> None:
    first = ask_as(cached, "c1", PARAPHRASE[0])
    assert kinds(first) == FRESH
    fresh = of(first, AnswerCompleted)[0]
    second = ask_as(cached, "c2", PARAPHRASE[1])
    assert kinds(second) == FROM_CACHE
    hit, answer = of(second, CacheHit)[0], of(second, AnswerCompleted)[0]
    assert hit.cached_question == PARAPHRASE[0] and 0.8 <= hit.similarity <= 1.0
    assert hit.chunk_ids == of(first, RetrievalDone)[0].chunk_ids
    assert answer.text == fresh.text and answer.citations == fresh.citations
    assert answer.sources == fresh.sources
    assert all(f"[{c.n}]" in answer.text for c in answer.citations)
    live = cached.log.catch_up("c2", "0")
    assert "".join(i.text for _, i in live if isinstance(i, Delta)) == answer.text  # streamed like an answer
    # Asked to bypass the cache: a fresh answer.
    assert kinds(ask_as(cached, "c3", PARAPHRASE[1], no_cache=True)) == FRESH


def test_no_hit_for_another_tenant_or_a_reader_who_may_not_read_a_source(cached: World) -> None:
    board = {"user": "carol", "groups": ("board",)}
    built = ask_as(cached, "b1", PARAPHRASE[0], **board)
    retrieval = of(built, RetrievalDone)[0]
    docs = {s.doc_id for s in retrieval.sources}
    assert "board-minutes" in docs  # the board's answer was built from a passage alice may not read
    assert kinds(ask_as(cached, "b2", PARAPHRASE[0], **board)) == FROM_CACHE
    assert kinds(ask_as(cached, "a1", PARAPHRASE[0])) == FRESH  # alice: refused at hit time
    assert kinds(ask_as(cached, "o1", PARAPHRASE[0], tenant="other")) != FROM_CACHE  # nothing crosses tenants


def _world_catalog(w: World) -> Catalog:
    return w.rt.knowledge().service.catalog


def _entry_count(w: World) -> int:
    store = w.rt.answers().store
    return store.size(TENANT)


def _cached_once(w: World) -> None:
    assert kinds(ask_as(w, "p1", PARAPHRASE[0])) == FRESH
    assert kinds(ask_as(w, "p2", PARAPHRASE[1])) == FROM_CACHE


def test_no_stale_answer_after_the_source_is_re_permissioned(cached: World) -> None:
    _cached_once(cached)
    # What PUT /api/documents/{id}/readers does: the entry is dropped at the next lookup.
    _world_catalog(cached).set_readers("leave-policy", ["group:hr"])
    events = ask_as(cached, "p3", PARAPHRASE[1])
    assert kinds(events) == FRESH
    assert "leave-policy" not in {s.doc_id for s in of(events, AnswerCompleted)[0].sources}


def test_no_stale_answer_after_the_source_is_edited(cached: World) -> None:
    _cached_once(cached)
    embedder = load_embedder(cached.settings, "hash", purpose="offline")
    with Ingestor(cached.settings, embedder) as ingestor:  # a re-ingest with new text
        ingestor.ingest_document(
            "leave-policy", fmt="md", title="Leave Policy", access=Access(tenant=TENANT, readers=("*",)),
            data=b"# Leave policy\n\nParental leave lasts twenty weeks at full pay for every employee.\n",
        )  # fmt: skip
    edited = ask_as(cached, "p3", PARAPHRASE[1])
    assert kinds(edited) == FRESH and "sixteen weeks" not in json.dumps(of(edited, LLMRequested)[0].messages)
    again = ask_as(cached, "p4", PARAPHRASE[0])
    assert kinds(again) == FROM_CACHE and of(again, CacheHit)[0].cached_question == PARAPHRASE[1]


def test_no_stale_answer_after_the_source_is_deleted(cached: World) -> None:
    _cached_once(cached)
    _world_catalog(cached).delete_everywhere("leave-policy")
    deleted = ask_as(cached, "p3", PARAPHRASE[0])
    assert kinds(deleted) == FRESH
    assert "leave-policy" not in {s.doc_id for s in of(deleted, AnswerCompleted)[0].sources}


def test_the_reverse_index_drops_entries_even_without_a_lookup_check(cached: World) -> None:
    ask_as(cached, "r1", PARAPHRASE[0])
    assert _entry_count(cached) == 1
    cached.rt.answers().store.advance_cursor(10**9)  # a cursor left by an older catalog: started over
    _world_catalog(cached).set_readers("leave-policy", ["group:hr"])
    assert cached.rt.answers().apply_changes() == 1 and _entry_count(cached) == 0


def test_entries_of_another_index_version_are_not_served(cached: World) -> None:
    ask_as(cached, "v1", PARAPHRASE[0])
    cache = cached.rt.answers()
    searcher = cached.rt.knowledge().service.current()
    vector = searcher.embedder.embed([PARAPHRASE[1]])[0]
    alice = Principal(tenant=TENANT, user="alice", groups=("eng",))
    assert cache.lookup_sync(PARAPHRASE[1], vector, alice, searcher.version, 0.8).outcome == "hit"
    after_cutover = cache.lookup_sync(PARAPHRASE[1], vector, alice, "v-next", 0.8)
    assert after_cutover.outcome == "stale" and _entry_count(cached) == 0


def test_the_guard_refuses_refund_for_return(cached: World) -> None:
    embedder = load_embedder(cached.settings, "hash", purpose="offline")
    with Ingestor(cached.settings, embedder) as ingestor:
        ingestor.ingest_document(
            "returns", fmt="md", title="Returns", access=Access(tenant=TENANT, readers=("*",)),
            data=b"# Returns\n\nA return is accepted within 30 days. A refund is paid within 5 days.\n",
        )  # fmt: skip
    asked = ask_as(cached, "g1", "How many days is the refund window?")
    assert kinds(asked) == FRESH
    cache = cached.rt.answers()
    searcher = cached.rt.knowledge().service.current()
    question = "How many days is the return window?"
    vector = searcher.embedder.embed([question])[0]
    alice = Principal(tenant=TENANT, user="alice", groups=("eng",))
    found = cache.lookup_sync(question, vector, alice, searcher.version, 0.5)
    assert found.outcome == "refused_guard" and "return / refund" in found.reason
    unguarded = AnswerCache(msgspec.structs.replace(cached.settings, answer_cache_guard=False),
                            cache.service, cache.store)  # fmt: skip
    assert unguarded.lookup_sync(question, vector, alice, searcher.version, 0.5).outcome == "hit"  # the trap
    assert kinds(ask_as(cached, "g2", question)) == FRESH


def test_sensitive_questions_are_never_cached(
    tmp_path: Path, redis_url: str, llm: ScriptedLLMThread, sinks: tuple[SmtpSink, HttpSink]
) -> None:
    settings = make_settings(tmp_path, redis_url, llm.url, sinks[0].port, answer_cache="true",
                             answer_cache_threshold="0.8")  # fmt: skip
    build_index(settings)
    w = World(settings, llm, sinks)
    try:
        for conv in ("s1", "s2"):
            assert kinds(ask_as(w, conv, "What does the travel policy say about hotels?")) == FRESH
        assert w.rt.answers().store.size(TENANT) == 0
        assert entry_id(TENANT, "v", "A b") == entry_id(TENANT, "v", " a  B ")
    finally:
        w.rt.close()


def _golden(directory: Path) -> Path:
    (directory / "qrels").mkdir(parents=True)
    queries = {"g1": ("parental leave weeks", "leave-policy"), "g2": ("hotel nightly cap", "travel-policy")}
    lines = [json.dumps({"_id": q, "text": text}) for q, (text, _) in queries.items()]
    (directory / "queries.jsonl").write_text("\n".join(lines) + "\n")
    qrels = ["query-id\tcorpus-id\tscore", *(f"{q}\t{doc}\t1" for q, (_, doc) in queries.items())]
    (directory / "qrels" / "test.tsv").write_text("\n".join(qrels) + "\n")
    return directory


def test_a_reindex_cutover_does_not_serve_the_old_versions_entries(
    cached: World, redis_url: str, tmp_path: Path
) -> None:
    from index.reindex.jobs import start_job
    from index.reindex.run import run_until_done
    from index.versions import get_active

    _cached_once(cached)
    old = get_active(cached.settings)
    golden = str(_golden(tmp_path / "golden"))
    settings = msgspec.structs.replace(
        cached.settings, golden_demo=False, golden_dirs=golden, golden_tenant=TENANT
    )
    client = redis.Redis.from_url(redis_url)
    try:
        job = start_job(settings, client, model="hash", requested_by="test")
        done = run_until_done(settings, client, job.id, slice_s=5.0)
    finally:
        client.close()
    assert done.status == "done", (done.message, done.error_samples)
    new = get_active(cached.settings)
    assert new != old
    time.sleep(0.6)  # the search service notices the alias switch (ALIAS_CHECK_MS)
    events = ask_as(cached, "x1", PARAPHRASE[1])
    assert kinds(events) == FRESH and of(events, RetrievalDone)[0].index_version == new
    assert kinds(ask_as(cached, "x2", PARAPHRASE[0])) == FROM_CACHE  # the new version's own entry


def test_a_logged_hit_replays_to_its_answer_without_retrieval_or_a_model_call() -> None:
    from actors.plan import CallCheck, Caps, Finish, next_action
    from actors.state import ConversationState, fold
    from store.events import TurnStarted

    state = ConversationState(conversation_id="c")
    question = UserMessage(turn=1, text=PARAPHRASE[1], tenant=TENANT, user="alice")
    hit = CacheHit(turn=1, entry_id="e", similarity=0.9, cached_question=PARAPHRASE[0], index_version="v",
                   chunk_ids=("c1",), text="Sixteen weeks [1].")  # fmt: skip
    for n, event in enumerate([question, TurnStarted(turn=1, route="qa"), hit], 1):
        fold(state, f"{n}-0", event)
    caps = Caps(max_steps=3, max_tokens=1000, max_cost_usd=1.0, max_seconds=60)
    action = next_action(state, caps, lambda call: CallCheck(ok=False), now_ms=0)
    assert action == Finish(text="Sixteen weeks [1].")  # after a crash here, the next activation finishes
