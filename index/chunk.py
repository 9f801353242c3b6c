"""Structure-aware chunking: sections in, chunks that fit the embedder's window out.

Rules (CHUNKER_VERSION names them; bump it whenever the output for the same input changes):

1. A chunk never mixes text from sections with different heading paths, with one exception: a run of
   adjacent small sibling sections (same parent path, at least two levels below the title, each at most
   half a chunk) is packed into one chunk under the parent's path, each part starting with its own
   heading line. Reference pages are full of two-line entries ("Functions > dumps", "Functions > loads") that
   alone make poor retrieval units and bloat the index.
2. A section too long for one chunk is split at paragraph boundaries; a paragraph too long, at sentence
   ends and line breaks; a sentence too long, between words; a word too long, between characters.
   Pieces are packed greedily; a paragraph that had to be cut starts a new chunk. Chunk text is always
   a verbatim slice of the section text.
3. The budget counts the contextual prefix too: `count_tokens(chunk.indexed_text()) <= max_tokens -
   reserve_tokens` for every chunk, checked exactly with the injected tokenizer. A prefix longer than
   half the budget is cut (by words) to half. Every piece of text also counts as at least one token
   per MAX_CHARS_PER_TOKEN characters, so a blob the tokenizer reads as one [UNK] cannot make a
   100 KB chunk.
4. After the first chunk of a section, the next chunk starts with the previous chunk's trailing words
   worth at most `overlap` tokens (capped at a third of the text budget, and never the whole previous
   chunk).
5. `Chunk.heading` is the heading path joined with " > ", without a leading heading that repeats the
   document title (as in the deterministic context).
6. Deterministic: the same document, settings and tokenizer give the same chunks, ids and ordinals.
   Chunk ids come from `make_chunk_id(doc_id, text, occurrence)`: the n-th repeat of an identical text
   in a document gets occurrence n, so repeats get distinct ids.

`count_tokens` must count what the embedder sees. If it leaves out special tokens the model adds
(MiniLM's [CLS]/[SEP]), pass `reserve_tokens` to keep room for them. `reserve_tokens` can also keep room
for a longer prefix (an LLM-written context) that replaces the deterministic one later: see
`replace_context`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from typing import NamedTuple

import msgspec

from index.context import heading_path
from index.types import Access, Chunk, ParsedDocument, Section, make_chunk_id
from store.exceptions import ConfigError

CHUNKER_VERSION = "structure-1"
MIN_CHUNK_TOKENS = 8  # below this budget per chunk, the settings make no sense
SMALL_SECTION_SHARE = 0.5  # siblings at most this share of the text budget may share a chunk
MAX_OVERLAP_SHARE = 1 / 3  # of the text budget
MAX_CHARS_PER_TOKEN = 10  # prose runs ~4-5; only blobs and long identifiers come near this

CountTokens = Callable[[str], int]
ContextFor = Callable[[ParsedDocument, Section], str]

_PARAGRAPH = re.compile(r"\S(?:.*?\S)?(?=[ \t]*\n[ \t]*\n|\s*\Z)", re.DOTALL)
_SENTENCE = re.compile(r"\S.*?(?:[.!?](?=\s)|(?=[ \t]*\n)|(?=\s*\Z))")  # to . ! ? or a line end
_WORD = re.compile(r"\S+")
_LEVELS = (_SENTENCE, _WORD)  # finer and finer splits of a paragraph


class _Span(NamedTuple):
    start: int
    end: int
    tokens: int
    level: int  # 0 paragraph, 1 sentence, 2 word, 3 characters
    opens: bool = False  # the first piece of a paragraph too long for one chunk: it starts a chunk


class _Tokens:
    """Token costs of pieces of text, assuming costs add up; exact checks catch where they do not."""

    def __init__(self, count_tokens: CountTokens) -> None:
        self.count = count_tokens
        self.base = count_tokens("")  # special tokens a counter adds to every text, if any

    def cost(self, text: str) -> int:
        # A floor by length: WordPiece reads any word over 100 characters (a base64 blob) as one [UNK].
        return max(self.count(text) - self.base, math.ceil(len(text) / MAX_CHARS_PER_TOKEN))


def chunk_document(
    doc: ParsedDocument,
    *,
    doc_id: str,
    access: Access,
    max_tokens: int,
    overlap: int,
    count_tokens: CountTokens,
    context_for: ContextFor,
    reserve_tokens: int = 0,
) -> list[Chunk]:
    """Chunks of a parsed document, in reading order; see the module docstring for the rules."""
    limit = max_tokens - reserve_tokens
    if limit < MIN_CHUNK_TOKENS or overlap < 0:
        raise ConfigError(f"chunk budget too small: max_tokens={max_tokens}, reserve_tokens={reserve_tokens}")
    tokens = _Tokens(count_tokens)
    chunks: list[Chunk] = []
    repeats: dict[str, int] = {}
    for section in _blocks(doc, limit, tokens, context_for):
        context = _fit_context(context_for(doc, section), limit, tokens)
        for text, n_tokens in _split(section.text, context, limit, overlap, tokens):
            occurrence = repeats.get(text, 0)
            repeats[text] = occurrence + 1
            chunks.append(
                Chunk(
                    chunk_id=make_chunk_id(doc_id, text, occurrence),
                    doc_id=doc_id,
                    ordinal=len(chunks),
                    text=text,
                    context=context,
                    title=doc.title,
                    heading=" > ".join(heading_path(doc.title, section.headings)),
                    tenant=access.tenant,
                    readers=access.readers,
                    n_tokens=n_tokens,
                )
            )
    return chunks


def replace_context(chunk: Chunk, context: str, *, max_tokens: int, count_tokens: CountTokens) -> Chunk:
    """The chunk with another prefix, cut by words where needed so the chunk still fits `max_tokens`."""
    context = " ".join(context.split())
    words = context.split(" ")
    while words:
        candidate = msgspec.structs.replace(chunk, context=" ".join(words))
        n_tokens = count_tokens(candidate.indexed_text())
        if n_tokens <= max_tokens:
            return msgspec.structs.replace(candidate, n_tokens=n_tokens)
        words = words[: max(0, min(len(words) - 1, len(words) * max_tokens // max(n_tokens, 1)))]
    return msgspec.structs.replace(chunk, context="", n_tokens=count_tokens(chunk.text))


# --------------------------------------------------------------------------- sections to blocks


def _blocks(doc: ParsedDocument, limit: int, tokens: _Tokens, context_for: ContextFor) -> Iterator[Section]:
    """The document's sections, with runs of small siblings packed together (rule 1)."""
    run: list[Section] = []
    run_tokens = 0
    budget = 0
    for section in doc.sections:
        parent = section.headings[:-1]
        if run and (parent != run[0].headings[:-1]):
            yield from _pack_run(run)
            run, run_tokens = [], 0
        if len(heading_path(doc.title, section.headings)) < 2:  # top-level sections stay apart
            yield section
            continue
        if not run:
            context = context_for(doc, Section(headings=parent, text=section.text))
            budget = limit - tokens.base - tokens.cost(_fit_context(context, limit, tokens))
        size = tokens.cost(_sibling_text(section))
        if size > budget * SMALL_SECTION_SHARE:
            yield from _pack_run(run)
            run, run_tokens = [], 0
            yield section
            continue
        if run and run_tokens + size > budget:
            yield from _pack_run(run)
            run, run_tokens = [], 0
        run.append(section)
        run_tokens += size
    yield from _pack_run(run)


