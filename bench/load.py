"""End-to-end load: C concurrent WebSocket users asking Q questions each against a real `docent run` stack.

    .venv/bin/python -m bench.load [--users 1 10 40] [--questions 20] [--think-ms 0] [--set NAME=VALUE ...]

The stack is a real `docent run` in a subprocess (`tests.stack_proc.Stack`: embedded Redis, web, worker,
ingest, supervised), with the demo knowledge base built and ingested with the `hash` embedder (~1,600
chunks; retrieval is the real hybrid search over it) and `DOCENT_LLM_BACKEND=openai` pointed at the
scripted OpenAI-compatible server (`actors.testing.scripted_llm`, its own process, no delay between
deltas): the figures are Docent's own, not a model's. The per-user and per-tenant ask rate limits are
raised so the bench measures throughput, not the limiter. `--set worker_processes=2` passes DOCENT_
settings to the stack.

Each user is its own token and conversation on `/ws/chat` (hello, ready), then asks its questions one
after the other (the demo golden set's questions, in qa mode), each as soon as the previous answer
completed: a closed loop, so with no pause latency is about users / answers per second; `--think-ms`
adds a pause (exponential, that mean) before each next ask. Per ask: ask -> `accepted`, ask -> first
`delta`, ask -> `answer_completed`; answers/s is completed answers over the level's wall time. Errors:
error frames, failed turns and asks with no answer in ANSWER_TIMEOUT_S. Also printed: the load average
at start and end (the machine is shared), the CPU each process used (cores, and ms per answer: less
sensitive to other jobs than the rates; the headline is web + worker + Redis, less what the idle stack
spends in as long: its queue polling, measured for IDLE_WINDOW_S before each level), and Redis commands
per answer (`INFO commandstats`, reset per level, less the idle stack's). `--profile DIR` samples the web and
worker processes with py-spy (`pip install py-spy` into the venv; not a dependency).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
from websockets.asyncio.client import ClientConnection, connect

from bench.ws import cpu_seconds, percentile
from server.auth import mint_token
from store.settings import Settings
from tests.stack_proc import Stack

TENANT = "default"
ANSWER_TIMEOUT_S = 30.0
LLM_START_TIMEOUT_S = 20.0
CONNECT_TIMEOUT_S = 30.0
WARMUP_QUESTIONS = 3
PROFILE_RATE_HZ = 200
IDLE_WINDOW_S = 2.0
STACK_PROCESSES = ("web", "worker", "redis")  # the headline CPU per answer: Docent's own processes
COMMAND_SHOWN_PER_ANSWER = 0.1  # Redis commands printed per answer: every one at least this frequent
QUERIES = Path(__file__).resolve().parent.parent / "index" / "golden" / "demo" / "queries.jsonl"
STACK_OVERRIDES = {
    "embed_model": "hash",
    "demo": "1",
    "demo_modules": "core",  # no background ingest of the rest of the standard library under load
    "llm_backend": "openai",
    "llm_max_retries": "0",
    "user_rate_per_s": "100000",
    "user_burst": "100000",
    "tenant_rate_per_s": "100000",
    "tenant_burst": "100000",
    "ws_max_sockets_per_user": "1000",
}


def questions() -> list[str]:
    return [json.loads(line)["text"] for line in QUERIES.read_text().splitlines() if line.strip()]


# ---- processes --------------------------------------------------------------------------------------


class ScriptedLLMProcess:
    """`python -m actors.testing.scripted_llm` on a free port, zero delay between deltas."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> ScriptedLLMProcess:
        command = [sys.executable, "-m", "actors.testing.scripted_llm", "--delay-ms", "0"]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # "scripted LLM on http://127.0.0.1:PORT/v1 (0 scripts)"
        if " on " not in line:
            raise RuntimeError(f"scripted LLM did not start: {line!r}")
        self.url = line.split(" on ", 1)[1].split()[0]
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (a dramatiq worker forks its worker processes)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def tree_cpu_seconds(pid: int) -> float:
    total = 0.0
    for member in _tree(pid):
        try:
            total += cpu_seconds(member)
        except OSError:
            continue  # exited meanwhile
    return total


# ---- one user ---------------------------------------------------------------------------------------


