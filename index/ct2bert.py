"""BERT-family checkpoints → CTranslate2 encoders, without torch; shared by the embedder and the reranker.

The spec mirrors `ctranslate2.converters.transformers.BertLoader` (post-norm encoder, word + token-type
embeddings added, embedding LayerNorm, fused QKV, tanh pooler), filled from numpy arrays read with
`safetensors.numpy`. `reference_forward` is a plain-numpy BERT used to check a converted model.

A reranker directory (see `convert_cross_encoder`) holds the CTranslate2 model (model.bin, config.json,
vocabulary.json), the `tokenizer.json` it was trained with, and `head.npz`: the classifier that turns the
pooled [CLS] vector into a relevance score (`weight` (labels, hidden), `bias` (labels,), `max_length` ()).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt

from store.exceptions import ModelError

Device = Literal["cpu", "cuda"]
Arrays = Mapping[str, npt.NDArray[Any]]

HEAD_FILE = "head.npz"
TOKENIZER_FILE = "tokenizer.json"
MODEL_FILES = ("model.bin", "config.json", TOKENIZER_FILE)
HASH_CHUNK_BYTES = 1 << 20

_ACTIVATIONS = {"gelu": "GELU", "gelu_python": "GELU", "gelu_new": "GELUTanh", "relu": "RELU"}


class BertConfig(msgspec.Struct, kw_only=True):
    """The fields of a Hugging Face BERT `config.json` that the conversion needs."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    position_embedding_type: str = "absolute"


