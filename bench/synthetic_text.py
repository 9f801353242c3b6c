"""Copies of real chunks whose text varies like a larger corpus's, for the 1M-chunk benches.

The first benches made copy n of a source chunk by dropping every 9th word (offset by n): only 9 distinct
texts per source chunk, the vocabulary frozen at the source's, every posting list a multiple of the
source's. At 1M chunks (~68 copies of each of the ~14.7K source chunks) that is not a corpus a BM25 index
ever sees. `Resampler` keeps a source chunk's length and word order, and replaces each word with
probability REPLACE_FRACTION by a word drawn from the source corpus's own unigram distribution (so document
frequencies stay Zipfian and each copy shares only ~2/3 of its words with its source), and with probability
NEW_WORD_FRACTION by a new word (a source word with a copy-dependent suffix), so the vocabulary grows with
the corpus as real ones do (Heaps' law) instead of staying fixed. Deterministic per (chunk, copy).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np

REPLACE_FRACTION = 0.3
NEW_WORD_FRACTION = 0.01
NEW_WORD_VARIANTS = 97  # suffixes a new word may take (with the copy number): bounds the vocabulary's growth


class Resampler:
    def __init__(self, texts: Iterable[str], seed: int = 7) -> None:
        counts = Counter(word for text in texts for word in text.split())
        self.words = np.array(list(counts), dtype=object)
        frequencies = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
        self.cumulative = np.cumsum(frequencies / frequencies.sum())
        self.seed = seed

    def _draw(self, rng: np.random.Generator, n: int) -> list[str]:
        at = np.minimum(np.searchsorted(self.cumulative, rng.random(n)), len(self.words) - 1)
        return list(self.words[at])

    def vary(self, text: str, row: int, copy: int) -> str:
        """Copy `copy` (0: the text itself) of the source text, for corpus row `row`."""
        if copy == 0:
            return text
        words = text.split()
        if not words:
            return text
        rng = np.random.default_rng((self.seed, row))
        roll = rng.random(len(words))
        replaced = np.flatnonzero(roll < REPLACE_FRACTION)
        for at, word in zip(replaced.tolist(), self._draw(rng, len(replaced)), strict=True):
            words[at] = word
        for at in np.flatnonzero(roll > 1.0 - NEW_WORD_FRACTION).tolist():
            words[at] = f"{words[at]}{(copy * 31 + at) % NEW_WORD_VARIANTS}"
        return " ".join(words)
