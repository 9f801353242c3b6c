"""The embedded model's Q&A answer, extractive first: the passages' own sentences that best answer the
question, each cited `[n]` to the passage it was taken from.

SmolLM2-135M reuses a passage's words to say something the passage does not (of 454 claims of its answers
only 18% were supported by any passage, `bench/attribution_labels.json`), so no post-hoc attribution of its
sentences reaches the precision a reader needs. Here every sentence of the answer is a passage's sentence,
verbatim, so every marker names the passage that states it (`bench/attribution_extractive.py`).

Passages are read as prose: pydoc's wrapped lines are joined back into paragraphs; tables, signatures, code,
the chunk's breadcrumb lines and pydoc boilerplate are left out. In reference documentation every paragraph
is said of the definition it documents (a definition line less indented than its docstring, or the
breadcrumb before it: "`token_urlsafe(nbytes=None)`: Return a random URL-safe text string ..."), and a
paragraph whose subject is unknown is left out. In Perl's reference pages a sentence without a subject is
said of the definition line before its paragraph ("`PUSH this, LIST`: Append elements of LIST to the
array"), one using a placeholder of the title (FILEHANDLE of "tell FILEHANDLE") of the title. Each prose
sentence is scored by its cosine to the question under the query embedder plus a little for the question's
words it shares; the best one and those close to it (within KEEP_WITHIN, at most MAX_SENTENCES and the word
budget) make the answer, in the passages' order. A sentence that leans on the one before it ("It returns
...", "For example ...", "... ignore this ...") comes with it or not at all; one that points at text the
answer does not quote ("the following", "above", "this section"), speaks to the reader ("let us", "skip to
the next chapter"), tells the author's own case ("I", "my") or is cut inside a quotation or a parenthesis
never comes. When even the best is far from the question (below MIN_COSINE), the answer says so in a lead-in
that claims nothing ("...; the closest they come:"). When the passages hold no usable prose sentence (code,
tables), the model answers as before (`fallback`), post-hoc attributed.

Judged by hand (`python -m bench.attribution_extractive`): 95.2% of the 378 sentences of the 195 answers the
rules were developed on are supported by the passage they cite, 82 of 85 (96.5%) of a round of 50 questions
judged after they were fixed; the constants were set by reading answers, not fitted.

`ExtractiveBackend` is an `LLMBackend`: the turn logs `LLMRequested`/`LLMCompleted` for it like for any
model (a replay reuses the recorded answer), and the sentences stream as deltas, one per sentence.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from actors.attribution import BOUNDARY, Embed, content_words, marker_at, split_sentences
from actors.extractive_glue import opening
from actors.llm.types import ChatMessage, Completion, LLMBackend, OnDelta, ToolSpec, estimate_tokens
from actors.plan import CITATION
from index.types import Hit
from store.exceptions import LLMError
from store.settings import Settings

MODEL_NAME = "extractive"
MAX_SENTENCES = 3
MAX_CANDIDATES = 64  # sentences embedded per answer, the passages' first (4 passages: 16 p50, 40 at most)
MAX_ANSWER_WORDS = 90
WORDS_PER_TOKEN = 0.75  # the answer's word budget from its token cap
MIN_SENTENCE_WORDS = 5
MAX_SENTENCE_WORDS = 60
KEEP_WITHIN = 0.10  # a sentence joins the answer when its score is at most this far below the best one's
MIN_COSINE = 0.30  # the best sentence's cosine below this: no passage answers the question directly
LEXICAL_WEIGHT = 0.10  # the share of the question's content words a sentence has, added to its cosine
NEAR_DUPLICATE = 0.8  # share of content words in common above which a sentence repeats a chosen one
LEAD_IN = "No passage answers this directly; the closest they come:"
# A sentence opening with one of these leans on the sentence before it.
LEANING_TEXT = """
it its this that these those they their them such also however otherwise else then here there both
he she his her instead thus hence so or and but
"""
LEANING = frozenset(LEANING_TEXT.split())
TABLE = re.compile(r"[^\s.!?:;](?: {2,}|\t)\S")  # columns: runs of spaces inside a line, not after a stop
DEFINITION = re.compile(r"^(?:async\s+)?(?:class\s+)?([A-Za-z_][\w.]*)\(.*?\)(?=\s*(?:->|from |method |$))")
OPEN_DEFINITION = re.compile(r"^(?:async\s+)?(?:class\s+)?([A-Za-z_][\w.]*)\([^)]*,$")  # a wrapped signature
ASSIGNED = re.compile(r"^([A-Za-z_][\w.]*) = [A-Za-z_][\w.]*\(")  # insort = insort_right(a, x, ...)
IDENTIFIER = re.compile(r"^[A-Za-z_][\w.]*$")
PYDOC_SECTIONS = frozenset(
    {"Description", "Functions", "Classes", "Data", "Name", "File", "Version", "Author"}
)
MAX_SUBJECT_CHARS = 60
BULLET = re.compile(r"^\s*(?:[-*+\u2022]|\d+[.)])\s")
ABBREVIATION = re.compile(r"(?:\b[A-Z]|\b(?:Dr|Mr|Mrs|Ms|St|Jr|Sr|etc|vs|cf|approx|No|e\.g|i\.e))\.$")
SIGNATURE = re.compile(r"^[\w.]+\(.*\)(?:\s*->.*)?$|^[\w.]+ = |^>>>|^\.\.\. |from builtins\.|of builtins\.")
FIRST_WORD = re.compile(r"[A-Za-z]+")
REFERRING = frozenset({"this", "these", "those", "they", "it", "its", "such"})
# Connectives that answer the sentence before, among the first words: "Debian, therefore, keeps ...".
CONNECTIVES = frozenset({"therefore", "instead", "otherwise", "thus", "hence", "nevertheless"})
REFERRING_WORDS = 3
# Text the answer does not quote: "one of the following methods", "the first 3 values above", "described in
# this section", "the word is also used".
ELSEWHERE = re.compile(
    r"\b(?:following|follows|below|here's|here is|above|previous|preceding|aforementioned|this section"
    r"|this chapter|this document|the word|such a|let us|let's|next chapter|skip to|see the answer|links to"
    r"|part \d)\b",
    re.IGNORECASE,
)
FIRST_PERSON = re.compile(r"\b(?:I(?!/)|my|me)\b")  # the author's own case: "so that I could run them ..."
QUOTES = re.compile(r"[\"\u201c\u201d]")  # a sentence cut inside a quotation has an odd number of them
# Openings that continue the sentence before: "For example, f(3.0) and f(3) ...", "Let's consider ...".
LEANING_OPENINGS = (
    "For example", "For instance", "In that case", "In this case", "In other words", "Let's", "Let us",
    "See ", "If not", "If so", "Similarly", "Likewise", "Again", "Note the ", "The situation", "The scenario",
    "The latter", "The former",
)  # fmt: skip
# Demonstratives that point back wherever they stand: "You can ignore this for local packages".
POINTING = frozenset({"this", "these", "those", "such"})
# A verb, then its object: "Associates an internal FILEHANDLE ...", "Return an appropriate TarFile class".
VERB_FIRST = re.compile(r"^([A-Z][a-z]+) (?:the|a|an|all|any|each|one|this|that|its|their)\b")
NOT_VERBS_TEXT = """
with in on for after before at by from to as if when once unlike like under over since because although
while without during into through via per all each every only note
"""
NOT_VERBS = frozenset(NOT_VERBS_TEXT.split())
# Verbs a docstring's sentence opens with, its subject being what the docstring documents.
DOCSTRING_VERBS_TEXT = """
append remove insert add delete set get create read write open close convert compute calculate call build
print send split join load store fetch clear push pop shift unshift extract parse format encode decode
register apply raise change construct initialize return assume associate
"""
DOCSTRING_VERBS = frozenset(DOCSTRING_VERBS_TEXT.split())
MAIN_CLAUSE = re.compile(r"^(?:If|When|Unless)\b[^,]*, ([a-z]+)\b")  # "If FILEHANDLE is omitted, assumes ..."
# A definition line of Perl's reference pages: "PUSH this, LIST", "tell FILEHANDLE", "getc".
LABEL = re.compile(r"^(?:[A-Z][A-Z_]+|[a-z_][\w:]*)(?:[ ,]+[\w$@%\[\]]+)*$")
MAX_LABEL_WORDS = 4
PLACEHOLDER = re.compile(r"\b[A-Z]{3,}\b")  # a definition's metasyntactic argument: NAME, LIST, FILEHANDLE
PYDOC_BOILERPLATE = ("See help(", "Initialize self", "Create and return a new object")
MIN_LETTER_SHARE = 0.75  # of a prose line's non-space characters


@dataclass(frozen=True)
class Candidate:
    n: int  # the passage's number in the prompt
    block: int  # which paragraph of the passage
    position: int  # the sentence's place in the paragraph
    text: str
    subject: str = ""  # the definition the paragraph documents (pydoc), named before its first sentence

    def shown(self) -> str:
        return f"`{self.subject}`: {self.text}" if self.subject else self.text


def enabled(settings: Settings) -> bool:
    return settings.llm_backend == "local" and settings.local_answer in ("extractive", "glued")


# ---- the passages' prose ---------------------------------------------------------------------------------


def prose_line(line: str, title: str) -> bool:
    """A line of running text: not a table row, a signature, code or the chunk's breadcrumb."""
    text = line.strip()
    if not text or TABLE.search(text) or SIGNATURE.search(text) or (title and text.startswith(title)):
        return False
    visible = text.replace(" ", "")
    letters = sum(ch.isalpha() for ch in visible)
    return letters >= MIN_LETTER_SHARE * len(visible)


def indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def subject_of(line: str, following: str) -> str | None:
    """What a pydoc definition line (`token_urlsafe(nbytes=None)`, `class TarFile(builtins.object)`) defines,
    as the answer names it; None for any other line. A definition is less indented than the docstring that
    follows it (the line `following`): code in an example is not."""
    if indent(line) >= indent(following):
        return None
    text = line.strip()
    found = DEFINITION.match(text)
    if found is None:
        other = OPEN_DEFINITION.match(text) or ASSIGNED.match(text)
        return f"{other.group(1)}(...)" if other is not None else None
    whole = found.group(0)
    return whole if len(whole) <= MAX_SUBJECT_CHARS else f"{found.group(1)}(...)"


def paragraphs(text: str, title: str = "") -> list[tuple[str, str]]:
    """The passage's runs of consecutive prose lines, each joined into one paragraph, with the definition
    it documents ("" when no definition line came before it)."""
    out: list[tuple[str, str]] = []
    current: list[str] = []
    subject = ""
    lines = [*text.replace("``", "`").splitlines(), ""]  # reST's ``code`` as Markdown's `code`
    for i, line in enumerate(lines):
        prose = prose_line(line, title) and not OPEN_DEFINITION.match(line.strip())
        if current and (not prose or BULLET.match(line)):
            out.append((subject, " ".join(current)))
            current = []
        if prose:
            current.append(line.strip())
        elif (defined := subject_of(line, next_text(lines, i))) is not None:
            subject = defined
        elif title and line.startswith(title) and " > " in line:  # the breadcrumb of the next definition
            subject = named_by(line)
    return out


