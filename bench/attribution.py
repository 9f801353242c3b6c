"""Post-hoc citation attribution, measured: share of answer sentences attributed, precision on judged ones.

    .venv/bin/python -m bench.attribution --generate 12     # answers of the local model -> ANSWERS (slow;
                                                            # adds the questions ANSWERS does not have yet)
    .venv/bin/python -m bench.attribution --show            # claims, scores and markers, for judging
    .venv/bin/python -m bench.attribution                   # the figures

ANSWERS holds real SmolLM2 answers (the product's Q&A prompt, int8, the local passage count and max
tokens) to questions of perlfaq, debfaq and the demo golden set, with the passages the hybrid search gave
them (`bench.qa_sample`). LABELS holds, per answer and claim (the sentences `actors.attribution` scores,
by their text), the passage numbers that support the claim as a person judged them (an empty list: none
does). A claim is supported by a passage when the passage states what the claim says, or directly
implies it; a claim that is garbled, circular or says more than the passage does is not supported.

The labelled answers are split by position: the odd ones choose the weight and threshold (the lowest
threshold whose precision is at least TUNE_PRECISION there, for each weight the one attributing most),
the even ones are the held-out check. An attribution is correct when every passage it names supports
the claim. The figures: share of claims attributed over every answer, and precision on the held-out
judged claims that were attributed (the sample).
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Sequence
from pathlib import Path

import msgspec

from actors import attribution
from actors.attribution import Matrix, claims_of, features
from actors.llm.local import LocalBackend
from actors.prompts import qa_messages
from bench.qa_sample import REPO, bench_settings, qa_items
from index.embed import load_embedder
from store.settings import Settings

HERE = Path(__file__).resolve().parent
ANSWERS = HERE / "attribution_answers.json"
LABELS = HERE / "attribution_labels.json"
TUNE_PRECISION = 0.90
WEIGHTS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
THRESHOLDS = tuple(round(0.30 + 0.01 * i, 2) for i in range(66))


class Passage(msgspec.Struct, frozen=True, kw_only=True):
    n: int
    title: str
    heading: str
    text: str


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    collection: str
    qid: str
    question: str
    passages: tuple[Passage, ...]
    text: str


class Claim(msgspec.Struct, frozen=True, kw_only=True):
    qid: str
    text: str
    dense: tuple[float, ...]
    lexical: tuple[float, ...]
    numbers: tuple[int, ...]


def settings() -> Settings:
    model_dir = Path(os.environ.get("DOCENT_MODEL_DIR", str(REPO / ".cache" / "models"))).resolve()
    return bench_settings(REPO / ".cache", model_dir)


# ---- answers ---------------------------------------------------------------------------------------------


async def generate(s: Settings, per_collection: int, known: Sequence[Answer] = ()) -> list[Answer]:
    """Answers to `per_collection` questions of each collection after `known` (its questions skipped)."""
    backend = LocalBackend(s)
    answers = list(known)
    seen = {a.qid for a in known}
    for item in qa_items(s, per_collection, s.local_top_k):
        if item.qid in seen:
            continue
        completion = await backend.complete(qa_messages(item.hits, [], item.question))
        passages = tuple(
            Passage(n=n, title=h.title, heading=h.heading, text=h.text) for n, h in enumerate(item.hits, 1)
        )
        answers.append(Answer(collection=item.collection, qid=item.qid, question=item.question,
                              passages=passages, text=completion.text))  # fmt: skip
        print(f"{item.qid}: {completion.tokens_out} tokens", flush=True)
        ANSWERS.write_bytes(
            msgspec.json.format(msgspec.json.encode(answers))
        )  # an interrupted run keeps them
    return answers


def load_answers() -> list[Answer]:
    return msgspec.json.decode(ANSWERS.read_bytes(), type=list[Answer])


# ---- claims and their scores -----------------------------------------------------------------------------


def embedding(s: Settings) -> attribution.Embed:
    embedder = load_embedder(s, "minilm", purpose="online")

    async def embed(texts: Sequence[str]) -> Matrix:
        return embedder.embed(texts)

    return embed


async def answer_claims(answer: Answer, embed: attribution.Embed) -> list[Claim]:
    """Every distinct claim with its dense and lexical score per passage (a sentence the model repeats
    counts once), scored once and combined per weight."""
    spans = list({answer.text[s:e]: (s, e) for s, e in claims_of(answer.text)}.values())
    passages = {p.n: p.text for p in answer.passages}
    if not spans:
        return []
    dense, lexical = await features(answer.text, spans, passages, embed, answer.question)
    return [
        Claim(qid=answer.qid, text=answer.text[s:e], dense=tuple(map(float, d)), lexical=tuple(map(float, x)),
              numbers=tuple(passages))
        for (s, e), d, x in zip(spans, dense, lexical, strict=True)
    ]  # fmt: skip


def picks(claim: Claim, weight: float, threshold: float) -> list[int]:
    row = [weight * d + (1 - weight) * x for d, x in zip(claim.dense, claim.lexical, strict=True)]
    order = sorted(range(len(row)), key=lambda j: -row[j])
    best = row[order[0]]
    if best < threshold:
        return []
    margin = attribution.SECOND_MARGIN
    return [claim.numbers[j] for j in order[:2] if row[j] >= threshold and row[j] >= best - margin]


# ---- judged claims ---------------------------------------------------------------------------------------


Labels = dict[str, dict[str, list[int]]]


def load_labels() -> Labels:
    return msgspec.json.decode(LABELS.read_bytes(), type=Labels) if LABELS.exists() else {}


def judged(claims: Sequence[Claim], labels: Labels) -> list[tuple[Claim, set[int]]]:
    return [(c, set(labels[c.qid][c.text])) for c in claims if c.text in labels.get(c.qid, {})]


def precision(items: Sequence[tuple[Claim, set[int]]], weight: float, threshold: float) -> tuple[float, int]:
    attributed = [(set(picks(c, weight, threshold)), truth) for c, truth in items]
    attributed = [(p, t) for p, t in attributed if p]
    correct = sum(1 for p, t in attributed if p <= t)
    return (correct / len(attributed) if attributed else 1.0), len(attributed)


def tune(items: Sequence[tuple[Claim, set[int]]]) -> tuple[float, float, float, int]:
    """(weight, threshold, precision, attributed) attributing most at TUNE_PRECISION or better."""
    best = (attribution.DENSE_WEIGHT, attribution.THRESHOLD, 0.0, -1)
    for weight in WEIGHTS:
        for threshold in THRESHOLDS:
            p, n = precision(items, weight, threshold)
            if p >= TUNE_PRECISION and n > best[3]:
                best = (weight, threshold, p, n)
                break  # thresholds ascend: the first that reaches the precision attributes the most
    return best


# ---- reports ---------------------------------------------------------------------------------------------


def show(answers: Sequence[Answer], claims: Sequence[Claim]) -> None:
    w, t = attribution.DENSE_WEIGHT, attribution.THRESHOLD
    for answer in answers:
        print(f"\n=== {answer.qid}: {answer.question}")
        for p in answer.passages:
            print(f"  [{p.n}] {p.title} > {p.heading}: {' '.join(p.text.split())[:1500]}")
        for c in (c for c in claims if c.qid == answer.qid):
            scores = " ".join(f"{w * d + (1 - w) * x:.2f}" for d, x in zip(c.dense, c.lexical, strict=True))
            print(f"  -> {picks(c, w, t)} [{scores}] {c.text}")


def figures(answers: Sequence[Answer], claims: Sequence[Claim]) -> None:
    labels = load_labels()
    labelled = [a.qid for a in answers if a.qid in labels]
    tuning = {q for i, q in enumerate(labelled) if i % 2 == 0}
    tune_items = judged([c for c in claims if c.qid in tuning], labels)
    test_items = judged([c for c in claims if c.qid not in tuning], labels)
    w, t = attribution.DENSE_WEIGHT, attribution.THRESHOLD
    attributed = sum(1 for c in claims if picks(c, w, t))
    print(f"{len(answers)} answers, {len(claims)} claims; {by_collection(answers, claims, w, t)}")
    print(f"share of claims attributed (weight {w}, threshold {t}): {attributed / max(1, len(claims)):.1%}")
    tw, tt, tp, tn = tune(tune_items)
    print(
        f"tuning set: {len(tune_items)} judged claims -> weight {tw}, threshold {tt}: "
        f"precision {tp:.1%} on {tn} attributed"
    )
    p, n = precision(test_items, w, t)
    print(f"held-out half: {len(test_items)} judged claims, {n} attributed, precision {p:.1%}")
    every = [*tune_items, *test_items]
    p, n = precision(every, w, t)
    print(f"every judged claim: {len(every)}, {n} attributed, precision {p:.1%}")
    marked = [truth for c, truth in every if not picks(c, w, t)]
    right = sum(1 for truth in marked if not truth)
    share = right / max(1, len(marked))
    print(f"marked unsupported: {len(marked)}, of which no passage supports {right} ({share:.1%})")


def by_collection(answers: Sequence[Answer], claims: Sequence[Claim], w: float, t: float) -> str:
    parts = []
    for name in sorted({a.collection for a in answers}):
        qids = {a.qid for a in answers if a.collection == name}
        mine = [c for c in claims if c.qid in qids]
        share = sum(1 for c in mine if picks(c, w, t)) / max(1, len(mine))
        parts.append(f"{name} {share:.0%} of {len(mine)}")
    return ", ".join(parts)


async def all_claims(answers: Sequence[Answer], embed: attribution.Embed) -> list[Claim]:
    return [c for a in answers for c in await answer_claims(a, embed)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generate", type=int, metavar="PER_COLLECTION")
    parser.add_argument("--show", action="store_true")
    args = parser.parse_args()
    s = settings()
    if args.generate:
        asyncio.run(generate(s, args.generate, load_answers() if ANSWERS.exists() else ()))
        return
    answers = load_answers()
    claims = asyncio.run(all_claims(answers, embedding(s)))
    (show if args.show else figures)(answers, claims)


if __name__ == "__main__":
    main()