def read_config(path: Path) -> BertConfig:
    try:
        config = msgspec.json.decode(path.read_bytes(), type=BertConfig)
    except (OSError, msgspec.DecodeError) as exc:
        raise ModelError(f"cannot read BERT config {path}: {exc}") from None
    if config.position_embedding_type != "absolute" or config.hidden_act not in _ACTIVATIONS:
        raise ModelError(f"unsupported BERT variant in {path}", hidden_act=config.hidden_act)
    return config


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(HASH_CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def load_weights(path: Path) -> dict[str, npt.NDArray[Any]]:
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises several unrelated types for a bad file
        raise ModelError(f"cannot read weights {path}: {exc}") from None


def vocabulary(tokenizer_json: Path, size: int) -> list[str]:
    """The tokenizer's tokens ordered by id, padded like BertLoader to the model's vocabulary size."""
    try:
        vocab: dict[str, int] = json.loads(tokenizer_json.read_text(encoding="utf-8"))["model"]["vocab"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"cannot read vocabulary from {tokenizer_json}: {exc}") from None
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    if len(tokens) > size:
        raise ModelError(f"tokenizer has {len(tokens)} tokens, the model only {size}")
    return tokens + [f"<extra_id_{i}>" for i in range(size - len(tokens))]


def encoder_spec(
    weights: Arrays, config: BertConfig, tokens: Sequence[str], prefix: str = "", *, pooler: bool = True
) -> Any:
    """A `TransformerEncoderModelSpec` as BertLoader builds it, from HF-named arrays.

    `pooler=False`: no tanh pooler (a checkpoint without `pooler.dense`, used by mean pooling only).
    """
    from ctranslate2.converters import utils
    from ctranslate2.specs import common_spec, transformer_spec

    def get(name: str) -> npt.NDArray[np.float32]:
        try:
            # A copy: `optimize` quantizes the spec's arrays in place, and the caller may reuse `weights`.
            return np.array(weights[prefix + name], dtype=np.float32, order="C", copy=True)
        except KeyError:
            raise ModelError(f"weights lack {prefix + name}") from None

    def linear(spec: Any, name: str) -> Any:
        spec.weight = get(f"{name}.weight")
        spec.bias = get(f"{name}.bias")
        return spec

    def layer_norm(spec: Any, name: str) -> None:
        spec.gamma = get(f"{name}.weight")
        spec.beta = get(f"{name}.bias")

    encoder = transformer_spec.TransformerEncoderSpec(
        config.num_hidden_layers,
        config.num_attention_heads,
        pre_norm=False,
        activation=getattr(common_spec.Activation, _ACTIVATIONS[config.hidden_act]),
        layernorm_embedding=True,
        num_source_embeddings=2,
        embeddings_merge=common_spec.EmbeddingsMerge.ADD,
    )
    spec = transformer_spec.TransformerEncoderModelSpec(
        encoder, pooling_layer=pooler, pooling_activation=common_spec.Activation.Tanh
    )
    spec.encoder.scale_embeddings = False
    spec.encoder.embeddings[0].weight = get("embeddings.word_embeddings.weight")
    spec.encoder.embeddings[1].weight = get("embeddings.token_type_embeddings.weight")
    spec.encoder.position_encodings.encodings = get("embeddings.position_embeddings.weight")
    layer_norm(spec.encoder.layernorm_embedding, "embeddings.LayerNorm")
    if pooler:
        linear(spec.pooler_dense, "pooler.dense")
    for i, layer in enumerate(spec.encoder.layer):
        base = f"encoder.layer.{i}"
        qkv = [
            linear(common_spec.LinearSpec(), f"{base}.attention.self.{p}") for p in ("query", "key", "value")
        ]
        utils.fuse_linear(layer.self_attention.linear[0], qkv)
        linear(layer.self_attention.linear[1], f"{base}.attention.output.dense")
        layer_norm(layer.self_attention.layer_norm, f"{base}.attention.output.LayerNorm")
        linear(layer.ffn.linear_0, f"{base}.intermediate.dense")
        linear(layer.ffn.linear_1, f"{base}.output.dense")
        layer_norm(layer.ffn.layer_norm, f"{base}.output.LayerNorm")
    spec.config.unk_token = "[UNK]"
    spec.config.layer_norm_epsilon = config.layer_norm_eps
    spec.register_vocabulary(list(tokens))
    return spec


def save_spec(spec: Any, out_dir: Path, quantization: str | None) -> None:
    try:
        spec.validate()
        spec.optimize(quantization=quantization)
        spec.save(str(out_dir))
    except (ValueError, OSError) as exc:
        raise ModelError(f"conversion to {out_dir} failed: {exc}") from None


def build_atomically(final_dir: Path, build: Callable[[Path], None]) -> Path:
    """Build into a private temp dir beside `final_dir`, then rename it into place.

    Concurrent builders race harmlessly: the first rename wins, the others discard their copy. A crash
    leaves only a `.tmp-*` dir behind, never a half-written `final_dir`.
    """
    if final_dir.is_dir():
        return final_dir
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final_dir.name}-", dir=final_dir.parent))
    try:
        build(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the model is shared with other users' processes
        os.rename(tmp, final_dir)
    except OSError:
        if not final_dir.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final_dir


def check_model_dir(path: Path, required: Sequence[str] = MODEL_FILES) -> None:
    missing = [name for name in required if not (path / name).is_file()]
    if missing:
        raise ModelError(f"model directory {path} lacks {', '.join(missing)}", path=str(path))


def resolve_device(device: str) -> Device:
    import ctranslate2

    if device == "auto":
        return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    if device not in ("cpu", "cuda"):
        raise ModelError(f"unknown device {device!r}")
    return "cuda" if device == "cuda" else "cpu"


def compute_type(device: Device) -> str:
    return "int8_float16" if device == "cuda" else "int8"


def load_encoder(path: Path, device: Device, intra_threads: int, compute: str | None = None) -> Any:
    import ctranslate2

    try:
        return ctranslate2.Encoder(
            str(path),
            device=device,
            compute_type=compute or compute_type(device),
            intra_threads=intra_threads,
        )
    except (RuntimeError, ValueError, OSError) as exc:
        raise ModelError(f"cannot load CTranslate2 encoder from {path}: {exc}", path=str(path)) from None


def to_numpy(view: Any) -> npt.NDArray[np.float32]:
    """A CTranslate2 StorageView (any device, any float type) as a float32 host array."""
    import ctranslate2

    if view.device != "cpu":
        view = view.to_device(ctranslate2.Device.cpu)
    if view.dtype != ctranslate2.DataType.float32:
        view = view.to(ctranslate2.DataType.float32)
    return np.array(view, dtype=np.float32, copy=True)


# --- A plain-numpy BERT, for checking a converted model (slow; a handful of sentences only). ---


def _erf(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    # Abramowitz & Stegun 7.1.26, |error| < 1.5e-7: numpy has no erf and BERT's GELU needs it.
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.asarray(sign * (1.0 - poly * np.exp(-a * a)))


def _layer_norm(x: npt.NDArray[np.float64], gamma: Any, beta: Any, eps: float) -> npt.NDArray[np.float64]:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return np.asarray((x - mean) / np.sqrt(var + eps) * gamma + beta)


def reference_forward(
    weights: Arrays,
    config: BertConfig,
    ids: Sequence[int],
    type_ids: Sequence[int] | None = None,
    prefix: str = "",
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(last hidden state (seq, hidden), pooled [CLS] (hidden,); zeros without a pooler) for ONE unpadded
    sequence, in float64."""

    def w(name: str) -> npt.NDArray[np.float64]:
        return np.asarray(weights[prefix + name], dtype=np.float64)

    def dense(x: npt.NDArray[np.float64], name: str) -> npt.NDArray[np.float64]:
        return np.asarray(x @ w(f"{name}.weight").T + w(f"{name}.bias"))

    def norm(x: npt.NDArray[np.float64], name: str) -> npt.NDArray[np.float64]:
        return _layer_norm(x, w(f"{name}.weight"), w(f"{name}.bias"), config.layer_norm_eps)

    n = len(ids)
    types = np.zeros(n, dtype=np.int64) if type_ids is None else np.asarray(type_ids)
    x = (
        w("embeddings.word_embeddings.weight")[np.asarray(ids)]
        + w("embeddings.position_embeddings.weight")[:n]
        + w("embeddings.token_type_embeddings.weight")[types]
    )
    x = norm(x, "embeddings.LayerNorm")
    heads = config.num_attention_heads
    head_dim = config.hidden_size // heads
    for i in range(config.num_hidden_layers):
        base = f"encoder.layer.{i}"

        def split(t: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
            return t.reshape(n, heads, head_dim).transpose(1, 0, 2)

        q, k, v = (split(dense(x, f"{base}.attention.self.{p}")) for p in ("query", "key", "value"))
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(head_dim)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        context = (probs @ v).transpose(1, 0, 2).reshape(n, config.hidden_size)
        x = norm(x + dense(context, f"{base}.attention.output.dense"), f"{base}.attention.output.LayerNorm")
        h = dense(x, f"{base}.intermediate.dense")
        if config.hidden_act == "relu":
            h = np.maximum(h, 0.0)
        elif config.hidden_act == "gelu_new":
            h = 0.5 * h * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * h**3)))
        else:
            h = 0.5 * h * (1.0 + _erf(h / math.sqrt(2.0)))
        x = norm(x + dense(h, f"{base}.output.dense"), f"{base}.output.LayerNorm")
    if prefix + "pooler.dense.weight" not in weights:  # a checkpoint without a pooler (mean pooling only)
        return x, np.zeros(config.hidden_size)
    pooled = np.tanh(dense(x[:1], "pooler.dense"))[0]
    return x, pooled


# --- Cross-encoders (BertForSequenceClassification) → a reranker directory. ---


def convert_cross_encoder(source: Path, out_dir: Path, quantization: str | None = "int8") -> Path:
    """Convert a HF BertForSequenceClassification dir (config.json, model.safetensors, tokenizer.json).

    Weights may be named `bert.*` + `classifier.*` (as HF saves them) or without the `bert.` prefix.
    The result is built atomically at `out_dir` (an existing `out_dir` is kept as is).
    """
    config = read_config(source / "config.json")
    weights = load_weights(source / "model.safetensors")
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in weights else ""
    if "classifier.weight" not in weights or "classifier.bias" not in weights:
        raise ModelError(f"{source} has no classifier head (classifier.weight/bias)")
    head_weight = np.asarray(weights["classifier.weight"], dtype=np.float32)
    head_bias = np.asarray(weights["classifier.bias"], dtype=np.float32)
    if head_weight.ndim != 2 or head_weight.shape != (head_bias.shape[0], config.hidden_size):
        raise ModelError(
            f"classifier head has shape {head_weight.shape}, hidden size is {config.hidden_size}"
        )
    tokens = vocabulary(source / TOKENIZER_FILE, config.vocab_size)
    spec = encoder_spec(weights, config, tokens, prefix)

    def build(tmp: Path) -> None:
        save_spec(spec, tmp, quantization)
        shutil.copyfile(source / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
        np.savez(
            tmp / HEAD_FILE,
            weight=head_weight,
            bias=head_bias,
            max_length=np.asarray(config.max_position_embeddings, dtype=np.int64),
        )

    return build_atomically(out_dir, build)
