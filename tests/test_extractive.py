"""The embedded model's extractive answer (actors/extractive.py), with the real MiniLM query embedder."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from actors import extractive
from actors.attribution import Matrix, claims_of
from actors.extractive import ExtractiveBackend, candidates, compose, paragraphs, split_prose
from actors.extractive_glue import first_sentence
from actors.llm.backends import UnavailableBackend
from actors.llm.local import LocalBackend
from actors.plan import validate_citations
from actors.sources import qa_sources
from index.embed import Embedder
from index.types import Hit
from store.exceptions import LLMUnavailable
from store.settings import Settings
from tests.test_attribution import embed_with, embedder
from tests.test_llm_local import backend, converted, local_settings

__all__ = ["backend", "converted", "embedder", "local_settings"]  # module-scoped MiniLM and SmolLM2 fixtures

SECRETS = """secrets — Generate secure random numbers for managing secrets
token_urlsafe(nbytes=None)
    Return a random URL-safe text string, in Base64 encoding.
    The string has *nbytes* random bytes. If nbytes is None or not
    supplied, a reasonable default is used.

    >>> token_urlsafe(16)
    'Drmhze6EPcv0fN_81Bj-nA'
"""
SHLEX = """shlex — Simple lexical analysis
split(s, comments=False, posix=True)
    Split the string *s* using shell-like syntax.
    It respects quotes, so a quoted argument with spaces stays one argument.

    mode:
    'r'          open for reading
    'w'          open for writing
