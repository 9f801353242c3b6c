"""Post-hoc citation attribution: every claim of an answer to the passage(s) that support it, as it streams.

A weak model (the embedded SmolLM2) rarely writes `[n]`; this adds the markers after the fact, for any
model. (The embedded model's Q&A answers are extractive by default, `actors/extractive.py`: their sentences
cite their own passages, and this scores only the model's own answers, e.g. the extractive fallback.)
Each sentence of the answer that makes a claim (at least MIN_CLAIM_WORDS content words, not a
lead-in ending in ':') and carries no citation of its own is scored against every passage the model was
given, by a logistic regression over FEATURES of the (claim, passage) pair:

- `dense`: the cosine, under the query embedder, between the sentence and the passage's best-matching
  window of sentences; `margin`: how far it is above the best other passage's;
- `lexical`, `matched`, `missing`: the share, the number present and the number absent of the sentence's
  novel content words (lower-cased, crudely stemmed, stop words and the question's own words dropped);
- `bigrams`: the share of its pairs of consecutive content words ("sort function") the passage has.

A passage that lacks an identifier or a number the sentence names (`shlex.split`, `token_urlsafe()`,
`5.004`) cannot support it, nor can any passage a circular sentence ("a hash assignment is a hash
assignment ..."), nor the answer's cut-off last sentence. The sentence gets `[n]` for its most probable
passage when the probability reaches THRESHOLD; a claim no passage reaches is *unsupported* (`TextSpan`s
of the final text).

While the answer streams, `Streaming` attributes each sentence once it is finished (`SentenceAttributed`
on the live stream); the answer's `Scorer` embeds the passages once and keeps every decision, so the
finished answer carries the same markers.

WEIGHTS, BIAS and THRESHOLD are fitted on half of a hand-judged set of SmolLM2 answers
(`python -m bench.attribution --fit`; judgments in `bench/attribution_labels.json`): 454 claims of 139
answers, of which only 82 (18%) any passage supports. No threshold reaches 90% precision on the tuning
half, so the one with the best precision there over at least five attributions is kept: 73% of the 15
claims it attributes are right (83% of 6 held out), and 84% of the claims it marks unsupported are indeed
supported by no passage. Similarity cannot tell a wrong sentence on the passage's topic from a right one.

The inserted markers go through `actors.plan.validate_citations` exactly like model-written ones, so a
marker can only name a passage the model was given and the user may read.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence

import msgspec
import numpy as np
import numpy.typing as npt

from actors.plan import CITATION, validate_citations
from store.events import AnswerCompleted, Citation, SentenceAttributed, TextSpan
from store.exceptions import DocentError
from store.settings import Settings

log = logging.getLogger(__name__)

Matrix = npt.NDArray[np.float32]
Embed = Callable[[Sequence[str]], Awaitable[Matrix]]

# The model: a logistic regression over each (claim, passage) pair's FEATURES, fitted on the tuning half
# of the judged answers (`python -m bench.attribution --fit` prints these); THRESHOLD is a probability.
FEATURES = ("dense", "lexical", "matched", "missing", "bigrams", "margin")
WEIGHTS = (3.241, 1.202, 0.004, -0.222, 0.85, 1.117)
BIAS = -4.189
THRESHOLD = 0.44
WORDS_CAP = 6  # "matched" / "missing": the claim's novel words the passage has / lacks, capped, over it
MIN_CLAIM_WORDS = 3
WINDOW_WORDS = 40  # passage sentences are grouped into windows of about this many words
NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?")
QUOTED = re.compile(r"`([^`]{1,80})`")
IDENTIFIER = re.compile(
    r"\b[A-Za-z_]\w*(?:(?:\.|::)[A-Za-z_]\w*)+(?:\(\))?"  # dotted: os.path.join, File::Spec
    r"|\b[A-Za-z]+_\w+\b"  # snake_case: token_urlsafe
    r"|\b[A-Za-z_]\w*\(\)"  # called: split()
)
BOUNDARY = re.compile(r"(?<=[.!?])\s+(?=\S)")
FENCE = re.compile(r"^\s*```")
WORD = re.compile(r"[a-z0-9]+")
TRAILING = ".!?:;,"
SUFFIXES = ("ing", "ed", "es", "s")
STOPWORD_TEXT = """
a an and are as at be been but by can could do does for from has have how if in into is it its may might not
of on one or should so such than that the their them then there these they this those to use used using was
were what when where which while who will with would you your also any each other some more most only own
same very just about above after again all am because before being below between both did doing down during
few further here him his her our out over under until up we
"""
STOPWORDS = frozenset(STOPWORD_TEXT.split())


class Attribution(msgspec.Struct, frozen=True, kw_only=True):
    text: str
    unsupported: tuple[TextSpan, ...] = ()


def enabled(settings: Settings) -> bool:
    """`auto` (the default): on for the local model, which rarely cites on its own."""
    mode = settings.attribution
    return mode == "on" or (mode == "auto" and settings.llm_backend == "local")


# ---- sentences and words ---------------------------------------------------------------------------------


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Spans of the sentences of `text`, line by line; lines inside ``` fences are skipped."""
    spans: list[tuple[int, int]] = []
    offset, fenced = 0, False
    for line in text.splitlines(keepends=True):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            spans += _line_sentences(line, offset)
        offset += len(line)
    return spans


