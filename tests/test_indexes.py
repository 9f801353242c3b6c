"""Index versions and manifests, the USearch generations, the Whoosh index, and RRF.

Also home of the small helpers the other index tests import: a deterministic bag-of-words embedder
(no model to load) and builders for settings, documents and chunks.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

import msgspec
import numpy as np
import numpy.typing as npt
import pytest
from whoosh import index as whoosh_index
from whoosh.analysis import StemmingAnalyzer
from whoosh.fields import ID, KEYWORD, TEXT, Schema

from index.fusion import rrf
from index.lexical import WHOOSH_DIR, LexicalEntry, LexicalIndex, PostingsCache
from index.types import Access, Chunk, Document, ModelIdentity, make_chunk_id
from index.vectors import VectorIndex, vector_file
from index.versions import (
    MANIFEST_FILE,
    check_model,
    create_version,
    get_active,
    list_versions,
    read_manifest,
    set_active,
    set_state,
    version_path,
)
from store.exceptions import IndexCorrupt, IndexNotFound, InputError, ModelMismatch
from store.settings import Settings

WORD = re.compile(r"\w+")
DIMENSION = 64


class BowEmbedder:
    """Signed feature hashing of lower-cased words into 64 dimensions, L2-normalised. `salt` changes the
    vector space (and the identity), like another model would."""

    def __init__(self, salt: str = "", dimension: int = DIMENSION) -> None:
        self.salt = salt
        self.calls = 0
        self.texts_embedded = 0
        self._identity = ModelIdentity(
            name=f"test-bow{salt}",
            weights_sha256=hashlib.sha256(f"bow{salt}".encode()).hexdigest(),
            dimension=dimension,
            tokenizer_sha256=hashlib.sha256(WORD.pattern.encode()).hexdigest(),
        )

    @property
    def identity(self) -> ModelIdentity:
        return self._identity

    def count_tokens(self, text: str) -> int:
        return len(WORD.findall(text))

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.calls += 1
        self.texts_embedded += len(texts)
        out = np.zeros((len(texts), self._identity.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in WORD.findall(text.lower()):
                digest = hashlib.blake2b(f"{self.salt}{word}".encode(), digest_size=8).digest()
                value = int.from_bytes(digest, "little")
                out[row, value % self._identity.dimension] += 1.0 if value >> 63 else -1.0
            norm = np.linalg.norm(out[row])
            out[row] = out[row] / norm if norm else out[row]
        return out


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    env = {
        "DOCENT_DATA_DIR": str(tmp_path / "data"),
        "DOCENT_LLM_BACKEND": "none",
        "DOCENT_ALLOWED_ROOTS": str(tmp_path),
    }
    env.update({f"DOCENT_{name.upper()}": str(value) for name, value in overrides.items()})
    return Settings.from_env(env)


def make_document(
    doc_id: str,
    texts: Sequence[str],
    access: Access = Access(),
    *,
    title: str | None = None,
    context: str = "",
) -> tuple[Document, list[Chunk]]:
    title = title or doc_id
    chunks = [
        Chunk(
            chunk_id=make_chunk_id(doc_id, text), doc_id=doc_id, ordinal=n, text=text, context=context,
            title=title, heading="", tenant=access.tenant, readers=access.readers,
        )
        for n, text in enumerate(texts)
    ]  # fmt: skip
    document = Document(
        doc_id=doc_id, title=title, source=doc_id, format="txt", content_hash="", access=access
    )
    return document, chunks


def new_version(settings: Settings, embedder: BowEmbedder, name: str = "v1") -> str:
    create_version(settings, embedder.identity, chunker_version="test", context_version="test", version=name)
    return name


# -- versions and manifests ------------------------------------------------------------------------------


def test_manifest_round_trip_and_states(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    identity = BowEmbedder().identity
    created = create_version(settings, identity, chunker_version="c1", context_version="x1", version="v1")
    assert read_manifest(settings, "v1") == created
    assert created.state == "building" and created.model == identity and created.vector_dtype == "f16"
    assert (version_path(settings, "v1") / "whoosh").is_dir()

    assert get_active(settings) is None
    set_active(settings, "v1")
    assert get_active(settings) == "v1" and read_manifest(settings, "v1").state == "active"
    create_version(settings, identity, chunker_version="c1", context_version="x1", version="v2")
    set_active(settings, "v2")
    assert read_manifest(settings, "v1").state == "retired"
    assert [m.version for m in list_versions(settings)] == ["v1", "v2"]

    set_state(settings, "v1", "rejected")
    with pytest.raises(InputError):
        set_active(settings, "v1")  # a rejected version never comes back by accident
    with pytest.raises(InputError):
        set_state(settings, "v2", "retired")  # the active one: activate another first
    assert get_active(settings) == "v2"


def test_bad_version_names_and_missing_or_corrupt_manifests(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    identity = BowEmbedder().identity
    for bad in ("../escape", "", "a/b", ".hidden"):
        with pytest.raises(InputError):
            create_version(settings, identity, chunker_version="c", context_version="x", version=bad)
    assert not settings.index_root.exists() or list(settings.index_root.iterdir()) == []
    with pytest.raises(IndexNotFound):
        read_manifest(settings, "nope")
    create_version(settings, identity, chunker_version="c", context_version="x", version="v1")
    with pytest.raises(InputError):
        create_version(settings, identity, chunker_version="c", context_version="x", version="v1")
    (version_path(settings, "v1") / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(IndexCorrupt):
        read_manifest(settings, "v1")


@pytest.mark.parametrize("field", ["name", "weights_sha256", "dimension", "tokenizer_sha256"])
def test_check_model_refuses_any_identity_difference(tmp_path: Path, field: str) -> None:
    settings = make_settings(tmp_path)
    identity = BowEmbedder().identity
    manifest = create_version(settings, identity, chunker_version="c", context_version="x", version="v1")
    check_model(manifest, identity)  # the same model passes
    changed = {"dimension": identity.dimension + 1}.get(field, "something else")
    other = msgspec.structs.replace(identity, **{field: changed})
    with pytest.raises(ModelMismatch) as raised:
        check_model(manifest, other)
    assert raised.value.details["fields"] == [field]


# -- USearch generations --------------------------------------------------------------------------------


def _unit_rows(n: int, seed: int = 0) -> npt.NDArray[np.float32]:
    rows = np.random.default_rng(seed).standard_normal((n, DIMENSION)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_vector_generations_reload_in_readers_and_old_files_are_collected(tmp_path: Path) -> None:
    writer = VectorIndex.open_writer(tmp_path, ndim=DIMENSION, dtype="f16")
    reader = VectorIndex.open_reader(tmp_path, ndim=DIMENSION, dtype="f16", check_interval_ms=0)
    assert writer.generation == 0 and len(reader) == 0
    rows = _unit_rows(30)
    writer.add(range(1, 21), rows[:20])
    assert reader.search(rows[0], 1) == []  # nothing saved yet
    writer.save()
    assert reader.search(rows[0], 1)[0][0] == 1 and reader.generation == 1

    writer.add(range(21, 31), rows[20:])
    writer.remove([1])
    writer.save()
    best = reader.search(rows[25], 1)[0]
    assert best[0] == 26 and best[1] == pytest.approx(1.0, abs=1e-2)
    assert 1 not in {key for key, _ in reader.search(rows[0], 30)}
    assert reader.generation == 2 and len(reader) == 29

    writer.save()
    assert sorted(p.name for p in tmp_path.glob("vectors-*")) == [f"vectors-{n}.usearch" for n in (1, 2, 3)]
    writer.collect_generations(grace_s=0)  # the current and the previous generation stay
    assert not vector_file(tmp_path, 1).exists() and vector_file(tmp_path, 2).exists()

    with pytest.raises(InputError):
        reader.add([99], rows[:1])  # readers are memory-mapped and read-only


def test_writer_discards_unsaved_changes_and_readds_idempotently(tmp_path: Path) -> None:
    writer = VectorIndex.open_writer(tmp_path, ndim=DIMENSION, dtype="f32")
    rows = _unit_rows(4)
    writer.add([1, 2], rows[:2])
    writer.save()
    writer.add([3], rows[2:3])
    writer.add([3], rows[3:4])  # re-adding a key after an interrupted attempt replaces it
    assert writer.get([3])[3] == pytest.approx(rows[3], abs=1e-6)
    writer.discard_changes()
    assert len(writer) == 2 and writer.get([3]) == {}


def test_vector_search_oversamples_until_enough_allowed_keys(tmp_path: Path) -> None:
    writer = VectorIndex.open_writer(tmp_path, ndim=DIMENSION, dtype="f16")
    query = _unit_rows(1, seed=1)[0]
    # 200 near-copies of the query (forbidden), then 10 unrelated vectors (allowed).
    near = query + 0.05 * _unit_rows(200, seed=2)
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    writer.add(range(1, 201), near)
    writer.add(range(1001, 1011), _unit_rows(10, seed=3))
    asked: list[int] = []

    def allowed(keys: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
        asked.append(len(keys))
        return keys > 1000

    found = writer.search(query, 5, allowed)
    assert len(found) == 5 and all(key > 1000 for key, _ in found)
    assert asked[0] == 5 and len(asked) > 1  # it had to widen the candidate list
    everything = writer.search(query, 50, allowed)  # fewer allowed than k: the whole index is scanned
    assert sorted(key for key, _ in everything) == list(range(1001, 1011))


# -- Whoosh -------------------------------------------------------------------------------------------------


def _entry(key: int, body: str, tenant: str = "t", readers: tuple[str, ...] = ("*",)) -> LexicalEntry:
    return LexicalEntry(
        key=key, chunk_id=f"c{key}", doc_id=f"d{key}", tenant=tenant, readers=readers, title="", heading="",
        body=body,
    )  # fmt: skip


def test_question_words_and_stop_words_are_not_terms(tmp_path: Path) -> None:
    LexicalIndex.create(tmp_path)
    lexical = LexicalIndex.open(tmp_path, check_interval_ms=0)
    assert lexical.analyse("How do I reset my password, and why should I?") == ["reset", "password"]
    lexical.apply(add=[_entry(1, "Reset a password from the account page"), _entry(2, "How do I do it?")])
    assert lexical.query_terms("how do I reset a password") == ["reset", "password"]
    hits = lexical.search("how do I reset it", 5, tenant="t", reader_tokens=("*",))
    assert [key for key, _ in hits] == [1]  # "how do I ... it" matches nothing
    lexical.close()


def test_every_term_is_scored_and_common_terms_weigh_little(tmp_path: Path) -> None:
    LexicalIndex.create(tmp_path)
    lexical = LexicalIndex.open(tmp_path, check_interval_ms=0)
    entries = [_entry(n, f"policy document number {n}") for n in range(1, 41)]
    entries.append(_entry(100, "policy about the quokka"))
    lexical.apply(add=entries)
    assert lexical.query_terms("the quokka policy") == ["quokka", "polici"]  # nothing pruned
    hits = dict(lexical.search("policy", 50, tenant="t", reader_tokens=("*",)))
    assert len(hits) == 41  # a query of one common term still ranks every chunk that has it
    assert max(hits.values()) < 0.1  # Lucene's idf: a term in every chunk is worth almost nothing
    top = lexical.search("quokka policy", 5, tenant="t", reader_tokens=("*",))
    assert top[0][0] == 100 and top[0][1] > 10 * top[1][1]
    lexical.close()


def test_postings_are_decoded_once_and_the_cache_is_bounded(tmp_path: Path) -> None:
    LexicalIndex.create(tmp_path)
    cache = PostingsCache(max_bytes=600)  # 12 bytes a posting: room for 50
    lexical = LexicalIndex.open(tmp_path, check_interval_ms=0, postings_cache=cache)
    lexical.apply(add=[_entry(n, f"alpha beta{n % 2}") for n in range(1, 41)])
    first = lexical.search("alpha beta1", 50, tenant="t", reader_tokens=("*",))
    assert cache.bytes <= cache.max_bytes  # the least recently used list went out
    assert lexical.search("alpha beta1", 50, tenant="t", reader_tokens=("*",)) == first
    lexical.close()


def test_an_index_of_the_first_schema_is_still_searched_over_its_fields(tmp_path: Path) -> None:
    directory = tmp_path / WHOOSH_DIR
    directory.mkdir()
    old = Schema(
        key=ID(stored=True, unique=True), chunk_id=ID(stored=True), doc_id=ID, tenant=ID,
        readers=KEYWORD(commas=True), title=TEXT(analyzer=StemmingAnalyzer(), field_boost=2.0),
        heading=TEXT(analyzer=StemmingAnalyzer(), field_boost=1.5), body=TEXT(analyzer=StemmingAnalyzer()),
    )  # fmt: skip
    whoosh_index.create_in(str(directory), old)
    lexical = LexicalIndex.open(tmp_path, check_interval_ms=0)
    assert lexical.fields == ("title", "heading", "body")
    entry = msgspec.structs.replace(_entry(1, "the body text"), title="Quokka handbook", heading="Feeding")
    lexical.apply(add=[entry, _entry(2, "another body")])
    assert [key for key, _ in lexical.search("quokka feeding", 5, tenant="t", reader_tokens=("*",))] == [1]
    lexical.close()


def test_vectorised_bm25_scores_like_whoosh(tmp_path: Path) -> None:
    """The numpy scorer reproduces Whoosh's search with the same weighting (LuceneBM25) over several
    segments, with deletions and an ACL."""
    LexicalIndex.create(tmp_path)
    fast = LexicalIndex.open(tmp_path, check_interval_ms=0)
    slow = LexicalIndex.open(tmp_path, check_interval_ms=0, vectorised=False)
    words = ["turbine", "blade", "boundary", "layer", "flow", "pressure", "shock", "wave", "heat", "wing"]
    rng = np.random.default_rng(3)
    for batch in range(4):  # one commit (segment) per batch
        entries = []
        for n in range(batch * 50, batch * 50 + 50):
            body = " ".join(rng.choice(words, size=int(rng.integers(3, 40))))
            entries.append(
                LexicalEntry(
                    key=n + 1,
                    chunk_id=f"c{n}",
                    doc_id=f"d{n}",
                    tenant="t",
                    readers=("*",) if n % 3 else ("group:x",),
                    title=str(rng.choice(words)),
                    heading=" ".join(rng.choice(words, size=2)) if n % 2 else "",
                    body=body,
                )
            )
        lexical_delete = list(range(batch * 50 - 20, batch * 50 - 10)) if batch else []
        fast.apply(add=entries, delete=[key + 1 for key in lexical_delete])
    for query in ("boundary layer flow", "shock wave drag on a wing", "heat", "turbine lift pressure wave"):
        for tokens in (("*",), ("*", "group:x")):
            a = fast.search(query, 200, tenant="t", reader_tokens=tokens)
            b = slow.search(query, 200, tenant="t", reader_tokens=tokens)
            assert len(a) == len(b) > 0
            assert dict(a) == pytest.approx(dict(b), rel=1e-9)
            assert [score for _, score in a] == pytest.approx([score for _, score in b], rel=1e-9)


def test_lexical_acl_filter_and_visibility_callback(tmp_path: Path) -> None:
    LexicalIndex.create(tmp_path)
    lexical = LexicalIndex.open(tmp_path, check_interval_ms=0)
    lexical.apply(
        add=[
            _entry(1, "quarterly revenue report", tenant="acme"),
            _entry(2, "quarterly revenue secrets", tenant="acme", readers=("group:board",)),
            _entry(3, "quarterly revenue elsewhere", tenant="globex"),
        ]
    )

    def keys(tenant: str, tokens: tuple[str, ...]) -> set[int]:
        return {
            key for key, _ in lexical.search("quarterly revenue", 10, tenant=tenant, reader_tokens=tokens)
        }

    assert keys("acme", ("*", "user:u")) == {1}
    assert keys("acme", ("*", "user:u", "group:board")) == {1, 2}
    assert keys("globex", ("*",)) == {3}
    assert keys("initech", ("*",)) == set()  # an empty ACL mask must not turn into "no filter"
    assert keys("acme", ()) == set()
    only_odd = lexical.search(
        "quarterly revenue",
        10,
        tenant="acme",
        reader_tokens=("*", "group:board"),
        allowed=lambda k: k % 2 == 1,
    )
    assert [key for key, _ in only_odd] == [1]
    lexical.apply(delete=[1])
    assert keys("acme", ("*",)) == set()
    lexical.close()


# -- fusion --------------------------------------------------------------------------------------------


def test_rrf_scores_ranks_weights_and_ties() -> None:
    fused = rrf({"dense": [10, 20, 30], "bm25": [30, 40]}, k=60)
    scores = {f.key: f.score for f in fused}
    assert scores[30] == pytest.approx(1 / 63 + 1 / 61)
    assert scores[10] == pytest.approx(1 / 61) and scores[40] == pytest.approx(1 / 62)
    assert scores[20] == pytest.approx(1 / 62) == scores[40]
    assert [f.key for f in fused] == [30, 10, 20, 40]  # 20 and 40 tie (same best rank): smaller key first
    assert next(f for f in fused if f.key == 30).ranks == {"dense": 3, "bm25": 1}

    weighted = rrf({"dense": [1, 2], "bm25": [2, 1]}, k=60, weights={"dense": 1.0, "bm25": 0.5})
    assert [f.key for f in weighted] == [1, 2]
    assert weighted[0].score == pytest.approx(1 / 61 + 0.5 / 62)
    muted = rrf({"dense": [1], "bm25": [2]}, weights={"dense": 1.0, "bm25": 0.0}, limit=5)
    assert [(f.key, f.score) for f in muted] == [(1, pytest.approx(1 / 61)), (2, 0.0)]
    assert muted[1].ranks == {"bm25": 1}  # provenance stays even without a vote
    assert [f.key for f in rrf({"dense": [5, 5, 6]})] == [5, 6]  # repeats count once
    with pytest.raises(InputError):
        rrf({"dense": [1]}, weights={"dense": -1.0})
