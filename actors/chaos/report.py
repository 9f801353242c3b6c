"""The chaos runner's report: every run's log checked, the sinks' counters against the logged intents."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from actors.chaos.checks import llm_repeats, log_problems, read_events
from actors.testing import HttpSink, ScriptedLLMThread, SmtpSink
from store.events import TERMINAL, AnswerCompleted, Event, ToolIntent
from store.log import ConversationLog

SUMMARY_KEYS = ("runs", "completed", "duplicate_effects", "repeated_llm_calls", "lost_turns", "invalid_logs")
FAILURE_KEYS = SUMMARY_KEYS[2:]


@dataclass
class Tally:
    """What the logs say, summed over the runs."""

    runs: int = 0
    completed: int = 0
    lost: int = 0
    invalid: int = 0
    repeats: int = 0
    http_keys: set[str] = field(default_factory=set)  # idempotency keys of logged http_request intents
    mail_ids: set[str] = field(default_factory=set)  # Message-IDs of logged send_email intents
    problems: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, conv: str, entries: list[tuple[str, Event]] | None, requests: dict[str, int]) -> None:
        self.runs += 1
        if entries is None:
            self.invalid += 1
            self.problems[conv].append("the log does not decode")
            return
        self._outcome([e for _, e in entries])
        if found := log_problems(conv, entries):
            self.invalid += 1
            self.problems[conv] += found
        self.repeats += llm_repeats(entries, requests)
        self._intents([e for _, e in entries])

    def _outcome(self, events: list[Event]) -> None:
        if not events or not isinstance(events[-1], TERMINAL):
            self.lost += 1
        elif isinstance(events[-1], AnswerCompleted):
            self.completed += 1

    def _intents(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, ToolIntent) and event.tool == "http_request":
                self.http_keys.add(event.idempotency_key)
            elif isinstance(event, ToolIntent) and event.tool == "send_email":
                self.mail_ids.add(f"<{event.idempotency_key}@docent>")


def duplicate_effects(tally: Tally, smtp: SmtpSink, http: HttpSink) -> int:
    """Effects no logged intent accounts for, requests without a key, keys applied twice."""
    http_stats = http.stats()["http"]
    seen_keys = set(http.requests_by_key)
    seen_mail = set(smtp.deliveries_by_id)
    return (
        http_stats["without_key"]
        + len(seen_keys - tally.http_keys)
        + max(0, http_stats["effects"] - len(seen_keys))
        + len(seen_mail - tally.mail_ids)
        + smtp.stats()["without_id"]
    )


def build_report(
    tally: Tally, llm: ScriptedLLMThread, smtp: SmtpSink, http: HttpSink, kills: int, exits: int
) -> dict[str, Any]:
    http_stats = http.stats()["http"]
    detail = {
        "kills": kills,
        "crash_exits": exits,
        "http_effects": http_stats["effects"],
        "http_replayed_attempts": http_stats["duplicates"],
        "emails": len(smtp.deliveries_by_id),
        "smtp_redeliveries": smtp.duplicates,
        "llm_requests": llm.stats()["total"],
        "problems": dict(tally.problems),
    }
    return {
        "runs": tally.runs,
        "completed": tally.completed,
        "duplicate_effects": duplicate_effects(tally, smtp, http),
        "repeated_llm_calls": tally.repeats,
        "lost_turns": tally.lost,
        "invalid_logs": tally.invalid,
        "detail": detail,
    }


def tally_logs(log: ConversationLog, convs: list[str], keys: list[str], llm: ScriptedLLMThread) -> Tally:
    requests: dict[str, dict[str, int]] = llm.stats()["requests"]
    tally = Tally()
    for conv, key in zip(convs, keys, strict=True):
        tally.add(conv, read_events(log, conv), requests.get(key, {}))
    return tally
