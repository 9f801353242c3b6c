"""A deterministic extractive summary: the document's own most representative sentences, in its order.

Used when the configured model does not write text (`none`) or writes it badly (the local 135M model), and
labelled as such wherever it is shown. Sentence score: the mean document frequency of its content words
(words of three letters or more, stopwords dropped); the top `n` are kept, in document order.
"""

from __future__ import annotations

import re
from collections import Counter

from actors.tools.compare import STOPWORDS, split_sentences, trim

WORD = re.compile(r"[a-z]{3,}")
MIN_CHARS, MAX_CHARS = 40, 400
EXTRA_STOPWORDS = frozenset(
    {"this", "that", "shall", "such", "not", "you", "your", "has", "have", "been", "was", "were"}
    | {"will", "may", "can", "all", "but", "its", "their", "these"}
)


def content_words(sentence: str) -> list[str]:
    return [w for w in WORD.findall(sentence.lower()) if w not in STOPWORDS and w not in EXTRA_STOPWORDS]


def candidates(text: str) -> list[str]:
    """Sentences that read as prose: not too short, not a shouted heading."""
    return [s for s in split_sentences(text) if len(s) >= MIN_CHARS and not s.isupper()]


def extractive_summary(text: str, n: int) -> list[str]:
    sentences = candidates(text)
    counts = Counter(w for s in sentences for w in set(content_words(s)))

    def score(sentence: str) -> float:
        words = content_words(sentence)
        return sum(counts[w] for w in words) / (len(words) + 2) if words else 0.0

    ranked = sorted(range(len(sentences)), key=lambda i: (-score(sentences[i]), i))[:n]
    return [trim(sentences[i], MAX_CHARS) for i in sorted(ranked)]
