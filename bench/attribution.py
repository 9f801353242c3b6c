"""Post-hoc citation attribution, measured: share of answer sentences attributed, precision on judged ones.

    .venv/bin/python -m bench.attribution --generate 40     # answers of the local model -> ANSWERS (slow;
                                                            # adds the questions ANSWERS does not have yet)
    .venv/bin/python -m bench.attribution --show            # claims, probabilities and markers, for judging
    .venv/bin/python -m bench.attribution --fit             # fit the model on the tuning half, print it
    .venv/bin/python -m bench.attribution                   # the figures of actors.attribution's model

ANSWERS holds real SmolLM2 answers (the product's Q&A prompt, int8, the local passage count and max
tokens) to questions of perlfaq, debfaq and the demo golden set, with the passages the hybrid search gave
them (`bench.qa_sample`). LABELS holds, per answer and claim (the sentences `actors.attribution` scores,
by their text), the passage numbers that support the claim as a person judged them (an empty list: none
does). A claim is supported by a passage when the passage states what the claim says, or directly
implies it; a claim that is garbled, circular or says more than the passage does is not supported.

The labelled answers are split by position: the odd ones (the tuning half) fit the logistic model over
every (claim, passage) pair and choose its threshold (`tune`: the lowest whose precision there is at
least TUNE_PRECISION, else the most precise over at least MIN_ATTRIBUTED attributions); the even ones are
the held-out check. An attribution is correct when the passage it names supports the claim. The figures:
share of claims attributed over every answer, precision on each half and on all judged claims, how many
of the claims marked unsupported no passage supports, and the wall time of attributing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec
import numpy as np
import numpy.typing as npt

from actors import attribution
from actors.attribution import Scorer, chosen, claims_of, cut_off
from actors.llm.local import LocalBackend
from actors.prompts import qa_messages
from bench.qa_sample import REPO, bench_settings, qa_embed, qa_items
from store.settings import Settings

HERE = Path(__file__).resolve().parent
ANSWERS = HERE / "attribution_answers.json"
LABELS = HERE / "attribution_labels.json"
TUNE_PRECISION = 0.90
MIN_ATTRIBUTED = 5  # a threshold is judged on at least this many attributions of the tuning half
THRESHOLDS = tuple(round(0.05 + 0.01 * i, 2) for i in range(91))  # probabilities
RIDGE = 1.0


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
    features: tuple[tuple[float, ...], ...]  # per passage: actors.attribution.FEATURES
    open: tuple[bool, ...]  # per passage: its gates are open
    numbers: tuple[int, ...]
    cut: bool = False  # the answer's cut-off last sentence: never attributed


class Model(msgspec.Struct, frozen=True, kw_only=True):
    weights: tuple[float, ...]
    bias: float
    threshold: float


def current() -> Model:
    return Model(weights=attribution.WEIGHTS, bias=attribution.BIAS, threshold=attribution.THRESHOLD)


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
    return qa_embed(s)


async def answer_claims(answer: Answer, embed: attribution.Embed) -> list[Claim]:
    """Every distinct claim with its features per passage (a sentence the model repeats counts once)."""
    spans = list({answer.text[s:e]: (s, e) for s, e in claims_of(answer.text)}.values())
    passages = {p.n: p.text for p in answer.passages}
    if not spans:
        return []
    texts = [answer.text[s:e] for s, e in spans]
    features, open_ = await Scorer(passages, embed, answer.question).features(texts)
    return [
        Claim(qid=answer.qid, text=text, features=tuple(tuple(map(float, f)) for f in rows),
              open=tuple(map(bool, gates)), numbers=tuple(passages), cut=cut_off(answer.text, span))
        for span, text, rows, gates in zip(spans, texts, features, open_, strict=True)
    ]  # fmt: skip


def probabilities(claim: Claim, model: Model) -> list[float]:
    rows = np.asarray(claim.features, dtype=np.float32)
    p = attribution.probability(rows, model.weights, model.bias)
    return [float(x) if is_open else 0.0 for x, is_open in zip(p, claim.open, strict=True)]


def picks(claim: Claim, model: Model) -> list[int]:
    if claim.cut:
        return []
    return chosen(probabilities(claim, model), claim.numbers, model.threshold)


# ---- judged claims ---------------------------------------------------------------------------------------


Labels = dict[str, dict[str, list[int]]]


def load_labels() -> Labels:
    return msgspec.json.decode(LABELS.read_bytes(), type=Labels) if LABELS.exists() else {}


Judged = list[tuple[Claim, set[int]]]


def judged(claims: Sequence[Claim], labels: Labels) -> Judged:
    return [(c, set(labels[c.qid][c.text])) for c in claims if c.text in labels.get(c.qid, {})]


def precision(items: Sequence[tuple[Claim, set[int]]], model: Model) -> tuple[float, int]:
    attributed = [(set(picks(c, model)), truth) for c, truth in items]
    attributed = [(p, t) for p, t in attributed if p]
    correct = sum(1 for p, t in attributed if p <= t)
    return (correct / len(attributed) if attributed else 1.0), len(attributed)


def pairs(items: Sequence[tuple[Claim, set[int]]]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Every (claim, passage) pair a model could attribute, with 1 where the passage supports the claim."""
    xs, ys = [], []
    for claim, truth in items:
        if claim.cut:
            continue
        for row, is_open, n in zip(claim.features, claim.open, claim.numbers, strict=True):
            if is_open:
                xs.append(row)
                ys.append(1.0 if n in truth else 0.0)
    return np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)


