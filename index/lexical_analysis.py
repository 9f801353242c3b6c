"""Whoosh's analysis of a batch of texts, done with a dict and numpy: each field's sorted postings.

The index's analyser is a RegexTokenizer, LowercaseFilter, StopFilter and StemFilter chain (`FastAnalysis`
checks it and takes its pattern, stop list, sizes and stemmer); each text is split by the same regular
expression, and each distinct surface token is lower-cased, stopped and stemmed once (a dict from surface
token to term number), so a token costs a dict lookup. The result is a `FieldPostings` per field:
(term, docnum, frequency) triples sorted with numpy, and each document's length byte, as Whoosh's writer
would record them (index.lexical_codec writes them; index.lexical_segment assembles a segment).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import numpy.typing as npt
from whoosh.analysis import CompositeAnalyzer, LowercaseFilter, RegexTokenizer, StemFilter, StopFilter
from whoosh.util.numeric import _length_byte_cache

from index.lexical_codec import FieldPostings

LENGTH_LIMIT = 106374  # whoosh.util.numeric.length_to_byte: this length and above is byte 255
SURFACE_CACHE_SIZE = 1 << 20  # surface tokens remembered with their term
SENTINEL = "docentendoftext"  # + a number, so that no text contains it
ANALYSIS_CHUNK_DOCS = 2048  # texts tokenised at once (bounds the token strings held)
# Whoosh's default word pattern has a capturing group (findall would return it). The same words: its group's
# optional dot can only be empty after a maximal run of word characters, so each repeat is a dot and a run.
WHOOSH_WORDS = r"\w+(\.?\w+)*"
WORDS = r"\w+(?:\.\w+)*"


def length_bytes(lengths: npt.NDArray[np.integer]) -> npt.NDArray[np.uint8]:
    """whoosh.util.numeric.length_to_byte over an array."""
    cache = np.frombuffer(_length_byte_cache, dtype=np.int32)
    codes = np.searchsorted(cache, lengths, side="left")
    return np.where(lengths >= LENGTH_LIMIT, 255, codes).astype(np.uint8)


def length_codes(lengths: npt.NDArray[np.int64]) -> npt.NDArray[np.uint8]:
    """The length byte Whoosh stores for each document (0: no tokens, no length stored)."""
    codes = length_bytes(lengths)
    codes[lengths == 0] = 0
    return codes


STOPPED = -1  # the term number of a stop word (or a token outside the stop filter's sizes)
ENDED = -2  # the term number of the sentinel that ends each text when texts are tokenised together


class FastAnalysis(dict[str, int]):
    """Whoosh's StemmingAnalyzer chain with each distinct surface token analysed once: the mapping from
    surface token to term number (into `terms`; STOPPED for a stop word), kept across batches (up to
    SURFACE_CACHE_SIZE tokens). `terms_of(text)` equals `[t.text for t in analyzer(text)]`."""

    def __init__(self, analyzer: CompositeAnalyzer) -> None:
        super().__init__()
        tokenizer, _lower, stop, stem = analyzer.items
        self.pattern = re.compile(WORDS, tokenizer.expression.flags)
        self.stops = stop.stops
        self.min, self.max = stop.min, stop.max
        self.ignore = stem.ignore
        self.stem: Callable[[str], str] = stem.stemfn
        self.terms: list[str] = []
        self.numbers: dict[str, int] = {}  # term -> its number in `terms`

    @staticmethod
    def supports(analyzer: object) -> bool:
        if not isinstance(analyzer, CompositeAnalyzer) or len(analyzer.items) != 4:
            return False
        tokenizer, lower, stop, stem = analyzer.items
        return (
            type(tokenizer) is RegexTokenizer
            and not tokenizer.gaps
            and tokenizer.expression.pattern == WHOOSH_WORDS
            and type(lower) is LowercaseFilter
            and type(stop) is StopFilter
            and type(stem) is StemFilter
            and not stem.lang
        )

    def __missing__(self, token: str) -> int:
        term = self.term_of(token)
        number = STOPPED
        if term is not None:
            number = self.numbers.setdefault(term, len(self.terms))
            if number == len(self.terms):
                self.terms.append(term)
        self[token] = number
        return number

    def term_of(self, token: str) -> str | None:
        """LowercaseFilter, StopFilter, StemFilter on one token."""
        lowered = token.lower()
        size = len(lowered)
        if size < self.min or (self.max is not None and size > self.max) or lowered in self.stops:
            return None
        return lowered if lowered in self.ignore else self.stem(lowered)

    def terms_of(self, text: str) -> list[str]:
        return [self.terms[n] for n in map(self.__getitem__, self.tokens(text)) if n >= 0]

    def tokens(self, text: str) -> list[str]:
        return self.pattern.findall(text)

    def start_batch(self, sentinel: str) -> None:
        if len(self) >= SURFACE_CACHE_SIZE:
            self.clear()
            self.terms.clear()
            self.numbers.clear()
        self[sentinel] = ENDED

    def end_batch(self, sentinel: str) -> None:
        self.pop(sentinel, None)


def _ranked(vocabulary: Sequence[str]) -> tuple[list[bytes], npt.NDArray[np.int64]]:
    """The vocabulary's UTF-8 terms in byte order, and each term number's rank in it."""
    encoded = [term.encode("utf-8") for term in vocabulary]
    order = sorted(range(len(encoded)), key=encoded.__getitem__)
    rank = np.empty(len(encoded), dtype=np.int64)
    rank[order] = np.arange(len(encoded))
    return [encoded[i] for i in order], rank


def _postings(
    name: str, vocabulary: Sequence[str], term_ids: npt.NDArray[np.int64], docs: npt.NDArray[np.int64],
    doc_count: int, *, frequencies: bool, length_codes: npt.NDArray[np.uint8] | None = None,
) -> FieldPostings:  # fmt: skip
    """(term, doc) occurrences (repeats allowed) into sorted postings with their frequencies."""
    terms, rank = _ranked(vocabulary)
    pairs, freqs = np.unique(rank[term_ids] * doc_count + docs, return_counts=True)
    term_of = pairs // doc_count
    starts = np.searchsorted(term_of, np.arange(len(terms) + 1), side="left").astype(np.int64)
    return FieldPostings(
        name=name, terms=terms, starts=starts, docs=pairs % doc_count,
        freqs=freqs.astype(np.int64) if frequencies else None, length_codes=length_codes,
    )  # fmt: skip


def _sentinel(texts: Sequence[str]) -> str:
    """A word that occurs in none of the texts (it ends each text when they are tokenised together)."""
    joined = "\n".join(texts)
    n = 0
    while f"{SENTINEL}{n}" in joined:
        n += 1
    return f"{SENTINEL}{n}"


def text_postings(
    name: str, texts: Sequence[str], analysis: FastAnalysis
) -> tuple[FieldPostings, npt.NDArray[np.int64]]:
    """A scorable Frequency field's postings and each document's length (tokens after stop words).

    The texts are tokenised together (one regular-expression call per ANALYSIS_CHUNK_DOCS texts, 2-3x
    faster than a call per text), each followed by a sentinel word on a line of its own: no token spans
    a line break, so each text's tokens are exactly its own, and the sentinels mark where texts end."""
    sentinel = _sentinel(texts)
    separator = f"\n{sentinel}\n"
    ids: list[npt.NDArray[np.int64]] = []
    analysis.start_batch(sentinel)
    try:
        for lo in range(0, len(texts), ANALYSIS_CHUNK_DOCS):
            tokens = analysis.tokens(separator.join(texts[lo : lo + ANALYSIS_CHUNK_DOCS]) + separator)
            ids.append(np.fromiter(map(analysis.__getitem__, tokens), dtype=np.int64, count=len(tokens)))
    finally:
        analysis.end_batch(sentinel)
    numbers = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
    ends = numbers == ENDED
    docs = np.cumsum(ends) - ends  # texts ended before each token
    kept = numbers >= 0
    used, term_ids = np.unique(numbers[kept], return_inverse=True)
    docs = docs[kept]
    lengths = np.bincount(docs, minlength=len(texts)).astype(np.int64)
    codes = length_codes(lengths)
    vocabulary = [analysis.terms[n] for n in used.tolist()]
    postings = _postings(name, vocabulary, term_ids, docs, len(texts), frequencies=True, length_codes=codes)
    return postings, lengths


