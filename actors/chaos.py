"""`docent chaos --runs N [--json] [--seed S]`: kill workers while agents work; prove no effect is duplicated.

It starts everything it needs, on free ports, in a temporary directory: an embedded Redis, the scripted
OpenAI-compatible LLM (`actors.llm.scripted`), a counting SMTP sink and HTTP sink (`actors.sinks`), and
`WORKERS` dramatiq worker processes (`python -m dramatiq actors.worker --queues conversation`). Each run is
one conversation whose agent task takes four model steps and three side effects (an HTTP POST, an email,
an HTTP PUT). While the runs proceed, the runner SIGKILLs a random worker's whole process group at random
moments and restarts it; independently, every worker exits hard (`os._exit`, no cleanup) with probability
`DOCENT_CHAOS_CRASH_RATE` right after a tool's effect or an LLM response and before its record is written —
the narrowest windows there are. A short broker heartbeat timeout and lease make the broker redeliver a
dead worker's messages within seconds.

The tools' risk: `send_email` and non-GET `http_request` are high risk by default and would wait for a
human. The runner therefore writes a tool policy file (`DOCENT_TOOL_POLICY_PATH`) that marks both tools
low risk for the `chaos` tenant only, so the runs complete unattended.

Checks, from the durable logs and the sinks' own counters:
  completed           runs whose turn ended with an answer
  duplicate_effects   effects beyond one per logical tool call: an HTTP effect or an email whose
                      idempotency key / Message-ID no log intent accounts for (a call re-issued under a new
                      key), requests without a key, or a key applied twice at the idempotent HTTP sink
  repeated_llm_calls  model requests the logs do not account for: per conversation and step, requests at
                      the scripted server beyond the `LLMRequested` records (every request is recorded before
                      it is sent), plus any request recorded after that step's `LLMCompleted`
  lost_turns          runs that never reached a terminal event
  invalid_logs        logs that do not decode, or break the replay rules (a result without an intent, two
                      results or completions for one call or step, an intent key that is not the hash of
                      its conversation, turn, step, tool and arguments, events after the terminal one)

The one window where a receiver can see a duplicate: a worker dies after a tool's effect happened and before
its `ToolResult` was appended. The next activation finds the `ToolIntent` without a result and re-issues
the call with the SAME idempotency key. An idempotent receiver (the HTTP sink, like a payments API, keys
on `Idempotency-Key`) applies it once and replays its stored answer. SMTP has no such contract: the mail
is delivered twice — but with the same `Message-ID: <key@docent>`, so the receiving mail system (or the
reader's client) can collapse the copies. The runner reports these as `smtp_redeliveries` on the line
before the final JSON; they are not duplicate effects.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import dramatiq
import msgspec

from actors.llm.scripted import ScriptedLLMThread
from actors.sinks import HttpSink, SinkThread, SmtpSink
from actors.tools import default_registry
from actors.tools.registry import idempotency_key
from store.events import (
    TERMINAL,
    AnswerCompleted,
    Event,
    LLMCompleted,
    LLMRequested,
    ToolIntent,
    ToolResult,
    UserMessage,
)
from store.exceptions import CorruptLog, ToolError
from store.log import ConversationLog
from store.redis import EmbeddedRedis, free_port

WORKERS = 2
WORKER_THREADS = 2
TENANT = "chaos"
LEASE_MS = 2_000
HEARTBEAT_TIMEOUT_MS = 2_000
CRASH_RATE = 0.05
KILL_INTERVAL_S = (0.3, 1.5)
POLL_S = 0.25
SETTLE_BASE_S = 60.0  # after the last kill, how long runs may take to finish (plus per-run time)
SETTLE_PER_RUN_S = 1.0
CHAOS_WINDOW_PER_RUN_S = 0.6  # how long the killing goes on, per run
DELTA_DELAY_MS = 3
STOP_TIMEOUT_S = 5.0


def task_script(sink_url: str) -> dict[str, Any]:
    def http(method: str, path: str, body: str) -> dict[str, Any]:
        return {
            "name": "http_request",
            "arguments": {"url": f"{sink_url}{path}", "method": method, "body": body},
        }

    email = {"name": "send_email", "arguments": {
        "to": ["ops@example.com"], "subject": "order filed", "body": "The order was filed."}}  # fmt: skip
    return {
        "delay_ms": DELTA_DELAY_MS,
        "steps": [
            {"text": "Filing the order first.", "tool_calls": [http("POST", "/orders", '{"qty": 3}')]},
            {"text": "Now telling operations.", "tool_calls": [email]},
            {"text": "Marking it confirmed.", "tool_calls": [http("PUT", "/orders/1", '{"state": "ok"}')]},
            {"text": "All done: the order is filed, confirmed, and operations were told."},
        ],
    }


class Workers:
    """Worker process groups, each started in its own session so one SIGKILL takes the whole group."""

    def __init__(self, env: dict[str, str], count: int, log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * count
        self.kills = 0
        self.exits = 0  # workers that died by themselves (the in-process crash points)

    def start(self, index: int) -> None:
        command = [sys.executable, "-m", "dramatiq", "actors.worker", "--queues", "conversation",
                   "--processes", "1", "--threads", str(WORKER_THREADS)]  # fmt: skip
        with open(self.log_dir / f"worker-{index}.log", "ab") as out:
            self.procs[index] = subprocess.Popen(command, env=self.env, stdout=out, stderr=out,
                                                 start_new_session=True)  # fmt: skip

    def start_all(self) -> None:
        for i in range(len(self.procs)):
            self.start(i)

    def kill(self, index: int) -> None:
        proc = self.procs[index]
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the group we started: main process and its worker
            proc.wait()
            self.kills += 1
        self._reap_group(proc)
        self.start(index)

    def revive(self) -> None:
        """Restart groups whose main process exited (a worker's crash point shuts its group down)."""
        for i, proc in enumerate(self.procs):
            if proc is not None and proc.poll() is not None:
                self.exits += 1
                self._reap_group(proc)
                self.start(i)

    def _reap_group(self, proc: subprocess.Popen[bytes] | None) -> None:
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers of a group whose leader is gone

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in self.procs:
            if proc is None:
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            self._reap_group(proc)


def conversation_id(run: int) -> str:
    return f"chaos-{run}"


def script_key(run: int) -> str:
    return f"task@{conversation_id(run)}"


def read_events(log: ConversationLog, conv_id: str) -> list[tuple[str, Event]] | None:
    try:
        return log.read(conv_id)
    except CorruptLog:
        return None


def log_problems(conv_id: str, entries: list[tuple[str, Event]]) -> list[str]:
    """Replay-rule violations in one conversation's log (empty when valid)."""
    problems: list[str] = []
    registry = default_registry()
    intents: dict[str, ToolIntent] = {}
    results: set[str] = set()
    completed: set[int] = set()
    ended = False
    for entry_id, event in entries:
        if ended:
            problems.append(f"{entry_id}: {type(event).__name__} after the terminal event")
        match event:
            case ToolIntent():
                if event.call_id in intents:
                    problems.append(f"{entry_id}: a second intent for call {event.call_id}")
                intents[event.call_id] = event
                try:
                    _, args = registry.parse(event.tool, msgspec.json.encode(event.args))
                    expected = idempotency_key(conv_id, event.turn, event.step, event.tool, args)
                except ToolError as exc:
                    problems.append(f"{entry_id}: intent arguments do not parse: {exc}")
                    continue
                if expected != event.idempotency_key:
                    problems.append(f"{entry_id}: idempotency key is not the hash of the call")
            case ToolResult():
                if event.call_id in results:
                    problems.append(f"{entry_id}: a second result for call {event.call_id}")
                results.add(event.call_id)
                intent = intents.get(event.call_id)
                if event.idempotency_key and (
                    intent is None or intent.idempotency_key != event.idempotency_key
                ):
                    problems.append(f"{entry_id}: a result without its intent")
            case LLMCompleted():
                if event.step in completed:
                    problems.append(f"{entry_id}: a second completion for step {event.step}")
                completed.add(event.step)
            case _ if isinstance(event, TERMINAL):
                ended = True
    return problems


def llm_repeats(entries: list[tuple[str, Event]], server_counts: dict[str, int]) -> int:
    """Requests the log does not account for (see the module docstring)."""
    logged: Counter[int] = Counter()  # server step (assistant messages in the prompt) -> recorded requests
    completed: set[int] = set()
    after_completion = 0
    for _, event in entries:
        if isinstance(event, LLMRequested):
            if event.step in completed:
                after_completion += 1
            logged[sum(1 for m in event.messages if m.get("role") == "assistant")] += 1
        elif isinstance(event, LLMCompleted):
            completed.add(event.step)
    unaccounted = sum(max(0, n - logged[int(step)]) for step, n in server_counts.items())
    return unaccounted + after_completion


def main(runs: int, as_json: bool = False, seed: int = 0) -> int:
    rng = random.Random(seed)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="docent-chaos-") as tmp:
        root = Path(tmp)
        redis_server = EmbeddedRedis(root / "redis", port=free_port()).start()
        smtp, http = SmtpSink(), HttpSink()
        try:
            with SinkThread(smtp, http):
                script = task_script(http.url)
                with ScriptedLLMThread({"task": script}) as llm:
                    report = _run(root, redis_server.url, llm, smtp, http, runs, rng)
        finally:
            redis_server.stop()
    report["detail"]["seconds"] = round(time.monotonic() - started, 1)
    summary = {k: report[k] for k in ("runs", "completed", "duplicate_effects", "repeated_llm_calls",
                                      "lost_turns", "invalid_logs")}  # fmt: skip
    clean = summary["completed"] == runs and not any(
        summary[k] for k in ("duplicate_effects", "repeated_llm_calls", "lost_turns", "invalid_logs")
    )
    if as_json:
        print(json.dumps(report["detail"], separators=(",", ":")))
        print(json.dumps(summary, separators=(",", ":")))
    else:
        for key, value in {**summary, **report["detail"]}.items():
            print(f"{key:>20}: {value}")
        print("clean" if clean else "NOT CLEAN")
    return 0 if clean else 1


