"""/ws/chat: one socket, one conversation (the protocol's state machine is server.session's).

hello: authenticated (a slot of the user's and tenant's socket caps held), then either a new conversation
(an id is handed out, nothing is written: the first ask creates it) or one the caller may read. The socket
subscribes to the conversation's live stream on the shared hub, then replays everything after the
client's last id; the send loop drops ids it already sent. LIVE: ask / cancel / ping; bad frames get a
typed `error` frame and change nothing.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from starlette.websockets import WebSocket

from server import protocol as p
from server.asks import submit_ask
from server.conversation_ids import issued_to, new_conversation_id
from server.feed import LiveFrame, replay, to_frame
from server.feedback import FeedbackBody, submit_feedback
from server.hub import StreamKey, id_key
from server.redaction import EventView, Pending, event_view
from server.session import Session, error_frame
from server.turns import turn_running
from store.clock import now_ms
from store.conversations import ConversationMeta, can_read, can_write
from store.events import TurnCancelled
from store.exceptions import DocentError, ForbiddenError, FrameError
from store.log import conv_keys

if TYPE_CHECKING:
    from server.services import Services


class ChatSession(Session):
    decoder = p.chat_decoder
    hello_type = p.Hello

    def __init__(self, ws: WebSocket, services: Services) -> None:
        super().__init__(ws, services)
        self.meta: ConversationMeta | None = None
        self.view = EventView(None)
        self.last_sent: StreamKey = 0  # the sort key of the last frame sent (server.hub.id_key)
        self.last_sent_id: str | None = None
        # An ask on this socket has written the conversation's record (its first ask on each socket writes it
        # again, idempotent: it also repairs a user index entry a crash between the two writes left missing).
        self.recorded = False

    # ---- AWAITING_HELLO ------------------------------------------------------------------------------

    async def hello(self, frame: p.Hello) -> None:
        if frame.last_event_id is not None and frame.conversation_id is None:
            raise FrameError("last_event_id needs conversation_id")
        self.sign_in(frame.token)
        self.meta = await self._conversation(frame.conversation_id)
        assert self.principal is not None  # signed in above
        self.view = await event_view(self.services.redis, self.settings.data_path, self.meta, self.principal)
        # Subscribe before replaying: whatever lands in between arrives through both, and is sent once.
        key = conv_keys(self.meta.id).live
        subscription = await self.services.hub.subscribe(key, to_frame, self.settings.ws_send_buffer)
        self.follow(subscription, self._send_frames, self._send_now)
        if frame.last_event_id is not None:
            self.last_sent, self.last_sent_id = id_key(frame.last_event_id), frame.last_event_id
        await self.reply(p.Ready(conversation_id=self.meta.id, resumed_from=frame.last_event_id))
        async for page in replay(self.services.redis, self.meta.id, frame.last_event_id):
            await self._send_frames(page)

    async def _conversation(self, conv_id: str | None) -> ConversationMeta:
        me = self.principal
        assert me is not None
        secret = self.services.auth.secret
        if conv_id is None:
            return self._pending(new_conversation_id(secret, me))
        meta = await self.services.conversations.get(conv_id)
        if meta is None and issued_to(secret, me, conv_id):
            return self._pending(conv_id)  # handed out to this caller, nobody asked in it yet
        if meta is None or not can_read(meta, me.tenant, me.user, me.roles):
            raise ForbiddenError("no such conversation, or not yours")
        return meta

    def _pending(self, conv_id: str) -> ConversationMeta:
        me = self.principal
        assert me is not None
        return ConversationMeta(id=conv_id, tenant=me.tenant, user=me.user, created_ms=now_ms())

    # ---- LIVE ----------------------------------------------------------------------------------------

    async def handle(self, frame: p.Ask | p.Cancel | p.Feedback) -> None:
        match frame:
            case p.Ask():
                await self._ask(frame)
            case p.Cancel():
                await self._cancel()
            case p.Feedback():
                await self._feedback(frame)

    def refusal(self, exc: DocentError, frame: object) -> p.ErrorFrame:
        client_id = frame.client_message_id if isinstance(frame, p.Ask | p.Feedback) else None
        return error_frame(exc, client_message_id=client_id)

    def resume_frame(self) -> p.ResumeRequired:
        return p.ResumeRequired(last_event_id=self.last_sent_id)

    def _owner(self, action: str) -> ConversationMeta:
        me, meta = self.principal, self.meta
        assert me is not None and meta is not None
        if not can_write(meta, me.tenant, me.user):
            raise ForbiddenError(f"only the conversation's owner may {action}")
        return meta

    async def _ask(self, ask: p.Ask) -> None:
        meta = self._owner("ask in it")
        assert self.principal is not None
        await submit_ask(
            self.services, meta, self.principal, ask.text, ask.mode, ask.client_message_id,
            no_cache=ask.no_cache, filters=ask.filters, recorded=self.recorded,
        )  # fmt: skip
        self.recorded = True
        await self.reply(p.Accepted(client_message_id=ask.client_message_id))

    async def _feedback(self, frame: p.Feedback) -> None:
        meta = self._owner("rate its answers")
        assert self.principal is not None
        body = FeedbackBody(
            turn=frame.turn,
            rating=frame.rating,
            comment=frame.comment,
            client_message_id=frame.client_message_id,
        )
        await submit_feedback(self.services, meta, self.principal, body)
        if frame.client_message_id:
            await self.reply(p.Accepted(client_message_id=frame.client_message_id))

    async def _cancel(self) -> None:
        """Stop the running turn; with none running, nothing is written and no worker is woken."""
        meta = self._owner("cancel")
        me = self.principal
        assert me is not None
        await self.services.limits.check(me, "cancel")
        if not await turn_running(self.services.redis, meta.id):
            return
        item = TurnCancelled(by=me.user, at_ms=now_ms())
        await self.services.dispatcher.submit(meta.id, item, dedup_id=f"cancel-{uuid.uuid4().hex}")

    # ---- frames out ----------------------------------------------------------------------------------

    async def _send_frames(self, frames: list[LiveFrame]) -> None:
        for frame in frames:
            if frame.key > self.last_sent:
                shown = await self.view.frame(frame.data)  # the reader's own document ACL (server.redaction)
                if shown is not None:
                    await self.write(shown)
                self.last_sent, self.last_sent_id = frame.key, frame.id

    def _send_now(self, frames: list[LiveFrame]) -> int:
        """The hub's frames written at once, in order, while each needs no redaction work and the socket
        takes it without waiting; how many (the rest go through `_send_frames`)."""
        for taken, frame in enumerate(frames):
            if frame.key > self.last_sent:
                shown = self.view.frame_now(frame.data)
                if shown is Pending.REDACTION or (shown is not None and not self.write_now(frame.wire)):
                    return taken
                self.last_sent, self.last_sent_id = frame.key, frame.id
        return len(frames)


async def chat_endpoint(ws: WebSocket) -> None:
    await ChatSession(ws, ws.app.state.services).run()
