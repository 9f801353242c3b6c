"""The clear question back to the user when a workflow's input is missing or ambiguous. Pure text."""

from __future__ import annotations

from collections.abc import Sequence

from actors.workflows.definitions import Definition, FindDocuments
from store.tool_payloads import TitleMatch


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(f"“{n}”" for n in names)


def names_missing(definition: Definition, step: FindDocuments, names: Sequence[str]) -> str:
    if step.max_docs == 1:
        want = "which document should I use? Name it by its title"
    else:
        want = f"which documents should I use? Name {step.min_docs} to {step.max_docs} of them by title"
    found = f" I only found {_quoted(names)} in your request." if names else ""
    example = "e.g. “MIT, BSD-3-Clause and Apache-2.0”"
    return f"To run “{definition.name}” I need to know {want}, {example}.{found}"


def too_many(step: FindDocuments, names: Sequence[str]) -> str:
    return f"I can use at most {step.max_docs} document(s) here, and you named {_quoted(names)}: which ones?"


def unresolved(matches: Sequence[TitleMatch]) -> str | None:
    """One line per name that matched no document or several; None when every name matched one."""
    lines = []
    for m in matches:
        if m.candidates:
            lines.append(f"- “{m.name}” could be: {'; '.join(c.title for c in m.candidates)}. Which one?")
        elif not m.doc_id:
            lines.append(f"- “{m.name}” matches no document you may read. What is its title?")
    if not lines:
        return None
    return "Before I go on, please tell me which documents you mean:\n" + "\n".join(lines)


def too_few(step: FindDocuments, found: int) -> str:
    return f"I need at least {step.min_docs} different documents and found {found}: which others?"


def topic_missing(definition: Definition) -> str:
    return f"To run “{definition.name}” I need a topic: which subject should the documents be about?"


def address_missing() -> str:
    return "Who should I email it to? Please give an e-mail address."
