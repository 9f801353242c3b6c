"""Extractive answers (actors/extractive.py): the share of sentences attributed, precision on judged ones.

    .venv/bin/python -m bench.attribution_extractive --generate 20   # fresh answers -> ANSWERS
    .venv/bin/python -m bench.attribution_extractive --generate 15 --fresh   # again, + 15 never judged
    .venv/bin/python -m bench.attribution_extractive --show          # every sentence with its passage
    .venv/bin/python -m bench.attribution_extractive --pairs demo    # beside the model's answers (quality)
    .venv/bin/python -m bench.attribution_extractive                 # the figures

ANSWERS holds the embedded model's answers as the product now writes them (`DOCENT_LOCAL_ANSWER=
extractive`) to `--generate` questions of each of perlfaq, debfaq and the demo golden set, with the passages
the hybrid search gives them (`bench.qa_sample`, the local passage count and token cap). An answer whose
passages hold no prose sentence would go to the model; it is kept with an empty text and counted.

LABELS holds, per answer and sentence (its text as the answer shows it, marker included), the passage
numbers that support the sentence as a person judged them (an empty list: none does). The rule is the one
of `bench.attribution`, read for the answer the sentence is part of: a sentence is supported by a passage
when the passage states it, or directly implies it, *in the sense the answer gives it*. A verbatim sentence
is not supported when the answer applies it to another subject than the passage does (a docstring of
`token_hex` given as what `token_urlsafe` does, a "this" or "it" that now reads as something else), or when
it is cut from its context so that it says something the passage does not. Whether the sentence answers
the question is not part of it (that is answer quality: `bench/llm_quality_extractive.json`).

The figures: sentences attributed over every answer (the lead-in that claims nothing is not a sentence
here), precision on the judged ones (correct: the passage it names supports it), per collection.
"""

from __future__ import annotations

import argparse
import asyncio
import math
from collections.abc import Collection, Sequence
from pathlib import Path

import msgspec

from actors.attribution import split_sentences
from actors.extractive import LEAD_IN, MAX_ANSWER_WORDS, WORDS_PER_TOKEN, compose
from actors.plan import CITATION
from bench.attribution import Answer, Labels, Passage, settings
from bench.attribution import load_answers as model_answers
from bench.qa_sample import QAItem, qa_embed, qa_items
from index.types import Hit
from store.settings import Settings

HERE = Path(__file__).resolve().parent
ANSWERS = HERE / "attribution_extractive_answers.json"
LABELS = HERE / "attribution_extractive_labels.json"
EVERY_QUESTION = 10_000  # qa_items' per-collection count that takes every question
WILSON_Z = 1.96  # a 95% interval


