"""An opening sentence the embedded model writes before an extractive answer's sentences
(`DOCENT_LOCAL_ANSWER=glued`; off by default).

The extractive answer (`actors.extractive`) is the passages' own sentences, each cited; it reads as a list of
quotations. Here SmolLM2 is given the question and those sentences and asked for one short sentence that
introduces them, stating nothing of its own. The sentence carries no marker: the turn's post-hoc attribution
(`actors.attribution`) then attributes it to a passage or marks it unsupported, like any sentence of the
model's. Measured: `.venv/bin/python -m bench.llm --ab extractive --questions 5` (README "Local answers").
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from actors.llm.types import ChatMessage, LLMBackend
from actors.plan import CITATION

GLUE_MAX_TOKENS = 24
MIN_GLUE_WORDS = 3
MAX_GLUE_WORDS = 16
STOP = re.compile(r"[.!?:;]")
GLUE_SYSTEM = (
    "You introduce an answer. Given a question and the sentences that answer it, write one short sentence "
    "(at most twelve words) that introduces them as the answer to the question. State no fact of your own."
)


def glue_messages(question: str, sentences: Sequence[str]) -> list[ChatMessage]:
    quoted = "\n".join(f"- {CITATION.sub('', s).strip()}" for s in sentences)
    return [
        ChatMessage(role="system", content=GLUE_SYSTEM),
        ChatMessage(role="user", content=f"Question: {question}\n\nSentences:\n{quoted}"),
    ]


def first_sentence(text: str) -> str:
    """The model's first sentence, markers dropped, ending in a full stop; "" when it is too short or long."""
    line = next((part for part in CITATION.sub("", text).splitlines() if part.strip()), "")
    stop = STOP.search(line)
    words = (line[: stop.start()] if stop else line).split()
    return " ".join(words) + "." if MIN_GLUE_WORDS <= len(words) <= MAX_GLUE_WORDS else ""


async def opening(model: LLMBackend, question: str, sentences: Sequence[str]) -> str:
    """One sentence introducing `sentences` as the answer to `question`, or "" when the model wrote none."""
    completion = await model.complete(glue_messages(question, sentences), max_tokens=GLUE_MAX_TOKENS)
    return first_sentence(completion.text)
