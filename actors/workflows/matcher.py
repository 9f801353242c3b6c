"""Which workflow a request is: the deterministic matcher (definitions' trigger patterns). Pure."""

from __future__ import annotations

import re
from collections.abc import Sequence

import msgspec

from actors.workflows.definitions import Definition
from actors.workflows.inputs import request_text


class Matched(msgspec.Struct, frozen=True):
    definition: Definition
    reason: str


def trigger(definition: Definition, text: str) -> re.Match[str] | None:
    for pattern in definition.triggers:
        if found := re.search(pattern, text, re.IGNORECASE):
            return found
    return None


def match(definitions: Sequence[Definition], text: str, tenant: str) -> Matched | None:
    """The highest-priority definition serving `tenant` whose trigger matches (file order breaks ties; a
    tenant's definition hides a shipped one of the same name)."""
    text = request_text(text)
    seen: set[str] = set()
    best: Matched | None = None
    for definition in definitions:
        if definition.name in seen or not definition.serves(tenant):
            continue
        seen.add(definition.name)
        found = trigger(definition, text)
        if found and (best is None or definition.priority > best.definition.priority):
            best = Matched(definition, f"workflow {definition.name}: the request says '{found.group(0)}'")
    return best
