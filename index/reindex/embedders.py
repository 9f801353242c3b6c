"""Embedder choice for a version: the registered embedder whose identity is a manifest's model, and the
precomputing wrapper a build embeds through (the slow embedding runs outside the commit guard).

Worker side: loads numpy and index.embed (CTranslate2).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from index.embed import Purpose, load_embedder
from index.types import EMBEDDER_NAMES, Embedder, Manifest, ModelIdentity
from store.exceptions import DocentError, IndexError_
from store.settings import Settings


def embedder_for(
    settings: Settings, manifest: Manifest, name: str = "", *, purpose: Purpose
) -> tuple[str, Embedder]:
    """(name, embedder) whose identity is the manifest's model; `name` is tried first."""
    for candidate in dict.fromkeys([n for n in (name, settings.embed_model) if n] + list(EMBEDDER_NAMES)):
        try:
            embedder = load_embedder(settings, candidate, purpose=purpose)
        except DocentError:
            continue
        if embedder.identity == manifest.model:
            return candidate, embedder
    raise IndexError_(
        f"no registered embedder matches version {manifest.version} ({manifest.model.name})",
        version=manifest.version,
    )


def named_embedder(settings: Settings, manifest: Manifest, name: str) -> Embedder:
    """The offline embedder registered as `name`, else (no name) the one matching the manifest."""
    if name:
        return load_embedder(settings, name, purpose="offline")
    return embedder_for(settings, manifest, purpose="offline")[1]


class PrecomputedEmbedder:
    """An embedder that answers from vectors computed ahead (outside the commit guard), else its base."""

    def __init__(self, base: Embedder) -> None:
        self.base = base
        self.vectors: dict[str, npt.NDArray[np.float32]] = {}

    @property
    def identity(self) -> ModelIdentity:
        return self.base.identity

    def count_tokens(self, text: str) -> int:
        return self.base.count_tokens(text)

    def put(self, texts: Sequence[str], matrix: npt.NDArray[np.float32]) -> None:
        self.vectors.update(zip(texts, np.asarray(matrix, dtype=np.float32), strict=True))

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        items = list(texts)
        missing = [t for t in dict.fromkeys(items) if t not in self.vectors]
        if missing:
            self.put(missing, self.base.embed(missing))
        if not items:
            return np.zeros((0, self.identity.dimension), dtype=np.float32)
        return np.stack([self.vectors[t] for t in items])
