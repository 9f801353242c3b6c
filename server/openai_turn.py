"""One Docent turn as an OpenAI completion: what `/v1/chat/completions` learns while following the turn.

`TurnRecord.add(item)` takes the turn's items in order (server.turn_watch) and returns the text to stream
for a delta. At the end it knows the status, the answer text (the completed answer; else what was
streamed), the token usage, the citations and sources, and a pending approval.
"""

from __future__ import annotations

from server.openai_wire import Approval, Docent, Status, Usage
from server.turn_watch import ends_turn
from store.events import (
    AnswerCompleted,
    ApprovalRequested,
    Delta,
    LimitHit,
    LiveItem,
    LLMCompleted,
    TurnCancelled,
    TurnFailed,
)

FINISH_REASONS: dict[Status, str] = {"limit_reached": "length"}
STATUS_OF: list[tuple[type, Status]] = [
    (AnswerCompleted, "completed"), (ApprovalRequested, "pending_approval"), (TurnCancelled, "cancelled"),
    (LimitHit, "limit_reached"), (TurnFailed, "failed"),
]  # fmt: skip


class TurnRecord:
    def __init__(self, conversation_id: str) -> None:
        self.conversation_id = conversation_id
        self.turn = 0
        self.streamed: list[str] = []
        self.tokens_in = 0
        self.tokens_out = 0
        self.end: LiveItem | None = None

    def add(self, item: LiveItem) -> str:
        """Take one item of the turn; the text a stream sends for it ("" for all but deltas)."""
        self.turn = item.turn
        if isinstance(item, Delta):
            self.streamed.append(item.text)
            return item.text
        if isinstance(item, LLMCompleted):
            self.tokens_in += item.tokens_in
            self.tokens_out += item.tokens_out
        elif ends_turn(item):
            self.end = item
        return ""

    @property
    def status(self) -> Status:
        return next((status for kind, status in STATUS_OF if isinstance(self.end, kind)), "failed")

    @property
    def finish_reason(self) -> str:
        return FINISH_REASONS.get(self.status, "stop")

    def text(self) -> str:
        if isinstance(self.end, AnswerCompleted):
            return self.end.text
        return "".join(self.streamed)

    def unsent(self) -> str:
        """The answer's text a stream has not sent yet (all of it when the backend streamed nothing)."""
        sent, final = "".join(self.streamed), self.text()
        return final[len(sent) :] if final.startswith(sent) else ""

    def usage(self) -> Usage:
        return Usage(prompt_tokens=self.tokens_in, completion_tokens=self.tokens_out,
                     total_tokens=self.tokens_in + self.tokens_out)  # fmt: skip

    def docent(self) -> Docent:
        end = self.end
        answer = end if isinstance(end, AnswerCompleted) else None
        approval = None
        if isinstance(end, ApprovalRequested):
            approval = Approval(approval_id=end.approval_id, tool=end.tool, expires_at_ms=end.expires_at_ms)
        return Docent(
            conversation_id=self.conversation_id, turn=self.turn, status=self.status, approval=approval,
            citations=answer.citations if answer else (), sources=answer.sources if answer else (),
        )  # fmt: skip
