"""Local answers, A/B: compute type, passages in the prompt, max_tokens — interleaved on a shared machine.

    .venv/bin/python -m bench.llm_ab --preset compute [--questions 8] [--save answers.json]
    .venv/bin/python -m bench.llm_ab --preset prompt
    .venv/bin/python -m bench.llm_ab --preset final        # today's defaults against the new ones
    .venv/bin/python -m bench.llm_ab --preset defaults     # the defaults alone (on a quiet moment)
    .venv/bin/python -m bench.llm_ab --preset extractive   # the model's answer against the extractive one

Every question is a real one (perlfaq, debfaq, the demo golden set) with the passages the product's hybrid
search retrieves for it (`bench.qa_sample`), given to SmolLM2 through the product's own Q&A prompt
(`actors.prompts.qa_messages`). The configurations run interleaved — question by question, in an order that
rotates — so load from other jobs on the machine falls on all of them alike; the load average is printed
before and after. Per configuration: prompt tokens, first token p50/p95, decode tokens/s, whole answer
p50/p95 and tokens out, the time a 150-token answer takes (first token + 149 tokens at the decode rate),
and ratios against the first configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
from collections.abc import Sequence
from pathlib import Path

import msgspec

from actors.attribution import Embed
from actors.extractive import ExtractiveBackend
from actors.llm.local import LocalBackend
from actors.llm.types import Completion, LLMBackend
from actors.prompts import qa_messages
from bench.qa_sample import REPO, QAItem, bench_settings, qa_embed, qa_items
from index.types import Hit
from store.settings import Settings

ANSWER_TOKENS = 150


class Config(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    compute_type: str = "float32"
    passages: int = 8
    passage_words: int = 0  # 0: the whole passage
    max_tokens: int = 48
    answer: str = "model"  # or "extractive" (actors.extractive: the passages' own sentences, cited), "glued"


class Run(msgspec.Struct, frozen=True, kw_only=True):
    config: str
    qid: str
    question: str
    tokens_in: int
    tokens_out: int
    first_token_ms: float
    latency_ms: float
    text: str


PRESETS: dict[str, tuple[Config, ...]] = {
    "compute": (
        Config(name="float32 (today)"),
        Config(name="int8", compute_type="int8"),
        Config(name="int8_float32", compute_type="int8_float32"),
    ),
    "prompt": (
        Config(name="int8, 8 passages", compute_type="int8"),
        Config(name="int8, 4 passages", compute_type="int8", passages=4),
        Config(name="int8, 3 passages", compute_type="int8", passages=3),
        Config(name="int8, 4 x 120 words", compute_type="int8", passages=4, passage_words=120),
    ),
    "final": (
        Config(name="before: float32, 8 passages, max 512", max_tokens=512),
        Config(name="after: int8, 4 passages, max 200", compute_type="int8", passages=4, max_tokens=200),
    ),
    "defaults": (Config(name="int8, 4 passages, max 200", compute_type="int8", passages=4, max_tokens=200),),
    "extractive": (
        Config(name="model: int8, 4 passages, max 200", compute_type="int8", passages=4, max_tokens=200),
        Config(name="extractive", compute_type="int8", passages=4, max_tokens=200, answer="extractive"),
        Config(name="glued", compute_type="int8", passages=4, max_tokens=200, answer="glued"),
    ),
}


def trimmed(hit: Hit, words: int) -> Hit:
    return msgspec.structs.replace(hit, text=" ".join(hit.text.split()[:words])) if words else hit


async def run_one(backend: LocalBackend, config: Config, item: QAItem, embed: Embed) -> Run:
    hits = [trimmed(h, config.passage_words) for h in item.hits[: config.passages]]
    answerer: LLMBackend = backend
    if config.answer != "model":
        settings = msgspec.structs.replace(backend.settings, local_answer=config.answer)
        answerer = ExtractiveBackend(hits, item.question, embed, backend, settings)
    completion: Completion = await answerer.complete(
        qa_messages(hits, [], item.question), max_tokens=config.max_tokens
    )
    return Run(
        config=config.name, qid=item.qid, question=item.question, tokens_in=completion.tokens_in,
        tokens_out=completion.tokens_out, first_token_ms=completion.first_token_ms,
        latency_ms=completion.latency_ms, text=completion.text,
    )  # fmt: skip


async def interleaved(settings: Settings, configs: Sequence[Config], items: Sequence[QAItem]) -> list[Run]:
    backends = {c.name: LocalBackend(settings, compute_type=c.compute_type) for c in configs}
    for backend in backends.values():
        await backend.warmup()
    embed = qa_embed(settings)
    runs: list[Run] = []
    for i, item in enumerate(items):
        for config in rotated(configs, i):
            runs.append(await run_one(backends[config.name], config, item, embed))
    return runs


def rotated(configs: Sequence[Config], i: int) -> list[Config]:
    shift = i % len(configs)
    return [*configs[shift:], *configs[:shift]]


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def decode_rate(run: Run) -> float:
    decoding_s = (run.latency_ms - run.first_token_ms) / 1000
    return (run.tokens_out - 1) / decoding_s if run.tokens_out > 1 and decoding_s > 0 else 0.0


def summary(runs: Sequence[Run]) -> dict[str, float]:
    first = [r.first_token_ms for r in runs]
    whole = [r.latency_ms for r in runs]
    rate = statistics.median(decode_rate(r) for r in runs)
    return {
        "prompt_tokens": statistics.median(r.tokens_in for r in runs),
        "first_p50": pct(first, 0.5), "first_p95": pct(first, 0.95), "decode": rate,
        "whole_p50": pct(whole, 0.5), "whole_p95": pct(whole, 0.95),
        "out_tokens": statistics.median(r.tokens_out for r in runs),
        "answer_150_s": pct(first, 0.5) / 1000 + (ANSWER_TOKENS - 1) / rate if rate else 0.0,
    }  # fmt: skip


def report(configs: Sequence[Config], runs: Sequence[Run]) -> None:
    stats = {c.name: summary([r for r in runs if r.config == c.name]) for c in configs}
    base = stats[configs[0].name]
    for config in configs:
        s = stats[config.name]
        print(
            f"{config.name}: prompt {s['prompt_tokens']:.0f} tok | first token p50 {s['first_p50']:.0f} ms"
            f" p95 {s['first_p95']:.0f} ms (x{s['first_p50'] / base['first_p50']:.2f})"
            f" | {decoding(config, s, base)}"
            f" | whole answer p50 {s['whole_p50'] / 1000:.1f} s p95 {s['whole_p95'] / 1000:.1f} s,"
            f" {s['out_tokens']:.0f} tok out{answer_150(config, s)}"
        )


def answer_150(config: Config, s: dict[str, float]) -> str:
    return "" if config.answer != "model" else f" | 150-token answer {s['answer_150_s']:.1f} s"


def decoding(config: Config, s: dict[str, float], base: dict[str, float]) -> str:
    """The decode rate, or what stands for it: an extractive answer decodes nothing (its tokens are estimated,
    its answer streams a sentence a delta) and its answer is as long as its sentences."""
    if config.answer != "model":
        return "no decoding (the whole answer is composed at once)"
    return f"decode {s['decode']:.1f} tok/s (x{s['decode'] / base['decode']:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="final")
    parser.add_argument("--questions", type=int, default=4, help="per collection")
    parser.add_argument("--save", type=Path, help="write every run (answers included) as JSON")
    args = parser.parse_args()
    run(args.preset, args.questions, args.save)


def run(preset: str, questions: int, save: Path | None = None) -> None:
    model_dir = Path(os.environ.get("DOCENT_MODEL_DIR", str(REPO / ".cache" / "models"))).resolve()
    settings = bench_settings(REPO / ".cache", model_dir)
    configs = PRESETS[preset]
    items = qa_items(settings, questions, max(c.passages for c in configs))
    print(f"{len(items)} questions x {len(configs)} configurations, interleaved; load {os.getloadavg()}")
    runs = asyncio.run(interleaved(settings, configs, items))
    print(f"load after {os.getloadavg()}, cores {os.cpu_count()}")
    report(configs, runs)
    if save:
        save.write_bytes(msgspec.json.format(msgspec.json.encode(runs)))


if __name__ == "__main__":
    main()
