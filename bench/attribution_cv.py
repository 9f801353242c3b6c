"""Would other features make post-hoc attribution precise? Two-fold precision of the most confident ones.

    .venv/bin/python -m bench.attribution_cv

The judged SmolLM2 claims of `bench.attribution` (ANSWERS, LABELS), split into its two halves. For each
feature set, the logistic model is fitted on one half and ranks the claims of the other by the probability
of their best passage; the figure is how many of the k most confident claims of each held-out half name a
passage that supports them, both folds added up (k per half, so 2k in all). The feature sets: the shipped
ones (`actors.attribution.FEATURES`), and the shipped ones plus, per (claim, passage) pair:

- `aligned`: the share of the claim's content words (the question's included), of its novel words and of
  its word trigrams found in the passage's best window of two consecutive sentences (entailment-style: the
  claim's words in one place, not scattered over the passage);
- `question`: the share of the claim's words the question already has, and how many novel words it has;
- `position`: the sentence's place in the answer, and the share of its words an earlier sentence had;
- `negation`: the claim and its best window disagree on a negation (not, no, never, n't, ...).

A feature set that could carry a 90% threshold would show about 90% here at the k it attributes.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence

import msgspec

from actors import attribution as a
from bench.attribution import (
    Answer,
    Claim,
    Judged,
    Model,
    all_claims,
    embedding,
    fit,
    halves,
    load_answers,
    load_labels,
    probabilities,
    settings,
)

NEGATION = re.compile(r"\b(?:not|no|never|cannot|none|nothing|nor)\b|n't\b", re.IGNORECASE)
WINDOW_SENTENCES = 2
CAP = 6
KS = (5, 10, 15, 25, 40)
Extra = Callable[[Claim, str, Answer], list[float]]


def _windows(passage: str) -> list[str]:
    sentences = [passage[s:e] for s, e in a.split_sentences(passage)] or [passage]
    last = max(1, len(sentences) - WINDOW_SENTENCES + 1)
    return [" ".join(sentences[i : i + WINDOW_SENTENCES]) for i in range(last)]


def _trigrams(words: Sequence[str]) -> set[tuple[str, ...]]:
    return set(zip(words, words[1:], words[2:], strict=False))


def _share(part: set[object], whole: set[object]) -> float:
    return len(part & whole) / len(part) if part else 0.0


def _best_window(claim: Claim, passage: str, answer: Answer) -> tuple[float, float, float, bool]:
    words: set[object] = set(a.content_words(claim.text))
    novel: set[object] = set(a.novel_words(claim.text, answer.question))
    trigrams: set[object] = set(_trigrams(a.word_sequence(claim.text)))
    best = (0.0, 0.0, 0.0, False)
    for window in _windows(passage):
        found: set[object] = set(a.content_words(window))
        shares = (_share(words, found), _share(novel, found))
        if shares > best[:2]:
            grams: set[object] = set(_trigrams(a.word_sequence(window)))
            best = (*shares, _share(trigrams, grams), bool(NEGATION.search(window)))
    return best


def aligned(claim: Claim, passage: str, answer: Answer) -> list[float]:
    return list(_best_window(claim, passage, answer)[:3])


def question(claim: Claim, passage: str, answer: Answer) -> list[float]:
    words: set[object] = set(a.content_words(claim.text))
    asked: set[object] = set(a.content_words(answer.question))
    return [_share(words, asked), min(len(words - asked), CAP) / CAP]


def position(claim: Claim, passage: str, answer: Answer) -> list[float]:
    at = max(0, answer.text.find(claim.text))
    index = sum(1 for _, end in a.split_sentences(answer.text) if end <= at)
    earlier: set[object] = set(a.content_words(answer.text[:at]))
    return [min(index, CAP) / CAP, _share(set(a.content_words(claim.text)), earlier)]


def negation(claim: Claim, passage: str, answer: Answer) -> list[float]:
    window_negated = _best_window(claim, passage, answer)[3]
    return [float(bool(NEGATION.search(claim.text)) != window_negated)]


FEATURE_SETS: dict[str, tuple[Extra, ...]] = {
    "shipped": (),
    "+aligned": (aligned,),
    "+question": (question,),
    "+position": (position,),
    "+negation": (negation,),
    "+all four": (aligned, question, position, negation),
}


def extended(claim: Claim, answer: Answer, extras: Sequence[Extra]) -> Claim:
    texts = {p.n: p.text for p in answer.passages}
    rows = tuple(
        (*row, *(x for extra in extras for x in extra(claim, texts[n], answer)))
        for row, n in zip(claim.features, claim.numbers, strict=True)
    )
    return msgspec.structs.replace(claim, features=rows)


def ranked(items: Judged, model: Model) -> list[bool]:
    """Each claim's best passage by the model, most confident first: does that passage support it?"""
    scored = []
    for claim, truth in items:
        if claim.cut:
            continue
        p = probabilities(claim, model)
        best = max(range(len(p)), key=lambda j: p[j])
        scored.append((p[best], claim.numbers[best] in truth))
    return [right for _, right in sorted(scored, key=lambda s: -s[0])]


def two_fold(first: Judged, second: Judged) -> list[list[bool]]:
    folds = []
    for train, test in ((first, second), (second, first)):
        weights, bias = fit(train)
        folds.append(ranked(test, Model(weights=weights, bias=bias, threshold=0.0)))
    return folds


def main() -> None:
    answers = load_answers()
    by_qid = {answer.qid: answer for answer in answers}
    claims = asyncio.run(all_claims(answers, embedding(settings())))
    labels = load_labels()
    print(f"{len(claims)} judged claims of {len(answers)} answers; two folds, k per held-out half")
    for name, extras in FEATURE_SETS.items():
        mine = [extended(c, by_qid[c.qid], extras) for c in claims]
        folds = two_fold(*halves(answers, mine, labels))
        cells = []
        for k in KS:
            right = sum(sum(fold[:k]) for fold in folds)
            cells.append(f"top {2 * k}: {right}/{2 * k} ({right / (2 * k):.0%})")
        print(f"{name:>10}  " + "  ".join(cells))


if __name__ == "__main__":
    main()
