"""A Q&A turn's writes, fewer and in order: the model's last streamed text goes out in the same fenced append
as its `LLMCompleted` (before it), and the turn's usage is counted in one script call as the activation
closes, not one per append (a kill before that leaves it in the log's tail: tests/test_usage_once.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.test_conversation import TENANT, of, world_with  # isort: skip (stub broker first)
from actors import activation
from actors.testing.scripted_llm import ScriptedLLMThread
from store.events import AnswerCompleted, Delta, LiveItem, LLMCompleted, TurnCancelled
from store.log import ConversationLog, Lease
from store.log_append import Appended, append_seen
from store.usage import UsageLedger, day_of
from tests.test_conversation import llm as llm
from tests.test_conversation import sinks as sinks

HOLD_ALL_MS = "60000"  # every read after the first is held by the pacer until the model's stream ends
DELTA_DELAY_MS = 5  # the scripted model's pause between deltas: its stream arrives in several reads
CANCEL_DELAY_MS = 40  # a slower model: a cancel posted while it streams lands before its completion
CANCEL_AFTER_S = 0.15
NO_TIMED_RECHECK_MS = 600_000


def spy_appends(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    calls: list[list[str]] = []

    def recording(log: ConversationLog, lease: Lease, items: Sequence[LiveItem], **options: Any) -> Appended:
        calls.append([type(item).__name__ for item in items])
        return append_seen(log, lease, items, **options)

    monkeypatch.setattr(activation, "append_seen", recording)
    return calls


def test_the_held_end_of_an_answer_goes_out_in_its_completion_s_append(
    tmp_path: Path, redis_url: str, sinks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (
        ScriptedLLMThread(delay_ms=DELTA_DELAY_MS) as paced,
        world_with(tmp_path, redis_url, paced, sinks, delta_interval_ms=HOLD_ALL_MS) as w,
    ):
        calls = spy_appends(monkeypatch)
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


def test_the_inbox_is_read_between_steps_only_when_an_append_saw_something_waiting(
    tmp_path: Path, redis_url: str, sinks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (
        ScriptedLLMThread(delay_ms=CANCEL_DELAY_MS) as slow,
        world_with(tmp_path, redis_url, slow, sinks) as w,
    ):
        reads: list[str] = []
        take = w.rt.log.take_inbox

        def counted(lease: Lease, *args: Any, **kwargs: Any) -> Any:
            reads.append(lease.conv_id)
            return take(lease, *args, **kwargs)

        monkeypatch.setattr(w.rt.log, "take_inbox", counted)
        monkeypatch.setattr(activation, "INBOX_RECHECK_MS", NO_TIMED_RECHECK_MS)  # reads after appends only
        w.ask("quiet", "How long is parental leave?", mode="qa")
        assert w.run("quiet") == "done"
        assert reads == [] and isinstance(w.events("quiet")[-1], AnswerCompleted)  # the open read it all

        w.ask("cancel", "How long is parental leave?", mode="qa")
        timer = threading.Timer(CANCEL_AFTER_S, w.log.post_inbox, ("cancel", TurnCancelled(by="alice")))
        timer.start()
        assert w.run("cancel") == "done"
        timer.join()
        kinds = [type(e).__name__ for e in w.events("cancel")]
    assert kinds[-1] == "TurnCancelled" and "AnswerCompleted" not in kinds
    if "LLMCompleted" in kinds:  # posted while the model streamed (not before the opening read)
        assert "cancel" in reads  # the completion's append saw it waiting: read between model and answer
