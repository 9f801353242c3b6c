"""A tiny hand-wired BERT cross-encoder whose score is the share of query words found in the passage.

Two layers, hidden 32, two heads of 16 (only head 0 does anything), a 12-word WordLevel vocabulary.
Every hidden vector keeps the same norm and sums to zero (a "sink" dimension balances it), so each
LayerNorm is the identity up to a fixed gain, which gamma undoes. Dimensions:

  0-11 one per vocabulary word   12 [SEP]   13 [CLS]   14/15 token type 0/1   16/17 MATCH/NOMATCH
  18/19 SCORE+/SCORE-            20 [UNK]/[MASK]        31 sink

Layer 1: each token attends to tokens with the same word, preferring passage tokens (type 1); its value
is "is a passage token", written into MATCH (and 1 - that into NOMATCH). A query word present in the
passage thus ends with MATCH ≈ 1, an absent one with MATCH ≈ 0.
Layer 2: every position attends to the query's word tokens and reads their MATCH into SCORE+ (SCORE-
mirrors it), so [CLS] holds the share of query words found in the passage.
Pooler: tanh(2·SCORE+); classifier: 4·pooled - 2. More shared words, higher score.

`write_source` writes a Hugging Face style BertForSequenceClassification dir (config.json,
model.safetensors with `bert.*` + `classifier.*` names, tokenizer.json); `build` also converts it to a
reranker directory with `index.ct2bert.convert_cross_encoder`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from index.ct2bert import convert_cross_encoder

WORDS: tuple[str, ...] = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta")
WORDS += ("eta", "theta", "iota", "kappa", "lambda", "mu")
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
HIDDEN = 32
HEADS = 2
LAYERS = 2
MAX_POSITIONS = 64
SEP_D, CLS_D, T0, T1, MATCH, NOMATCH = 12, 13, 14, 15, 16, 17
SCORE_POS, SCORE_NEG, UNK_D, SINK = 18, 19, 20, 31
NORM_SQ = 12.0  # squared norm of every token's hidden vector (word 1 + NOMATCH 1 + type 1 + sink 9)
SAME_WORD = 16.0  # attention logit for a token with the same word
PASSAGE = 6.0  # extra logit for a passage token
QUERY_WORD = 12.0  # layer 2 logit for a query word token
HEAD_DIM = HIDDEN // HEADS

VOCAB = {token: i for i, token in enumerate((*SPECIALS, *WORDS))}


def _unit(*dims: int, sink: float = 0.0) -> np.ndarray:
    v = np.zeros(HIDDEN, dtype=np.float32)
    for d in dims:
        v[d] += 1.0
    v[SINK] += sink
    return v


def zeros(*shape: int) -> np.ndarray:
    return np.zeros(shape, dtype=np.float32)


def _weights() -> dict[str, np.ndarray]:
    w: dict[str, np.ndarray] = {}

    words = zeros(len(VOCAB), HIDDEN)
    for i, word in enumerate(WORDS):
        words[VOCAB[word]] = _unit(i, NOMATCH, sink=-2)
    words[VOCAB["[CLS]"]] = _unit(CLS_D, NOMATCH, sink=-2)
    words[VOCAB["[SEP]"]] = _unit(SEP_D, NOMATCH, sink=-2)
    words[VOCAB["[UNK]"]] = words[VOCAB["[MASK]"]] = _unit(UNK_D, NOMATCH, sink=-2)
    w["embeddings.word_embeddings.weight"] = words
    w["embeddings.token_type_embeddings.weight"] = np.stack([_unit(T0, sink=-1), _unit(T1, sink=-1)])
    w["embeddings.position_embeddings.weight"] = zeros(MAX_POSITIONS, HIDDEN)

    gain = np.full(HIDDEN, math.sqrt(NORM_SQ / HIDDEN), dtype=np.float32)  # undoes LayerNorm's 1/std
    layer_norms = ["embeddings.LayerNorm"]
    scale = math.sqrt(HEAD_DIM)  # the encoder divides attention logits by sqrt(head_dim)

    def attention(layer: int, q: np.ndarray, qb: np.ndarray, k: np.ndarray, kb: np.ndarray, v: np.ndarray,
                  o: np.ndarray) -> None:  # fmt: skip
        """Head 0 gets (q, k, v) rows 0-15; head 1 stays zero; FFN is zero so only attention acts."""
        base = f"encoder.layer.{layer}"
        for name, weight, bias in (("query", q, qb), ("key", k, kb), ("value", v, zeros(HIDDEN))):
            w[f"{base}.attention.self.{name}.weight"] = weight
            w[f"{base}.attention.self.{name}.bias"] = bias
        w[f"{base}.attention.output.dense.weight"] = o
        w[f"{base}.attention.output.dense.bias"] = zeros(HIDDEN)
        w[f"{base}.intermediate.dense.weight"] = zeros(HIDDEN, HIDDEN)
        w[f"{base}.intermediate.dense.bias"] = zeros(HIDDEN)
        w[f"{base}.output.dense.weight"] = zeros(HIDDEN, HIDDEN)
        w[f"{base}.output.dense.bias"] = zeros(HIDDEN)
        layer_norms.extend([f"{base}.attention.output.LayerNorm", f"{base}.output.LayerNorm"])

    # Layer 1: logit = SAME_WORD·[same word] + PASSAGE·[key is a passage token]; value = [passage token].
    q, k, v, o = (zeros(HIDDEN, HIDDEN) for _ in range(4))
    qb = zeros(HIDDEN)
    for i in range(len(WORDS)):
        q[i, i] = k[i, i] = math.sqrt(SAME_WORD * scale)
    qb[len(WORDS)] = 1.0
    k[len(WORDS), T1] = PASSAGE * scale
    v[0, T1] = 1.0
    o[MATCH, 0], o[NOMATCH, 0] = 1.0, -1.0
    attention(0, q, qb, k, zeros(HIDDEN), v, o)

    # Layer 2: logit = QUERY_WORD·([type 0] + [a word] - 1), high only on query words; value = MATCH.
    q, k, v, o = (zeros(HIDDEN, HIDDEN) for _ in range(4))
    qb, kb = zeros(HIDDEN), zeros(HIDDEN)
    qb[0] = 1.0
    k[0, T0] = QUERY_WORD * scale
    k[0, : len(WORDS)] = QUERY_WORD * scale
    kb[0] = -QUERY_WORD * scale
    v[0, MATCH] = 1.0
    o[SCORE_POS, 0], o[SCORE_NEG, 0] = 1.0, -1.0
    attention(1, q, qb, k, kb, v, o)

    for name in layer_norms:
        w[f"{name}.weight"] = gain.copy()
        w[f"{name}.bias"] = zeros(HIDDEN)
    pooler = zeros(HIDDEN, HIDDEN)
    pooler[0, SCORE_POS] = 2.0
    w["pooler.dense.weight"] = pooler
    w["pooler.dense.bias"] = zeros(HIDDEN)
    named = {f"bert.{name}": value for name, value in w.items()}
    classifier = zeros(1, HIDDEN)
    classifier[0, 0] = 4.0
    named["classifier.weight"] = classifier
    named["classifier.bias"] = np.array([-2.0], dtype=np.float32)
    return named


def tokenizer() -> Tokenizer:
    tok = Tokenizer(models.WordLevel(vocab=VOCAB, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", VOCAB["[CLS]"]), ("[SEP]", VOCAB["[SEP]"])],
    )
    return tok


def write_source(directory: Path) -> Path:
    """A Hugging Face style BertForSequenceClassification directory."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["BertForSequenceClassification"],
        "model_type": "bert",
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": HIDDEN,
        "vocab_size": len(VOCAB),
        "max_position_embeddings": MAX_POSITIONS,
        "type_vocab_size": 2,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
        "position_embedding_type": "absolute",
        "num_labels": 1,
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    save_file(_weights(), str(directory / "model.safetensors"))
    tokenizer().save(str(directory / "tokenizer.json"))
    return directory


def build(directory: Path, quantization: str | None = "int8") -> Path:
    """A ready reranker directory at `directory` (its HF source goes to a sibling `*-source` dir)."""
    source = write_source(directory.with_name(directory.name + "-source"))
    return convert_cross_encoder(source, directory, quantization=quantization)