def next_text(lines: Sequence[str], i: int) -> str:
    """The first non-blank line after line `i` ("" if none)."""
    return next((line for line in lines[i + 1 :] if line.strip()), "")


def definitions(text: str) -> bool:
    """Whether the passage is reference documentation: it has a definition line."""
    lines = text.splitlines()
    return any(subject_of(line, next_text(lines, i)) is not None for i, line in enumerate(lines))


def named_by(heading: str) -> str:
    """The identifier a heading's last part names ("secrets > Functions > token_urlsafe"), or ""."""
    last = heading.rsplit(" > ", 1)[-1].strip()
    return last if IDENTIFIER.match(last) and last not in PYDOC_SECTIONS else ""


def split_prose(paragraph: str) -> list[str]:
    """The paragraph's sentences; a full stop after an initial or an abbreviation ends none."""
    out: list[str] = []
    for piece in BOUNDARY.split(paragraph):
        if out and ABBREVIATION.search(out[-1]):
            out[-1] = f"{out[-1]} {piece}"
        else:
            out.append(piece)
    return [s.strip() for s in out if s.strip()]


def complete_sentence(sentence: str) -> bool:
    words = len(sentence.split())
    opening = sentence[0]
    return (
        MIN_SENTENCE_WORDS <= words <= MAX_SENTENCE_WORDS
        and sentence[-1] in ".!?"
        and (opening.isupper() or opening in "`\"'")
        and not CITATION.search(sentence)  # a passage's own "[1]" must not read as a marker
        and len(split_sentences(sentence)) == 1  # attributed as one sentence: "Dr. Smith" would be two
        and not ELSEWHERE.search(sentence)
        and not FIRST_PERSON.search(sentence)
        and len(QUOTES.findall(sentence)) % 2 == 0
        and sentence.count("(") == sentence.count(")")  # not cut inside one: "(in the latter case $!"
        and not sentence.startswith(PYDOC_BOILERPLATE)
    )


