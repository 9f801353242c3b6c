"""`docent chaos`: one run per conversation, workers killed while they work, then the report.

Even runs are agent tasks: four model steps and three side effects (an HTTP POST, an email, an HTTP PUT),
played by the scripted model (`actors.testing`) against the counting sinks. Odd runs are workflows: the
`compare_table` workflow over two contracts (`actors.chaos.corpus`), then its email; no model call at all.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from actors.broker import ADVANCE_ACTOR, CONVERSATION_QUEUE, enqueue_by_name, sending_broker
from actors.chaos import corpus
from actors.chaos.checks import read_events
from actors.chaos.report import FAILURE_KEYS, SUMMARY_KEYS, build_report, tally_logs
from actors.chaos.workers import Workers
from actors.testing import HttpSink, ScriptedLLMThread, SinkThread, SmtpSink
from actors.testing.crash import CRASH_RATE_ENV
from store.events import TERMINAL, LLMRequested, ToolIntent, UserMessage
from store.log import ConversationLog
from store.redis import EmbeddedRedis

WORKERS = 2
TENANT = corpus.TENANT
LEASE_MS = 2_000
HEARTBEAT_TIMEOUT_MS = 2_000
CRASH_RATE = 0.05
KILL_INTERVAL_S = (0.3, 1.5)
POLL_S = 0.25
FIRST_STEP_POLL_S = 0.005
FIRST_STEP_WAIT_S = 30.0
SETTLE_BASE_S = 60.0  # after the last kill, how long runs may take to finish (plus per-run time)
SETTLE_PER_RUN_S = 1.0
CHAOS_WINDOW_PER_RUN_S = 0.6  # how long the killing goes on, per run
DELTA_DELAY_MS = 3


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


def conversation_id(run: int) -> str:
    return f"chaos-{run}"


def script_key(run: int) -> str:
    return f"task@{conversation_id(run)}"


def is_workflow(run: int) -> bool:
    return run % 2 == 1


def request_text(run: int) -> tuple[str, str]:
    """(text, mode) of run `run`'s request."""
    if is_workflow(run):
        return corpus.WORKFLOW_REQUEST, "auto"
    return f"[script:{script_key(run)}] file the order, email operations, then confirm it", "agent"


def main(runs: int, as_json: bool = False, seed: int = 0) -> int:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="docent-chaos-") as tmp:
        report = _in(Path(tmp), runs, random.Random(seed))
    report["detail"]["seconds"] = round(time.monotonic() - started, 1)
    report["detail"]["workflow_runs"] = sum(1 for run in range(runs) if is_workflow(run))
    summary = {k: report[k] for k in SUMMARY_KEYS}
    clean = summary["completed"] == runs and not any(summary[k] for k in FAILURE_KEYS)
    print_report(summary, report["detail"], clean, as_json)
    return 0 if clean else 1


def print_report(summary: dict[str, Any], detail: dict[str, Any], clean: bool, as_json: bool) -> None:
    if as_json:
        print(json.dumps(detail, separators=(",", ":")))
        print(json.dumps(summary, separators=(",", ":")))
        return
    for key, value in {**summary, **detail}.items():
        print(f"{key:>20}: {value}")
    print("clean" if clean else "NOT CLEAN")


def _in(root: Path, runs: int, rng: random.Random) -> dict[str, Any]:
    """Start Redis, the sinks and the scripted model in `root`, do the runs, stop them all."""
    corpus.build(root / "data")
    redis_server = EmbeddedRedis(root / "redis").start()  # its own port: chosen again if taken first
    smtp, http = SmtpSink(), HttpSink()
    try:
        with SinkThread(smtp, http), ScriptedLLMThread({"task": task_script(http.url)}) as llm:
            return _run(root, redis_server.url, llm, smtp, http, runs, rng)
    finally:
        redis_server.stop()