def fit(items: Sequence[tuple[Claim, set[int]]]) -> tuple[tuple[float, ...], float]:
    """Logistic regression (L2 = RIDGE, Newton's method) on the pairs of `items`: (weights, bias)."""
    x, y = pairs(items)
    x = np.hstack([x, np.ones((len(x), 1))])
    beta = np.zeros(x.shape[1])
    ridge = np.eye(x.shape[1]) * RIDGE
    ridge[-1, -1] = 0.0  # the bias is not shrunk
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-x @ beta))
        gradient = x.T @ (p - y) + ridge @ beta
        hessian = (x.T * (p * (1 - p))) @ x + ridge
        step = np.linalg.solve(hessian, gradient)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    return tuple(round(float(b), 3) for b in beta[:-1]), round(float(beta[-1]), 3)


def tune(items: Sequence[tuple[Claim, set[int]]]) -> Model:
    """The fitted model with the lowest threshold (the most attributions) whose precision on `items` is at
    least TUNE_PRECISION; when no threshold reaches it with MIN_ATTRIBUTED attributions, the threshold with
    the best precision among those that attribute at least MIN_ATTRIBUTED (the lowest of equals)."""
    weights, bias = fit(items)
    models = [Model(weights=weights, bias=bias, threshold=t) for t in THRESHOLDS]
    scored = [(model, *precision(items, model)) for model in models]
    enough = [(model, p) for model, p, n in scored if n >= MIN_ATTRIBUTED]
    reaching = [model for model, p in enough if p >= TUNE_PRECISION]
    if reaching:
        return reaching[0]
    if enough:
        return max(enough, key=lambda pair: (pair[1], -pair[0].threshold))[0]
    return models[-1]


# ---- reports ---------------------------------------------------------------------------------------------


def show(answers: Sequence[Answer], claims: Sequence[Claim]) -> None:
    model = current()
    for answer in answers:
        print(f"\n=== {answer.qid}: {answer.question}")
        for p in answer.passages:
            print(f"  [{p.n}] {p.title} > {p.heading}: {' '.join(p.text.split())[:1500]}")
        for c in (c for c in claims if c.qid == answer.qid):
            scores = " ".join(f"{x:.2f}" for x in probabilities(c, model))
            print(f"  -> {picks(c, model)} [{scores}] {c.text}")


def halves(answers: Sequence[Answer], claims: Sequence[Claim], labels: Labels) -> tuple[Judged, Judged]:
    """The judged claims of every other labelled answer (the tuning half), and of the rest (held out)."""
    labelled = [a.qid for a in answers if a.qid in labels]
    tuning = {q for i, q in enumerate(labelled) if i % 2 == 0}
    return (judged([c for c in claims if c.qid in tuning], labels),
            judged([c for c in claims if c.qid not in tuning], labels))  # fmt: skip


def describe(model: Model) -> str:
    weights = ", ".join(
        f"{name} {w:+.3f}" for name, w in zip(attribution.FEATURES, model.weights, strict=True)
    )
    return f"weights {weights}, bias {model.bias:+.3f}, threshold {model.threshold:.2f}"