"""
PERL = "To get the first element, write $array[1] in the old style. Use shift to take the first element off."


def hit(n: int, title: str, text: str) -> Hit:
    return Hit(chunk_id=f"c{n}", doc_id=f"pydoc/{n}", title=title, heading="", text=text, score=1.0)


HITS = [hit(1, "secrets — Generate secure random numbers for managing secrets", SECRETS),
        hit(2, "shlex — Simple lexical analysis", SHLEX)]  # fmt: skip


def test_passages_are_read_as_prose_without_signatures_tables_code_or_breadcrumbs() -> None:
    assert paragraphs(SECRETS, HITS[0].title) == [
        ("token_urlsafe(nbytes=None)",
         "Return a random URL-safe text string, in Base64 encoding. The string has *nbytes* random bytes. "
         "If nbytes is None or not supplied, a reasonable default is used.")
    ]  # fmt: skip
    prose = paragraphs(SHLEX, HITS[1].title)
    assert prose[0] == (
        "split(s, comments=False, posix=True)",
        "Split the string *s* using shell-like syntax. It respects quotes, so a quoted argument with spaces "
        "stays one argument.",
    )
    assert not any("open for" in p for _, p in prose)  # the table's rows


def test_an_initial_or_an_abbreviation_ends_no_sentence() -> None:
    assert split_prose("Written by J. H. M. Bonten and Dr. Smith. Then revised.") == [
        "Written by J. H. M. Bonten and Dr. Smith.",
        "Then revised.",
    ]


def test_a_sentence_with_its_own_bracketed_number_is_never_a_candidate() -> None:
    texts = [c.text for c in candidates([hit(1, "", PERL)])]
    assert texts == ["Use shift to take the first element off."]


async def test_the_answer_is_the_best_sentences_each_cited_to_its_own_passage(embedder: Embedder) -> None:
    pieces = await compose(HITS, "What does token_urlsafe return?", embed_with(embedder), 90)
    text = "".join(pieces)
    # the definition the docstring documents named first: the reader sees what "Return ..." is said of
    first = "`token_urlsafe(nbytes=None)`: Return a random URL-safe text string, in Base64 encoding [1]."
    assert text.startswith(first)
    assert claims_of(text) == []  # every sentence carries its marker: nothing is left to attribute
    cleaned, citations, dropped = validate_citations(text, qa_sources(HITS))
    assert cleaned == text and dropped == () and 1 in {c.n for c in citations}
    for piece in pieces:  # every sentence is its passage's own, verbatim
        sentence = piece.strip().replace(" [1]", "").replace(" [2]", "").split("`: ")[-1]
        assert any(sentence in " ".join(h.text.split()) for h in HITS)


async def test_a_sentence_leaning_on_the_one_before_comes_with_it(embedder: Embedder) -> None:
    question = "does shlex respect quotes in arguments with spaces?"
    pieces = await compose(HITS, question, embed_with(embedder), 90)
    text = "".join(pieces)
    assert "Split the string *s* using shell-like syntax [2]. It respects quotes" in text
    assert text.count("`split(s, comments=False, posix=True)`") == 1  # named before the paragraph's first


async def test_a_far_question_is_answered_with_a_lead_in_that_claims_nothing(embedder: Embedder) -> None:
    pieces = await compose(HITS, "the boiling point of water at sea level", embed_with(embedder), 90)
    assert pieces[0].startswith(extractive.LEAD_IN)
    text = "".join(pieces)
    assert all(text[s:e] != extractive.LEAD_IN for s, e in claims_of(text))


async def test_the_backend_streams_sentence_by_sentence_within_the_token_cap(embedder: Embedder) -> None:
    backend = ExtractiveBackend(HITS, "What does token_urlsafe return?", embed_with(embedder),
                                UnavailableBackend(), Settings.from_env({}))  # fmt: skip
    deltas: list[str] = []

    async def on_delta(text: str) -> None:
        deltas.append(text)

    completion = await backend.complete([], max_tokens=12, on_delta=on_delta)
    assert completion.model == "extractive" and completion.finish_reason == "stop"
    assert "".join(deltas) == completion.text and len(deltas) == 1  # 9 words: one sentence fits
    assert 0 < completion.first_token_ms <= completion.latency_ms


async def test_a_glued_answer_whose_model_fails_is_the_extractive_answer(embedder: Embedder) -> None:
    glued = Settings.from_env({"DOCENT_LOCAL_ANSWER": "glued"})
    question = "What does token_urlsafe return?"
    backend = ExtractiveBackend(HITS, question, embed_with(embedder), UnavailableBackend(), glued)
    completion = await backend.complete([])
    assert completion.text == "".join(await compose(HITS, question, embed_with(embedder), 90))


async def test_passages_without_prose_are_left_to_the_model(embedder: Embedder) -> None:
    table = hit(1, "", "'r'          open for reading\n'w'          open for writing\n")
    backend = ExtractiveBackend([table], "how do I open a file?", embed_with(embedder),
                                UnavailableBackend(), Settings.from_env({}))  # fmt: skip
    with pytest.raises(LLMUnavailable):
        await backend.complete([])


def test_extractive_answers_are_for_the_local_model_only() -> None:
    assert extractive.enabled(Settings.from_env({}))
    assert not extractive.enabled(Settings.from_env({"DOCENT_LOCAL_ANSWER": "model"}))
    assert not extractive.enabled(
        Settings.from_env({"DOCENT_LLM_BACKEND": "openai", "DOCENT_LLM_URL": "http://127.0.0.1:1/v1"})
    )


CONFIGPARSER = """configparser — Configuration file parser > Classes > RawConfigParser
has_section(section)
        Return whether the given section exists.

    read_file(f, filename=None)
        Read and parse one configuration file, given as a file object.

    write(self, fp)
        Write an .ini-format representation of the configuration state.
        Example::

          c = C(1, 2)
          Return the example's own value here.
"""
BISECT = """bisect — Bisection algorithms > Functions > insort
insort = insort_right(a, x, lo=0, hi=None, *, key=None)
    Insert item x in list a, and keep it sorted assuming a is sorted.
"""
TAIL = """    Return the tail of some earlier docstring, unnamed here.

tarfile — Read from and write to tar format archives > Functions > open
open(name=None, mode='r')
    Open a tar archive for reading, writing or appending.
