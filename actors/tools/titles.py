"""Fuzzy matching of a name from a request ("MIT", "BSD-3-Clause", "Apache-2.0") against catalog titles.

Pure scoring. A document is known by its title, its doc_id's last segment and both together; a name
matches an alias exactly (1.0), or all its words are among the alias's words (0.6 up to 1.0, more for a
closer fit), or by spelling (difflib, at most 0.8). Below `ACCEPT` nothing matches; two candidates
within `TIE` of each other are ambiguous, and the user is asked which one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from difflib import SequenceMatcher

from store.tool_payloads import TitleCandidate, TitleMatch

ACCEPT = 0.6
TIE = 0.05
MAX_CANDIDATES = 4
TOKEN = re.compile(r"[a-z]+|\d+")
FILLER = frozenset({"the", "license", "licence", "document", "v", "version"})


def tokens(text: str) -> tuple[str, ...]:
    return tuple(TOKEN.findall(text.lower()))


def aliases(doc_id: str, title: str) -> list[tuple[str, ...]]:
    tail = tokens(doc_id.rsplit("/", 1)[-1])
    return [tokens(title), tail, tokens(title) + tail]


def alias_score(name: tuple[str, ...], alias: tuple[str, ...]) -> float:
    if not name or not alias:
        return 0.0
    if name == alias:
        return 1.0
    meaningful = [t for t in name if t not in FILLER] or list(name)
    if all(t in alias for t in meaningful):
        return 0.6 + 0.39 * len(meaningful) / len(set(alias))
    return 0.8 * SequenceMatcher(None, " ".join(name), " ".join(alias)).ratio()


def score(name: str, doc_id: str, title: str) -> float:
    wanted = tokens(name)
    return max(alias_score(wanted, alias) for alias in aliases(doc_id, title))


def match_name(name: str, documents: Sequence[tuple[str, str]]) -> TitleMatch:
    """The one document `name` names among (doc_id, title) pairs, or why not (no or several candidates)."""
    ranked = sorted(((score(name, d, t), d, t) for d, t in documents), key=lambda r: (-r[0], r[1]))
    close = [r for r in ranked if r[0] >= ACCEPT]
    if not close:
        return TitleMatch(name=name)
    best = close[0]
    rivals = [r for r in close[1:] if best[0] - r[0] < TIE]
    if rivals:
        candidates = tuple(TitleCandidate(doc_id=d, title=t) for _, d, t in [best, *rivals][:MAX_CANDIDATES])
        return TitleMatch(name=name, candidates=candidates)
    return TitleMatch(name=name, doc_id=best[1], title=best[2])