class User:
    def __init__(self, ws: ClientConnection, name: str) -> None:
        self.ws = ws
        self.name = name
        self.accepted_ms: list[float] = []
        self.first_delta_ms: list[float] = []
        self.answer_ms: list[float] = []
        self.errors: list[str] = []

    async def ask(self, text: str, n: int) -> None:
        started = time.perf_counter()
        seen_delta = False
        await self.ws.send(json.dumps({"type": "ask", "text": text, "mode": "qa",
                                       "client_message_id": f"{self.name}-{n}"}))  # fmt: skip
        try:
            async with asyncio.timeout(ANSWER_TIMEOUT_S):
                async for message in self.ws:
                    frame = json.loads(message)
                    elapsed_ms = (time.perf_counter() - started) * 1000
                    kind = frame["type"]
                    if kind == "accepted":
                        self.accepted_ms.append(elapsed_ms)
                    elif kind == "delta" and not seen_delta:
                        seen_delta = True
                        self.first_delta_ms.append(elapsed_ms)
                    elif kind == "error":
                        self.errors.append(frame.get("code", "error"))
                        return
                    elif kind == "event":
                        event_type = frame["event"]["type"]
                        if event_type == "answer_completed":
                            self.answer_ms.append(elapsed_ms)
                            return
                        if event_type in ("turn_failed", "turn_cancelled", "limit_reached"):
                            self.errors.append(event_type)
                            return
        except TimeoutError:
            self.errors.append("timeout")


async def open_user(url: str, token: str, name: str) -> User:
    ws = await connect(url, open_timeout=CONNECT_TIMEOUT_S, max_size=2**22, compression=None)
    await ws.send(json.dumps({"type": "hello", "token": token}))
    ready = json.loads(await ws.recv())
    if ready.get("type") != "ready":
        raise RuntimeError(f"hello refused: {ready}")
    return User(ws, name)


async def run_users(
    stack: Stack, settings: Settings, users: int, per_user: int, tag: str, think_ms: float = 0.0
) -> dict[str, Any]:
    texts = questions()
    people = await asyncio.gather(*(
        open_user(stack.ws_url, mint_token(settings, TENANT, f"{tag}u{n}", ttl=3600), f"{tag}u{n}")
        for n in range(users)
    ))  # fmt: skip

    async def play(index: int, user: User) -> None:
        for q in range(per_user):
            await user.ask(texts[(index * per_user + q) % len(texts)], q)
            if think_ms:
                await asyncio.sleep(random.expovariate(1000 / think_ms))  # a person reading the answer

    started = time.perf_counter()
    await asyncio.gather(*(play(i, u) for i, u in enumerate(people)))
    wall_s = time.perf_counter() - started
    await asyncio.gather(*(u.ws.close() for u in people), return_exceptions=True)
    return {
        "wall_s": wall_s,
        "accepted": [v for u in people for v in u.accepted_ms],
        "first_delta": [v for u in people for v in u.first_delta_ms],
        "answer": [v for u in people for v in u.answer_ms],
        "errors": [e for u in people for e in u.errors],
    }


# ---- one level --------------------------------------------------------------------------------------


def redis_calls(client: redis.Redis) -> dict[str, int]:
    stats: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def idle_rates(client: redis.Redis, pids: dict[str, int]) -> tuple[float, float]:
    """What an idle stack spends anyway (the workers polling their queues), per second: Redis commands,
    and CPU seconds of the web, worker and Redis processes."""
    client.config_resetstat()
    cpu_start = sum(tree_cpu_seconds(pids[name]) for name in STACK_PROCESSES)
    time.sleep(IDLE_WINDOW_S)
    cpu = sum(tree_cpu_seconds(pids[name]) for name in STACK_PROCESSES) - cpu_start
    calls = redis_calls(client)
    return (sum(calls.values()) - calls.get("info", 0)) / IDLE_WINDOW_S, cpu / IDLE_WINDOW_S


def profilers(pids: dict[str, int], directory: Path | None, users: int) -> list[subprocess.Popen[bytes]]:
    """py-spy (installed by hand, not a dependency) sampling the web and worker processes, when asked."""
    if directory is None:
        return []
    directory.mkdir(parents=True, exist_ok=True)
    spy = str(Path(sys.executable).parent / "py-spy")
    spies = []
    for name in ("web", "worker"):
        output = directory / f"{name}-c{users}.txt"
        command = [spy, "record", "--pid", str(pids[name]), "--subprocesses", "--nonblocking", "--gil",
                   "--rate", str(PROFILE_RATE_HZ), "--format", "raw", "--output", str(output)]  # fmt: skip
        spies.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return spies