def _line_sentences(line: str, offset: int) -> list[tuple[int, int]]:
    cuts = [0, *(m.end() for m in BOUNDARY.finditer(line))]
    ends = [m.start() for m in BOUNDARY.finditer(line)] + [len(line.rstrip())]
    spans = []
    for start, end in zip(cuts, ends, strict=True):
        start += len(line[start:end]) - len(line[start:end].lstrip())
        if end > start:
            spans.append((offset + start, offset + end))
    return spans


def stem(word: str) -> str:
    for suffix in SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)]
    return word


def word_sequence(text: str) -> list[str]:
    """The text's content words in order, stemmed."""
    return [stem(w) for w in WORD.findall(text.lower()) if len(w) > 2 and w not in STOPWORDS]


def content_words(text: str) -> set[str]:
    return set(word_sequence(text))


def bigrams(text: str) -> set[tuple[str, str]]:
    """Pairs of consecutive content words: "sort function", "static keyword"."""
    words = word_sequence(text)
    return set(itertools.pairwise(words))


def windows(passage: str) -> list[str]:
    """The passage as windows of consecutive sentences of about WINDOW_WORDS words (at least one)."""
    out: list[str] = []
    current: list[str] = []
    for start, end in split_sentences(passage):
        current.append(passage[start:end])
        if sum(len(s.split()) for s in current) >= WINDOW_WORDS:
            out.append(" ".join(current))
            current = []
    if current or not out:
        out.append(" ".join(current) or " ".join(passage.split()))
    return out


# ---- scoring ---------------------------------------------------------------------------------------------


def lexical(claim: set[str], passage: set[str]) -> float:
    return len(claim & passage) / len(claim) if claim else 0.0


def probability(features: Matrix, weights: Sequence[float] = WEIGHTS, bias: float = BIAS) -> Matrix:
    """(..., FEATURES) -> the model's probability that the passage supports the claim."""
    z = features @ np.asarray(weights, dtype=np.float32) + np.float32(bias)
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def margins(dense: Matrix) -> Matrix:
    """claims x passages: how far each passage's cosine is above the best other passage's."""
    if dense.shape[1] < 2:
        return dense.copy()
    top2 = np.sort(dense, axis=1)[:, -2:]
    best, second = top2[:, 1:2], top2[:, 0:1]
    return np.where(dense >= best, dense - second, dense - best).astype(np.float32)


def window_groups(passages: Sequence[str]) -> tuple[list[str], list[int]]:
    """Every passage's windows in one list, and how many windows each passage has."""
    units = [windows(p) for p in passages]
    return [u for group in units for u in group], [len(group) for group in units]


def best_per_passage(cos: Matrix, sizes: Sequence[int]) -> Matrix:
    """claims x windows cosines -> claims x passages: each passage's best-matching window."""
    scores = np.zeros((cos.shape[0], len(sizes)), dtype=np.float32)
    at = 0
    for j, size in enumerate(sizes):
        scores[:, j] = cos[:, at : at + size].max(axis=1)
        at += size
    return scores


def chosen(row: Sequence[float], numbers: Sequence[int], threshold: float = THRESHOLD) -> list[int]:
    """The passage a claim is attributed to (its most probable one), or none below `threshold`."""
    best = max(range(len(row)), key=lambda j: row[j])
    return [numbers[best]] if row[best] >= threshold else []


# ---- the answer ------------------------------------------------------------------------------------------


def claims_of(text: str) -> list[tuple[int, int]]:
    """Sentences that make a claim and cite nothing themselves (a lead-in ending in ':' claims nothing)."""
    return [
        (s, e) for s, e in split_sentences(text)
        if not CITATION.search(text[s:e]) and not text[s:e].endswith(":")
        and len(content_words(text[s:e])) >= MIN_CLAIM_WORDS
    ]  # fmt: skip


def circular(claim: str) -> bool:
    """A sentence that keeps restating its own words ("a hash assignment is a hash assignment that creates
    a hash key") says nothing a passage could support: more than one of its content words recurs."""
    words = [stem(w) for w in WORD.findall(claim.lower()) if len(w) > 2 and w not in STOPWORDS]
    return sum(1 for w in set(words) if words.count(w) > 1) > 1