def docstring_verb(word: str, bare: bool = True) -> bool:
    """A verb a docstring says, in its -s form ("assumes", "pushes") or, with `bare`, as is ("Append")."""
    word = word.lower()
    forms = (word.removesuffix("s"), word.removesuffix("es")) if word.endswith("s") else ()
    return any(stem in DOCSTRING_VERBS for stem in ((word, *forms) if bare else forms))


def subjectless(sentence: str) -> bool:
    """A docstring-style sentence with no subject of its own: "Associates an internal FILEHANDLE ...",
    "Return an appropriate TarFile class", "Append elements of LIST to the array", "If FILEHANDLE is
    omitted, assumes the file last read" (not "With a ...", "In a ...")."""
    found = VERB_FIRST.match(sentence)
    if found is not None and found[1].lower() not in NOT_VERBS and not found[1].endswith("ing"):
        return True
    first = FIRST_WORD.match(sentence)
    if first is not None and docstring_verb(first[0]):
        return True
    main = MAIN_CLAUSE.match(sentence)  # "If so, remove it" tells the reader: only a verb's -s form
    return main is not None and docstring_verb(main[1], bare=False)


def label_of(paragraph: str) -> str | None:
    """What a short definition line names ("PUSH this, LIST", "tell FILEHANDLE", "getc"), or None."""
    fits = len(paragraph) <= MAX_SUBJECT_CHARS and len(paragraph.split()) <= MAX_LABEL_WORDS
    return paragraph if fits and LABEL.match(paragraph) else None


def title_label(title: str) -> str:
    """A title that is a definition line (perlfunc's "seek FILEHANDLE,POSITION,WHENCE"), else ""."""
    words = title.split()
    if len(words) == 1 and len(title) <= MAX_SUBJECT_CHARS and "(" in title:  # "(?<NAME>pattern)"
        return title
    defines = label_of(title) and len(words) > 1 and words[0].islower() and words[1][:1].isupper()
    return title if defines else ""


def heading_subject(heading: str) -> str:
    """What a section documents, from its heading's last part ("open FILEHANDLE,MODE,EXPR")."""
    last = heading.rsplit(" > ", 1)[-1].strip()
    return last if 0 < len(last) <= MAX_SUBJECT_CHARS else ""


def placeholder_subject(sentence: str, lines: Sequence[str]) -> str:
    """The first of the definition `lines` whose placeholder the sentence uses ("Currently NAME is restricted
    to simple identifiers", said of `(?<NAME>pattern)`), or ""."""
    used = set(PLACEHOLDER.findall(sentence))
    return next((line for line in lines if used & placeholders(line)), "")


def placeholders(line: str) -> set[str]:
    """The arguments a definition line names in capitals ("PUSH this, LIST": LIST), the defined name not."""
    return set(PLACEHOLDER.findall(line)) - {line.split()[0]} if line else set()