def fresh_items(every: Sequence[QAItem], per_collection: int, judged: Collection[str]) -> list[QAItem]:
    """`per_collection` questions of each collection that no judgment names yet, evenly spread."""
    out: list[QAItem] = []
    for name in dict.fromkeys(i.collection for i in every):
        left = [i for i in every if i.collection == name and i.qid not in judged]
        out += left[:: max(1, len(left) // per_collection)][:per_collection] if per_collection else []
    return out


async def generate(s: Settings, per_collection: int, fresh: bool = False) -> list[Answer]:
    """Answers to `per_collection` questions of each collection; with `fresh`, answers again to the questions
    ANSWERS has, from the passages stored with them (the search's passages drift as the indexes change: 97
    of 195 judged answers had other passages a round later, 44 of them another answer), and to
    `per_collection` more of each collection that were never judged, from the search."""
    embed = qa_embed(s)
    budget = min(MAX_ANSWER_WORDS, int(s.local_max_tokens * WORDS_PER_TOKEN))
    known = load_answers() if fresh else []
    if fresh:
        judged = {*load_judgments().labels, *(a.qid for a in known)}
        items = fresh_items(qa_items(s, EVERY_QUESTION, s.local_top_k), per_collection, judged)
    else:
        items = qa_items(s, per_collection, s.local_top_k)
    asked = [(a.collection, a.qid, a.question, [as_hit(p) for p in a.passages]) for a in known]
    asked += [(i.collection, i.qid, i.question, list(i.hits)) for i in items]
    answers: list[Answer] = []
    for collection, qid, question, hits in asked:
        text = "".join(await compose(hits, question, embed, budget))
        passages = tuple(
            Passage(n=n, title=h.title, heading=h.heading, text=h.text) for n, h in enumerate(hits, 1)
        )
        answers.append(Answer(collection=collection, qid=qid, question=question, passages=passages,
                              text=text))  # fmt: skip
    ANSWERS.write_bytes(msgspec.json.format(msgspec.json.encode(answers)))
    return answers


def load_answers() -> list[Answer]:
    return msgspec.json.decode(ANSWERS.read_bytes(), type=list[Answer])


class Judgments(msgspec.Struct, kw_only=True):
    rule: str = ""  # how a sentence was judged (the module's docstring says it at more length)
    development: list[str] = []  # the questions judged while actors.extractive's rules were being chosen
    labels: Labels = {}


def load_judgments() -> Judgments:
    return msgspec.json.decode(LABELS.read_bytes(), type=Judgments) if LABELS.exists() else Judgments()


def sentences(answer: Answer) -> list[str]:
    """The answer's sentences, the lead-in left out."""
    spans = split_sentences(answer.text)
    return [answer.text[s:e] for s, e in spans if answer.text[s:e] != LEAD_IN]


def cited(sentence: str) -> set[int]:
    return {int(n) for n in CITATION.findall(sentence)}


def as_hit(p: Passage) -> Hit:
    return Hit(chunk_id=str(p.n), doc_id=str(p.n), title=p.title, heading=p.heading, text=p.text, score=0.0)


async def pairs(s: Settings, collection: str) -> None:
    """The model's answers of `bench.attribution` (the same defaults: int8, 4 passages, 200 tokens) beside the
    extractive answer to the same passages, for judging answer quality side by side."""
    embed = qa_embed(s)
    budget = min(MAX_ANSWER_WORDS, int(s.local_max_tokens * WORDS_PER_TOKEN))
    for answer in (a for a in model_answers() if a.collection == collection):
        hits = [as_hit(p) for p in answer.passages]
        text = "".join(await compose(hits, answer.question, embed, budget)) or "(left to the model)"
        print(f"\n=== {answer.qid}: {answer.question}")
        for p in answer.passages:
            print(f"  [{p.n}] {p.title} > {p.heading}: {' '.join(p.text.split())[:300]}")
        print(f"  MODEL: {' '.join(answer.text.split())[:700]}\n  EXTRACTIVE: {text}")


def show(answers: Sequence[Answer]) -> None:
    for answer in answers:
        print(f"\n=== {answer.qid}: {answer.question}")
        for p in answer.passages:
            print(f"  [{p.n}] {p.title} > {p.heading}: {' '.join(p.text.split())[:1500]}")
        for sentence in sentences(answer):
            print(f"  -> {sentence}")


def wilson(right: int, total: int, z: float = WILSON_Z) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% with the default z)."""
    if not total:
        return 0.0, 1.0
    share = right / total
    centre = (share + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return centre - half, centre + half


def precision(pairs: Sequence[tuple[set[int], set[int]]]) -> str:
    attributed = [(c, t) for c, t in pairs if c]
    right = sum(1 for c, t in attributed if c <= t)
    share = right / len(attributed) if attributed else 0.0
    low, high = wilson(right, len(attributed))
    return f"{right} of {len(attributed)} right ({share:.1%}, 95% CI {low:.1%}-{high:.1%})"


def figures(answers: Sequence[Answer]) -> None:
    judgments = load_judgments()
    labels = judgments.labels
    every = [(a, s) for a in answers for s in sentences(a)]
    attributed = sum(1 for _, s in every if cited(s))
    led = sum(1 for a in answers if a.text.startswith(LEAD_IN))
    to_model = sum(1 for a in answers if not a.text)
    print(f"{len(answers)} answers ({led} with the lead-in, {to_model} left to the model)")
    answered = len(answers) - to_model
    print(f"{len(every)} sentences ({len(every) / max(1, answered):.2f} per answer written extractively)")
    print(f"sentences attributed: {attributed} ({attributed / max(1, len(every)):.1%})")
    judged = [(a, s, set(labels[a.qid][s])) for a, s in every if s in labels.get(a.qid, {})]
    print(f"judged sentences: {len(judged)}; precision {precision([(cited(s), t) for _, s, t in judged])}")
    for name in sorted({a.collection for a in answers}):
        mine = [(cited(s), t) for a, s, t in judged if a.collection == name]
        print(f"  {name}: {precision(mine)}")
    development = set(judgments.development)
    for label, held_out in (("held out (judged after the rules were fixed)", True), ("development", False)):
        part = [(a, s, t) for a, s, t in judged if (a.qid not in development) == held_out]
        by = ", ".join(
            f"{name} {precision([(cited(s), t) for a, s, t in part if a.collection == name])}"
            for name in sorted({a.collection for a, _, _ in part})
        )
        print(f"  {label}: {precision([(cited(s), t) for _, s, t in part])}; {by}")
    unjudged = len(every) - len(judged)
    if unjudged:
        print(f"not judged: {unjudged} sentences")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generate", type=int, metavar="PER_COLLECTION")
    parser.add_argument("--fresh", action="store_true", help="with --generate: questions never judged yet")
    parser.add_argument("--show", action="store_true")
    parser.add_argument("--pairs", metavar="COLLECTION", help="the model's answers beside extractive ones")
    args = parser.parse_args()
    s = settings()
    if args.pairs:
        asyncio.run(pairs(s, args.pairs))
        return
    answers = asyncio.run(generate(s, args.generate, args.fresh)) if args.generate else load_answers()
    (show if args.show else figures)(answers)


if __name__ == "__main__":
    main()
