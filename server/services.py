"""What every route and socket of the web process shares (`Services`, built once by the app's lifespan),
and the one accessor for it. The route modules import this, never `server/app.py`, which imports them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aredis
from starlette.requests import HTTPConnection

from actors.api import Dispatcher
from server.auth import Authenticator
from server.hub import Hub
from server.limits import ActionLimits, SocketQuota
from store.conversations import Conversations
from store.metadata import DocumentMetadata
from store.settings import Settings

Ingest = Callable[[str, Path, DocumentMetadata], Awaitable[str]]  # (tenant, file, metadata) -> job id


@dataclass(frozen=True)
class Services:
    settings: Settings
    redis: aredis.Redis
    auth: Authenticator
    conversations: Conversations
    hub: Hub
    dispatcher: Dispatcher
    limits: ActionLimits
    sockets: SocketQuota
    ingest: Ingest
    allowed_origins: frozenset[str]


def services(conn: HTTPConnection) -> Services:
    return conn.app.state.services  # type: ignore[no-any-return]