def candidate(
    place: tuple[int, int, int], sentence: str, subject: str, named: tuple[str, str, str]
) -> Candidate | None:
    """The sentence as the answer may quote it, or None. `named` is the passage's heading, the definition
    line before the paragraph and the title: a sentence using a definition's placeholder is said of that
    definition, a sentence without a subject needs one named, by the heading or the definition line."""
    if not complete_sentence(sentence):
        return None
    heading, label, title = named
    subject = subject or placeholder_subject(sentence, (label, title_label(title)))
    if not subject and subjectless(sentence):
        subject = heading_subject(heading) or label
        if not subject:
            return None
    return Candidate(*place, sentence, subject)


def documented(hit: Hit) -> list[tuple[str, str]]:
    """The passage's paragraphs with their subjects. In reference documentation (a passage with definition
    lines) a paragraph before its passage's first definition documents what the heading names, if it names
    an identifier, else it is left out: "Insert item x in list a" must say of what."""
    found = paragraphs(hit.text, hit.title)
    if not definitions(hit.text):
        return found
    fallback = named_by(hit.heading)
    return [(subject or fallback, text) for subject, text in found if subject or fallback]


def candidates(hits: Sequence[Hit]) -> list[Candidate]:
    """Every complete prose sentence of the passages, numbered as the passages are in the prompt."""
    out: list[Candidate] = []
    for n, hit in enumerate(hits, 1):
        label = title_label(hit.title)
        for b, (subject, paragraph) in enumerate(documented(hit)):
            label = label_of(paragraph) or label
            for i, sentence in enumerate(split_prose(paragraph)):
                found = candidate((n, b, i), sentence, subject, (hit.heading, label, hit.title))
                out += [found] if found is not None else []
    return out


# ---- choosing ----------------------------------------------------------------------------------------


def leans(sentence: str) -> bool:
    """The sentence refers back: it opens with a LEANING word or opening, names "it", "they"... or a
    connective ("Debian, therefore, ...") in its first REFERRING_WORDS words ("Outside those contexts ..."),
    or "this", "such"... anywhere ("You can ignore this for local packages")."""
    words = [w.lower() for w in FIRST_WORD.findall(sentence)]
    if not words or sentence.startswith(LEANING_OPENINGS):
        return bool(words)
    first = words[:REFERRING_WORDS]
    back = any(w in REFERRING or w in CONNECTIVES for w in first)
    return first[0] in LEANING or back or any(w in POINTING for w in words)


def repeats(sentence: str, chosen: Sequence[Candidate]) -> bool:
    words = content_words(sentence)
    for other in chosen:
        theirs = content_words(other.text)
        if words and len(words & theirs) >= NEAR_DUPLICATE * min(len(words), len(theirs) or 1):
            return True
    return False


def choose(pool: Sequence[Candidate], scores: Sequence[float], word_budget: int) -> list[Candidate]:
    """The best sentence and those within KEEP_WITHIN of it, in the passages' order; a leaning sentence only
    with the sentence before it."""
    by_place = {(c.n, c.block, c.position): c for c in pool}
    order = sorted(range(len(pool)), key=lambda i: -scores[i])
    best = scores[order[0]]
    chosen: list[Candidate] = []
    for i in order:
        if scores[i] < best - KEEP_WITHIN or len(chosen) >= MAX_SENTENCES:
            break
        group = [pool[i]]
        if leans(pool[i].text):
            before = by_place.get((pool[i].n, pool[i].block, pool[i].position - 1))
            if before is None or leans(before.text):  # one sentence back, never a chain
                continue
            group = [before, pool[i]] if before not in chosen else group
        if any(repeats(c.text, chosen) for c in group if c not in chosen):
            continue
        words = sum(len(c.text.split()) for c in [*chosen, *group])
        if chosen and (words > word_budget or len(chosen) + len(group) > MAX_SENTENCES):
            continue
        chosen += [c for c in group if c not in chosen]
    return sorted(chosen, key=lambda c: (c.n, c.block, c.position))


def cited(text: str, n: int) -> str:
    """The sentence with its passage's marker before its closing punctuation."""
    cut = marker_at(text, 0, len(text))
    return f"{text[:cut]} [{n}]{text[cut:]}"


