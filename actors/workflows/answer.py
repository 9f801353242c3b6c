"""The text a workflow run ends with (and e-mails): its title, each step's output with `[n]` citations,
and what happened to each delivery. Pure: built from the recorded results, so a replay writes the same."""

from __future__ import annotations

import re

from actors.workflows import progress
from actors.workflows.definitions import Compare, HttpWrite, ListDocuments, SendEmail, Step, Summarise
from actors.workflows.run import Run
from actors.workflows.sources import numbered
from actors.workflows.summary import extractive_summary
from store.tool_payloads import ComparisonTable

ABSENT = "—"
SNIPPET_CHARS = 160
UNSAFE = {"|": "/", "[": "(", "]": ")"}  # a quote may not end a cell nor forge a citation marker
UNSAFE_CHARS = re.compile(r"[|\[\]]")


def title(run: Run) -> str:
    names = ", ".join(m.title for m in progress.documents(run)) or "the documents"
    text = run.definition.title.replace("{documents}", names)
    return text.replace("{topic}", run.inputs.topic or "your topic")


def cell(text: str) -> str:
    return UNSAFE_CHARS.sub(lambda m: UNSAFE[m.group(0)], " ".join(text.split()))


def table_markdown(run: Run, table: ComparisonTable) -> str:
    cites = numbered(run)
    lines = ["| Document | " + " | ".join(cell(f[:1].upper() + f[1:]) for f in table.fields) + " |",
             "| --- | " + " | ".join("---" for _ in table.fields) + " |"]  # fmt: skip
    for row in table.rows:
        marker = f" [{cites[row.doc_id]}]" if row.doc_id in cites else ""
        values = [cell(v) + marker if v else ABSENT for v in (row.values[f] for f in table.fields)]
        lines.append(f"| {cell(row.title)}{marker} | " + " | ".join(values) + " |")
    note = "Each cell quotes the one sentence of its document that best matches the field; — : none does."
    return "\n".join(lines) + "\n\n" + note


def summary_text(run: Run, index: int, step: Summarise) -> str:
    read = progress.read(run)
    if read is None:
        return ""
    document, text = read
    marker = f" [{numbered(run).get(document.doc_id, 1)}]"
    written = run.turn.llm_completed.get(index)
    if run.writer and written is not None and written.text.strip():
        return f"Summary of {document.title}{marker}, written by {written.model}:\n\n{written.text.strip()}"
    sentences = extractive_summary(text, step.sentences)
    label = (f"Extractive summary of {document.title}{marker}: {len(sentences)} of the document's own "
             "sentences, chosen by code (no model wrote this):")  # fmt: skip
    return label + "\n\n" + "\n".join(f"- {s}" for s in sentences)


def listing(run: Run) -> str:
    search = progress.search(run)
    if search is None or not search.hits:
        return f"No documents you may read are about “{run.inputs.topic}”."
    lines: list[str] = []
    for doc_id, n in numbered(run).items():
        hit = next(h for h in search.hits if h.n == n)
        where = f" ({cell(hit.heading)})" if hit.heading else ""
        name = cell(hit.title or doc_id)
        lines.append(f"{len(lines) + 1}. **{name}** [{n}]{where}: {cell(hit.snippet[:SNIPPET_CHARS])}…")
    return "\n".join(lines)


def content(run: Run, index: int, step: Step) -> str:
    match step:
        case Compare():
            table = progress.table(run)
            return table_markdown(run, table) if table else ""
        case Summarise():
            return summary_text(run, index, step)
        case ListDocuments():
            return listing(run)
        case _:
            return ""


def delivery(run: Run, index: int, step: Step) -> str:
    result = run.result(index)
    match step:
        case SendEmail() if result is not None:
            to = ", ".join(run.inputs.emails)
            return f"Not emailed to {to}: {result.error}." if result.error else f"Emailed to {to}."
        case HttpWrite(url=url) if result is not None:
            return f"Not sent to {url}: {result.error}." if result.error else f"Sent to {url}."
        case _:
            return ""


def body(run: Run) -> str:
    """The run's content: what an email carries."""
    parts = [content(run, i, s) for i, s in enumerate(run.definition.steps)]
    return f"{title(run)}\n\n" + "\n\n".join(p for p in parts if p) + sources_footer(run)


def sources_footer(run: Run) -> str:
    documents = {m.doc_id: m.title for m in progress.documents(run)}
    lines = [f"[{n}] {documents.get(d, d)} ({d})" for d, n in numbered(run).items()]
    return "\n\nSources:\n" + "\n".join(lines) if lines else ""


def answer(run: Run) -> str:
    steps = list(enumerate(run.definition.steps))
    parts = [content(run, i, s) for i, s in steps] + [delivery(run, i, s) for i, s in steps]
    return f"**{title(run)}**\n\n" + "\n\n".join(p for p in parts if p)