def worker_env(
    root: Path, redis_url: str, llm_url: str, smtp_port: int, broker_url: str = ""
) -> dict[str, str]:
    """The chaos workers' environment (`broker_url`: the queues' Redis beside a cluster)."""
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
        CRASH_RATE_ENV: str(CRASH_RATE),
        "PYTHONUNBUFFERED": "1",
        "dramatiq_worker_timeout": "20",  # idle poll backoff cap (ms): redelivered messages start promptly
    })  # fmt: skip
    if broker_url:
        env["DOCENT_BROKER_URL"] = broker_url
    return env


def _run(
    root: Path, redis_url: str, llm: ScriptedLLMThread, smtp: SmtpSink, http: HttpSink, runs: int,
    rng: random.Random,
) -> dict[str, Any]:  # fmt: skip
    (root / "logs").mkdir()
    workers = Workers(worker_env(root, redis_url, llm.url, smtp.port), WORKERS, root / "logs")
    log = ConversationLog.from_url(redis_url)
    try:
        workers.start_all()
        _ask_all(log, redis_url, runs)
        _kill_while_running(workers, log, runs, rng)
        _settle(workers, log, runs)
        convs = [conversation_id(run) for run in range(runs)]
        tally = tally_logs(log, convs, [script_key(run) for run in range(runs)], llm)
        return build_report(tally, llm, smtp, http, workers.kills, workers.exits)
    finally:
        workers.stop_all()
        log.close()


def _ask_all(log: ConversationLog, redis_url: str, runs: int) -> None:
    broker = sending_broker(redis_url)
    for run in range(runs):
        conv = conversation_id(run)
        text, mode = request_text(run)
        ask = UserMessage(text=text, mode=mode, tenant=TENANT, user="chaos")  # type: ignore[arg-type]
        log.post_inbox(conv, ask, f"ask-{run}")
        enqueue_by_name(broker, CONVERSATION_QUEUE, ADVANCE_ACTOR, (conv,))


def _kill_while_running(workers: Workers, log: ConversationLog, runs: int, rng: random.Random) -> None:
    _kill_all_at_first_step(workers, log, runs)
    chaos_until = time.monotonic() + max(5.0, runs * CHAOS_WINDOW_PER_RUN_S)
    next_kill = time.monotonic() + rng.uniform(*KILL_INTERVAL_S)
    while time.monotonic() < chaos_until and _unfinished(log, runs):
        if time.monotonic() >= next_kill:
            workers.kill(rng.randrange(len(workers.procs)))
            next_kill = time.monotonic() + rng.uniform(*KILL_INTERVAL_S)
        workers.revive()
        time.sleep(POLL_S)


def _kill_all_at_first_step(workers: Workers, log: ConversationLog, runs: int) -> None:
    """The chosen point: SIGKILL every worker as soon as any run has logged a step past its ask.

    On a fast machine the runs can finish before the first random kill; this one always lands mid-run.
    """
    deadline = time.monotonic() + FIRST_STEP_WAIT_S
    while time.monotonic() < deadline and not _first_step_logged(log, runs):
        time.sleep(FIRST_STEP_POLL_S)
    for index in range(len(workers.procs)):
        workers.kill(index)


def _first_step_logged(log: ConversationLog, runs: int) -> bool:
    for run in range(runs):
        entries = read_events(log, conversation_id(run)) or []
        if any(isinstance(event, (LLMRequested, ToolIntent)) for _, event in entries):
            return True
    return False


def _settle(workers: Workers, log: ConversationLog, runs: int) -> None:
    settle_until = time.monotonic() + SETTLE_BASE_S + runs * SETTLE_PER_RUN_S
    while time.monotonic() < settle_until and _unfinished(log, runs):
        workers.revive()
        time.sleep(POLL_S)


def _unfinished(log: ConversationLog, runs: int) -> int:
    left = 0
    for run in range(runs):
        entries = read_events(log, conversation_id(run))
        if not entries or not isinstance(entries[-1][1], TERMINAL):
            left += 1
    return left
