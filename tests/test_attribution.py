"""Post-hoc citation attribution (actors/attribution.py), with the real MiniLM query embedder."""

from __future__ import annotations

import re
from collections.abc import Sequence

import pytest

from actors import attribution
from actors.attribution import Matrix, Scorer, Streaming, attribute, final_answer, finished, split_sentences
from index.embed import Embedder, load_embedder
from store.events import Citation, SentenceAttributed
from store.exceptions import ModelError
from store.settings import Settings
from tests.conftest import MODEL_CACHE

PASSAGES = {
    1: "shlex.split(s) splits the string s using shell-like syntax. Quotes are respected, so a quoted "
    "argument with spaces stays one argument.",
    2: "The secrets module generates cryptographically strong random numbers suitable for managing "
    "passwords, account authentication and security tokens. Use token_urlsafe() for reset links.",
}
SOURCES = [
    Citation(n=1, chunk_id="c1", doc_id="pydoc/shlex", title="shlex", snippet=PASSAGES[1][:60]),
    Citation(n=2, chunk_id="c2", doc_id="pydoc/secrets", title="secrets", snippet=PASSAGES[2][:60]),
]
ANSWER = (
    "You can use shlex.split to split a command line with shell-like syntax, respecting quotes. "
    "For a password reset link, secrets.token_urlsafe() generates a secure token. "
    "The moon landing happened in 1969 during the Apollo program."
)


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    env = {"DOCENT_DATA_DIR": str(tmp_path_factory.mktemp("data")), "DOCENT_MODEL_DIR": str(MODEL_CACHE)}
    return load_embedder(Settings.from_env(env), "minilm", purpose="online")


def embed_with(embedder: Embedder) -> attribution.Embed:
    async def embed(texts: Sequence[str]) -> Matrix:
        return embedder.embed(texts)

    return embed


def test_sentences_are_split_per_line_and_code_fences_are_skipped() -> None:
    text = "First one. Second one!\n```\nnot. a sentence.\n```\n- a list item\n"
    assert [text[s:e] for s, e in split_sentences(text)] == ["First one.", "Second one!", "- a list item"]


async def test_claims_go_to_their_passage_and_the_rest_is_unsupported(embedder: Embedder) -> None:
    result = await attribute(ANSWER, PASSAGES, embed_with(embedder))
    assert "respecting quotes [1]." in result.text
    assert "generates a secure token [2]." in result.text
    (span,) = result.unsupported
    assert result.text[span.start : span.end] == ANSWER[ANSWER.index("The moon") :]


async def test_inserted_markers_are_validated_like_model_written_ones(embedder: Embedder) -> None:
    model_text = "Quotes are respected by shlex.split [1]; see also [9]. " + ANSWER
    answer = await final_answer(model_text, SOURCES[:1], PASSAGES, embed_with(embedder))
    assert answer.dropped_citations == (9,)
    assert [c.n for c in answer.citations] == [1]  # passage 2 is not a source the user may read here
    assert "[2]" not in answer.text
    assert all(answer.text[s.start : s.end] for s in answer.unsupported)


async def test_without_an_embedder_the_answer_is_only_validated() -> None:
    answer = await final_answer(ANSWER, SOURCES, PASSAGES, None)
    assert answer.text == ANSWER and answer.citations == () and answer.unsupported == ()


def test_auto_is_on_for_the_local_model_only() -> None:
    assert attribution.enabled(Settings.from_env({}))
    assert not attribution.enabled(
        Settings.from_env({"DOCENT_LLM_BACKEND": "openai", "DOCENT_LLM_URL": "http://127.0.0.1:1/v1"})
    )
    assert attribution.enabled(Settings.from_env({"DOCENT_LLM_BACKEND": "none", "DOCENT_ATTRIBUTION": "on"}))


async def test_a_failing_embedder_leaves_the_answer_without_markers() -> None:
    async def broken(texts: Sequence[str]) -> Matrix:
        raise ModelError("embedding failed: out of memory")

    answer = await final_answer(ANSWER, SOURCES, PASSAGES, broken)
    assert answer.text == ANSWER and answer.citations == () and answer.unsupported == ()


def test_a_sentence_is_finished_once_something_follows_it() -> None:
    text = "One claim here. Two"
    one, two = split_sentences(text)
    assert finished(text, one) and not finished(text, two)
    assert finished("A line\n", (0, 6)) and not finished("A line ", (0, 6))


def with_marks(text: str, marks: Sequence[SentenceAttributed]) -> str:
    """The streamed text as a client shows it: each attributed sentence's markers at its marker offset."""
    for mark in sorted(marks, key=lambda m: -m.marker):
        if mark.passages:
            text = text[: mark.marker] + " " + "".join(f"[{n}]" for n in mark.passages) + text[mark.marker :]
    return text


async def test_sentences_attributed_while_streaming_agree_with_the_answer(embedder: Embedder) -> None:
    embed = embed_with(embedder)
    scorer = Scorer(PASSAGES, embed)
    streaming = Streaming(scorer, lambda mark: mark)
    marks: list[SentenceAttributed] = []
    for piece in re.findall(r"\S+\s*", ANSWER):  # word by word, as tokens arrive
        marks += await streaming.feed(piece)
    # Each finished sentence once, as soon as the next one starts; the last one waits for the answer's end.
    assert [ANSWER[m.start : m.end] for m in marks] == [ANSWER[s:e] for s, e in split_sentences(ANSWER)][:2]
    assert [m.passages for m in marks] == [(1,), (2,)]
    answer = await final_answer(ANSWER, SOURCES, PASSAGES, embed, scorer=scorer)
    last = ANSWER.index("The moon")
    assert answer.text.startswith(with_marks(ANSWER[:last], marks))
    assert answer.text == with_marks(ANSWER, marks)  # the last sentence is unsupported: no marker


async def test_streaming_stops_quietly_when_the_embedder_fails() -> None:
    async def broken(texts: Sequence[str]) -> Matrix:
        raise ModelError("embedding failed: out of memory")

    streaming = Streaming(Scorer(PASSAGES, broken), lambda mark: mark)
    assert await streaming.feed(ANSWER) == []
    assert await streaming.feed(" More text. And more.") == []
