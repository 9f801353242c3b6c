"""The bulk segment writer (index.lexical_segment) against Whoosh's own writer: the same batches, deletions
and ACLs through `LexicalIndex(bulk=True)` and `LexicalIndex(bulk=False)` give segments that read back alike
(every term's statistics, every posting, stored fields, lengths) and score alike through Whoosh's search and
the vectorised one; Whoosh's own merge reads bulk segments; the edge cases of the format are exercised."""

from __future__ import annotations

import pickle
import zlib
from pathlib import Path

import numpy as np
import pytest
from whoosh import index as whoosh_index
from whoosh.analysis import StemmingAnalyzer
from whoosh.filedb.filetables import HashReader, OrderedHashReader
from whoosh.reading import SegmentReader

from index.lexical import LexicalEntry, LexicalIndex, analyzer, schema
from index.lexical_analysis import FastAnalysis, length_bytes
from index.lexical_codec import BLOCK_LIMIT, write_term_index
from index.lexical_merge import MERGE_BASE_DOCS, TIER_FACTOR, plan, tier
from index.lexical_segment import Batch, BulkWriter, read_keys, zlib_stored

WORDS = tuple(
    [
        "turbine",
        "blade",
        "boundary",
        "layer",
        "flow",
        "pressure",
        "shock",
        "wave",
        "heat",
        "wing",
        "Wing",
        "WING",
        "flows",
        "flowing",
        "e.g",
        "v1.2.3",
        "snake_case",
        "naïve",
        "café",
        "Straße",
        "İstanbul",
        "ΣΊΣΥΦΟΣ",
        "東京",
        "x",
        "y",
        "42",
        "3.14",
        "how",
        "what",
        "why",
        "the",
        "a",
        "of",
    ]
)
QUERIES = (
    "boundary layer flow", "how does a shock wave heat the wing", "turbine", "naïve café", "v1.2.3 e.g",
    "Straße istanbul 東京", "flowing pressure 42", "common",
)  # fmt: skip


def _corpus(rng: np.random.Generator, start: int, count: int) -> list[LexicalEntry]:
    entries = []
    for n in range(start, start + count):
        size = int(rng.integers(0, 60))
        words = [str(w) for w in rng.choice(WORDS, size=size)]
        if n % 2:
            words.append("common")  # in half the documents: multi-block posting lists, long values
        body = " ".join(words) + ("." if n % 5 == 0 else "") + (" ..." if n % 7 == 0 else "")
        readers = ("*",) if n % 3 else ("group:x", "user:u")
        entries.append(
            LexicalEntry(
                key=n + 1, chunk_id=f"c{n}", doc_id=f"d{n // 3}", tenant="t" if n % 11 else "other",
                readers=readers, body=body,
            )
        )  # fmt: skip
    return entries


def _build(directory: Path, *, bulk: bool) -> LexicalIndex:
    LexicalIndex.create(directory)
    lexical = LexicalIndex.open(directory, check_interval_ms=0, bulk=bulk)
    rng = np.random.default_rng(11)
    start = 0
    for batch, count in enumerate((700, 40, 300)):  # one commit (segment) a batch
        replaced = list(range(start - 30, start - 10)) if batch else []  # re-added: deleted, then added
        deleted = [key + 1 for key in range(start - 60, start - 40)] if batch else []
        entries = _corpus(rng, start, count)
        entries += [
            msgspec_replace(e) for e in _corpus(np.random.default_rng(batch), 0, 700) if e.key - 1 in replaced
        ]
        lexical.apply(add=entries, delete=deleted)
        start += count
    return lexical


def msgspec_replace(entry: LexicalEntry) -> LexicalEntry:
    import msgspec

    return msgspec.structs.replace(entry, body=entry.body + " replaced")


def _leaves(lexical: LexicalIndex) -> list[SegmentReader]:
    return [leaf for leaf, _ in lexical.ix.reader().leaf_readers()]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[LexicalIndex, LexicalIndex]:
    root = tmp_path_factory.mktemp("segments")
    return _build(root / "whoosh", bulk=False), _build(root / "bulk", bulk=True)