def _env(root: Path, redis_url: str, llm_url: str, smtp_port: int) -> dict[str, str]:
    policy = {
        "tenants": {TENANT: {"tools": {"send_email": {"risk": "low"}, "http_request": {"risk": "low"}}}}
    }
    policy_path = root / "tool-policy.json"
    policy_path.write_text(json.dumps(policy))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCENT_") and k != "REDIS_URL"}
    env.update({
        "DOCENT_DATA_DIR": str(root / "data"),
        "DOCENT_REDIS_URL": redis_url,
        "DOCENT_EMBED_MODEL": "hash",
        "DOCENT_LLM_BACKEND": "openai",
        "DOCENT_LLM_URL": llm_url,
        "DOCENT_LLM_MAX_RETRIES": "0",  # every request the server sees is one the log recorded
        "DOCENT_LLM_TIMEOUT_S": "20",
        "DOCENT_SMTP_PORT": str(smtp_port),
        "DOCENT_HTTP_ALLOW_HOSTS": "127.0.0.1",
        "DOCENT_HTTP_ALLOW_PRIVATE": "true",
        "DOCENT_TOOL_POLICY_PATH": str(policy_path),
        "DOCENT_LEASE_MS": str(LEASE_MS),
        "DOCENT_BROKER_HEARTBEAT_TIMEOUT_MS": str(HEARTBEAT_TIMEOUT_MS),
        "DOCENT_BROKER_MAINTENANCE_CHANCE": "1000000",
        "DOCENT_CHAOS_CRASH_RATE": str(CRASH_RATE),
        "PYTHONUNBUFFERED": "1",
        "dramatiq_worker_timeout": "20",  # idle poll backoff cap (ms): redelivered messages start promptly
    })  # fmt: skip
    return env