"""


def test_each_docstring_is_said_of_the_definition_it_documents() -> None:
    config = hit(1, "configparser — Configuration file parser", CONFIGPARSER)
    subjects = {c.text: c.subject for c in candidates([config])}
    assert (
        subjects["Read and parse one configuration file, given as a file object."]
        == "read_file(f, filename=None)"
    )
    assert (
        subjects["Return the example's own value here."] == "write(self, fp)"
    )  # `c = C(1, 2)` is an example
    (insort,) = candidates([hit(1, "bisect — Bisection algorithms", BISECT)])
    assert insort.shown().startswith("`insort(...)`: Insert item x")


def test_reference_text_whose_subject_is_unknown_is_left_out() -> None:
    title = "tarfile — Read from and write to tar format archives"
    tail = Hit(chunk_id="c", doc_id="pydoc/tarfile", title=title, heading="Functions", text=TAIL, score=1.0)
    assert [c.text for c in candidates([tail])] == ["Open a tar archive for reading, writing or appending."]


def test_sentences_pointing_at_text_the_answer_does_not_quote_are_left_out() -> None:
    prose = (
        "Padding is easy with sprintf. Use one of the following methods to pad with other characters. "
        "The options described in this section apply to both forms. For example, the pad may be a dot."
    )
    texts = [c.text for c in candidates([hit(1, "", prose)])]
    assert texts == ["Padding is easy with sprintf.", "For example, the pad may be a dot."]
    assert extractive.leans("For example, the pad may be a dot.")  # quoted only after the sentence before


async def test_one_answer_embeds_at_most_max_candidates_sentences(embedder: Embedder) -> None:
    many = hit(1, "", " ".join(f"Sentence number {i} says a thing about tokens." for i in range(200)))
    seen: list[int] = []
    embed = embed_with(embedder)

    async def counting(texts: Sequence[str]) -> Matrix:
        seen.append(len(texts))
        return await embed(texts)

    assert await compose([many], "tokens", counting, 90)
    assert seen == [1 + extractive.MAX_CANDIDATES]  # the question and the first MAX_CANDIDATES sentences


TIE = """object this. For example:

PUSH this, LIST

Append elements of LIST to the array. For example:

sub PUSH { my $self = shift; }

POP this

Remove last element of the array and return it. For example:
"""
TELL = """tell FILEHANDLE

tell

Returns the current position in bytes for FILEHANDLE, or -1 on error. If FILEHANDLE is omitted,
assumes the file last read. There is no systell function.
"""


def test_a_perl_docstring_is_said_of_the_definition_line_before_it() -> None:
    shown = [c.shown() for c in candidates([hit(1, "Tying Arrays", TIE)])]
    assert shown == [
        "`PUSH this, LIST`: Append elements of LIST to the array.",
        "`POP this`: Remove last element of the array and return it.",
    ]
    told = {c.text: c.subject for c in candidates([hit(1, "tell FILEHANDLE", TELL)])}
    assert told == {  # the title's placeholder named, the subjectless one said of it, the rest as it is
        "Returns the current position in bytes for FILEHANDLE, or -1 on error.": "tell FILEHANDLE",
        "If FILEHANDLE is omitted, assumes the file last read.": "tell FILEHANDLE",
        "There is no systell function.": "",
    }


def test_asides_to_the_reader_and_cut_quotations_are_never_candidates() -> None:
    prose = (
        "Before diving right into the technology, let us have a look at what the Debian Project is. "
        "If you already know its history, feel free to skip to the next chapter. "
        "Paragraphs look like paragraphs, so that I could run them through fmt easily. "
        'In most cases, you write an external module--see the answer to "Where can I learn about linking C? '
        "Returns the next character, or undef if there was an error (in the latter case $! "
        "is set). Debian is a free operating system for you."
    )
    assert [c.text for c in candidates([hit(1, "", prose)])] == ["Debian is a free operating system for you."]
    assert extractive.leans("The situation can get much more complicated, if say, XYZ depends on 4 others.")
    assert extractive.leans("Debian, therefore, keeps it in testing for ten days.")


def test_the_models_opening_is_its_first_short_sentence_without_markers() -> None:
    assert first_sentence("Here is how to get a random token [1]: use secrets.\nMore.") == (
        "Here is how to get a random token."
    )
    assert first_sentence("\n\nThe answer follows. It is long.") == "The answer follows."
    assert first_sentence("Yes.") == ""  # too short to introduce anything
    assert first_sentence(" ".join(["word"] * 30)) == ""


@pytest.mark.slow
async def test_a_glued_answer_opens_with_the_models_sentence_then_the_same_sentences(
    embedder: Embedder, backend: LocalBackend
) -> None:
    question = "What does token_urlsafe return?"
    plain = "".join(await compose(HITS, question, embed_with(embedder), 90))
    glued = Settings.from_env({"DOCENT_LLM_BACKEND": "local", "DOCENT_LOCAL_ANSWER": "glued"})
    assert extractive.enabled(glued)
    completion = await ExtractiveBackend(HITS, question, embed_with(embedder), backend, glued).complete([])
    assert completion.text.endswith(plain)
    opening = completion.text.removesuffix(plain).strip()
    assert opening == "" or (opening.endswith(".") and "[" not in opening)  # no marker: post-hoc attributed