def id_postings(name: str, values: Sequence[str]) -> FieldPostings:
    """An ID field (the whole value is the one term, Existence format)."""
    vocabulary = {value: n for n, value in enumerate(dict.fromkeys(values))}
    ids = np.fromiter(map(vocabulary.__getitem__, values), dtype=np.int64, count=len(values))
    docs = np.arange(len(values), dtype=np.int64)
    return _postings(name, list(vocabulary), ids, docs, len(values), frequencies=False)


def analysed_postings(
    name: str, values: Sequence[str], analyse: Callable[[str], Iterable[str]]
) -> FieldPostings:
    """A non-scorable Frequency field (KEYWORD) through its own analyser, once per distinct value."""
    vocabulary: dict[str, int] = {}
    per_value: dict[str, list[int]] = {}
    term_ids: list[int] = []
    docs: list[int] = []
    for n, value in enumerate(values):
        found = per_value.get(value)
        if found is None:
            found = per_value[value] = [vocabulary.setdefault(t, len(vocabulary)) for t in analyse(value)]
        term_ids.extend(found)
        docs.extend([n] * len(found))
    return _postings(
        name, list(vocabulary), np.asarray(term_ids, dtype=np.int64), np.asarray(docs, dtype=np.int64),
        len(values), frequencies=True,
    )  # fmt: skip
