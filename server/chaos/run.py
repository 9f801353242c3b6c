"""`docent chaos --topology cluster`: conversations over WebSocket against the multi-process topology
while workers, web processes and one Redis primary are SIGKILLed; then the report.

Run r is one conversation (its own user) of `turns` asks: `turns - 1` questions in `qa` mode, then the task
of `actors.chaos.run` (an agent task with three side effects on even runs, the `compare_table` workflow on
odd ones). Clients start STAGGER_PER_RUN_S apart; the primary kill lands halfway through their starts, once
an ask is on its way to that primary, so asks are being acknowledged there when it dies (`kill_at="ask"`),
or, with `kill_at="model"`, on the primary of the first agent task whose model call is in flight after
that (`server.chaos.aim`): its link is cut as the request arrives and the kill follows `replica_lag_ms`
later.
"""

from __future__ import annotations

import asyncio
import random
import re
import secrets
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from actors.chaos import corpus
from actors.chaos.checks import read_events
from actors.chaos.report import SUMMARY_KEYS, Tally, duplicate_effects
from actors.chaos.run import print_report, request_text, script_key, task_script, worker_env
from actors.testing import HttpSink, ScriptedLLMThread, SinkThread, SmtpSink
from server.auth import mint_token
from server.chaos.ack_times import acked_in_window, cut_window_acks, outside_window_acks, percentiles
from server.chaos.aim import ModelCallWatch, slowed_task_script, steps_requested_again, task_steps_with_tools
from server.chaos.clients import Ask, ChaosClient
from server.chaos.stack import Topology, in_slots
from store.cluster import EmbeddedCluster
from store.events import TERMINAL, AnswerCompleted, Event, UserMessage
from store.log import ConversationLog, conv_keys
from store.redis import CLUSTER_NODE_TIMEOUT_MS, EmbeddedRedis
from store.settings import Settings

REPORT_KEYS = (*SUMMARY_KEYS, "lost_acknowledged_asks")
FAILURE_KEYS = (*SUMMARY_KEYS[2:], "lost_acknowledged_asks")
STAGGER_PER_RUN_S = 0.4  # client r starts r times this after the first
CHAOS_WINDOW_BASE_S = 12.0
CHAOS_WINDOW_PER_RUN_S = 0.8
PRIMARY_KILL_MIN_S = 3.0  # the primary kill lands halfway through the clients' starts, this soon at least
WORKER_KILL_INTERVAL_S = (1.0, 3.0)
WEB_KILL_INTERVAL_S = (2.0, 5.0)
WEB_MIN_UP_S = 2.0  # a web process is killed only when the other one has been serving this long
FAULT_POLL_S = 0.1
ASKED_WAIT_S = 10.0
ASKED_POLL_S = 0.005
DELTA_DELAY_MS = 3
TRACEBACK_END = re.compile(r"([A-Za-z_][\w.]*(?:Error|Exception))(?::|$)")  # a traceback's last line


@dataclass(frozen=True)
class Plan:
    runs: int = 12
    turns: int = 3
    seed: int = 0
    wait_replicas: int = 0  # DOCENT_REDIS_WAIT_REPLICAS of the web processes
    replica_lag_ms: int = 0  # the primary's replication link is cut this long before its kill
    node_timeout_ms: int = CLUSTER_NODE_TIMEOUT_MS  # the cluster's cluster-node-timeout
    failover: Literal["supervisor", "cluster"] = "supervisor"  # who promotes the killed primary's replica
    kill_at: Literal["ask", "model"] = "ask"  # the primary kill's aim (see the module docstring)
    kill_workers: bool = True
    kill_webs: bool = True

    @property
    def window_s(self) -> float:
        return CHAOS_WINDOW_BASE_S + self.runs * CHAOS_WINDOW_PER_RUN_S

    @property
    def primary_kill_s(self) -> float:
        """When the primary kill is aimed: halfway through the clients' starts, while asks are being made
        (PRIMARY_KILL_MIN_S at least for an ask; a model call is waited for anyway)."""
        at_least = PRIMARY_KILL_MIN_S if self.kill_at == "ask" else 0.0
        return max(at_least, self.runs * STAGGER_PER_RUN_S / 2)