def test_bulk_segments_read_back_as_whooshs(built: tuple[LexicalIndex, LexicalIndex]) -> None:
    whoosh, bulk = built
    assert bulk._bulk is not None and whoosh._bulk is None
    old_leaves, new_leaves = _leaves(whoosh), _leaves(bulk)
    assert [leaf.doc_count_all() for leaf in old_leaves] == [leaf.doc_count_all() for leaf in new_leaves]
    assert [sorted(leaf.all_doc_ids()) for leaf in old_leaves] == [
        sorted(leaf.all_doc_ids()) for leaf in new_leaves
    ]
    for old, new in zip(old_leaves, new_leaves, strict=True):
        assert old.field_length("body") == new.field_length("body")
        assert new.segment().is_compound() and old.segment().is_compound()
        old_terms, new_terms = list(old._terms.items()), list(new._terms.items())
        assert [term for term, _ in old_terms] == [term for term, _ in new_terms]
        for ((field, text), a), (_, b) in zip(old_terms, new_terms, strict=True):
            stats = ("_weight", "_df", "_minlength", "_maxlength", "_maxweight", "_minid", "_maxid")
            assert [getattr(a, s) for s in stats] == [getattr(b, s) for s in stats], (field, text)
            assert _postings(old, field, text) == _postings(new, field, text), (field, text)
        for docnum in range(old.doc_count_all()):
            assert old.stored_fields(docnum) == new.stored_fields(docnum)
            assert old.doc_field_length(docnum, "body") == new.doc_field_length(docnum, "body")
        keys = read_keys(bulk.ix.storage, new.segment())
        assert keys is not None
        assert keys.tolist() == [int(new.stored_fields(d)["key"]) for d in range(new.doc_count_all())]
        assert read_keys(whoosh.ix.storage, old.segment()) is None
    assert max(a._df for _, a in old_terms) > 2 * BLOCK_LIMIT  # several blocks, long value strings


def _postings(leaf: SegmentReader, field: str, text: bytes) -> list[tuple[object, ...]]:
    matcher = leaf._terms.matcher(field, text, leaf.schema[field].format)
    found = []
    while matcher.is_active():
        found.append(
            (matcher.id(), matcher.weight(), matcher.value(), matcher.block_max_weight(),
             matcher.block_min_length(), matcher.block_max_length(), matcher.block_max_id())
        )  # fmt: skip
        matcher.next()
    return found


@pytest.mark.parametrize("vectorised", [True, False])
def test_bulk_and_whoosh_indexes_score_alike(
    built: tuple[LexicalIndex, LexicalIndex], vectorised: bool
) -> None:
    whoosh, bulk = built
    a = LexicalIndex(whoosh.directory, check_interval_ms=0, vectorised=vectorised)
    b = LexicalIndex(bulk.directory, check_interval_ms=0, vectorised=vectorised)
    for query in QUERIES:
        for tenant, tokens in (("t", ("*",)), ("t", ("*", "group:x")), ("other", ("user:u",))):
            found = b.search(query, 300, tenant=tenant, reader_tokens=tokens)
            expected = a.search(query, 300, tenant=tenant, reader_tokens=tokens)
            assert [key for key, _ in found] == [key for key, _ in expected]
            assert [s for _, s in found] == pytest.approx([s for _, s in expected], rel=1e-9)
    assert b.search("common", 5, tenant="t", reader_tokens=("*",))  # something is found at all
    a.close()
    b.close()


def test_whooshs_merge_reads_bulk_segments(tmp_path: Path) -> None:
    """Whoosh's writer merges (optimize) bulk segments as it merges its own: the same one segment."""
    merged = []
    for bulk in (False, True):
        lexical = _build(tmp_path / str(bulk), bulk=bulk)
        lexical.ix.writer().commit(optimize=True)  # every segment rewritten into one through Whoosh
        lexical.close()
        merged.append(LexicalIndex(lexical.directory, check_interval_ms=0))
    whoosh, bulk = merged
    assert len(_leaves(bulk)) == 1
    for query in QUERIES:
        expected = whoosh.search(query, 50, tenant="t", reader_tokens=("*",))
        found = bulk.search(query, 50, tenant="t", reader_tokens=("*",))
        assert [k for k, _ in found] == [k for k, _ in expected]
        assert [s for _, s in found] == pytest.approx([s for _, s in expected], rel=1e-9)
    entry = LexicalEntry(key=9999, chunk_id="c", doc_id="d", tenant="t", readers=("*",), body="zebra")
    bulk.apply(add=[entry])
    bulk.apply(delete=[1, 2])  # a Whoosh-written segment (no keys sidecar): deletion by term
    assert [k for k, _ in bulk.search("zebra", 5, tenant="t", reader_tokens=("*",))] == [9999]
    keys = bulk.keys()
    assert 1 not in keys and 2 not in keys and 9999 in keys
    whoosh.close()
    bulk.close()