def _run(
    root: Path, redis_url: str, llm: ScriptedLLMThread, smtp: SmtpSink, http: HttpSink, runs: int,
    rng: random.Random,
) -> dict[str, Any]:  # fmt: skip
    from dramatiq.brokers.redis import RedisBroker

    env = _env(root, redis_url, llm.url, smtp.port)
    (root / "logs").mkdir()
    workers = Workers(env, WORKERS, root / "logs")
    log = ConversationLog.from_url(redis_url)
    broker = RedisBroker(url=redis_url, namespace="docent-tasks")
    try:
        workers.start_all()
        for run in range(runs):
            conv = conversation_id(run)
            text = f"[script:{script_key(run)}] file the order, email operations, then confirm it"
            log.post_inbox(
                conv, UserMessage(text=text, mode="agent", tenant=TENANT, user="chaos"), f"ask-{run}"
            )
            broker.enqueue(dramatiq.Message(queue_name="conversation", actor_name="advance", args=(conv,),
                                            kwargs={}, options={}))  # fmt: skip
        chaos_until = time.monotonic() + max(5.0, runs * CHAOS_WINDOW_PER_RUN_S)
        next_kill = time.monotonic() + rng.uniform(*KILL_INTERVAL_S)
        while time.monotonic() < chaos_until and _unfinished(log, runs):
            if time.monotonic() >= next_kill:
                workers.kill(rng.randrange(WORKERS))
                next_kill = time.monotonic() + rng.uniform(*KILL_INTERVAL_S)
            workers.revive()
            time.sleep(POLL_S)
        settle_until = time.monotonic() + SETTLE_BASE_S + runs * SETTLE_PER_RUN_S
        while time.monotonic() < settle_until and _unfinished(log, runs):
            workers.revive()
            time.sleep(POLL_S)
        return _report(log, llm, smtp, http, runs, workers)
    finally:
        workers.stop_all()
        broker.close()
        log.close()


