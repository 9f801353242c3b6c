"""compare_documents: the same named fields pulled from several documents into one table.

Extraction is deterministic and honest: each cell quotes the one sentence of that document that best
matches the field (its words and a few synonyms), trimmed; "—" when nothing matches. Nothing is invented.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from typing import Annotated

import msgspec

from actors.tools.knowledge import DocId, knowledge_of
from actors.tools.registry import Tool, ToolArgs, ToolContext, ToolOutput, fence_data
from store.exceptions import ToolError
from store.tool_payloads import ComparisonRow, ComparisonTable

MIN_DOCS, MAX_DOCS = 2, 5
MAX_FIELDS = 10
MAX_FIELD_CHARS = 80
CELL_CHARS = 200
ABSENT = "—"

FieldName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=MAX_FIELD_CHARS, pattern=r"^[^\x00-\x1f]*\S[^\x00-\x1f]*$")
]

# Per field word (matched as a prefix of the field's stemmed word): synonyms are evidence on their own
# ("as is" is about warranty); boosters only rank sentences that are already about the field ("grant" picks
# the patent *grant* among the sentences mentioning patents). Terms match at a word start, ignoring case.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "warranty": ("as is", "merchantability", "fitness for a particular purpose"),
    "liability": ("liable", "damages"),
    "attribution": ("notice", "credit", "acknowledg"),
    "notice": ("attribution",),
    "trademark": ("trade name", "service mark"),
    "termination": ("expire",),
    "license": ("permission",),
    "redistribution": ("distribut",),
    "distribution": ("redistribut",),
    "modification": ("derivative", "changes"),
    "copyleft": ("same license", "share alike"),
    "law": ("jurisdiction",),
    "price": ("fee", "payment", "invoice"),
    "fee": ("price", "payment"),
    "payment": ("invoice", "fee"),
    "confidentiality": ("non-disclosure",),
    "term": ("expire", "renew", "effective date"),
}
BOOSTERS: dict[str, tuple[str, ...]] = {
    "patent": ("grant", "licens"),
    "warranty": ("disclaim",),
    "attribution": ("copyright notice", "retain"),
    "license": ("grant",),
    "law": ("governed by", "laws of"),
}
STOPWORDS = frozenset(
    {
        "a",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "by",
        "for",
        "from",
        "in",
        "is",
        "it",
        "of",
        "on",
        "or",
    }
    | {"the", "to", "with", "what", "which", "who"}
)
PARAGRAPH_END = re.compile(r"\n\s*\n|\n(?=\s*(?:[-*•]|\d+[.)])\s)")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
HEADING_CHARS = 40  # a "sentence" this short is a heading ("Disclaimer of Warranty."): kept with what follows
MD_SPECIAL = re.compile(r"([\\|<>`\[\]])")
WORD = re.compile(r"[a-z0-9]+")


class CompareArgs(ToolArgs, frozen=True):
    doc_ids: Annotated[
        list[DocId],
        msgspec.Meta(min_length=MIN_DOCS, max_length=MAX_DOCS, description="documents to compare"),
    ]
    fields: Annotated[
        list[FieldName],
        msgspec.Meta(min_length=1, max_length=MAX_FIELDS, description="what to extract, e.g. 'warranty'"),
    ]

    def __post_init__(self) -> None:
        if len(set(self.doc_ids)) != len(self.doc_ids):
            raise ValueError("doc_ids must not repeat a document")
        if len({f.strip().lower() for f in self.fields}) != len(self.fields):
            raise ValueError("fields must not repeat a field")


def _stem(word: str) -> str:
    """A light stemmer for prefix matching: "warranty" → "warrant" (matches "warranties")."""
    for suffix in ("ations", "ation", "ions", "ion", "ies", "ing", "ed", "es", "s", "y"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


class FieldTerms(msgspec.Struct, frozen=True):
    own: tuple[re.Pattern[str], ...]  # the field's own (stemmed) words
    synonyms: tuple[re.Pattern[str], ...]
    boosters: tuple[re.Pattern[str], ...]


def _related(own: Sequence[str], table: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    found: list[str] = []
    for word in own:
        for key, terms in table.items():
            if word.startswith(key) or (len(word) >= 4 and key.startswith(word)):
                found.extend(t for t in terms if t not in own)
    return tuple(dict.fromkeys(found))


def field_terms(field: str) -> FieldTerms:
    own = tuple(dict.fromkeys(_stem(w) for w in WORD.findall(field.lower()) if w not in STOPWORDS))
    return FieldTerms(
        own=tuple(_prefix_pattern(t) for t in own),
        synonyms=tuple(_prefix_pattern(t) for t in _related(own, SYNONYMS)),
        boosters=tuple(_prefix_pattern(t) for t in _related(own, BOOSTERS)),
    )


def _prefix_pattern(term: str) -> re.Pattern[str]:
    return re.compile(r"\b" + r"\s+".join(re.escape(part) for part in term.split()), re.IGNORECASE)


def split_sentences(text: str) -> list[str]:
    """Sentences, one line each; a short one (a run-in heading) is joined to the next in its paragraph."""
    sentences: list[str] = []
    for paragraph in PARAGRAPH_END.split(text):
        pending = ""
        for part in SENTENCE_END.split(paragraph):
            sentence = " ".join(f"{pending} {part}".split())
            if len(" ".join(part.split())) < HEADING_CHARS:
                pending = sentence
                continue
            sentences.append(sentence)
            pending = ""
        if len(pending) >= 3:
            sentences.append(pending)
    return sentences


def _score(sentence: str, terms: FieldTerms) -> int:
    """0 unless the sentence is about the field: it names the field (both words of a multi-word field,
    at least) or one of its synonyms. Then own words count 3 (5 in the opening words, where a run-in
    heading is), synonyms and boosters 1."""
    own_hits = [p for p in terms.own if p.search(sentence)]
    synonym_hits = sum(1 for p in terms.synonyms if p.search(sentence))
    if len(own_hits) < min(len(terms.own), 2) and not synonym_hits:
        return 0
    opening = sentence[:HEADING_CHARS]
    booster_hits = sum(1 for p in terms.boosters if p.search(sentence))
    return sum(5 if p.search(opening) else 3 for p in own_hits) + synonym_hits + booster_hits


def trim(text: str, limit: int = CELL_CHARS) -> str:
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut).rstrip(" ,;:") + "…"


def extract_field(text: str, field: str) -> str | None:
    """The best-matching sentence for `field`, trimmed; None when no sentence mentions it.

    Ties go to the earliest sentence, so the result depends on the text alone."""
    terms = field_terms(field)
    best, best_score = None, 0
    for sentence in split_sentences(text):
        score = _score(sentence, terms)
        if score > best_score:
            best, best_score = sentence, score
    return trim(best) if best is not None else None


def _md_cell(text: str) -> str:
    """One table cell: on one line, and with no character that could end the cell or open HTML or a link."""
    return MD_SPECIAL.sub(r"\\\1", " ".join(text.split()))


def render_markdown(fields: Sequence[str], rows: Sequence[ComparisonRow]) -> str:
    header = ["Document", *fields]
    lines = [
        "| " + " | ".join(_md_cell(h) for h in header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
    ]
    for row in rows:
        cells = [row.title, *(row.values[f] or ABSENT for f in fields)]
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def render_html(fields: Sequence[str], rows: Sequence[ComparisonRow]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in ["Document", *fields])
    body = []
    for row in rows:
        cells = "".join(f"<td>{esc(row.values[f] or ABSENT)}</td>" for f in fields)
        body.append(f'<tr><th scope="row">{esc(row.title)}</th>{cells}</tr>')
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>"


def compare_texts(docs: Sequence[tuple[str, str, str]], fields: Sequence[str]) -> list[ComparisonRow]:
    """One row per (doc_id, title, text) triple: each field's quoted sentence, None when absent."""
    return [
        ComparisonRow(doc_id=doc_id, title=title, values={f: extract_field(text, f) for f in fields})
        for doc_id, title, text in docs
    ]


async def compare_documents(args: CompareArgs, ctx: ToolContext) -> ToolOutput:
    knowledge = knowledge_of(ctx)
    docs: list[tuple[str, str, str]] = []
    for doc_id in args.doc_ids:
        found = await knowledge.read(doc_id, ctx.principal)
        if found is None:
            raise ToolError(f"document not found: {doc_id}", doc_id=doc_id)
        docs.append((doc_id, found[0], found[1]))
    rows = compare_texts(docs, args.fields)
    markdown = render_markdown(args.fields, rows)
    text = fence_data("compare_documents table (quotes from the documents)", markdown)
    table = ComparisonTable(fields=tuple(args.fields), rows=tuple(rows), markdown=markdown,
                            html=render_html(args.fields, rows))  # fmt: skip
    return ToolOutput(text=text, data=table)


COMPARE_TOOL: Tool[CompareArgs] = Tool(
    name="compare_documents",
    description=(
        "Compare 2-5 documents on named fields (e.g. 'patent', 'warranty', 'attribution'). Each cell quotes "
        "the best-matching sentence of that document, or '—'. Returns a Markdown table (HTML in data)."
    ),
    args_type=CompareArgs,
    run=compare_documents,
    needs_knowledge_base=True,
)
