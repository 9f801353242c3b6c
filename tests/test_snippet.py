"""A citation's snippet is normalised from a prefix of the chunk: the same text as from the whole chunk."""

from __future__ import annotations

import random

from actors.sources import SNIPPET_CHARS, snippet


def by_the_letter(text: str) -> str:
    return " ".join(text.split())[:SNIPPET_CHARS]


def test_snippet_is_the_whole_texts_normalised_prefix() -> None:
    rng = random.Random(7)
    pieces = ["word", "x", " ", "  ", "\n", "\t\t", "\u2003", "longerwordthanmost", "é"]
    texts = ["", " ", "short", "   padded   ", "a" * 1000, " " * 600 + "late words here", "w " * 300]
    texts += ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 400))) for _ in range(2000)]
    for text in texts:
        assert snippet(text) == by_the_letter(text), repr(text)
