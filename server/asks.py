"""One ask into a conversation, the same for every interface (`/ws/chat`, `/v1/chat/completions`).

    await submit_ask(services, meta, principal, text, mode, client_message_id)

The caller has already checked that `principal` owns `meta`. The text is checked (not empty, at most
`max_question_chars`), the ask bucket is taken, the first ask creates the conversation, and the user
message goes to the actor's inbox (deduplicated by `client_message_id`) with a wake-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from server.auth import Principal
from store.clock import now_ms
from store.conversations import ConversationMeta
from store.events import Mode, UserMessage
from store.exceptions import FrameError

if TYPE_CHECKING:
    from server.services import Services


def checked_text(text: str, max_chars: int) -> str:
    stripped = text.strip()
    if not stripped:
        raise FrameError("text is empty")
    if len(text) > max_chars:
        raise FrameError(f"text is longer than {max_chars} characters")
    return stripped


async def submit_ask(
    services: Services, meta: ConversationMeta, me: Principal, text: str, mode: Mode, client_message_id: str,
    *, no_cache: bool = False,
) -> None:
    text = checked_text(text, services.settings.max_question_chars)
    await services.limits.check(me, "ask")
    item = UserMessage(
        text=text, mode=mode, user=me.user, tenant=me.tenant, groups=me.groups,
        client_message_id=client_message_id, at_ms=now_ms(), no_cache=no_cache,
    )  # fmt: skip
    await services.conversations.record_ask(meta, text)  # the first ask creates the conversation
    await services.dispatcher.submit(meta.id, item, dedup_id=client_message_id)