def novel_words(claim: str, question: str) -> set[str]:
    """The claim's content words the question did not already bring (all of them, if it brought every one)."""
    words = content_words(claim)
    return (words - content_words(question)) or words


def identifiers(text: str) -> set[str]:
    """Code the claim names (`quoted`, dotted, called or snake_case tokens), lower-cased, without `()`."""
    quoted = {q.strip().lower().removesuffix("()") for q in QUOTED.findall(text)}
    tokens = {t.lower().removesuffix("()") for t in IDENTIFIER.findall(text)}
    return {i for i in quoted | tokens if len(i) > 3}


def names_found(claim: str, passage: str) -> bool:
    """A passage cannot support a claim that names code, or a number, it does not contain."""
    lowered = passage.lower()
    if not all(n in passage for n in NUMBER.findall(claim)):
        return False
    return all(re.split(r"\.|::", i)[-1] in lowered for i in identifiers(claim))


def cut_off(text: str, span: tuple[int, int]) -> bool:
    """The answer's last sentence, left without its closing punctuation (the model ran out of tokens): a
    claim no reader could check, never attributed."""
    return not text[span[1] :].strip() and text[span[1] - 1] not in ".!?)`*"


def gates(claims: Sequence[str], passages: Sequence[str]) -> npt.NDArray[np.bool_]:
    """claims x passages: False where the passage lacks an identifier the claim names, or the claim is
    circular."""
    return np.array(
        [[names_found(c, p) and not circular(c) for p in passages] for c in claims], dtype=bool
    ).reshape(len(claims), len(passages))


def lexical_scores(claims: Sequence[str], passages: Sequence[str], question: str) -> Matrix:
    """claims x passages x 4: the share of each claim's novel words the passage has, how many it has and how
    many it lacks (each count capped at WORDS_CAP, over it), and the share of its bigrams the passage has."""
    words = [content_words(p) for p in passages]
    pairs = [bigrams(p) for p in passages]
    novel = [novel_words(c, question) for c in claims]
    claim_pairs = [bigrams(c) for c in claims]
    rows = [
        [
            (lexical(n, w), _capped(len(n & w)), _capped(len(n - w)), _share(cp, pp))
            for w, pp in zip(words, pairs, strict=True)
        ]
        for n, cp in zip(novel, claim_pairs, strict=True)
    ]
    return np.array(rows, dtype=np.float32).reshape(len(claims), len(passages), 4)


def _share(claim: set[tuple[str, str]], passage: set[tuple[str, str]]) -> float:
    return len(claim & passage) / len(claim) if claim else 0.0


def _capped(count: int) -> float:
    return min(count, WORDS_CAP) / WORDS_CAP


class Scorer:
    """One answer's passages, embedded once: the scores of any of its claims, and each claim's pick cached,
    so a sentence attributed while the answer streams keeps its markers in the finished answer."""

    def __init__(self, passages: Mapping[int, str], embed: Embed, question: str = "") -> None:
        self.numbers = list(passages)
        self.texts = [passages[n] for n in self.numbers]
        self.embed = embed
        self.question = question
        self._windows: tuple[Matrix, list[int]] | None = None
        self._picks: dict[str, list[int]] = {}

    async def windows(self) -> tuple[Matrix, list[int]]:
        if self._windows is None:
            flat, sizes = window_groups(self.texts)
            self._windows = (await self.embed(flat), sizes)
        return self._windows

    async def features(self, claims: Sequence[str]) -> tuple[Matrix, npt.NDArray[np.bool_]]:
        """claims x passages x FEATURES, and where the gates are open (a closed one: never attributed)."""
        vectors, sizes = await self.windows()
        dense = best_per_passage(await self.embed(list(claims)) @ vectors.T, sizes)
        lex = lexical_scores(claims, self.texts, self.question)
        features = np.concatenate([dense[..., None], lex, margins(dense)[..., None]], axis=-1)
        return features, gates(claims, self.texts)

    async def probabilities(self, claims: Sequence[str]) -> Matrix:
        """claims x passages: the model's probability that the passage supports the claim."""
        features, open_ = await self.features(claims)
        return np.where(open_, probability(features), 0.0).astype(np.float32)

    async def picks(self, claims: Sequence[str]) -> list[list[int]]:
        """The passage numbers each claim is attributed to (scored once per distinct claim)."""
        todo = [c for c in dict.fromkeys(claims) if c not in self._picks]
        if todo:
            for claim, row in zip(todo, await self.probabilities(todo), strict=True):
                self._picks[claim] = chosen([float(p) for p in row], self.numbers)
        return [self._picks[c] for c in claims]


def marker_at(text: str, start: int, end: int) -> int:
    """Where a sentence's marker goes: before its closing punctuation."""
    while end > start and text[end - 1] in TRAILING:
        end -= 1
    return end