def level(
    stack: Stack, settings: Settings, llm_pid: int, users: int, args: argparse.Namespace
) -> dict[str, Any]:
    client = redis.Redis.from_url(stack.redis_url())
    pids = {name: pid for name, pid in stack.pids.items() if name in ("web", "worker", "redis")}
    pids["llm"] = llm_pid
    load_start = os.getloadavg()[0]
    idle_per_s, idle_cpu_per_s = idle_rates(client, pids)
    client.config_resetstat()
    spies = profilers(pids, args.profile, users)
    cpu_start = {name: tree_cpu_seconds(pid) for name, pid in pids.items()}
    own_start = time.process_time()
    result = asyncio.run(run_users(stack, settings, users, args.questions, f"c{users}-", args.think_ms))
    cpu = {name: tree_cpu_seconds(pid) - cpu_start[name] for name, pid in pids.items()}
    cpu["bench"] = time.process_time() - own_start
    for spy in spies:
        spy.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT
        spy.wait(timeout=30)
    calls = redis_calls(client)
    client.close()
    answers = len(result["answer"])
    return {
        "idle_redis_per_answer": idle_per_s * result["wall_s"] / max(1, answers),
        "idle_cpu_ms_per_answer": idle_cpu_per_s * 1000 * result["wall_s"] / max(1, answers),
        "cpu_ms_per_answer": {k: v * 1000 / max(1, answers) for k, v in cpu.items()},
        **result,
        "users": users,
        "answers_per_s": answers / result["wall_s"],
        "cpu": cpu,
        "redis_per_answer": {k: v / max(1, answers) for k, v in sorted(calls.items(), key=lambda kv: -kv[1])},
        "load": (load_start, os.getloadavg()[0]),
    }


def report(row: dict[str, Any]) -> None:
    def stats(name: str) -> str:
        values = row[name]
        return f"p50 {statistics.median(values):7.1f}  p95 {percentile(values, 95):7.1f}" if values else "-"

    answers, errors, wall_s = len(row["answer"]), row["errors"], row["wall_s"]
    kinds = sorted(set(errors)) if errors else ""
    load = f"load avg {row['load'][0]:.1f} -> {row['load'][1]:.1f} on {os.cpu_count()} CPUs"
    print(f"\n{row['users']} users: {answers} answers in {wall_s:.1f} s = {row['answers_per_s']:.1f}/s, "
          f"{len(errors)} errors {kinds}  ({load})")  # fmt: skip
    for name in ("accepted", "first_delta", "answer"):
        print(f"  ask -> {name:<12} ms  {stats(name)}")
    cores = "  ".join(f"{k} {v / row['wall_s']:.2f}" for k, v in row["cpu"].items())
    per_answer = row["cpu_ms_per_answer"]
    each = "  ".join(f"{k} {v:.1f}" for k, v in per_answer.items())
    stack = sum(per_answer[k] for k in STACK_PROCESSES if k in per_answer)
    idle_cpu = row["idle_cpu_ms_per_answer"]
    print(f"  CPU cores: {cores}\n  CPU ms per answer: {each}  (total {sum(per_answer.values()):.1f}; "
          f"web + worker + redis {stack:.1f}, of which idle polling ~{idle_cpu:.1f}, "
          f"so ~{stack - idle_cpu:.1f} per answer)")  # fmt: skip
    total = sum(row["redis_per_answer"].values())
    shown = [(k, v) for k, v in row["redis_per_answer"].items() if v >= COMMAND_SHOWN_PER_ANSWER]
    top = ", ".join(f"{k} {v:.1f}" for k, v in shown)
    idle = row["idle_redis_per_answer"]
    print(f"  Redis commands per answer: {total:.1f} ({top}); idle polling ~{idle:.1f} of them, "
          f"so ~{total - idle:.1f} per turn", flush=True)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, nargs="+", default=[1, 10, 40])
    parser.add_argument("--questions", type=int, default=20, help="questions per user")
    parser.add_argument("--think-ms", type=float, default=0.0, help="mean pause before each next ask")
    parser.add_argument(
        "--data-dir", type=Path, help="the stack's data dir (kept: its Redis AOF grows every run)"
    )
    parser.add_argument(
        "--profile", type=Path, help="py-spy the web and worker into DIR (pip install py-spy)"
    )
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                        help="extra DOCENT_ settings for the stack (name without the prefix)")  # fmt: skip
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="docent-load-") as tmp:
        data_dir = args.data_dir or Path(tmp) / "data"
        with ScriptedLLMProcess() as llm:
            assert llm.process is not None
            extra = dict(item.split("=", 1) for item in args.set)
            stack = Stack(data_dir, **{**STACK_OVERRIDES, "llm_url": llm.url, **extra})
            try:
                started = time.monotonic()
                stack.start()
                ready_s = time.monotonic() - started
                print(f"stack ready in {ready_s:.1f} s (hash embedder, demo knowledge base; "
                      f"settings {extra or 'default'})", flush=True)  # fmt: skip
                settings = Settings.from_env({**stack.env, "DOCENT_DATA_DIR": str(data_dir)})
                asyncio.run(run_users(stack, settings, 1, WARMUP_QUESTIONS, tag="warm-"))
                for users in args.users:
                    report(level(stack, settings, llm.process.pid, users, args))
            finally:
                stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
