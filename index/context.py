"""Contextual prefixes: a short text placed before each chunk when it is embedded and BM25-indexed.

Two kinds, both recorded in the index manifest through their version constants:

- `deterministic_context`: the document title and the section's heading path. Free, always available.
- `llm_context`: Anthropic's contextual-retrieval prompt ("Introducing Contextual Retrieval", 2024) sent to
  an LLM, its answer cleaned and capped, on top of the deterministic context. Any failure falls back to the
  deterministic context, so ingest never stops for an LLM.

A prefix is only ever `Chunk.context`: it is indexed, never shown or quoted as the chunk's text, and the
LLM's answer is flattened to one plain line so it cannot smuggle structure (tags, fences, role markers)
into what later gets pasted into prompts.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable

from index.types import ParsedDocument, Section

log = logging.getLogger(__name__)

CONTEXT_VERSION = "title-heading-1"
LLM_CONTEXT_VERSION = f"anthropic-contextual-1+{CONTEXT_VERSION}"
LLM_CONTEXT_MAX_CHARS = 300
LLM_DOCUMENT_BUDGET_CHARS = 12_000  # ~3K tokens: fits small local models' windows with room to answer
DOCUMENT_HEAD_SHARE = 0.25  # of the budget, taken from the start of a long document (title, intro)
ELISION = "\n[…]\n"

CONTEXTUAL_PROMPT = """<document>
{document}
</document>
Here is the chunk we want to situate within the whole document
<chunk>
{chunk}
</chunk>
Please give a short succinct context to situate this chunk within the overall document for the purposes \
of improving search retrieval of the chunk. Answer only with the succinct context and nothing else."""

_PROMPT_TAG = re.compile(r"</?\s*(document|chunk)\s*>", re.IGNORECASE)
_ANY_TAG = re.compile(r"</?[A-Za-z][^<>]{0,80}>")
_ANSWER_LABEL = re.compile(r"^(?:succinct\s+)?context\s*:\s*", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def context_version(use_llm: bool) -> str:
    return LLM_CONTEXT_VERSION if use_llm else CONTEXT_VERSION


def heading_path(title: str, headings: tuple[str, ...]) -> tuple[str, ...]:
    """A section's headings without a leading one that repeats the title (a page's H1 usually does)."""
    kept = tuple(_one_line(h) for h in headings if h.strip())
    if kept and _same_words(kept[0], title):
        return kept[1:]
    return kept


def deterministic_context(doc: ParsedDocument, section: Section) -> str:
    """E.g. "Document: argparse — Parser for command-line options. Section: Examples > Sum"."""
    title = _one_line(doc.title)
    headings = heading_path(title, section.headings)
    parts = []
    if title:
        parts.append(f"Document: {title}" + ("" if title.endswith((".", "!", "?")) else "."))
    if headings:
        parts.append(f"Section: {' > '.join(headings)}")
    return " ".join(parts)


def contextual_prompt(document_text: str, chunk_text: str) -> str:
    """The published contextual-retrieval prompt, with the texts unable to close its tags early."""
    return CONTEXTUAL_PROMPT.format(document=_defuse_tags(document_text), chunk=_defuse_tags(chunk_text))


async def llm_context(
    complete: Callable[[str], Awaitable[str]],
    doc_text: str,
    chunk_text: str,
    fallback: str,
    *,
    keep_fallback: bool = True,
) -> str:
    """An LLM-written context for `chunk_text`; `fallback` (the deterministic context) on any failure.

    With `keep_fallback`, the result is the deterministic context followed by the LLM's sentence, so the
    title and heading path stay in the prefix however weak the model.
    """
    prompt = contextual_prompt(fit_document(doc_text, chunk_text), chunk_text)
    try:
        answer = clean_answer(await complete(prompt))
    except Exception as exc:  # a context is an optional improvement: never fail ingest over it
        log.warning("contextual prefix fell back to the deterministic one: %s: %s", type(exc).__name__, exc)
        return fallback
    if not answer:
        return fallback
    return f"{fallback} {answer}".strip() if keep_fallback else answer


def fit_document(doc_text: str, chunk_text: str, budget_chars: int = LLM_DOCUMENT_BUDGET_CHARS) -> str:
    """The document cut to a budget: its start, and the stretch around the chunk when it is found."""
    if len(doc_text) <= budget_chars:
        return doc_text
    head_chars = int(budget_chars * DOCUMENT_HEAD_SHARE)
    at = doc_text.find(chunk_text[:200]) if chunk_text else -1
    if at < 0:
        return doc_text[:budget_chars] + ELISION
    window = budget_chars - head_chars
    start = max(head_chars, min(at - window // 3, len(doc_text) - window))
    parts = [doc_text[:head_chars]]
    parts.append(ELISION if start > head_chars else "")
    parts.append(doc_text[start : start + window])
    parts.append(ELISION if start + window < len(doc_text) else "")
    return "".join(parts)


def clean_answer(answer: str, max_chars: int = LLM_CONTEXT_MAX_CHARS) -> str:
    """One plain line of at most `max_chars`, cut at a sentence or word boundary; "" if nothing usable."""
    text = _ANY_TAG.sub(" ", answer).replace("```", " ")
    text = _one_line(text).strip(" \"'`*#>-")
    text = _ANSWER_LABEL.sub("", text)
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    sentence_ends = [m.end() for m in _SENTENCE_END.finditer(cut)]
    if sentence_ends and sentence_ends[-1] >= max_chars // 2:
        return cut[: sentence_ends[-1]]
    return cut.rsplit(" ", 1)[0].rstrip(" ,;:") + "…"


def _defuse_tags(text: str) -> str:
    return _PROMPT_TAG.sub(lambda m: m.group(0).replace("<", "‹").replace(">", "›"), text)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _same_words(a: str, b: str) -> bool:
    def words(s: str) -> list[str]:
        return re.findall(r"\w+", s.casefold())

    return bool(words(a)) and words(a) == words(b)
