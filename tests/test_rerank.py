"""The cross-encoder reranker's plumbing, on a tiny hand-wired cross-encoder (tests/tiny_cross_encoder.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from index.ct2bert import HEAD_FILE, convert_cross_encoder, read_config
from index.rerank import CrossEncoderReranker, load_reranker
from store.exceptions import InputError, ModelError
from store.settings import Settings
from tests import tiny_cross_encoder

QUERY = "alpha beta"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_cross_encoder.build(tmp_path_factory.mktemp("rerank") / "tiny")


@pytest.fixture(scope="module")
def reranker(model_dir: Path) -> CrossEncoderReranker:
    return CrossEncoderReranker(model_dir, batch_size=2)


def test_scores_follow_query_word_overlap(reranker: CrossEncoderReranker) -> None:
    passages = ["gamma delta", "alpha gamma", "epsilon beta alpha", "zeta"]
    scores = reranker.score(QUERY, passages)
    assert scores.dtype == np.float32 and scores.shape == (4,)
    assert scores[2] > scores[1] > scores[0]
    assert scores[0] == pytest.approx(scores[3], abs=0.05)  # no shared word: the same low score
    assert list(np.argsort(-scores)[:2]) == [2, 1]


def test_batching_and_order_do_not_change_scores(reranker: CrossEncoderReranker) -> None:
    passages = ["alpha " * 40, "beta", "gamma delta epsilon", "alpha beta", "mu", "kappa beta iota"]
    together = reranker.score(QUERY, passages)  # batch_size=2, sorted by length: mixed into batches
    alone = np.array([reranker.score(QUERY, [p])[0] for p in passages])
    np.testing.assert_allclose(together, alone, atol=1e-3)
    reversed_scores = reranker.score(QUERY, passages[::-1])
    np.testing.assert_allclose(reversed_scores[::-1], together, atol=1e-3)


def test_long_pairs_are_truncated_to_the_model_limit(reranker: CrossEncoderReranker, model_dir: Path) -> None:
    assert reranker.head.max_length == 64
    scores = reranker.score("alpha " * 100, ["alpha " * 500, "beta " * 500])
    assert scores[0] > scores[1]


def test_empty_and_bad_input(reranker: CrossEncoderReranker) -> None:
    empty = reranker.score(QUERY, [])
    assert empty.shape == (0,) and empty.dtype == np.float32
    with pytest.raises(InputError):
        reranker.score(QUERY, "alpha")  # a str is not a sequence of passages
    with pytest.raises(InputError):
        reranker.score(QUERY, ["alpha", 3])  # type: ignore[list-item]


def test_load_reranker_from_settings(model_dir: Path, tmp_path: Path) -> None:
    base = {"DOCENT_DATA_DIR": str(tmp_path), "DOCENT_LLM_BACKEND": "none"}
    assert load_reranker(Settings.from_env(base)) is None
    configured = Settings.from_env({**base, "DOCENT_RERANK_MODEL": str(model_dir), "DOCENT_DEVICE": "cpu"})
    first = load_reranker(configured)
    assert isinstance(first, CrossEncoderReranker)
    assert load_reranker(configured) is first
    with pytest.raises(ModelError):
        load_reranker(Settings.from_env({**base, "DOCENT_RERANK_MODEL": str(tmp_path / "absent")}))


def _copy(model_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(model_dir, tmp_path / "copy"))


@pytest.mark.parametrize(
    "damage",
    ["missing_head", "missing_model", "garbage_model", "garbage_head", "wrong_head_size", "bad_tokenizer"],
)
def test_bad_directory_is_a_model_error(model_dir: Path, tmp_path: Path, damage: str) -> None:
    broken = _copy(model_dir, tmp_path)
    if damage == "missing_head":
        (broken / HEAD_FILE).unlink()
    elif damage == "missing_model":
        (broken / "model.bin").unlink()
    elif damage == "garbage_model":
        (broken / "model.bin").write_bytes(b"\x00not a model" * 10)
    elif damage == "garbage_head":
        (broken / HEAD_FILE).write_bytes(b"not an npz")
    elif damage == "wrong_head_size":
        np.savez(broken / HEAD_FILE, weight=np.ones((1, 16), np.float32), bias=np.zeros(1, np.float32))
    elif damage == "bad_tokenizer":
        (broken / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelError):
        CrossEncoderReranker(broken)


def test_conversion_refuses_a_model_without_classifier(tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    source = tiny_cross_encoder.write_source(tmp_path / "src")
    weights = load_file(str(source / "model.safetensors"))
    del weights["classifier.weight"]
    save_file(weights, str(source / "model.safetensors"))
    with pytest.raises(ModelError):
        convert_cross_encoder(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert read_config(source / "config.json").hidden_size == tiny_cross_encoder.HIDDEN