def figures(answers: Sequence[Answer], claims: Sequence[Claim]) -> None:
    tune_items, test_items = halves(answers, claims, load_labels())
    model = current()
    attributed = sum(1 for c in claims if picks(c, model))
    print(f"{len(answers)} answers, {len(claims)} claims; {by_collection(answers, claims, model)}")
    print(f"model: {describe(model)}")
    print(f"share of claims attributed: {attributed / max(1, len(claims)):.1%} ({attributed})")
    p, n = precision(tune_items, model)
    print(f"tuning half: {len(tune_items)} judged claims, {n} attributed, precision {p:.1%}")
    p, n = precision(test_items, model)
    print(f"held-out half: {len(test_items)} judged claims, {n} attributed, precision {p:.1%}")
    every = [*tune_items, *test_items]
    p, n = precision(every, model)
    print(f"every judged claim: {len(every)}, {n} attributed, precision {p:.1%}")
    supported = sum(1 for _, truth in every if truth)
    print(f"judged claims some passage supports: {supported} ({supported / max(1, len(every)):.1%})")
    marked = [truth for c, truth in every if not picks(c, model)]
    right = sum(1 for truth in marked if not truth)
    share = right / max(1, len(marked))
    print(f"marked unsupported: {len(marked)}, of which no passage supports {right} ({share:.1%})")


def refit(answers: Sequence[Answer], claims: Sequence[Claim]) -> None:
    """Fit the model on the tuning half and print it, with what it does on the held-out half."""
    tune_items, test_items = halves(answers, claims, load_labels())
    model = tune(tune_items)
    print(f"fitted on {len(tune_items)} judged claims of the tuning half: {describe(model)}")
    for name, items in (("tuning", tune_items), ("held-out", test_items)):
        p, n = precision(items, model)
        print(f"  {name} half: {n} attributed of {len(items)}, precision {p:.1%}")
    print(f"WEIGHTS = {model.weights}\nBIAS = {model.bias}\nTHRESHOLD = {model.threshold}")


def by_collection(answers: Sequence[Answer], claims: Sequence[Claim], model: Model) -> str:
    parts = []
    for name in sorted({a.collection for a in answers}):
        qids = {a.qid for a in answers if a.collection == name}
        mine = [c for c in claims if c.qid in qids]
        share = sum(1 for c in mine if picks(c, model)) / max(1, len(mine))
        parts.append(f"{name} {share:.0%} of {len(mine)}")
    return ", ".join(parts)


async def timings(answers: Sequence[Answer], embed: attribution.Embed) -> None:
    """Wall time of attributing a finished answer (a fresh scorer: passages embedded too), and of one
    sentence while the answer streams (the passages already embedded for the answer's first sentence)."""
    whole: list[float] = []
    sentence: list[float] = []
    for answer in answers:
        passages = {p.n: p.text for p in answer.passages}
        started = time.perf_counter()
        await attribution.attribute(answer.text, passages, embed, answer.question)
        whole.append((time.perf_counter() - started) * 1000)
        scorer = Scorer(passages, embed, answer.question)
        await scorer.windows()
        for s, e in claims_of(answer.text)[:3]:
            started = time.perf_counter()
            await scorer.picks([answer.text[s:e]])
            sentence.append((time.perf_counter() - started) * 1000)
    whole_ms = f"p50 {percentile(whole, 50):.0f} ms, p95 {percentile(whole, 95):.0f} ms"
    sentence_ms = f"p50 {percentile(sentence, 50):.1f} ms, p95 {percentile(sentence, 95):.1f} ms"
    print(f"attributing a finished answer: {whole_ms}; one sentence while streaming: {sentence_ms} "
          f"(load average {os.getloadavg()[0]:.1f})")  # fmt: skip


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else 0.0


async def all_claims(answers: Sequence[Answer], embed: attribution.Embed) -> list[Claim]:
    return [c for a in answers for c in await answer_claims(a, embed)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generate", type=int, metavar="PER_COLLECTION")
    parser.add_argument("--show", action="store_true")
    parser.add_argument("--fit", action="store_true", help="fit the model on the tuning half and print it")
    args = parser.parse_args()
    s = settings()
    if args.generate:
        asyncio.run(generate(s, args.generate, load_answers() if ANSWERS.exists() else ()))
        return
    answers = load_answers()
    embed = embedding(s)
    claims = asyncio.run(all_claims(answers, embed))
    (show if args.show else refit if args.fit else figures)(answers, claims)
    if not (args.show or args.fit):
        asyncio.run(timings(answers, embed))


if __name__ == "__main__":
    main()
