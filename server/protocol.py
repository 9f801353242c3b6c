"""The WebSocket wire types: msgspec tagged unions, one JSON object per text frame (docs/protocol.md).

Three endpoints share the close codes and the common frames (`ping`/`pong`, `error`, `resume_required`):

    /ws/chat     client: hello, ask, cancel, ping        server: ready, event, delta, accepted, error, pong,
                                                                 resume_required
    /ws/review   client: hello, decide, ping             server: ready, snapshot, item, decision, error, pong,
                                                                 resume_required
    /ws/admin    client: ping                            server: reindex, error, pong, resume_required

Unknown fields, unknown types and malformed JSON are refused with an `error` frame.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from store.approvals import MAX_REASON_CHARS, State
from store.events import Mode, Rating
from store.metadata import SearchFilters

# Application close codes (RFC 6455 leaves 4000-4999 to applications); see docs/protocol.md.
CLOSE_NORMAL = 1000
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_IDLE_TIMEOUT = 4408
CLOSE_RESUME_REQUIRED = 4409
CLOSE_FRAME_TOO_LARGE = 4413
CLOSE_RATE_LIMITED = 4429
CLOSE_UNAVAILABLE = 4503

MAX_ROOMS_PER_SOCKET = 32

StreamId = Annotated[str, msgspec.Meta(pattern=r"^\d{1,20}(-\d{1,20})?$")]
ClientId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
ConversationId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")]
Token = Annotated[str, msgspec.Meta(max_length=4096)]
RoomName = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
Reason = Annotated[str, msgspec.Meta(max_length=MAX_REASON_CHARS)]
DecisionWord = Literal["approved", "denied", "approve", "deny"]


class _ClientFrame(msgspec.Struct, tag_field="type", frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class _ServerFrame(msgspec.Struct, tag_field="type", frozen=True, kw_only=True, omit_defaults=True):
    pass


# ---- common to every endpoint ----------------------------------------------------------------------


class Ping(_ClientFrame, frozen=True, kw_only=True, tag="ping"):
    pass


class Pong(_ServerFrame, frozen=True, kw_only=True, tag="pong"):
    pass


class ErrorFrame(_ServerFrame, frozen=True, kw_only=True, tag="error"):
    code: str
    message: str
    retry_after_ms: int | None = None
    client_message_id: str | None = None  # the refused ask (/ws/chat)
    request_id: str | None = None  # the refused decide (/ws/review)


class ResumeRequired(_ServerFrame, frozen=True, kw_only=True, tag="resume_required"):
    last_event_id: str | None = None  # /ws/chat: resume after this id


# ---- /ws/chat --------------------------------------------------------------------------------------


class Hello(_ClientFrame, frozen=True, kw_only=True, tag="hello"):
    token: Token | None = None
    conversation_id: ConversationId | None = None
    last_event_id: StreamId | None = None  # resume after this id; absent: the whole history


class Ask(_ClientFrame, frozen=True, kw_only=True, tag="ask"):
    text: str
    mode: Mode = "auto"
    client_message_id: ClientId  # a retried ask with the same id is taken once
    no_cache: bool = False  # a fresh answer: the answer cache is not consulted
    filters: SearchFilters | None = None  # store.metadata: narrows every search of the turn


class Cancel(_ClientFrame, frozen=True, kw_only=True, tag="cancel"):
    pass


FeedbackTurn = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
FeedbackComment = Annotated[str, msgspec.Meta(max_length=2_000)]


class Feedback(_ClientFrame, frozen=True, kw_only=True, tag="feedback"):
    """A rating of the answer of turn `turn` (server.feedback; the REST body has the same fields)."""

    turn: FeedbackTurn
    rating: Rating
    comment: FeedbackComment = ""
    client_message_id: ClientId | None = None


ClientFrame = Hello | Ask | Cancel | Ping | Feedback


class Ready(_ServerFrame, frozen=True, kw_only=True, tag="ready"):
    conversation_id: str
    resumed_from: str | None = None


class EventFrame(_ServerFrame, frozen=True, kw_only=True, tag="event"):
    id: str
    event: msgspec.Raw  # the store.events Event exactly as logged


class DeltaFrame(_ServerFrame, frozen=True, kw_only=True, tag="delta"):
    id: str
    text: str
    turn: int


class Accepted(_ServerFrame, frozen=True, kw_only=True, tag="accepted"):
    client_message_id: str


ServerFrame = Ready | EventFrame | DeltaFrame | Accepted | ErrorFrame | Pong | ResumeRequired


# ---- /ws/review ------------------------------------------------------------------------------------


class ReviewHello(_ClientFrame, frozen=True, kw_only=True, tag="hello"):
    token: Token | None = None
    rooms: Annotated[list[RoomName], msgspec.Meta(max_length=MAX_ROOMS_PER_SOCKET)] | None = None


class Decide(_ClientFrame, frozen=True, kw_only=True, tag="decide"):
    approval_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    decision: DecisionWord
    reason: Reason = ""
    request_id: ClientId


ReviewClientFrame = ReviewHello | Decide | Ping


class ApprovalView(msgspec.Struct, frozen=True, kw_only=True):
    """What a reviewer sees of one approval."""

    approval_id: str
    conv_id: str
    room: str
    tool: str
    args: msgspec.Raw  # the exact arguments the approval covers (JSON object)
    args_hash: str
    risk: str = "high"
    requested_by: str
    reason: str  # the agent's stated reason
    context: str  # the conversation's last user message
    created_ms: int
    expires_ms: int
    state: State
    reviewer: str = ""
    decision_reason: str = ""
    decided_ms: int = 0
    self_approval_allowed: bool = False


class ReviewReady(_ServerFrame, frozen=True, kw_only=True, tag="ready"):
    tenant: str
    reviewer: str
    rooms: list[str]


class Snapshot(_ServerFrame, frozen=True, kw_only=True, tag="snapshot"):
    room: str
    items: list[ApprovalView]


class Item(_ServerFrame, frozen=True, kw_only=True, tag="item"):
    room: str
    id: str  # the room stream entry id
    kind: Literal["requested", "decided", "expired", "reminder"]
    approval: ApprovalView


class DecisionResult(_ServerFrame, frozen=True, kw_only=True, tag="decision"):
    request_id: str
    approval_id: str
    ok: bool  # true: this decision was taken; false: someone (or the clock) decided first
    state: State  # the approval's state now
    by: str = ""  # who decided ("" when it expired)
    at_ms: int = 0
    reason: str = ""


ReviewServerFrame = ReviewReady | Snapshot | Item | DecisionResult | ErrorFrame | Pong | ResumeRequired


# ---- /ws/admin -------------------------------------------------------------------------------------

AdminClientFrame = Ping


class ReindexFrame(_ServerFrame, frozen=True, kw_only=True, tag="reindex"):
    job: msgspec.Raw  # the job record exactly as index.reindex saved it


class SyncFrame(_ServerFrame, frozen=True, kw_only=True, tag="sync"):
    progress: msgspec.Raw  # a folder sync's progress exactly as store.sync_progress published it


class IngestFrame(_ServerFrame, frozen=True, kw_only=True, tag="ingest"):
    progress: msgspec.Raw  # a background ingest's record as store.ingest_progress saved it


AdminServerFrame = ReindexFrame | SyncFrame | IngestFrame | ErrorFrame | Pong | ResumeRequired


# ---- codecs ----------------------------------------------------------------------------------------

chat_decoder = msgspec.json.Decoder(ClientFrame)
review_decoder = msgspec.json.Decoder(ReviewClientFrame)
admin_decoder = msgspec.json.Decoder(AdminClientFrame)
_encoder = msgspec.json.Encoder()


def encode(frame: msgspec.Struct) -> bytes:
    return _encoder.encode(frame)
