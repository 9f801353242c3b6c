"""`docent eval`: a tiny BEIR collection scored end to end (hash embedder), the JSON shape, the cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from index.evalrun import BUILD_DONE_FILE, EVAL_DIR, evaluate_collection, format_table
from store.settings import Settings

REPO = Path(__file__).resolve().parent.parent
CORPUS = [
    {"_id": "d1", "title": "Parental leave", "text": "Parental leave lasts sixteen weeks at full pay."},
    {"_id": "d2", "title": "Sick leave", "text": "Sick leave needs a doctor's note after three days."},
    {"_id": "d3", "title": "Flights", "text": "Book economy class for flights under six hours."},
    {"_id": "d4", "title": "Hotels", "text": "Hotel costs are reimbursed up to a nightly cap."},
    {"_id": "d5", "title": "Passwords", "text": "Rotate your laptop password every ninety days."},
    {"_id": "d6", "title": "Phishing", "text": "Report phishing emails to the security team at once."},
]
QUERIES = [
    {"_id": "q1", "text": "how many weeks of parental leave"},
    {"_id": "q2", "text": "hotel reimbursement cap"},
    {"_id": "q3", "text": "what to do with phishing emails"},
    {"_id": "q4", "text": "a query nobody judged"},
]
QRELS = [("q1", "d1", 2), ("q1", "d2", 1), ("q2", "d4", 1), ("q3", "d6", 1)]
RUN_METRICS = {"ndcg@10", "recall@20", "recall@100", "mrr@10"}


def write_collection(directory: Path, corpus: list[dict[str, str]]) -> Path:
    (directory / "qrels").mkdir(parents=True, exist_ok=True)
    (directory / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    (directory / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUERIES))
    lines = ["query-id\tcorpus-id\tscore", *(f"{q}\t{d}\t{s}" for q, d, s in QRELS)]
    (directory / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return directory


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env(
        {
            "DOCENT_DATA_DIR": str(tmp_path / "data"),
            "DOCENT_LLM_BACKEND": "none",
            "DOCENT_EMBED_MODEL": "hash",
        }
    )


def test_report_shape_scores_and_table(settings: Settings, tmp_path: Path) -> None:
    collection = write_collection(tmp_path / "tiny", CORPUS)
    report = evaluate_collection(settings, collection)
    assert report["collection"] == "tiny" and report["queries"] == 3
    assert report["documents"] == 6 and report["chunks"] == 6 and report["cached"] is False
    assert {"bm25", "dense", "hybrid"} <= set(report["runs"])
    assert "hybrid+rerank" not in report["runs"]  # no reranker configured
    for metrics in report["runs"].values():
        assert set(metrics) >= RUN_METRICS
        assert all(0.0 <= value <= 1.0 for value in metrics.values())
        assert metrics["failure@20"] == pytest.approx(1 - metrics["recall@20"])
    assert report["runs"]["bm25"]["mrr@10"] == 1.0  # each judged query's words are in its document
    assert report["runs"]["hybrid"]["recall@20"] == 1.0
    decoded = json.loads(json.dumps(report))
    assert decoded == report
    table = format_table(report)
    for name in ("bm25", "dense", "hybrid", "nDCG@10", "R@20", "fail@20", "R@100", "MRR@10"):
        assert name in table


def test_second_run_reuses_the_index_and_a_new_corpus_gets_its_own(
    settings: Settings, tmp_path: Path
) -> None:
    collection = write_collection(tmp_path / "tiny", CORPUS)
    first = evaluate_collection(settings, collection)
    index_dir = Path(first["index"])
    assert index_dir.parent == settings.data_path / EVAL_DIR and (index_dir / BUILD_DONE_FILE).exists()
    stamp = (index_dir / BUILD_DONE_FILE).stat().st_mtime_ns
    second = evaluate_collection(settings, collection)
    assert second["cached"] is True and second["index"] == first["index"]
    assert second["runs"] == first["runs"]
    assert (index_dir / BUILD_DONE_FILE).stat().st_mtime_ns == stamp
    changed = [*CORPUS[:-1], {**CORPUS[-1], "text": "Forward phishing emails to the security desk."}]
    other = tmp_path / "other-corpus.jsonl"
    other.write_text("".join(json.dumps(d) + "\n" for d in changed))
    third = evaluate_collection(settings, collection, corpus=other)
    assert third["cached"] is False and third["index"] != first["index"]
    assert sorted(p.name for p in (settings.data_path / EVAL_DIR).iterdir()) == sorted(
        [Path(first["index"]).name, Path(third["index"]).name]
    )


def test_cli_prints_the_table_then_one_json_line(settings: Settings, tmp_path: Path) -> None:
    collection = write_collection(tmp_path / "tiny", CORPUS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCENT_")}
    env.update(
        {"DOCENT_DATA_DIR": settings.data_dir, "DOCENT_LLM_BACKEND": "none", "DOCENT_EMBED_MODEL": "hash"}
    )
    done = subprocess.run(
        [str(Path(sys.executable).parent / "docent"), "eval", str(collection), "--json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    last = json.loads(lines[-1])
    assert last["collection"] == "tiny"
    assert {"bm25", "dense", "hybrid"} <= set(last["runs"])
    assert all(set(m) >= RUN_METRICS for m in last["runs"].values())
    assert any(line.startswith("| hybrid |") for line in lines)
