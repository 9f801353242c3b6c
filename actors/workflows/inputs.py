"""What code extracts from a request: document names, e-mail addresses, a topic, comparison fields.

Pure and deterministic (regular expressions, no model): the same text always gives the same inputs, so a
replayed run plans the same steps. Names are matched against the catalog's titles later, by a tool.
"""

from __future__ import annotations

import re

import msgspec

from actors.tools.email import ADDRESS

SCRIPT_MARKER = re.compile(r"^\s*\[script:[^\]]*\]\s*")  # the scripted test model's routing prefix
EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
NAMES_AFTER = re.compile(
    r"\b(?:compare|comparing|comparison of|summari[sz]e|summary of|tl;?dr(?: of)?|between)\s+(?P<body>.+)",
    re.IGNORECASE,
)
NAMES_END = re.compile(
    r"\s+(?:in|into|as|on|by|regarding|in terms of|for|from|with respect to)\s+(?:a|an|the|one|their|terms)\b"
    r"|\s+(?:on|regarding|in terms of|with respect to)\s"
    r"|,?\s+(?:and|then)\s+(?:e-?mail|send|mail|post|forward|share)\b|\s+(?:e-?mail|send)\s"
    r"|\s+to\s+\S+@|[?!;:](?:\s|$)|\.(?:\s|$)",
    re.IGNORECASE,
)
SEPARATOR = re.compile(r"\s*,\s*(?:and\s+|&\s+)?|\s+(?:and|&|vs\.?|versus|with|to|against)\s+|\s*/\s*", re.I)
LEADING = re.compile(r"^(?:(?:the|these|those|our|my|both|all|of|a|an|two|three|four|five)\s+)+", re.I)
TRAILING = re.compile(
    r"(?:(?:^|\s+)(?:licen[cs]es?|documents?|docs?|contracts?|agreements?|polic(?:y|ies)|files?|texts?|pages?))+$",
    re.IGNORECASE,
)
LEADING_LINK = re.compile(r"^(?:to|with|against)\s+", re.I)
GENERIC = frozenset({"it", "them", "this", "that", "these", "those", "document", "documents", "each", "all"})
FIELDS = re.compile(
    r"\b(?:on|regarding|in terms of|with respect to|by)\s+(?P<fields>[^.?!;:]+?)"
    r"(?=\s+(?:in|into|as)\s+(?:a|an|one)\s+table|,?\s+(?:and|then)\s+(?:e-?mail|send|mail)\b|[.?!;:]|$)",
    re.IGNORECASE,
)
TOPIC = re.compile(
    r"\b(?:about|on|regarding|mentioning|covering|concerning|that discuss|related to)\s+(?P<topic>.+?)"
    r"(?=,?\s+(?:and|then)\s+(?:e-?mail|send|mail|list|cite)\b|\s+with\s+citations|[?!;]|\.(?:\s|$)|$)",
    re.IGNORECASE,
)
MAX_NAMES = 5
MAX_FIELDS = 6


class Inputs(msgspec.Struct, frozen=True, kw_only=True):
    names: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    topic: str = ""
    fields: tuple[str, ...] = ()


def request_text(text: str) -> str:
    return SCRIPT_MARKER.sub("", text).strip()


def extract(text: str, after: int = 0) -> Inputs:
    """The request's inputs; `after`: where the workflow's trigger matched in the request text (names
    follow it when no "compare" / "summarise" phrase introduces them)."""
    text = request_text(text)
    names = document_names(text, after)
    return Inputs(names=names, emails=addresses(text), topic=topic(text), fields=fields(text))


def addresses(text: str) -> tuple[str, ...]:
    found = [m.group(0).rstrip(".") for m in EMAIL.finditer(text)]
    valid = [a for a in found if ADDRESS.match(a)]
    return tuple(dict.fromkeys(valid))


def document_names(text: str, after: int = 0) -> tuple[str, ...]:
    """The names after "compare" / "summarise" / "summary of" (else after the trigger), split on commas
    and "and"."""
    text = EMAIL.sub(" ", text)
    match = NAMES_AFTER.search(text)
    if match is None and not after:
        return ()
    body = match.group("body") if match else text[after:]
    end = NAMES_END.search(body)
    body = body[: end.start()] if end else body
    names = [_clean(part) for part in SEPARATOR.split(body)]
    return tuple(dict.fromkeys(n for n in names if n and n.lower() not in GENERIC))[:MAX_NAMES]


def _clean(part: str) -> str:
    name = TRAILING.sub("", LEADING.sub("", LEADING_LINK.sub("", part.strip(" \t'\"“”‘’()"))))
    return name.strip(" \t'\"“”‘’()")


def topic(text: str) -> str:
    match = TOPIC.search(EMAIL.sub(" ", text))
    return match.group("topic").strip(" ,;'\"“”") if match else ""


def fields(text: str) -> tuple[str, ...]:
    match = FIELDS.search(EMAIL.sub(" ", text))
    if match is None:
        return ()
    parts = [p.strip(" '\"") for p in SEPARATOR.split(match.group("fields"))]
    return tuple(dict.fromkeys(p.lower() for p in parts if p))[:MAX_FIELDS]
