"""The answer cache's lexical exactness guard: may two questions share an answer, as far as their words say?

    verdict = same_question("What is the refund policy?", "What is the return policy?")
    verdict.ok        # False
    verdict.reason    # "different content words: refund / return"

Two questions close in embedding space can still ask different things ("refund" vs "return", "Perl 5" vs
"Perl 6", "can I" vs "can I not"). The guard refuses a candidate when the two differ in
  numbers         any token with a digit ("5", "v2", "2024");
  negation        one is negated and the other is not ("not", "no", "never", "without", "n't", ...);
  names           a capitalised or mixed-case word other than the first (named entities, acronyms) that
                  the other question lacks in any case ("perl" still matches "Perl");
  content words   a substitution: each question has a content word the other lacks (stems compared;
                  function words and question frames such as "how can I", "what is the way to" are
                  ignored). A word only one of them adds is allowed ("the refund policy for contractors"
                  vs "the refund policy" stays a candidate: the embedding threshold decides).
Pure and deterministic; bench/answer_cache.py measures what it refuses on paraphrases and near misses.
"""

from __future__ import annotations

import re

import msgspec

from index.followup import FUNCTION_WORDS

TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_'+#.-]*[A-Za-z0-9+#]|[A-Za-z0-9]")
NEGATIONS = frozenset("not no never without none nothing nobody nowhere neither nor cannot".split())  # noqa: SIM905
# Words that frame a question without naming its subject ("how can I get", "is there a way to").
FRAME_WORDS = frozenset(
    """get obtain find know tell show explain way ways possible able please use using need want wish like
    go going make there it this that one something anything thing things best good correct proper right
    actually really exactly simply easily just still""".split()  # noqa: SIM905
)
SUFFIXES = ("ing", "ed", "es", "s", "ly")
MIN_STEM = 3


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    reason: str = ""


def _stem(word: str) -> str:
    for suffix in SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= MIN_STEM:
            return word[: -len(suffix)]
    return word


def _is_name(token: str, first: bool) -> bool:
    inner = token[1:]
    if any(c.isupper() for c in inner):
        return True  # CSV, GNU, McKinsey, iPhone
    return token[0].isupper() and not first and token != "I"


class Terms(msgspec.Struct, frozen=True, kw_only=True):
    numbers: frozenset[str]
    names: frozenset[str]
    negated: bool
    content: frozenset[str]
    words: frozenset[str]  # every token, lower-cased


def terms(text: str) -> Terms:
    tokens = TOKEN.findall(text)
    lowered = [t.lower() for t in tokens]
    negated = any(t in NEGATIONS or t.endswith("n't") for t in lowered)
    numbers = frozenset(t for t in lowered if any(c.isdigit() for c in t))
    names = frozenset(t.lower() for n, t in enumerate(tokens) if _is_name(t, n == 0))
    content = frozenset(
        _stem(t.removesuffix("'s"))
        for t in lowered
        if t not in FUNCTION_WORDS and t not in FRAME_WORDS and t not in NEGATIONS and not t.endswith("n't")
    )
    return Terms(
        numbers=numbers, names=names, negated=negated, content=content - numbers, words=frozenset(lowered)
    )


def same_question(a: str, b: str) -> Verdict:
    """Whether `a` and `b` may share an answer as far as their words go (see the module doc)."""
    ta, tb = terms(a), terms(b)
    if ta.numbers != tb.numbers:
        return Verdict(ok=False, reason=f"different numbers: {_diff(ta.numbers, tb.numbers)}")
    if ta.negated != tb.negated:
        return Verdict(ok=False, reason="one question is negated, the other is not")
    if not ta.names <= tb.words or not tb.names <= ta.words:  # a name the other lacks (in any case)
        return Verdict(ok=False, reason=f"different names: {_diff(ta.names - tb.words, tb.names - ta.words)}")
    only_a, only_b = ta.content - tb.content, tb.content - ta.content
    if only_a and only_b:
        return Verdict(ok=False, reason=f"different content words: {_diff(ta.content, tb.content)}")
    return Verdict(ok=True)


def _diff(a: frozenset[str], b: frozenset[str]) -> str:
    return f"{' '.join(sorted(a - b)) or '-'} / {' '.join(sorted(b - a)) or '-'}"