@dataclass
class Faults:
    """The fault schedule, run in a thread beside the clients until `stop`."""

    topology: Topology
    plan: Plan
    rng: random.Random
    clients: list[ChaosClient]
    model_calls: ModelCallWatch | None = None  # with kill_at="model": the agent model calls to aim at
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[str] = field(default_factory=list)

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # reported, never silently swallowed
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def _run(self) -> None:
        started = time.monotonic()
        primary = threading.Thread(target=self._kill_a_primary, args=(started,), daemon=True)
        primary.start()
        next_worker = started + self.rng.uniform(*WORKER_KILL_INTERVAL_S)
        next_web = started + self.rng.uniform(*WEB_KILL_INTERVAL_S)
        while not self.stop.is_set():
            now = time.monotonic()
            in_window = now - started < self.plan.window_s
            if in_window and self.plan.kill_workers and now >= next_worker:
                self.topology.kill_worker(self.rng.randrange(len(self.topology.workers.procs)))
                next_worker = now + self.rng.uniform(*WORKER_KILL_INTERVAL_S)
            if in_window and self.plan.kill_webs and now >= next_web:
                self.topology.kill_web(self.rng.randrange(len(self.topology.webs)), WEB_MIN_UP_S)
                next_web = now + self.rng.uniform(*WEB_KILL_INTERVAL_S)
            self.topology.revive()
            self.stop.wait(FAULT_POLL_S)
        primary.join()

    def _until_asked(self, slots: list[tuple[int, int]]) -> None:
        """Until a client has an ask on its way to one of `slots` (at most ASKED_WAIT_S): the kill then
        lands while asks are being acknowledged there."""
        deadline = time.monotonic() + ASKED_WAIT_S
        while time.monotonic() < deadline and not self.stop.is_set():
            if any(c.asking and in_slots(slots, conv_keys(c.conversation_id).inbox) for c in self.clients):
                return
            self.stop.wait(ASKED_POLL_S)

    def _aim(self) -> tuple[EmbeddedRedis | None, str]:
        """The primary to kill, and what the kill aims at: a random primary once an ask is on its way to it,
        or the primary of an agent's model call in flight (None when none came: reported)."""
        if self.model_calls is None:
            node = self.rng.choice(sorted(self.topology.primaries(), key=lambda n: n.port))
            self._until_asked(self.topology.slots_of(node))
            return node, "ask"
        self.model_calls.start()
        found = self.model_calls.wait(self.stop)
        if found is None:
            self.errors.append("primary kill: no agent model call to aim at")
            return None, ""
        conversation, call = found
        return self.topology.cluster.primary_of(conv_keys(conversation).log), call

    def _kill_a_primary(self, started: float) -> None:
        try:
            self.stop.wait(max(0.0, started + self.plan.primary_kill_s - time.monotonic()))
            node, aimed_at = self._aim()
            if node is None:
                return
            supervised = self.plan.failover == "supervisor"
            kill = self.topology.kill_primary(node, self.plan.replica_lag_ms, supervised)
            kill.aimed_at = aimed_at
        except Exception as exc:
            self.errors.append(f"primary kill: {type(exc).__name__}: {exc}")


def main(plan: Plan, as_json: bool = False) -> int:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="docent-chaos-cluster-") as tmp:
        report = run_in(Path(tmp), plan)
    report["detail"]["seconds"] = round(time.monotonic() - started, 1)
    summary = {k: report[k] for k in REPORT_KEYS}
    clean = summary["completed"] == summary["runs"] * plan.turns and not any(summary[k] for k in FAILURE_KEYS)
    print_report(summary, report["detail"], clean, as_json)
    return 0 if clean else 1


