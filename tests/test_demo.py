"""The demo knowledge base: built from this machine's Python, parseable, and matching its golden set."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from index.chunk import chunk_document
from index.context import deterministic_context
from index.demo import (
    LEGAL_ONLY,
    PYDOC_MAX_BYTES,
    PYDOC_MODULES,
    DemoDoc,
    build_demo_corpus,
    stdlib_modules,
    write_demo_collection,
)
from index.evaluate import load_collection, read_qrels
from index.parse import demo_source_dir, load_source, parse_document
from index.types import EVERYONE
from store.settings import Settings

GOLDEN = Path(__file__).parent / "golden" / "demo"
ALWAYS_AVAILABLE_LICENSES = {"license/apache-2.0", "license/mit", "license/bsd-3-clause", "license/psf-2.0"}


@pytest.fixture(scope="module")
def demo_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data_dir = tmp_path_factory.mktemp("data")
    return Settings.from_env({"DOCENT_DATA_DIR": str(data_dir), "DOCENT_LLM_BACKEND": "none"})


@pytest.fixture(scope="module")
def built(demo_settings: Settings) -> tuple[Path, list[DemoDoc], float]:
    target = demo_source_dir(demo_settings)  # where `docent demo` puts them: inside the allowed roots
    started = time.perf_counter()
    docs = build_demo_corpus(target)
    return target, docs, time.perf_counter() - started


def test_builds_the_expected_documents(built: tuple[Path, list[DemoDoc], float]) -> None:
    target, docs, seconds = built
    print(f"demo corpus: {len(docs)} documents in {seconds:.2f} s")
    # No timing assertion: speed is measured by benchmarks, not unit tests (a loaded CI box took 42 s).
    ids = [d.doc_id for d in docs]
    assert len(ids) == len(set(ids))
    assert {f"pydoc/{m}" for m in PYDOC_MODULES} <= set(ids)
    assert 40 <= len(docs) <= 80
    total = sum(Path(d.path).stat().st_size for d in docs)
    assert total < 3_000_000
    for doc in docs:
        path = Path(doc.path)
        assert path.is_relative_to(target) and path.is_file()
        assert doc.format == ("md" if doc.doc_id.startswith("pydoc/") else "txt")
        assert doc.title and doc.access.tenant == "default"
        if doc.format == "md":
            assert path.stat().st_size <= PYDOC_MAX_BYTES


def test_pydoc_pages_have_structure_and_no_machine_noise(built: tuple[Path, list[DemoDoc], float]) -> None:
    _, docs, _ = built
    by_id = {d.doc_id: d for d in docs}
    argparse_doc = by_id["pydoc/argparse"]
    assert argparse_doc.title == "argparse — Command-line parsing library"
    parsed = parse_document(Path(argparse_doc.path).read_bytes(), "md", name=argparse_doc.doc_id)
    headings = {s.headings[1:] for s in parsed.sections}
    assert ("Classes", "ArgumentParser") in headings and ("Description",) in headings
    json_page = Path(by_id["pydoc/json"].path).read_text()
    assert "### dumps" in json_page and "### JSONDecoder" in json_page
    for doc in docs:
        text = Path(doc.path).read_text()
        assert (
            " at 0x" not in text and "/site-packages/" not in text and "inherited from builtins" not in text
        )


def test_exactly_two_documents_are_restricted_to_legal(built: tuple[Path, list[DemoDoc], float]) -> None:
    _, docs, _ = built
    restricted = {d.doc_id: d.access for d in docs if d.access.readers != (EVERYONE,)}
    assert restricted == {"license/gpl-3.0": LEGAL_ONLY, "license/lgpl-3.0": LEGAL_ONLY}


def test_rebuilding_changes_nothing(built: tuple[Path, list[DemoDoc], float]) -> None:
    target, docs, _ = built
    before = {d.path: (Path(d.path).read_bytes(), Path(d.path).stat().st_mtime_ns) for d in docs}
    again = build_demo_corpus(target)
    assert again == docs
    assert {d.path: (Path(d.path).read_bytes(), Path(d.path).stat().st_mtime_ns) for d in again} == before


def test_licenses_without_os_license_files(tmp_path: Path) -> None:
    empty = tmp_path / "no-common-licenses"
    empty.mkdir()
    docs = build_demo_corpus(tmp_path / "demo", modules=(), common_licenses=empty)
    licenses = {d.doc_id: d for d in docs if d.doc_id.startswith("license/")}
    assert len(licenses) >= 3
    assert licenses.keys() >= ALWAYS_AVAILABLE_LICENSES
    for doc in licenses.values():
        assert not doc.source.startswith("/usr/share/common-licenses")
    apache = Path(licenses["license/apache-2.0"].path).read_text()
    assert apache.startswith("Apache License 2.0\n\n") and "Grant of Patent License" in apache


def test_every_document_loads_parses_and_chunks_within_budget(
    built: tuple[Path, list[DemoDoc], float], demo_settings: Settings
) -> None:
    _, docs, _ = built
    chunks = 0
    for doc in docs:
        data, fmt = load_source(Path(doc.path), demo_settings)
        parsed = parse_document(data, fmt, name=doc.doc_id)
        assert parsed.title == doc.title
        for c in chunk_document(
            parsed,
            doc_id=doc.doc_id,
            access=doc.access,
            max_tokens=128,
            overlap=16,
            count_tokens=lambda t: len(t.split()),
            context_for=deterministic_context,
        ):
            assert c.n_tokens <= 128 and c.readers == doc.access.readers
            chunks += 1
    assert chunks > len(docs)


def test_golden_set_is_question_style_and_references_built_public_documents(
    built: tuple[Path, list[DemoDoc], float],
) -> None:
    _, docs, _ = built
    queries = [
        json.loads(line) for line in (GOLDEN / "queries.jsonl").read_text().splitlines() if line.strip()
    ]
    qrels = read_qrels(GOLDEN / "qrels" / "test.tsv")
    assert len(queries) >= 25
    assert {q["_id"] for q in queries} == qrels.keys()
    assert all(len(q["text"].split()) >= 6 for q in queries)  # questions, not keywords
    public = {d.doc_id for d in docs if d.access.readers == (EVERYONE,)}
    judged = {doc_id for rel in qrels.values() for doc_id in rel}
    assert judged <= public
    assert judged & ALWAYS_AVAILABLE_LICENSES
    assert {doc_id for doc_id in judged if doc_id.startswith("license/")} <= ALWAYS_AVAILABLE_LICENSES


def test_demo_collection_loads_as_a_beir_collection(
    built: tuple[Path, list[DemoDoc], float], tmp_path: Path
) -> None:
    _, docs, _ = built
    corpus = write_demo_collection(tmp_path / "collection", docs)
    collection = load_collection(GOLDEN, corpus=corpus)
    assert [d._id for d in collection.corpus] == [d.doc_id for d in docs]
    by_id = {d._id: d for d in collection.corpus}
    assert by_id["pydoc/shlex"].title.startswith("shlex — ")
    assert "Classes > shlex" in by_id["pydoc/shlex"].text
    assert len(collection.queries) >= 25
    assert all(doc_id in by_id for rel in collection.qrels.values() for doc_id in rel)


def test_the_whole_standard_library_lists_the_demo_modules_first(tmp_path: Path) -> None:
    modules = stdlib_modules()  # DOCENT_DEMO_MODULES=all
    assert modules[: len(PYDOC_MODULES)] == list(PYDOC_MODULES) and len(modules) == len(set(modules))
    assert {"timeit", "copy", "ipaddress", "atexit", "cProfile", "xml.etree.ElementTree"} <= set(modules)
    assert not {"antigravity", "this", "idlelib", "tkinter"} & set(modules)
    assert not [m for m in modules if any(part.startswith("_") for part in m.split("."))]
    docs = build_demo_corpus(tmp_path, modules=("timeit", "xml.etree.ElementTree"), common_licenses=tmp_path)
    assert {"pydoc/timeit", "pydoc/xml.etree.ElementTree"} <= {d.doc_id for d in docs}