def _sibling_text(section: Section) -> str:
    return f"{section.headings[-1]}\n{section.text}"


def _pack_run(run: list[Section]) -> Iterator[Section]:
    if len(run) == 1:
        yield run[0]
    elif run:
        yield Section(headings=run[0].headings[:-1], text="\n\n".join(_sibling_text(s) for s in run))


# --------------------------------------------------------------------------- one block to chunks


def _fit_context(context: str, limit: int, tokens: _Tokens) -> str:
    """The prefix, cut by words to at most half the budget."""
    context = " ".join(context.split())
    allowed = limit // 2
    if tokens.cost(context) <= allowed:
        return context
    words = context.split(" ")
    low, high = 0, len(words)  # the longest prefix of words that fits: binary search
    while low < high:
        middle = (low + high + 1) // 2
        if tokens.cost(" ".join(words[:middle])) <= allowed:
            low = middle
        else:
            high = middle - 1
    return " ".join(words[:low])


def _indexed(context: str, text: str) -> str:
    return f"{context}\n\n{text}" if context else text  # as Chunk.indexed_text()


def _split(text: str, context: str, limit: int, overlap: int, tokens: _Tokens) -> list[tuple[str, int]]:
    """Verbatim slices of `text`, each with its exact token count including the prefix."""
    budget = limit - tokens.base - tokens.cost(context)  # tokens left for the chunk's own text
    overlap = min(overlap, int(budget * MAX_OVERLAP_SHARE))
    units = list(_units(text, budget - overlap, tokens))
    pieces: list[tuple[str, int]] = []
    i = 0
    carry: _Span | None = None  # the previous chunk's tail, repeated at the start of the next
    while i < len(units):
        start = carry.start if carry else units[i].start
        used = carry.tokens if carry else 0
        j = i + 1
        used += units[i].tokens
        while j < len(units) and used + units[j].tokens <= budget and not units[j].opens:
            used += units[j].tokens
            j += 1
        n_tokens = tokens.count(_indexed(context, text[start : units[j - 1].end]))
        while n_tokens > limit:  # the costs did not add up: give back units, then the carry
            if j - 1 > i:
                j -= 1
            elif carry:
                carry, start = None, units[i].start
            elif units[i].end - units[i].start > 1:
                units[i : i + 1] = _finer(text, units[i], max(1, units[i].tokens // 2), tokens)
                j = i + 1
            else:
                break  # a single character over budget: nothing smaller exists
            n_tokens = tokens.count(_indexed(context, text[start : units[j - 1].end]))
        pieces.append((text[start : units[j - 1].end], n_tokens))
        carry = _tail(text, units[i].start, units[j - 1].end, overlap, tokens)
        i = j
    return pieces


def _units(text: str, budget: int, tokens: _Tokens) -> Iterator[_Span]:
    """Paragraphs, split finer where one is over `budget`; a split paragraph's first piece `opens`."""
    for match in _PARAGRAPH.finditer(text):
        span = _Span(match.start(), match.end(), tokens.cost(match.group()), 0)
        pieces = list(_fit(text, span, max(budget, 1), tokens))
        if len(pieces) > 1:
            pieces[0] = pieces[0]._replace(opens=True)
        yield from pieces


def _fit(text: str, span: _Span, budget: int, tokens: _Tokens) -> Iterator[_Span]:
    if span.tokens <= budget or span.end - span.start <= 1:
        yield span
        return
    for part in _finer(text, span, budget, tokens):
        yield from _fit(text, part, budget, tokens)


def _finer(text: str, span: _Span, budget: int, tokens: _Tokens) -> list[_Span]:
    """The span cut one level finer; a span that does not split at its level goes down another."""
    level = span.level
    while level < len(_LEVELS):
        matches = list(_LEVELS[level].finditer(text, span.start, span.end))
        if len(matches) > 1:
            return [_Span(m.start(), m.end(), tokens.cost(m.group()), level + 1) for m in matches]
        level += 1
    return _characters(text, span, budget, tokens)


def _characters(text: str, span: _Span, budget: int, tokens: _Tokens) -> list[_Span]:
    """A word cut between characters into pieces of at most `budget` tokens (always two or more)."""
    longest = max(1, min(budget * MAX_CHARS_PER_TOKEN, span.end - span.start - 1))
    guess = longest
    pieces: list[_Span] = []
    start = span.start
    while start < span.end:
        length = min(guess, span.end - start)
        cost = tokens.cost(text[start : start + length])
        while cost > budget and length > 1:  # shrink in proportion to the excess, then check again
            length = max(1, min(length - 1, length * budget // cost))
            cost = tokens.cost(text[start : start + length])
        pieces.append(_Span(start, start + length, cost, len(_LEVELS) + 1))
        start += length
        guess = max(1, min(longest, length * budget // max(cost, 1)))  # the next piece reads alike
    return pieces


def _tail(text: str, start: int, end: int, overlap: int, tokens: _Tokens) -> _Span | None:
    """The last words of text[start:end] worth at most `overlap` tokens, never all of it."""
    if overlap <= 0:
        return None
    words = list(_WORD.finditer(text, start, end))
    low, high = 0, min(len(words) - 1, overlap)  # how many trailing words: binary search on their cost
    while low < high:
        middle = (low + high + 1) // 2
        if tokens.cost(text[words[-middle].start() : end]) <= overlap:
            low = middle
        else:
            high = middle - 1
    if low == 0:
        return None
    first = words[-low].start()
    return _Span(first, end, tokens.cost(text[first:end]), 0)
