"""The embedding service: MiniLM on CTranslate2 (converted once into MODEL_CACHE), registry, query cache."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np
import pytest

from index import ct2bert
from index.embed import (
    MAX_TOKENS,
    MINILM_NAME,
    CT2Embedder,
    HashEmbedder,
    QueryEmbedder,
    ensure_minilm,
    load_embedder,
    load_minilm,
    minilm_model_dir,
    minilm_source,
)
from index.types import Embedder
from store.exceptions import ConfigError, InputError
from store.redis import async_client, sync_client
from store.settings import Settings
from tests.conftest import MODEL_CACHE

PARAPHRASE = ("How do I reset my password?", "What are the steps to change a forgotten password?")
UNRELATED = "The cafeteria serves lasagne on Thursdays."


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data = tmp_path_factory.mktemp("embed")
    return Settings.from_env(
        {"DOCENT_DATA_DIR": str(data), "DOCENT_MODEL_DIR": str(MODEL_CACHE), "DOCENT_LLM_BACKEND": "none"}
    )


@pytest.fixture(scope="module")
def minilm(settings: Settings) -> Embedder:
    return load_embedder(settings, "minilm", purpose="online")


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_conversion_happens_once_even_when_raced(tmp_path: Path) -> None:
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(ensure_minilm(tmp_path))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = minilm_model_dir(tmp_path)
    assert results == [final, final]
    assert sorted(p.name for p in tmp_path.iterdir()) == [final.name]  # no temp dir left behind
    before = (final / "model.bin").stat()
    assert ensure_minilm(tmp_path) == final
    after = (final / "model.bin").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_shared_cache_is_reused(settings: Settings, minilm: Embedder) -> None:
    final = minilm_model_dir(MODEL_CACHE)
    before = (final / "model.bin").stat()
    again = load_minilm(settings, intra_threads=1)  # a fresh load, past the registry
    after = (final / "model.bin").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert again.identity == minilm.identity


def test_identity(minilm: Embedder) -> None:
    identity = minilm.identity
    weights = (minilm_source() / "model.safetensors").read_bytes()
    assert identity.name == MINILM_NAME
    assert identity.dimension == 384
    assert identity.weights_sha256 == hashlib.sha256(weights).hexdigest()
    assert len(identity.tokenizer_sha256) == 64
    assert minilm_model_dir(MODEL_CACHE).name == f"minilm-{identity.weights_sha256[:16]}"


def test_vectors_are_normalised_float32(minilm: Embedder) -> None:
    vectors = minilm.embed(["one", "two words", "", PARAPHRASE[0]])
    assert vectors.dtype == np.float32 and vectors.shape == (4, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert minilm.embed([]).shape == (0, 384)


def test_padding_does_not_pollute(minilm: Embedder) -> None:
    short = "Quarterly revenue grew by four percent."
    alone = minilm.embed([short])[0]
    long_text = " ".join(["the board approved the merger after a long debate"] * 20)
    batched = minilm.embed([long_text, short, "a b"])  # one batch, padded to the long text
    assert cos(alone, batched[1]) > 0.999


def test_order_is_restored_across_batches(settings: Settings, minilm: Embedder) -> None:
    texts = [f"document number {i} " + "word " * (i * 7 % 50) for i in range(20)]
    together = minilm.embed(texts)  # batches of settings.bulk_batch_size, sorted by length
    assert settings.bulk_batch_size < len(texts)
    for i in (0, 7, 19):
        assert cos(together[i], minilm.embed([texts[i]])[0]) > 0.999


def test_truncation_of_long_text(minilm: Embedder) -> None:
    long_text = " ".join(f"clause {i} of the supplier agreement" for i in range(200))
    assert minilm.count_tokens(long_text) > MAX_TOKENS  # counted whole, without specials
    assert minilm.count_tokens("hello world") == 2
    head, extended = minilm.embed([long_text, long_text + " completely different tail about volcanoes"])
    assert cos(head, extended) > 0.9999  # the tail lies past the 256-token cut


def test_paraphrase_beats_unrelated(minilm: Embedder) -> None:
    a, b, c = minilm.embed([*PARAPHRASE, UNRELATED])
    assert cos(a, b) > cos(a, c) + 0.3


def test_matches_numpy_reference_forward(minilm: Embedder) -> None:
    assert isinstance(minilm, CT2Embedder)
    source = minilm_source()
    weights = ct2bert.load_weights(source / "model.safetensors")
    config = ct2bert.read_config(source / "config.json")
    for text in (PARAPHRASE[0], UNRELATED):
        hidden, _ = ct2bert.reference_forward(weights, config, minilm.token_ids(text))
        assert cos(minilm.embed([text])[0], hidden.mean(axis=0)) > 0.99


def test_rotated_embedder_keeps_cosines_in_another_space(settings: Settings, minilm: Embedder) -> None:
    rotated = load_embedder(settings, "minilm-rot", purpose="online")
    texts = [*PARAPHRASE, UNRELATED, "a fourth sentence about invoices"]
    base, turned = minilm.embed(texts), rotated.embed(texts)
    np.testing.assert_allclose(turned @ turned.T, base @ base.T, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(turned, axis=1), 1.0, atol=1e-5)
    assert max(abs(cos(x, y)) for x, y in zip(base, turned, strict=True)) < 0.5
    assert rotated.identity.name != minilm.identity.name
    assert rotated.identity.weights_sha256 != minilm.identity.weights_sha256
    assert rotated.identity.dimension == 384
    assert rotated.count_tokens("hello world") == 2


def test_hash_embedder_is_weak_but_well_formed(settings: Settings) -> None:
    embedder = load_embedder(settings, "hash", purpose="offline")
    assert isinstance(embedder, HashEmbedder)
    v = embedder.embed(["invoice payment overdue", "overdue invoice payment", "holiday party", ""])
    assert v.shape == (4, 64) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert cos(v[0], v[1]) == pytest.approx(1.0)  # bag of words: order is invisible
    assert cos(v[0], v[2]) < 0.9
    np.testing.assert_array_equal(embedder.embed(["invoice payment overdue"])[0], v[0])
    assert embedder.count_tokens("two words") == 2
    assert embedder.identity.dimension == 64


def test_registry_caches_per_name_and_purpose(settings: Settings, minilm: Embedder) -> None:
    assert load_embedder(settings, "minilm", purpose="online") is minilm
    assert load_embedder(settings, purpose="online") is minilm  # settings.embed_model = "minilm"
    offline = load_embedder(settings, "minilm", purpose="offline")
    assert offline is not minilm and offline.identity == minilm.identity
    with pytest.raises(ConfigError):
        load_embedder(settings, "word2vec", purpose="online")


def test_bad_input(minilm: Embedder) -> None:
    with pytest.raises(InputError):
        minilm.embed("a single string")
    with pytest.raises(InputError):
        minilm.embed(["fine", None])  # type: ignore[list-item]
    query = QueryEmbedder(minilm, cache_size=4)
    for bad in ("", "   \n\t "):
        with pytest.raises(InputError):
            query.embed_query(bad)
    with pytest.raises(InputError):
        query.embed_query(42)  # type: ignore[arg-type]
    assert query.misses == 0


def test_query_lru(minilm: Embedder) -> None:
    query = QueryEmbedder(minilm, cache_size=2)
    first = query.embed_query("  Where is the VPN guide? ")
    again = query.embed_query("where is the vpn\tguide?")  # same after NFKC, lower-case, whitespace
    assert (query.misses, query.lru_hits) == (1, 1)
    assert again is first and not first.flags.writeable
    np.testing.assert_allclose(first, minilm.embed(["where is the vpn guide?"])[0], atol=1e-6)
    query.embed_query("second")
    query.embed_query("third")  # evicts the VPN question
    query.embed_query("where is the vpn guide?")
    assert query.misses == 4


def test_query_redis_cache(minilm: Embedder, redis_url: str) -> None:
    client = sync_client(redis_url)
    writer = QueryEmbedder(minilm, cache_size=8, redis_client=client)
    vector = writer.embed_query("Expense policy for travel")
    key = writer.cache_key("expense   POLICY for travel")
    assert (
        key
        == f"emb:{minilm.identity.weights_sha256[:16]}:{MINILM_NAME}:"
        + hashlib.sha1(b"expense policy for travel").hexdigest()
    )
    assert client.get(key) == vector.tobytes()
    assert 0 < client.ttl(key) <= 3600

    reader = QueryEmbedder(minilm, cache_size=8, redis_client=client)  # cold LRU: another process
    np.testing.assert_array_equal(reader.embed_query("expense policy for travel"), vector)
    assert (reader.redis_hits, reader.misses) == (1, 0)

    client.set(writer.cache_key("truncated value"), b"\x00\x01")  # a bad entry is ignored, then replaced
    reader.embed_query("truncated value")
    assert reader.misses == 1 and len(client.get(writer.cache_key("truncated value")) or b"") == 384 * 4
    client.close()


async def test_async_query_with_redis(minilm: Embedder, redis_url: str) -> None:
    client = async_client(redis_url)
    try:
        writer = QueryEmbedder(minilm, cache_size=8, async_redis=client)
        vector = await writer.aembed_query("Who approves purchase orders?")
        assert writer.misses == 1
        assert await writer.aembed_query("who approves purchase orders?") is vector
        reader = QueryEmbedder(minilm, cache_size=8, async_redis=client)
        np.testing.assert_array_equal(await reader.aembed_query("Who approves purchase orders?"), vector)
        assert (reader.redis_hits, reader.misses) == (1, 0)
    finally:
        await client.aclose()


def test_cache_key_includes_model_identity(settings: Settings, minilm: Embedder, redis_url: str) -> None:
    client = sync_client(redis_url)
    rotated = load_embedder(settings, "minilm-rot", purpose="online")
    plain = QueryEmbedder(minilm, cache_size=8, redis_client=client)
    turned = QueryEmbedder(rotated, cache_size=8, redis_client=client)
    text = "holiday calendar 2025"
    assert plain.cache_key(text) != turned.cache_key(text)
    a = plain.embed_query(text)
    b = turned.embed_query(text)  # same Redis, same text: must not get the other space's vector
    assert turned.misses == 1 and turned.redis_hits == 0
    np.testing.assert_allclose(b, rotated.embed([text])[0], atol=1e-6)
    assert abs(cos(a, b)) < 0.5
    client.close()
