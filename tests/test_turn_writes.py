"""A Q&A turn's writes, fewer and in order: the model's last streamed text goes out in the same fenced append
as its `LLMCompleted` (before it), and the turn's usage is counted in one script call as the activation
closes, not one per append (a kill before that leaves it in the log's tail: tests/test_usage_once.py)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.test_conversation import TENANT, World, of, world_with  # isort: skip (stub broker first)
from actors.testing.scripted_llm import ScriptedLLMThread
from store.events import AnswerCompleted, Delta, LiveItem, LLMCompleted
from store.log import Lease
from store.usage import UsageLedger, day_of
from tests.test_conversation import llm as llm
from tests.test_conversation import sinks as sinks

HOLD_ALL_MS = "60000"  # every read after the first is held by the pacer until the model's stream ends
DELTA_DELAY_MS = 5  # the scripted model's pause between deltas: its stream arrives in several reads


def spy_appends(w: World, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    calls: list[list[str]] = []
    append = w.rt.log.append

    def recording(lease: Lease, items: Sequence[LiveItem], **options: Any) -> list[str]:
        calls.append([type(item).__name__ for item in items])
        return append(lease, items, **options)

    monkeypatch.setattr(w.rt.log, "append", recording)
    return calls


def test_the_held_end_of_an_answer_goes_out_in_its_completion_s_append(
    tmp_path: Path, redis_url: str, sinks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (
        ScriptedLLMThread(delay_ms=DELTA_DELAY_MS) as paced,
        world_with(tmp_path, redis_url, paced, sinks, delta_interval_ms=HOLD_ALL_MS) as w,
    ):
        calls = spy_appends(w, monkeypatch)
        w.ask("held", "How long is parental leave?", mode="qa")
        assert w.run("held") == "done"
        events = w.events("held")
        live = [item for _, item in w.log.catch_up("held", "0")]
    completion = next(c for c in calls if "LLMCompleted" in c)
    assert completion == ["Delta", "LLMCompleted"]  # the rest of the text, then the record, one call
    assert sum("Delta" in c for c in calls) == 2  # the first read at once, the rest with the completion
    text = of(events, LLMCompleted)[0].text
    assert "".join(i.text for i in live if isinstance(i, Delta)) == text  # nothing lost, nothing twice
    kinds = [type(i).__name__ for i in live]
    assert kinds[kinds.index("LLMCompleted") - 1] == "Delta"  # clients see the text before its record
    assert isinstance(events[-1], AnswerCompleted)


def test_a_turn_s_usage_is_counted_in_one_call_as_the_activation_closes(
    tmp_path: Path, redis_url: str, llm: Any, sinks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded: list[list[str]] = []
    record = UsageLedger.record_entries

    def recording(self: UsageLedger, *args: Any, **kwargs: Any) -> Any:
        recorded.append([entry_id for entry_id, _ in args[4]])
        return record(self, *args, **kwargs)

    monkeypatch.setattr(UsageLedger, "record_entries", recording)
    with world_with(tmp_path, redis_url, llm, sinks, snapshot_every_events="200") as w:  # no mid-turn one
        ledger = UsageLedger(w.log.client)
        before = ledger.totals(TENANT, "alice", day_of(int(time.time() * 1000)))[0]
        w.ask("once", "How long is parental leave?", mode="qa")
        assert w.run("once") == "done"
        after = ledger.totals(TENANT, "alice", day_of(int(time.time() * 1000)))[0]
        completed = of(w.events("once"), LLMCompleted)[0]
    assert len(recorded) == 1 and len(recorded[0]) == 4  # turn, retrieval, tokens, answer: one call
    assert after.turns == before.turns + 1 and after.answers == before.answers + 1
    assert after.tokens == before.tokens + completed.tokens_in + completed.tokens_out
