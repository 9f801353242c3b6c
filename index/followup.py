"""History-aware retrieval queries: a follow-up question is searched with the subject of the turn before it.

    query = retrieval_query("and how do I write them?", ["How do I read CSV files?"])
    # -> "and how do I write them? read csv files"

A question is a follow-up when it leans on the conversation instead of naming its subject: it refers back
(a pronoun such as "it", "them", "this", "that one"), it continues ("and …", "what about …", "also …"), or it
is too short to stand alone (at most SHORT_FOLLOW_UP_WORDS content words, e.g. "and on Windows?"). A
follow-up is searched as the previous user question followed by the follow-up: dense retrieval embeds the
pair, so the subject steers the vector and the follow-up's own words pick the aspect; BM25 gets both bags
of words. A question that names its own subject is searched as it is, so a change of topic never drags the
old one along. Deterministic and pure (no model): the same log replays to the same query, and the query
searched is recorded in `retrieval_done`. Measured by bench/followups.py (README).

When a capable model is configured, the conversation asks it to rewrite a follow-up as a standalone query
(actors.plan's rewrite step, logged like every model call); `rewritten_query` turns its reply into the query,
and falls back to `retrieval_query` when the reply is unusable (empty, or longer than a query should be).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

SHORT_FOLLOW_UP_WORDS = 3  # content words: "how do I delete them", "where is it kept"
SUBJECT_WORDS = 4  # of the previous question added to a follow-up
CONTEXT_CHARS = 600  # of the previous question kept in the query (a pasted document must not take over)
REFERRING = frozenset(
    "it its it's they them their theirs this that these those ones he she him her his".split()  # noqa: SIM905
)
CONTINUATIONS = re.compile(
    r"^\s*(?:and|also|or|but|so|then|what about|how about|same for|and if|what if|why not|else)\b",
    re.IGNORECASE,
)
FUNCTION_WORDS = frozenset(
    """a an the of to in on for with at by from as or and not no if then than so any some is are was were be
    been am do does did can could would should will shall may might must i me my we our you your how what why
    when where which who whom whose there here about into over under also just more most less else""".split()  # noqa: SIM905
)
WORD = re.compile(r"[A-Za-z0-9_']+")


def content_words(text: str) -> list[str]:
    return [w for w in (m.lower() for m in WORD.findall(text)) if w not in FUNCTION_WORDS | REFERRING]


def is_follow_up(question: str) -> bool:
    """Whether `question` leans on the turn before it (see the module doc)."""
    if CONTINUATIONS.match(question):
        return True
    words = [w.lower() for w in WORD.findall(question)]
    content = [w for w in words if w not in FUNCTION_WORDS | REFERRING]
    for n, word in enumerate(words):
        if word in REFERRING and (len(content) <= SHORT_FOLLOW_UP_WORDS or not _has_content(words[:n])):
            return True  # "what about them?", "how do I do that", "which version of it should I use"
    return False


def _has_content(words: Sequence[str]) -> bool:
    return any(w not in FUNCTION_WORDS and w not in REFERRING for w in words)


def subject_words(previous: str, question: str) -> list[str]:
    """The previous question's content words the follow-up does not repeat, first SUBJECT_WORDS of them."""
    mine = set(content_words(question))
    return [w for w in dict.fromkeys(content_words(previous)) if w not in mine][:SUBJECT_WORDS]


def retrieval_query(question: str, earlier_questions: Sequence[str]) -> str:
    """What to search for `question`, given the user's earlier questions (oldest first)."""
    if not earlier_questions or not is_follow_up(question):
        return question
    subject = subject_words(earlier_questions[-1][:CONTEXT_CHARS], question)
    return f"{question.strip()} {' '.join(subject)}" if subject else question


REWRITE_MAX_CHARS = 300  # a model's standalone query longer than this is not a query: the rule is used
REWRITE_PREFIX = re.compile(r"^\s*(?:standalone\s+)?(?:search\s+)?(?:query|question)\s*:\s*", re.IGNORECASE)


def rewritten_query(reply: str, question: str, earlier: Sequence[str]) -> str:
    """The model's standalone query (its first line, without a "Query:" label or quotes), else the rule's."""
    line = next((part.strip() for part in reply.splitlines() if part.strip()), "")
    line = REWRITE_PREFIX.sub("", line).strip().strip("\"'`“”").strip()
    if not line or len(line) > REWRITE_MAX_CHARS or not content_words(line):
        return retrieval_query(question, earlier)
    return line
