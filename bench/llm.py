"""LLM backend bench: the local SmolLM2's first-token latency and tokens/s; the OpenAI backend's overhead.

    .venv/bin/python -m bench.llm [--runs 5] [--max-tokens 64] [--requests 200] [--concurrency 8]
    .venv/bin/python -m bench.llm --ab final [--questions 3] [--save runs.json]  # local answers, A/B

Local: converts on first use into DOCENT_MODEL_DIR (default .cache/models), then answers a short question,
a story that runs to --max-tokens, and a retrieval-sized prompt (~400 tokens of context). First-token
latency is mostly prefill; decode tokens/s counts the tokens after the first over the time after the first.

OpenAI: the scripted server runs as a separate process (`python -m actors.testing.scripted_llm`) with no delay
per delta, so the times are the client's and the server's own overhead: request, SSE parsing, delta delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from actors.llm.local import LocalBackend
from actors.llm.openai import OpenAIBackend
from actors.llm.types import ChatMessage, Completion
from bench import llm_ab
from store.redis import free_port
from store.settings import Settings

REPO = Path(__file__).resolve().parent.parent
SHORT_QUESTION = "What is the capital of France?"
STORY_REQUEST = "Write a long story about a dragon."  # runs to max_tokens: a steady decode rate
CONTEXT_PASSAGE = (
    "[{n}] The travel policy allows economy class for flights under six hours and premium economy above. "
    "Hotel costs are reimbursed up to the city cap; receipts are required for every expense over 25 euros. "
)
RAG_PASSAGES = 8
SCRIPTED_ANSWER_WORDS = 40
SERVER_START_TIMEOUT_S = 10.0


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def rag_prompt() -> list[ChatMessage]:
    context = "".join(CONTEXT_PASSAGE.format(n=n) for n in range(1, RAG_PASSAGES + 1))
    return [
        ChatMessage(role="system", content=f"Answer from the sources and cite them as [n].\n\n{context}"),
        ChatMessage(role="user", content="Which class may I book for a four-hour flight?"),
    ]


async def bench_local(settings: Settings, runs: int, max_tokens: int) -> None:
    backend = LocalBackend(settings)
    started = time.monotonic()
    await backend.warmup()
    print(f"local: load (conversion cached or done now) {time.monotonic() - started:.2f} s")
    prompts = {
        "short": [ChatMessage(role="user", content=SHORT_QUESTION)],
        "story": [ChatMessage(role="user", content=STORY_REQUEST)],
        "rag": rag_prompt(),
    }
    for name, messages in prompts.items():
        results: list[Completion] = []
        for _ in range(runs):
            results.append(await backend.complete(messages, max_tokens=max_tokens))
        first = [c.first_token_ms for c in results]
        decode = [
            (c.tokens_out - 1) / ((c.latency_ms - c.first_token_ms) / 1000)
            for c in results
            if c.tokens_out > 1 and c.latency_ms > c.first_token_ms
        ]
        overall = [c.tokens_out / (c.latency_ms / 1000) for c in results]
        sample = results[0]
        out_tokens = statistics.median(c.tokens_out for c in results)
        print(
            f"local {name}: prompt {sample.tokens_in} tok, out {out_tokens} tok"
            f" | first token p50 {statistics.median(first):.0f} ms"
            f" | decode {statistics.median(decode):.1f} tok/s"
            f" | end-to-end {statistics.median(overall):.1f} tok/s"
        )
        print(f"  answer: {sample.text[:160]!r}")
    await backend.aclose()


def start_scripted_server(port: int, scripts: Path) -> subprocess.Popen[bytes]:
    module = "actors.testing.scripted_llm"
    command = [sys.executable, "-m", module, "--port", str(port), "--scripts", str(scripts)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert process.stdout is not None
    process.stdout.readline()  # the "listening" line: the socket is bound
    return process


async def timed_call(backend: OpenAIBackend, messages: list[ChatMessage]) -> tuple[float, float]:
    started = time.monotonic()
    first: list[float] = []

    async def on_delta(text: str) -> None:
        if not first:
            first.append(time.monotonic() - started)

    await backend.complete(messages, on_delta=on_delta)
    return first[0] * 1000, (time.monotonic() - started) * 1000


async def bench_openai(requests: int, concurrency: int) -> None:
    answer = " ".join(f"word{i}" for i in range(SCRIPTED_ANSWER_WORDS))
    with tempfile.TemporaryDirectory() as tmp:
        scripts = Path(tmp) / "scripts.json"
        scripts.write_text(json.dumps({"scripts": {"bench": {"steps": [{"text": answer}]}}}))
        port = free_port()
        server = start_scripted_server(port, scripts)
        try:
            settings = Settings.from_env(
                {"DOCENT_LLM_BACKEND": "openai", "DOCENT_LLM_URL": f"http://127.0.0.1:{port}/v1"}
            )
            backend = OpenAIBackend(settings)
            messages = [ChatMessage(role="user", content="[script:bench] go")]
            await timed_call(backend, messages)  # connect, warm up
            sequential = [await timed_call(backend, messages) for _ in range(requests)]
            report("sequential", sequential, SCRIPTED_ANSWER_WORDS)
            started = time.monotonic()
            batches = -(-requests // concurrency)
            parallel: list[tuple[float, float]] = []
            for _ in range(batches):
                parallel += await asyncio.gather(*(timed_call(backend, messages) for _ in range(concurrency)))
            elapsed = time.monotonic() - started
            report(f"{concurrency} concurrent", parallel, SCRIPTED_ANSWER_WORDS)
            print(f"  throughput {len(parallel) / elapsed:.0f} requests/s")
            await backend.aclose()
        finally:
            server.terminate()
            server.wait(timeout=10)


def report(label: str, samples: list[tuple[float, float]], deltas: int) -> None:
    first = [s[0] for s in samples]
    total = [s[1] for s in samples]
    print(
        f"openai vs scripted ({label}, {len(samples)} requests, {deltas} deltas each): "
        f"first delta p50 {pct(first, 0.5):.2f} ms p95 {pct(first, 0.95):.2f} ms | "
        f"whole answer p50 {pct(total, 0.5):.2f} ms p95 {pct(total, 0.95):.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--skip-local", action="store_true")
    parser.add_argument("--ab", choices=sorted(llm_ab.PRESETS), help="interleaved local A/B")
    parser.add_argument("--questions", type=int, default=3, help="with --ab: questions per collection")
    parser.add_argument("--save", type=Path, help="with --ab: write every run (answers included) as JSON")
    args = parser.parse_args()
    if args.ab:
        llm_ab.run(args.ab, args.questions, args.save)
        return
    model_dir = os.environ.get("DOCENT_MODEL_DIR", str(REPO / ".cache" / "models"))
    settings = Settings.from_env({"DOCENT_MODEL_DIR": model_dir})
    if not args.skip_local:
        asyncio.run(bench_local(settings, args.runs, args.max_tokens))
    asyncio.run(bench_openai(args.requests, args.concurrency))


if __name__ == "__main__":
    main()
