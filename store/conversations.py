"""Conversation metadata: who owns a conversation, and each user's list of conversations.

Keys:

    convmeta:{<id>}              hash: tenant, user, created_ms, title
    convs:{<tenant>}:{<user>}    sorted set: conversation ids scored by created_ms

A conversation exists from its first ask on (a greeting writes nothing); it is listed for its user from then.
A user reads and resumes only conversations whose meta names their tenant and user; reviewers and
admins read every conversation of their own tenant. Only the owner may ask in a conversation.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import msgspec
import redis.asyncio as aredis

from store.exceptions import InputError
from store.redis import REDIS_ERRORS, unavailable
from store.scripts import text

MAX_IDENTIFIER_CHARS = 64
MAX_TITLE_CHARS = 120
MAX_LIST_LIMIT = 200
ELEVATED_ROLES = frozenset({"reviewer", "admin"})

# Tenants, users, groups and conversation ids end up in key names and directory names: keep them plain.
_IDENTIFIER = re.compile(rf"[A-Za-z0-9_.@-]{{1,{MAX_IDENTIFIER_CHARS}}}")


class ConversationMeta(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    tenant: str
    user: str
    created_ms: int
    title: str = ""


def identifier(value: object, what: str) -> str:
    """`value` if it is a plain identifier (letters, digits, `_.@-`, at most 64), else InputError."""
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value) or value.strip(".") == "":
        raise InputError(f"{what} must be 1-{MAX_IDENTIFIER_CHARS} of letters, digits and _.@-", field=what)
    return value


def is_identifier(value: object) -> bool:
    return isinstance(value, str) and bool(_IDENTIFIER.fullmatch(value)) and value.strip(".") != ""


def meta_key(conv_id: str) -> str:
    return f"convmeta:{{{identifier(conv_id, 'conversation_id')}}}"


def user_index_key(tenant: str, user: str) -> str:
    return f"convs:{{{identifier(tenant, 'tenant')}}}:{{{identifier(user, 'user')}}}"


def can_read(meta: ConversationMeta, tenant: str, user: str, roles: Iterable[str]) -> bool:
    if meta.tenant != tenant:
        return False
    return meta.user == user or not ELEVATED_ROLES.isdisjoint(roles)


def can_write(meta: ConversationMeta, tenant: str, user: str) -> bool:
    return meta.tenant == tenant and meta.user == user


def _meta(conv_id: str, raw: dict[bytes | str, bytes | str]) -> ConversationMeta | None:
    if not raw:
        return None
    fields = {text(k): text(v) for k, v in raw.items()}
    return ConversationMeta(
        id=conv_id,
        tenant=fields["tenant"],
        user=fields["user"],
        created_ms=int(fields["created_ms"]),
        title=fields.get("title", ""),
    )


class Conversations:
    """Async access for the web process. Redis failures surface as Unavailable."""

    def __init__(self, client: aredis.Redis) -> None:
        self.client = client

    async def record_ask(self, meta: ConversationMeta, text: str) -> None:
        """The conversation's first ask creates it (owner, created_ms, title after the question); every ask
        keeps it listed for its user. Nothing is written for a conversation nobody asked in."""
        key = meta_key(meta.id)
        fields = {
            "tenant": identifier(meta.tenant, "tenant"),
            "user": identifier(meta.user, "user"),
            "created_ms": str(meta.created_ms),
            "title": " ".join(text.split())[:MAX_TITLE_CHARS],
        }
        try:
            # Two slots on a cluster (the conversation's and the user's): the meta first, then the index,
            # in order on one pipeline; a crash between them leaves an unlisted conversation, never a
            # listed one without meta, and the next ask's create adds the missing index entry.
            async with self.client.pipeline(transaction=False) as pipe:
                for name, value in fields.items():
                    pipe.hsetnx(key, name, value)
                pipe.zadd(user_index_key(meta.tenant, meta.user), {meta.id: meta.created_ms}, nx=True)
                await pipe.execute()
        except REDIS_ERRORS as exc:
            raise unavailable(exc) from exc

    async def get(self, conv_id: str) -> ConversationMeta | None:
        """The conversation's meta; None when it does not exist or the id is not a valid one."""
        if not is_identifier(conv_id):
            return None
        try:
            raw = await self.client.hgetall(meta_key(conv_id))
        except REDIS_ERRORS as exc:
            raise unavailable(exc) from exc
        return _meta(conv_id, raw)

    async def list_for(self, tenant: str, user: str, limit: int = 50) -> list[ConversationMeta]:
        """The user's conversations, newest first."""
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InputError(f"limit must be between 1 and {MAX_LIST_LIMIT}", field="limit")
        try:
            found: Any = await self.client.zrevrange(user_index_key(tenant, user), 0, limit - 1)
            ids = [text(i) for i in found]
            async with self.client.pipeline(transaction=False) as pipe:
                for conv_id in ids:
                    pipe.hgetall(meta_key(conv_id))
                raws = await pipe.execute()
        except REDIS_ERRORS as exc:
            raise unavailable(exc) from exc
        metas = (_meta(conv_id, raw) for conv_id, raw in zip(ids, raws, strict=True))
        return [m for m in metas if m is not None]