def rewrite(text: str, spans: Sequence[tuple[int, int]], picks: Sequence[list[int]]) -> Attribution:
    """`text` with the markers inserted, and the spans (in the new text) of the claims left without one."""
    pieces: list[str] = []
    unsupported: list[TextSpan] = []
    at = shift = 0
    for (start, end), numbers in zip(spans, picks, strict=True):
        if not numbers:
            unsupported.append(TextSpan(start=start + shift, end=end + shift))
            continue
        cut = marker_at(text, start, end)
        marker = " " + "".join(f"[{n}]" for n in numbers)
        pieces += [text[at:cut], marker]
        at, shift = cut, shift + len(marker)
    pieces.append(text[at:])
    return Attribution(text="".join(pieces), unsupported=tuple(unsupported))


async def attribute(text: str, passages: Mapping[int, str], embed: Embed, question: str = "") -> Attribution:
    return await attribute_with(Scorer(passages, embed, question), text)


async def attribute_with(scorer: Scorer, text: str) -> Attribution:
    spans = claims_of(text)
    if not spans or not scorer.numbers:
        return Attribution(text=text)
    whole = [sp for sp in spans if not cut_off(text, sp)]
    picked = dict(zip(whole, await scorer.picks([text[s:e] for s, e in whole]), strict=True))
    return rewrite(text, spans, [picked.get(sp, []) for sp in spans])


# ---- while the answer streams ----------------------------------------------------------------------------


def finished(text: str, span: tuple[int, int]) -> bool:
    """A sentence of a growing text is finished once something follows it: the next sentence, or its line's
    end."""
    return bool(text[span[1] :].strip()) or "\n" in text[span[1] :]


class Streaming:
    """Attribution of an answer while it streams: each claim once, as soon as its sentence is finished.

    `stamp` fills in what the caller knows (step, turn, time). A failing embedder stops it quietly: the
    finished answer is attributed (or not) on its own."""

    def __init__(self, scorer: Scorer, stamp: Callable[[SentenceAttributed], SentenceAttributed]) -> None:
        self.scorer = scorer
        self.stamp = stamp
        self.text = ""
        self._done_to = 0  # offset past the last claim reported
        self._failed = False

    async def feed(self, piece: str) -> list[SentenceAttributed]:
        """The claims `piece` finished, attributed (their spans are of the text streamed so far)."""
        self.text += piece
        spans = [sp for sp in claims_of(self.text) if sp[0] >= self._done_to and finished(self.text, sp)]
        if not spans or self._failed or not self.scorer.numbers:
            return []
        self._done_to = spans[-1][1]
        try:
            picks = await self.scorer.picks([self.text[s:e] for s, e in spans])
        except DocentError as exc:
            log.warning("attribution while streaming stopped: %s: %s", exc.code, exc.message)
            self._failed = True
            return []
        return [self.mark(span, numbers) for span, numbers in zip(spans, picks, strict=True)]

    def mark(self, span: tuple[int, int], numbers: Sequence[int]) -> SentenceAttributed:
        start, end = span
        marker = marker_at(self.text, start, end)
        return self.stamp(SentenceAttributed(start=start, end=end, marker=marker, passages=tuple(numbers)))


def passage_texts(sources: Sequence[Citation], passages: Mapping[int, str]) -> dict[int, str]:
    """What each source a claim may be attributed to says: its passage, else its snippet."""
    return {c.n: passages.get(c.n) or c.snippet for c in sources}


async def final_answer(
    text: str,
    sources: Sequence[Citation],
    passages: Mapping[int, str],
    embed: Embed | None,
    question: str = "",
    scorer: Scorer | None = None,
) -> AnswerCompleted:
    """The turn's answer: the model's markers validated, then (with `embed`) attributed and checked again.

    `scorer`, the one that attributed the answer while it streamed, keeps what it decided then."""
    cleaned, citations, dropped = validate_citations(text, list(sources))
    unsupported: tuple[TextSpan, ...] = ()
    if embed is not None and sources:
        texts = passage_texts(sources, passages)
        if scorer is None or scorer.numbers != list(texts) or scorer.texts != list(texts.values()):
            scorer = Scorer(texts, embed, question)
        try:
            attributed = await attribute_with(scorer, cleaned)
        except DocentError as exc:  # an optional step: the answer stands without its markers
            log.warning("attribution skipped: %s: %s", exc.code, exc.message)
            attributed = Attribution(text=cleaned)
        cleaned, citations, _ = validate_citations(attributed.text, list(sources))
        unsupported = attributed.unsupported if cleaned == attributed.text else ()
    return AnswerCompleted(
        text=cleaned, citations=citations, dropped_citations=dropped, sources=tuple(sources),
        unsupported=unsupported,
    )  # fmt: skip
