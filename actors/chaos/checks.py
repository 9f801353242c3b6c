"""The chaos runner's checks of a conversation log: replay-rule violations and unaccounted model calls."""

from __future__ import annotations

from collections import Counter

import msgspec

from actors.testing.transcript import read_logged
from actors.tools import default_registry
from actors.tools.registry import idempotency_key
from store.events import TERMINAL, Event, LLMCompleted, LLMRequested, ToolIntent, ToolResult
from store.exceptions import CorruptLog, ToolError
from store.log import ConversationLog


def read_events(log: ConversationLog, conv_id: str) -> list[tuple[str, Event]] | None:
    try:
        return log.read(conv_id)
    except CorruptLog:
        return None


def by_turn(entries: list[tuple[str, Event]]) -> list[list[tuple[str, Event]]]:
    """The log's entries split by turn (each event carries its turn), in log order."""
    turns: dict[int, list[tuple[str, Event]]] = {}
    for entry in entries:
        turns.setdefault(entry[1].turn, []).append(entry)
    return list(turns.values())


def log_problems(conv_id: str, entries: list[tuple[str, Event]]) -> list[str]:
    """Replay-rule violations in one conversation's log, turn by turn (empty when valid)."""
    return [problem for turn in by_turn(entries) for problem in _turn_problems(conv_id, turn)]


def _turn_problems(conv_id: str, entries: list[tuple[str, Event]]) -> list[str]:
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
    """Requests the log does not account for (see the module docstring); only scripted requests are
    counted against the server's (unscripted ones, a Q&A answer's, share one key over all conversations)."""
    logged: Counter[int] = Counter()  # the scripted server's step for the prompt -> recorded requests
    after_completion = 0
    for turn in by_turn(entries):
        completed: set[int] = set()
        for _, event in turn:
            if isinstance(event, LLMRequested):
                if event.step in completed:
                    after_completion += 1
                reading = read_logged(event.messages)
                if reading.script is not None:
                    logged[reading.step] += 1
            elif isinstance(event, LLMCompleted):
                completed.add(event.step)
    unaccounted = sum(max(0, n - logged[int(step)]) for step, n in server_counts.items())
    return unaccounted + after_completion