def run_in(root: Path, plan: Plan) -> dict[str, Any]:
    """Start the topology under `root`, do the runs with their faults, stop it all: the report."""
    corpus.build(root / "data")
    (root / "logs").mkdir()
    password = secrets.token_hex(16)
    with (
        EmbeddedCluster(root / "cluster", password=password, node_timeout_ms=plan.node_timeout_ms) as cluster,
        EmbeddedRedis(root / "queues", password=password) as queues,
        SinkThread(smtp := SmtpSink(), http := HttpSink()),
        ScriptedLLMThread({"task": _task_script(http.url, plan)}, delay_ms=DELTA_DELAY_MS) as llm,
    ):
        env = _env(root, cluster, queues, llm.url, smtp.port, plan)
        topology = Topology(cluster, env, root / "logs")
        try:
            topology.start()
            clients = _clients(topology, Settings.from_env(env), plan)
            aimed = plan.kill_at == "model"
            watch = ModelCallWatch(llm, clients, task_steps_with_tools(http.url)) if aimed else None
            faults = Faults(topology, plan, random.Random(plan.seed), clients, watch)
            asyncio.run(_drive(clients, faults, plan))
        finally:
            topology.stop()
        report = _report(cluster, clients, topology, faults, llm, smtp, http)
        report["detail"]["tracebacks_in_logs"] = logged_tracebacks(root / "logs")
        return report


def _task_script(sink_url: str, plan: Plan) -> dict[str, Any]:
    """The agent task's script: its model steps slowed when the kill aims at one (`server.chaos.aim`)."""
    return slowed_task_script(sink_url) if plan.kill_at == "model" else task_script(sink_url)


def logged_tracebacks(log_dir: Path) -> dict[str, int]:
    """The exception types of the tracebacks the processes logged (last line of each), by type."""
    found: Counter[str] = Counter()
    for path in sorted(log_dir.glob("*.log")):
        lines = path.read_text(errors="replace").splitlines()
        for n, line in enumerate(lines[1:], 1):
            if lines[n - 1].startswith("    ") and (error := TRACEBACK_END.match(line)):
                found[error.group(1)] += 1
    return dict(found)


def _env(
    root: Path, cluster: EmbeddedCluster, queues: EmbeddedRedis, llm_url: str, smtp_port: int, plan: Plan
) -> dict[str, str]:
    env = worker_env(root, cluster.url, llm_url, smtp_port, broker_url=queues.url)
    env.update({
        "DOCENT_SECRET": secrets.token_hex(32),
        "DOCENT_ADMIN_API_KEY": secrets.token_hex(16),
        "DOCENT_REDIS_WAIT_REPLICAS": str(plan.wait_replicas),
        "DOCENT_USER_RATE_PER_S": "1000", "DOCENT_USER_BURST": "1000",
        "DOCENT_TENANT_RATE_PER_S": "100000", "DOCENT_TENANT_BURST": "100000",
    })  # fmt: skip
    return env


def asks_of(run: int, turns: int) -> list[Ask]:
    question = "What is the price in the Alpha contract? ({}.{})"
    questions = [Ask(f"q{run}-{t}", question.format(run, t), "qa") for t in range(turns - 1)]
    text, mode = request_text(run)
    return [*questions, Ask(f"task{run}", text, mode)]


def _clients(topology: Topology, settings: Settings, plan: Plan) -> list[ChaosClient]:
    urls = topology.urls()
    clients = []
    for run in range(plan.runs):
        token = mint_token(settings, corpus.TENANT, f"chaos{run}", ttl=3600)
        first = run % len(urls)  # spread over the web processes
        clients.append(ChaosClient(urls[first:] + urls[:first], token, asks_of(run, plan.turns)))
    return clients


async def _drive(clients: list[ChaosClient], faults: Faults, plan: Plan) -> None:
    async def staggered(n: int, client: ChaosClient) -> None:
        await asyncio.sleep(n * STAGGER_PER_RUN_S)
        await client.run()

    fault_thread = threading.Thread(target=faults.run, daemon=True)
    fault_thread.start()
    try:
        await asyncio.gather(*(staggered(n, c) for n, c in enumerate(clients)))
    finally:
        faults.stop.set()
        await asyncio.to_thread(fault_thread.join)


