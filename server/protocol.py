"""The /ws/chat wire protocol: msgspec tagged unions, one JSON object per text frame (docs/protocol.md).

Client → server: hello, ask, cancel, ping. Server → client: ready, event, delta, accepted, error, pong,
resume_required. Unknown fields, unknown types and malformed JSON are refused with an `error` frame.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from store.events import Mode

# Application close codes (RFC 6455 leaves 4000-4999 to applications); see docs/protocol.md.
CLOSE_NORMAL = 1000
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_IDLE_TIMEOUT = 4408
CLOSE_RESUME_REQUIRED = 4409
CLOSE_FRAME_TOO_LARGE = 4413
CLOSE_RATE_LIMITED = 4429
CLOSE_UNAVAILABLE = 4503

StreamId = Annotated[str, msgspec.Meta(pattern=r"^\d{1,20}(-\d{1,20})?$")]
ClientId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
ConversationId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")]
Token = Annotated[str, msgspec.Meta(max_length=4096)]


class _ClientFrame(msgspec.Struct, tag_field="type", frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class Hello(_ClientFrame, frozen=True, kw_only=True, tag="hello"):
    token: Token | None = None
    conversation_id: ConversationId | None = None
    last_event_id: StreamId | None = None  # resume after this id; absent: the whole history


class Ask(_ClientFrame, frozen=True, kw_only=True, tag="ask"):
    text: str
    mode: Mode = "auto"
    client_message_id: ClientId  # a retried ask with the same id is taken once


class Cancel(_ClientFrame, frozen=True, kw_only=True, tag="cancel"):
    pass


class Ping(_ClientFrame, frozen=True, kw_only=True, tag="ping"):
    pass


ClientFrame = Hello | Ask | Cancel | Ping


class _ServerFrame(msgspec.Struct, tag_field="type", frozen=True, kw_only=True, omit_defaults=True):
    pass


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


class ErrorFrame(_ServerFrame, frozen=True, kw_only=True, tag="error"):
    code: str
    message: str
    retry_after_ms: int | None = None
    client_message_id: str | None = None


class Pong(_ServerFrame, frozen=True, kw_only=True, tag="pong"):
    pass


class ResumeRequired(_ServerFrame, frozen=True, kw_only=True, tag="resume_required"):
    last_event_id: str | None = None


ServerFrame = Ready | EventFrame | DeltaFrame | Accepted | ErrorFrame | Pong | ResumeRequired

_client_decoder = msgspec.json.Decoder(ClientFrame)
_server_decoder = msgspec.json.Decoder(ServerFrame)
_encoder = msgspec.json.Encoder()


def decode_client(data: bytes | str) -> ClientFrame:
    """A client frame, or msgspec.DecodeError (ValidationError included) with a readable message."""
    return _client_decoder.decode(data)


def decode_server(data: bytes | str) -> ServerFrame:
    return _server_decoder.decode(data)


def encode(frame: ServerFrame | ClientFrame) -> bytes:
    return _encoder.encode(frame)
