"""The ingest pipeline: no-op re-ingest, exact replacement, crash safety at every step, dual-write, errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from whoosh import index as whoosh_index

from index.ingest import Ingestor
from index.lexical import WHOOSH_DIR, LexicalIndex
from index.search import Mode, Searcher
from index.types import Access, Principal
from index.vectors import GENERATION_FILE, VectorIndex
from index.versions import get_active, read_manifest, version_path
from store.catalog import Catalog
from store.exceptions import ForbiddenError, IndexError_, InputError, ModelMismatch
from store.settings import Settings
from tests.test_indexes import BowEmbedder, make_document, make_settings, new_version

OLD = ["Remote work is allowed two days a week.", "Expense claims need receipts."]
NEW = ["Remote work is allowed four days a week.", "Expense claims need receipts."]
OTHER = ["The cafeteria opens at eight."]
EVERYONE = Principal(tenant="default", user="u")
MODES: tuple[Mode, ...] = ("dense", "bm25", "hybrid")


def _state(settings: Settings, version: str) -> tuple[set[int], set[int], set[int], list[int]]:
    """(visible catalog keys, Whoosh keys, USearch keys, hidden catalog keys) of a version."""
    catalog = Catalog.for_data_dir(settings.data_path)
    visible = {
        row.key
        for doc_id in catalog.version_doc_ids(version)
        for row in catalog.visible_chunks(version, doc_id)
    }
    hidden = catalog.hidden_keys(version)
    catalog.close()
    directory = version_path(settings, version)
    lexical = LexicalIndex.open(directory)
    whoosh_keys = lexical.keys()
    lexical.close()
    manifest = read_manifest(settings, version)
    vectors = VectorIndex.open_reader(directory, ndim=manifest.model.dimension, dtype=manifest.vector_dtype)
    return visible, whoosh_keys, vectors.keys(), hidden


def _assert_consistent(settings: Settings, version: str) -> None:
    visible, whoosh_keys, vector_keys, hidden = _state(settings, version)
    assert whoosh_keys == visible == vector_keys and hidden == []


def _policy_texts(settings: Settings, version: str, embedder: BowEmbedder) -> dict[str, set[str]]:
    """What each mode returns of the policy document for a query matching both of its versions."""
    searcher = Searcher(settings, version, embedder, check_interval_ms=0)
    found: dict[str, set[str]] = {}
    for mode in MODES:
        result = searcher.search_sync("remote work days week expense receipts", EVERYONE, k=20, mode=mode)
        found[mode] = {hit.text for hit in result.hits if hit.doc_id == "policy"}
    searcher.close()
    return found


def _ingest(ingestor: Ingestor, texts: list[str], doc_id: str = "policy", access: Access = Access()):  # type: ignore[no-untyped-def]
    return ingestor.ingest_chunks(*make_document(doc_id, texts, access))


def test_first_ingest_creates_the_active_version_and_counts(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    embedder = BowEmbedder()
    with Ingestor(settings, embedder) as ingestor:
        outcome = _ingest(ingestor, OLD)
        _ingest(ingestor, OTHER, "cafeteria")
        version = ingestor.version
    assert outcome.status == "indexed" and outcome.chunks == outcome.added == outcome.embedded == 2
    assert get_active(settings) == version
    manifest = read_manifest(settings, version)
    assert manifest.model == embedder.identity and (manifest.documents, manifest.chunks) == (2, 3)
    _assert_consistent(settings, version)
    with pytest.raises(ModelMismatch):
        Ingestor(settings, BowEmbedder(salt="other model"))  # the active version is another vector space


def test_reingesting_unchanged_content_writes_nothing(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    embedder = BowEmbedder()
    with Ingestor(settings, embedder) as ingestor:
        _ingest(ingestor, OLD)
        directory = version_path(settings, ingestor.version)
        pointer = (directory / GENERATION_FILE).read_bytes()
        whoosh_generation = whoosh_index.open_dir(str(directory / WHOOSH_DIR)).latest_generation()
        calls = embedder.calls
        outcome = _ingest(ingestor, OLD)
    assert outcome.status == "unchanged" and outcome.added == outcome.removed == 0
    assert embedder.calls == calls
    assert (directory / GENERATION_FILE).read_bytes() == pointer
    assert whoosh_index.open_dir(str(directory / WHOOSH_DIR)).latest_generation() == whoosh_generation


def test_a_changed_document_replaces_exactly_its_changed_chunks(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    embedder = BowEmbedder()
    with Ingestor(settings, embedder) as ingestor:
        _ingest(ingestor, OLD)
        _ingest(ingestor, OTHER, "cafeteria")
        before, _, _, _ = _state(settings, ingestor.version)
        embedded = embedder.texts_embedded
        outcome = _ingest(ingestor, NEW)
        version = ingestor.version
    assert (outcome.added, outcome.removed, outcome.embedded, outcome.chunks) == (1, 1, 1, 2)
    assert embedder.texts_embedded == embedded + 1  # the unchanged chunk was not embedded again
    after, _, _, _ = _state(settings, version)
    assert len(before - after) == 1 and len(after - before) == 1
    _assert_consistent(settings, version)
    assert _policy_texts(settings, version, embedder)["dense"] == set(NEW)


def test_an_acl_change_makes_new_entries_but_reuses_the_vectors(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    embedder = BowEmbedder()
    board = Access(readers=("group:board",))
    with Ingestor(settings, embedder) as ingestor:
        _ingest(ingestor, OLD)
        outcome = _ingest(ingestor, OLD, access=board)
        version = ingestor.version
    assert (outcome.added, outcome.removed, outcome.embedded) == (2, 2, 0)
    _assert_consistent(settings, version)
    searcher = Searcher(settings, version, embedder)
    for mode in MODES:
        assert searcher.search_sync("remote work", EVERYONE, mode=mode).hits == []
        member = Principal(tenant="default", user="b", groups=("board",))
        assert searcher.search_sync("remote work", member, mode=mode).hits


CRASHES: dict[str, tuple[type, str, int, bool, str]] = {
    # name: (class, method, which call raises, raise after the real call, which version must be searchable)
    "before the hidden rows": (Catalog, "add_hidden_chunks", 1, False, "old"),
    "in the Whoosh write": (LexicalIndex, "apply", 1, False, "old"),
    "after the Whoosh commit": (LexicalIndex, "apply", 1, True, "old"),
    "in the USearch save": (VectorIndex, "save", 1, False, "old"),
    "after the USearch save": (VectorIndex, "save", 1, True, "old"),
    "in the switch": (Catalog, "commit_documents", 1, False, "old"),
    "after the switch": (Catalog, "commit_documents", 1, True, "new"),
    "in the Whoosh collection": (LexicalIndex, "apply", 2, False, "new"),
    "after the USearch collection": (VectorIndex, "save", 2, True, "new"),
    "in the purge": (Catalog, "purge_hidden", 1, False, "new"),
}


def _crash_on(monkeypatch: pytest.MonkeyPatch, cls: type, method: str, nth: int, after: bool) -> None:
    original: Callable[..., object] = getattr(cls, method)
    calls = {"n": 0}

    def crashing(self: object, *args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] != nth:
            return original(self, *args, **kwargs)
        if after:
            original(self, *args, **kwargs)
        raise RuntimeError(f"simulated crash in {cls.__name__}.{method}")

    monkeypatch.setattr(cls, method, crashing)


@pytest.mark.parametrize("crash", list(CRASHES))
def test_a_crash_at_any_step_leaves_one_whole_version_and_a_retry_converges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash: str
) -> None:
    cls, method, nth, after, survivor = CRASHES[crash]
    settings = make_settings(tmp_path)
    embedder = BowEmbedder()
    with Ingestor(settings, embedder) as ingestor:
        _ingest(ingestor, OLD)
        _ingest(ingestor, OTHER, "cafeteria")
        version = ingestor.version
        with monkeypatch.context() as patch:
            _crash_on(patch, cls, method, nth, after)
            with pytest.raises(RuntimeError, match="simulated crash"):
                _ingest(ingestor, NEW)

    expected = set(OLD if survivor == "old" else NEW)
    found = _policy_texts(settings, version, embedder)
    assert found["dense"] == expected  # dense returns every visible chunk: exactly one whole version
    assert found["bm25"] <= expected and found["hybrid"] <= expected
    assert found["bm25"] and found["hybrid"]

    with Ingestor(settings, embedder) as restarted:  # a new process retries the same document
        outcome = _ingest(restarted, NEW)
        assert outcome.status == ("indexed" if survivor == "old" else "unchanged")
    _assert_consistent(settings, version)
    assert _policy_texts(settings, version, embedder)["dense"] == set(NEW)
    assert read_manifest(settings, version).chunks == 3


def test_recover_collects_what_a_crash_left_and_the_same_ingestor_can_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(tmp_path)
    embedder = BowEmbedder()
    with Ingestor(settings, embedder) as ingestor:
        _ingest(ingestor, OLD)
        with monkeypatch.context() as patch:
            _crash_on(patch, Catalog, "commit_documents", 1, False)
            with pytest.raises(RuntimeError):
                _ingest(ingestor, NEW)
        visible, whoosh_keys, vector_keys, hidden = _state(settings, ingestor.version)
        assert len(hidden) == 1 and whoosh_keys == vector_keys == visible | set(hidden)
        assert ingestor.recover() == 1
        _assert_consistent(settings, ingestor.version)
        assert _ingest(ingestor, NEW).status == "indexed"  # the same object, after discarding its state
        _assert_consistent(settings, ingestor.version)


def test_delete_document(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    embedder = BowEmbedder()
    with Ingestor(settings, embedder) as ingestor:
        _ingest(ingestor, OLD)
        _ingest(ingestor, OTHER, "cafeteria")
        with pytest.raises(ForbiddenError):
            ingestor.delete_document("policy", tenant="globex")
        outcome = ingestor.delete_document("policy", tenant="default")
        assert (outcome.status, outcome.removed) == ("deleted", 2)
        assert ingestor.delete_document("policy").status == "missing"
        version = ingestor.version
    _assert_consistent(settings, version)
    assert _policy_texts(settings, version, embedder) == {"dense": set(), "bm25": set(), "hybrid": set()}
    assert read_manifest(settings, version).documents == 1
    catalog = Catalog.for_data_dir(settings.data_path)
    document = catalog.get_document("policy")
    assert document is not None and document.deleted
    catalog.close()


def test_bad_input_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    embedder = BowEmbedder()
    with Ingestor(settings, embedder) as ingestor:
        version = ingestor.version
        for access in (
            Access(readers=("group:a,b",)),
            Access(readers=()),
            Access(tenant=""),
            Access(tenant="a,b"),
        ):
            with pytest.raises(InputError):
                _ingest(ingestor, OLD, access=access)
        document, chunks = make_document("policy", OLD)
        _, foreign = make_document("elsewhere", OTHER)
        with pytest.raises(InputError):
            ingestor.ingest_chunks(document, [*chunks, *foreign])
        with pytest.raises(InputError):
            ingestor.ingest_chunks(document, [])
        with pytest.raises(InputError):
            ingestor.ingest_document("x" * 500, data=b"hello", fmt="txt")
        with pytest.raises(InputError):
            ingestor.ingest_document("both", data=b"hello", path=tmp_path / "x.txt", fmt="txt")
        assert embedder.calls == 0
        _ingest(ingestor, OLD, access=Access(tenant="acme"))
        with pytest.raises(ForbiddenError):
            _ingest(ingestor, ["Globex overwrites acme's policy."], access=Access(tenant="globex"))
    searcher = Searcher(settings, version, embedder)
    acme = Principal(tenant="acme", user="a")
    assert {hit.text for hit in searcher.search_sync("policy remote work", acme, k=10).hits} == set(OLD)


def test_ingest_paths_reports_each_bad_file_and_indexes_the_rest(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_document_bytes=4000)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "handbook.md").write_text(
        "# Handbook\n\n## Leave\n\nParental leave is sixteen weeks.\n\n"
        "## Travel\n\nBook trains, not planes.\n"
    )
    (docs / "binary.txt").write_bytes(b"\x00\x01\x02\x03" * 50)
    (docs / "empty.txt").write_text("   \n")
    (docs / "huge.txt").write_text("word " * 2000)
    (docs / "table.xyz").write_text("a,b")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.txt"
    outside.write_text("secret")
    files = [*sorted(docs.iterdir()), outside]
    progress: list[tuple[int, int]] = []
    try:
        with Ingestor(settings, BowEmbedder()) as ingestor:
            report = ingestor.ingest_paths(files, progress=lambda done, total: progress.append((done, total)))
            again = ingestor.ingest_paths([docs])  # a directory: supported files only
            version = ingestor.version
    finally:
        outside.unlink()
    codes = {o.doc_id.rsplit("/", 1)[-1]: o.error_code for o in report.errors}
    assert codes == {
        "binary.txt": "binary_content",
        "empty.txt": "empty_document",
        "huge.txt": "document_too_large",
        "table.xyz": "unsupported_format",
        outside.name: "path_not_allowed",
    }
    assert (report.indexed, report.failed) == (1, 5) and progress[-1] == (6, 6)
    assert again.unchanged == 1 and again.failed == 3  # binary, empty, huge; .xyz is not walked
    searcher = Searcher(settings, version, BowEmbedder())
    hits = searcher.search_sync("parental leave weeks", EVERYONE, k=3).hits
    assert hits[0].text == "Parental leave is sixteen weeks." and hits[0].heading.endswith("Leave")
    assert hits[0].doc_id == f"{tmp_path.name}/docs/handbook.md"
    rechunked = make_settings(tmp_path, max_document_bytes=4000, chunk_tokens=64, chunk_overlap=8)
    with Ingestor(rechunked, BowEmbedder(), version) as ingestor:
        assert ingestor.ingest_paths([docs / "handbook.md"]).indexed == 1  # other chunk settings: redone


def test_a_transient_index_failure_is_retried_and_a_lasting_one_leaves_the_version_consistent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(tmp_path)
    model = BowEmbedder()
    new_version(settings, model, "old")
    saves = {"old": 0}
    original_save = VectorIndex.save

    def flaky_save(self: VectorIndex):  # type: ignore[no-untyped-def]
        saves["old"] += 1
        if saves["old"] == 1:
            raise IndexError_("disk hiccup")
        return original_save(self)

    with Ingestor(settings, model, "old") as ingestor:
        with monkeypatch.context() as patch:
            patch.setattr(VectorIndex, "save", flaky_save)
            outcome = _ingest(ingestor, OLD)
        assert outcome.version == "old" and outcome.status == "indexed" and saves["old"] >= 2

        with monkeypatch.context() as patch:
            patch.setattr(VectorIndex, "save", lambda self: (_ for _ in ()).throw(IndexError_("disk gone")))
            with pytest.raises(IndexError_):
                _ingest(ingestor, NEW)
        report = ingestor.ingest_many([make_document("policy", NEW)])  # the caller's retry converges
        assert [(o.version, o.status) for o in report.documents] == [("old", "indexed")]
    _assert_consistent(settings, "old")
    assert _policy_texts(settings, "old", model)["dense"] == set(NEW)
