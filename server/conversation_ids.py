"""Conversation ids handed out before the conversation exists.

A greeting without `conversation_id` writes nothing: the socket gets a new id and the conversation is
created by its first ask. The id carries a tag (HMAC-SHA256 of tenant, user and a random nonce under the
server secret), so its owner can resume it before that first ask (a reconnect, a page reload); to anyone
else it is an id that is not theirs, answered like every other.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid

from server.auth import Principal

TAG_HEX_CHARS = 16


def _tag(secret: bytes, owner: Principal, nonce: str) -> str:
    message = f"{owner.tenant}\0{owner.user}\0{nonce}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()[:TAG_HEX_CHARS]


def new_conversation_id(secret: bytes, owner: Principal) -> str:
    nonce = uuid.uuid4().hex
    return f"{nonce}.{_tag(secret, owner, nonce)}"


def issued_to(secret: bytes, owner: Principal, conv_id: str) -> bool:
    """Whether `conv_id` was handed out to `owner` by this deployment (it may not exist yet)."""
    nonce, dot, tag = conv_id.partition(".")
    return bool(dot) and hmac.compare_digest(tag, _tag(secret, owner, nonce))