def _report(
    cluster: EmbeddedCluster, clients: list[ChaosClient], topology: Topology, faults: Faults,
    llm: ScriptedLLMThread, smtp: SmtpSink, http: HttpSink,
) -> dict[str, Any]:  # fmt: skip
    log = ConversationLog.from_url(cluster.url)
    requests: dict[str, dict[str, int]] = llm.stats()["requests"]
    tally, turns = Tally(), TurnTally()
    try:
        for run, client in enumerate(clients):
            entries = read_events(log, client.conversation_id) if client.conversation_id else []
            tally.add(client.conversation_id, entries, requests.get(script_key(run), {}))
            turns.add(client, [e for _, e in entries or []])
    finally:
        log.close()
    return {
        "runs": len(clients),
        "completed": turns.completed,
        "duplicate_effects": duplicate_effects(tally, smtp, http),
        "repeated_llm_calls": tally.repeats,
        "lost_turns": turns.lost,
        "invalid_logs": tally.invalid,
        "lost_acknowledged_asks": turns.lost_acks,
        "detail": _detail(clients, topology, faults, tally, turns, smtp, http, llm),
    }


@dataclass
class TurnTally:
    """Each acknowledged ask against the durable log: present (else lost), and its turn ended."""

    completed: int = 0
    lost: int = 0
    lost_acks: int = 0
    never_acknowledged: int = 0

    def add(self, client: ChaosClient, events: list[Event]) -> None:
        opened = {e.client_message_id: e.turn for e in events if isinstance(e, UserMessage)}
        ended = {e.turn: e for e in events if isinstance(e, TERMINAL)}
        for ask in client.asks:
            if ask.ack_ms is None:
                self.never_acknowledged += 1
            elif ask.client_message_id not in opened:
                self.lost_acks += 1
            elif (end := ended.get(opened[ask.client_message_id])) is None:
                self.lost += 1
            elif isinstance(end, AnswerCompleted):
                self.completed += 1


def _detail(
    clients: list[ChaosClient], topology: Topology, faults: Faults, tally: Tally, turns: TurnTally,
    smtp: SmtpSink, http: HttpSink, llm: ScriptedLLMThread,
) -> dict[str, Any]:  # fmt: skip
    acks = sorted(a.ack_ms for c in clients for a in c.asks if a.ack_ms is not None)
    refusals: Counter[str] = Counter()
    reconnects: Counter[str] = Counter()
    for client in clients:
        refusals.update(client.refusals)
        reconnects.update(client.reconnects)
    return {
        "turns": sum(len(c.asks) for c in clients),
        "never_acknowledged": turns.never_acknowledged,
        "worker_kills": topology.workers.kills,
        "crash_exits": topology.workers.exits,
        "web_kills": topology.web_kills,
        "primary_kills": [k.summary() for k in topology.primary_kills],
        "acked_in_kill_window": [acked_in_window(clients, k) for k in topology.primary_kills],
        "cut_window_ack_ms": [cut_window_acks(clients, k) for k in topology.primary_kills],
        "outside_cut_window_ack_ms": outside_window_acks(clients, topology),
        "web_ready_after_restart_s": percentiles(sorted(r - s for _, s, r in topology.web_ready)),
        "reconnects": dict(reconnects),
        "refusals": dict(refusals),
        "ack_ms": percentiles(acks),
        "http_effects": http.stats()["http"]["effects"],
        "emails": len(smtp.deliveries_by_id),
        "smtp_redeliveries": smtp.duplicates,
        "llm_requests": llm.stats()["total"],
        "llm_steps_requested_again": steps_requested_again(llm.stats()["requests"], len(clients)),
        "fault_errors": faults.errors,
        "problems": dict(tally.problems),
    }