def test_fast_analysis_is_the_stemming_analyzer() -> None:
    ana = analyzer()
    fast = FastAnalysis(ana)
    texts = [
        " ".join(WORDS), "How do I reset my password? Resetting passwords, e.g. v2.0.1...", "a.b..c .d e_f",
        "ÀÉÎ straße STRASSE ǅemal 123.456 ½ ² ٣", "", "docentendoftext0 tokens",
    ]  # fmt: skip
    for text in texts:
        assert fast.terms_of(text) == [t.text for t in ana(text)]
    assert FastAnalysis.supports(ana) and not FastAnalysis.supports(StemmingAnalyzer(expression=r"\S+"))


def test_a_text_holding_the_sentinel_word_stays_one_document(tmp_path: Path) -> None:
    LexicalIndex.create(tmp_path)
    lexical = LexicalIndex.open(tmp_path, check_interval_ms=0)
    bodies = ["docentendoftext0 alpha", "docentendoftext1 beta docentendoftext0", "gamma"]
    lexical.apply(
        add=[LexicalEntry(key=n + 1, chunk_id=f"c{n}", doc_id="d", tenant="t", readers=("*",), body=body)
             for n, body in enumerate(bodies)]
    )  # fmt: skip
    hits = dict(lexical.search("docentendoftext0", 5, tenant="t", reader_tokens=("*",)))
    assert set(hits) == {1, 2}
    assert [k for k, _ in lexical.search("gamma", 5, tenant="t", reader_tokens=("*",))] == [3]
    leaf = _leaves(lexical)[0]
    assert [leaf.doc_field_length(d, "body") for d in range(3)] == [2, 3, 1]
    lexical.close()


def test_many_documents_use_the_offsets_of_a_long_stored_column(tmp_path: Path) -> None:
    """Past 32,768 rows Whoosh's VarBytes column also writes its offsets; past 65,536 key bytes the term
    index's position array widens: both as Whoosh's reader expects."""
    directory = tmp_path / "ix"
    directory.mkdir()
    whoosh_index.create_in(str(directory), schema())
    ix = whoosh_index.open_dir(str(directory))
    count = 40_000
    keys = list(range(10**12, 10**12 + count))
    values = {
        "key": [str(k) for k in keys], "chunk_id": [f"c{k}" for k in keys], "doc_id": ["d"] * count,
        "tenant": ["t"] * count, "readers": ["*"] * count, "body": [f"word{k % 97} doc" for k in keys],
    }  # fmt: skip
    segment = BulkWriter(ix.schema).write(ix.storage, ix.indexname, Batch(keys=keys, values=values))
    ix.writer().commit(mergetype=lambda _w, segments: [*segments, segment])
    reader = whoosh_index.open_dir(str(directory)).reader()
    assert reader.stored_fields(count - 1) == {"chunk_id": f"c{keys[-1]}", "key": str(keys[-1])}
    assert reader.doc_frequency("body", "doc") == count and reader.doc_frequency("key", str(keys[123])) == 1
    assert list(reader.postings("key", str(keys[-1])).all_ids()) == [count - 1]


def test_term_index_tables_and_their_wrap_around() -> None:
    """Keys whose hashes crowd the end of one table must wrap to its start, as HashWriter's probing does."""
    import io

    from whoosh.filedb.structfile import StructFile

    keys = sorted({f"k{n}".encode() for n in range(3000)})
    values = np.zeros(len(keys), dtype=[("v", ">i4")])
    values["v"] = np.arange(len(keys))
    raw = write_term_index(keys, values, {"f": 0})
    reader = OrderedHashReader(StructFile(io.BytesIO(raw)), len(raw))
    assert all(reader[key] == int(n).to_bytes(4, "big", signed=True) for n, key in enumerate(keys))
    assert list(reader.keys()) == keys and reader.extras["fieldmap"] == {"f": 0}
    assert reader.closest_key(b"k10") == b"k10" and b"zz" not in reader
    assert isinstance(reader, HashReader)