def _unfinished(log: ConversationLog, runs: int) -> int:
    left = 0
    for run in range(runs):
        entries = read_events(log, conversation_id(run))
        if not entries or not isinstance(entries[-1][1], TERMINAL):
            left += 1
    return left


def _report(
    log: ConversationLog, llm: ScriptedLLMThread, smtp: SmtpSink, http: HttpSink, runs: int, workers: Workers
) -> dict[str, Any]:
    requests: dict[str, dict[str, int]] = llm.stats()["requests"]
    completed = lost = invalid = repeats = 0
    http_keys: set[str] = set()
    mail_ids: set[str] = set()
    problems: dict[str, list[str]] = defaultdict(list)
    for run in range(runs):
        conv = conversation_id(run)
        entries = read_events(log, conv)
        if entries is None:
            invalid += 1
            problems[conv].append("the log does not decode")
            continue
        events = [e for _, e in entries]
        if not events or not isinstance(events[-1], TERMINAL):
            lost += 1
        elif isinstance(events[-1], AnswerCompleted):
            completed += 1
        found = log_problems(conv, entries)
        if found:
            invalid += 1
            problems[conv] += found
        repeats += llm_repeats(entries, requests.get(script_key(run), {}))
        for event in events:
            if isinstance(event, ToolIntent) and event.tool == "http_request":
                http_keys.add(event.idempotency_key)
            elif isinstance(event, ToolIntent) and event.tool == "send_email":
                mail_ids.add(f"<{event.idempotency_key}@docent>")
    http_stats = http.stats()["http"]
    seen_keys = set(http.requests_by_key)
    seen_mail = set(smtp.deliveries_by_id)
    duplicates = (
        http_stats["without_key"]
        + len(seen_keys - http_keys)
        + max(0, http_stats["effects"] - len(seen_keys))
        + len(seen_mail - mail_ids)
        + smtp.stats()["without_id"]
    )
    detail = {
        "kills": workers.kills,
        "crash_exits": workers.exits,
        "http_effects": http_stats["effects"],
        "http_replayed_attempts": http_stats["duplicates"],
        "emails": len(seen_mail),
        "smtp_redeliveries": smtp.duplicates,
        "llm_requests": llm.stats()["total"],
        "problems": dict(problems),
    }
    return {
        "runs": runs,
        "completed": completed,
        "duplicate_effects": duplicates,
        "repeated_llm_calls": repeats,
        "lost_turns": lost,
        "invalid_logs": invalid,
        "detail": detail,
    }