def rendered(chosen: Sequence[Candidate]) -> list[str]:
    """The chosen sentences cited, the definition they document named before the first one of it."""
    out: list[str] = []
    for i, c in enumerate(chosen):
        named = i > 0 and (chosen[i - 1].n, chosen[i - 1].subject) == (c.n, c.subject)
        out.append(cited(c.text if named else c.shown(), c.n))
    return out


async def scored(pool: Sequence[Candidate], question: str, embed: Embed) -> tuple[list[float], float]:
    """Each sentence's score (cosine to the question plus its share of the question's words), and the best
    cosine."""
    vectors = await embed([question, *(c.shown() for c in pool)])
    cosines = vectors[1:] @ vectors[0]
    asked = content_words(question)
    shares = [len(asked & content_words(c.shown())) / len(asked) if asked else 0.0 for c in pool]
    scores = [float(cos) + LEXICAL_WEIGHT * share for cos, share in zip(cosines, shares, strict=True)]
    return scores, float(np.max(cosines))


async def compose(hits: Sequence[Hit], question: str, embed: Embed, word_budget: int) -> list[str]:
    """The answer's pieces as they stream (a lead-in, then one cited sentence each); empty when the
    passages hold no prose sentence."""
    pool = candidates(hits)[:MAX_CANDIDATES]
    if not pool:
        return []
    scores, best_cosine = await scored(pool, question, embed)
    chosen = choose(pool, scores, word_budget)
    if not chosen:
        return []
    pieces = [LEAD_IN + "\n\n"] if best_cosine < MIN_COSINE else []
    for sentence in rendered(chosen):
        pieces.append(sentence if not pieces or pieces[-1].endswith("\n") else " " + sentence)
    return pieces


# ---- as a backend ------------------------------------------------------------------------------------------


class ExtractiveBackend:
    """An `LLMBackend` for a Q&A answer: the composed answer, streamed a sentence a delta; the `fallback`
    model answers when the passages hold no prose sentence, and with `DOCENT_LOCAL_ANSWER=glued` writes the
    sentence that opens it (`actors.extractive_glue`)."""

    def __init__(
        self, hits: Sequence[Hit], question: str, embed: Embed, fallback: LLMBackend, settings: Settings
    ) -> None:
        self.hits = list(hits)
        self.question = question
        self.embed = embed
        self.fallback = fallback
        self.settings = settings

    @property
    def model_name(self) -> str:
        return MODEL_NAME

    def price(self, tokens_in: int, tokens_out: int) -> float:
        return 0.0

    async def aclose(self) -> None:
        return None

    async def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[ToolSpec] = (),
        max_tokens: int | None = None,
        temperature: float = 0.0,
        on_delta: OnDelta | None = None,
        request_id: str = "",
    ) -> Completion:
        started = time.monotonic()
        cap = max_tokens or self.settings.local_max_tokens
        budget = min(MAX_ANSWER_WORDS, int(cap * WORDS_PER_TOKEN))
        pieces = await compose(self.hits, self.question, self.embed, budget)
        if not pieces:
            return await self.fallback.complete(
                messages, tools=tools, max_tokens=max_tokens, temperature=temperature, on_delta=on_delta,
                request_id=request_id,
            )  # fmt: skip
        if self.settings.local_answer == "glued" and not pieces[0].startswith(LEAD_IN):
            pieces = await self.opened(pieces)
        first_token_s = time.monotonic() - started
        for piece in pieces:
            if on_delta is not None:
                await on_delta(piece)
        text = "".join(pieces)
        return Completion(
            text=text, finish_reason="stop", tokens_out=estimate_tokens(text), model=MODEL_NAME,
            latency_ms=(time.monotonic() - started) * 1000, first_token_ms=first_token_s * 1000,
            usage_estimated=True,
        )  # fmt: skip

    async def opened(self, pieces: Sequence[str]) -> list[str]:
        """The answer's pieces after the model's opening sentence (as they are when it wrote none or failed:
        the opening is glue, the answer stands without it)."""
        try:
            said = await opening(self.fallback, self.question, [p.strip() for p in pieces])
        except LLMError:
            said = ""
        return [said, " " + pieces[0], *pieces[1:]] if said else list(pieces)