def test_encodings_match_whooshs() -> None:
    from whoosh.util.numeric import length_to_byte

    lengths = np.array([0, 1, 2, 9, 10, 11, 12, 100, 1000, 106373, 106374, 10**7])
    assert length_bytes(lengths).tolist() == [length_to_byte(int(n)) for n in lengths]
    data = pickle.dumps({"key": "1"}, 2)
    assert zlib.decompress(zlib_stored(data)) == data


def _inner_files(lexical: LexicalIndex, segment: object) -> dict[str, bytes]:
    files = segment.open_compound_file(lexical.ix.storage)  # type: ignore[attr-defined]
    prefix = segment.segment_id()  # type: ignore[attr-defined]
    found = {}
    for name in files.list():
        f = files.open_file(name)
        found[name.removeprefix(prefix)] = bytes(f.read())
        f.close()
    return found


def test_a_tier_of_segments_merges_into_what_one_batch_writes(tmp_path: Path) -> None:
    """Eight commits of one tier are merged into one segment: the same files, byte for byte, as the bulk
    writer makes of their live documents in one batch (deleted and replaced documents left out)."""
    LexicalIndex.create(tmp_path / "merged")
    lexical = LexicalIndex.open(tmp_path / "merged", check_interval_ms=0)
    rng = np.random.default_rng(5)
    live: dict[int, LexicalEntry] = {}
    for batch in range(TIER_FACTOR):
        entries = _corpus(rng, batch * 40, 40)
        if batch == 3:  # a replacement (the key moves to this segment) and plain deletions
            entries.append(msgspec_replace(live[5]))
            lexical.apply(add=entries, delete=[7, 8, 41])
            for key in (5, 7, 8, 41):
                live.pop(key)
        else:
            lexical.apply(add=entries)
        live.update((e.key, e) for e in entries)
        assert len(_leaves(lexical)) == (batch + 1 if batch < TIER_FACTOR - 1 else 1)
    merged = _leaves(lexical)[0]
    assert merged.doc_count_all() == len(live) and not merged.has_deletions()
    LexicalIndex.create(tmp_path / "one")
    one = LexicalIndex.open(tmp_path / "one", check_interval_ms=0)
    one.apply(add=list(live.values()))  # in the merged segment's order: segment by segment, docnum order
    reference = _leaves(one)[0]
    assert _inner_files(lexical, merged.segment()) == _inner_files(one, reference.segment())
    assert read_keys(lexical.ix.storage, merged.segment()).tolist() == list(live)  # type: ignore[union-attr]
    slow = LexicalIndex(lexical.directory, check_interval_ms=0, vectorised=False)
    for query in QUERIES:
        fast_hits = lexical.search(query, 100, tenant="t", reader_tokens=("*", "group:x"))
        slow_hits = slow.search(query, 100, tenant="t", reader_tokens=("*", "group:x"))
        assert [k for k, _ in fast_hits] == [k for k, _ in slow_hits]
        assert [s for _, s in fast_hits] == pytest.approx([s for _, s in slow_hits], rel=1e-9)
    for index in (lexical, one, slow):
        index.close()


def test_the_merge_plan_keeps_tiers() -> None:
    class Seg:
        def __init__(self, docs: int) -> None:
            self.docs = docs

        def doc_count(self) -> int:
            return self.docs

    small = [Seg(MERGE_BASE_DOCS) for _ in range(TIER_FACTOR)]
    big = [Seg(MERGE_BASE_DOCS * TIER_FACTOR) for _ in range(TIER_FACTOR - 1)]
    assert plan([*big, *small], lambda _s: True) == [small]  # type: ignore[list-item]
    assert plan([*big, *small[1:]], lambda _s: True) == []  # type: ignore[list-item]
    assert plan([*big, *small], lambda s: s not in small[:1]) == []  # type: ignore[list-item,operator]
    assert [tier(n) for n in (0, 1, MERGE_BASE_DOCS - 1, MERGE_BASE_DOCS * TIER_FACTOR)] == [0, 0, 0, 1]
