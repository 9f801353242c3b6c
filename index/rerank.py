"""Cross-encoder reranking on CTranslate2.

A reranker directory (settings.rerank_model) holds:
- the CTranslate2 BERT-family encoder with its pooler (model.bin, config.json, vocabulary.json),
- `tokenizer.json` (a `tokenizers` file with [CLS] and [SEP] tokens),
- `head.npz`: `weight` (labels, hidden) and `bias` (labels,) of the classifier applied to the pooled
  [CLS] vector, and optionally `max_length` (the model's position limit; default 512).
`index.ct2bert.convert_cross_encoder` builds one, without torch, from a Hugging Face
BertForSequenceClassification directory (config.json, model.safetensors, tokenizer.json).

A pair is encoded as `[CLS] query [SEP] passage [SEP]` with token types 0…0 1…1, truncated longest-first
to `max_length`. The score is the logit for one label, or logit[1] - logit[0] (log-odds of "relevant")
for two; higher is more relevant.
"""

from __future__ import annotations

import threading
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from index import ct2bert
from store.exceptions import InputError, ModelError
from store.settings import Settings

DEFAULT_MAX_LENGTH = 512
RERANK_BATCH_SIZE = 16


class ClassifierHead:
    """The linear layer on top of the pooled [CLS] vector, read from head.npz."""

    def __init__(self, path: Path) -> None:
        try:
            with np.load(path) as data:
                self.weight = np.asarray(data["weight"], dtype=np.float32)
                self.bias = np.asarray(data["bias"], dtype=np.float32)
                self.max_length = int(data["max_length"]) if "max_length" in data else DEFAULT_MAX_LENGTH
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise ModelError(f"cannot read classifier head {path}: {exc}", path=str(path)) from None
        labels = self.bias.shape[0] if self.bias.ndim == 1 else -1
        if self.weight.ndim != 2 or self.weight.shape[0] != labels or labels not in (1, 2):
            raise ModelError(f"classifier head {path} must be (1 or 2 labels, hidden) + (labels,)")
        if self.max_length < 4:
            raise ModelError(f"classifier head {path} has max_length {self.max_length}")

    @property
    def hidden_size(self) -> int:
        return int(self.weight.shape[1])

    def scores(self, pooled: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        logits = pooled @ self.weight.T + self.bias
        relevance = logits[:, 0] if logits.shape[1] == 1 else logits[:, 1] - logits[:, 0]
        return np.asarray(relevance, dtype=np.float32)


def _pair_tokenizer(path: Path, max_length: int) -> Any:
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for a bad file
        raise ModelError(f"cannot load tokenizer {path}: {exc}", path=str(path)) from None
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    if cls_id is None or sep_id is None:
        raise ModelError(f"tokenizer {path} has no [CLS]/[SEP] tokens: not a BERT-family tokenizer")
    # Set explicitly: the pair layout must match how the cross-encoder was trained, whatever the file says.
    tokenizer.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length, strategy="longest_first")
    return tokenizer


class CrossEncoderReranker:
    """Scores (query, passage) pairs with a CTranslate2 cross-encoder; blocking, so call it off the loop."""

    def __init__(
        self,
        model_dir: Path,
        *,
        device: ct2bert.Device = "cpu",
        intra_threads: int = 0,
        batch_size: int = RERANK_BATCH_SIZE,
        compute_type: str | None = None,
    ) -> None:
        if not model_dir.is_dir():
            raise ModelError(f"reranker directory {model_dir} does not exist", path=str(model_dir))
        ct2bert.check_model_dir(model_dir, (*ct2bert.MODEL_FILES, ct2bert.HEAD_FILE))
        self.model_dir = model_dir
        self.batch_size = batch_size
        self.head = ClassifierHead(model_dir / ct2bert.HEAD_FILE)
        self._tokenizer = _pair_tokenizer(model_dir / ct2bert.TOKENIZER_FILE, self.head.max_length)
        self._encoder = ct2bert.load_encoder(model_dir, device, intra_threads, compute_type)
        self._check_shapes()

    def _check_shapes(self) -> None:
        pooled = self._pooled([self._tokenizer.encode("probe", "probe")])
        if pooled.shape[1] != self.head.hidden_size:
            raise ModelError(
                f"reranker head expects hidden size {self.head.hidden_size}, encoder gives {pooled.shape[1]}",
                path=str(self.model_dir),
            )

    def score(self, query: str, passages: Sequence[str]) -> npt.NDArray[np.float32]:
        """One relevance score per passage, in the passages' order (higher is more relevant)."""
        if not isinstance(query, str) or isinstance(passages, str):
            raise InputError("score() takes a query str and a sequence of passage strs")
        items = list(passages)
        if not all(isinstance(p, str) for p in items):
            raise InputError("every passage must be a str")
        if not items:
            return np.zeros(0, dtype=np.float32)
        encodings = self._tokenizer.encode_batch([(query, p) for p in items])
        order = sorted(range(len(items)), key=lambda i: len(encodings[i].ids))
        out = np.empty(len(items), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            out[rows] = self.head.scores(self._pooled([encodings[i] for i in rows]))
        return out

    def _pooled(self, encodings: Sequence[Any]) -> npt.NDArray[np.float32]:
        try:
            output = self._encoder.forward_batch(
                [list(e.ids) for e in encodings], token_type_ids=[list(e.type_ids) for e in encodings]
            )
        except (RuntimeError, ValueError) as exc:
            raise ModelError(f"reranking failed: {exc}", path=str(self.model_dir)) from None
        if output.pooler_output is None:
            raise ModelError(f"reranker {self.model_dir} has no pooler layer", path=str(self.model_dir))
        return ct2bert.to_numpy(output.pooler_output)


_rerankers: dict[tuple[str, str, int], CrossEncoderReranker] = {}
_rerankers_lock = threading.Lock()


def load_reranker(settings: Settings) -> CrossEncoderReranker | None:
    """The configured reranker (loaded once per process), or None when settings.rerank_model is empty."""
    if not settings.rerank_model:
        return None
    model_dir = Path(settings.rerank_model).resolve()
    device = ct2bert.resolve_device(settings.device)
    key = (str(model_dir), device, settings.embed_threads)
    with _rerankers_lock:
        if key not in _rerankers:
            _rerankers[key] = CrossEncoderReranker(
                model_dir, device=device, intra_threads=settings.embed_threads
            )
        return _rerankers[key]
