"""/ws/admin: reindex, folder-sync and background-ingest progress for the operator console (the protocol's
state machine is server.session's).

No hello: the admin key comes with the handshake (`X-Admin-Key`, or `?admin_key=` from a browser) and is
checked before anything is sent. The socket follows three record streams (store.record_stream) on the
shared hub — `reindex:events`, `sync:events`, `ingest:events` — then gets the job in progress (if any)
and every job update after it as `{"type": "reindex", "job": {...}}`, the folder syncs running (if any)
and every progress update after that as `{"type": "sync", "progress": {...}}` (store.sync_progress), and
the background demo ingest's progress as `{"type": "ingest", "progress": {...}}`. Client frames: `ping`.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec
from starlette.websockets import WebSocket

from index import reindex
from index.reindex import jobs
from server import protocol as p
from server.callers import require_admin
from server.hub import Decode, Fields
from server.session import Session
from store import ingest_progress, sync_progress
from store.blocking import run_blocking
from store.record_stream import RecordStream
from store.redis import sync_client


def _relay(stream: RecordStream, frame: Callable[[msgspec.Raw], p.AdminServerFrame]) -> Decode[bytes]:
    """The hub's decoder for one record stream: each entry's record, unparsed, in its stream's frame."""

    def to_frame(entry_id: str, fields: Fields) -> bytes | None:
        record = stream.record_of(fields)
        return None if record is None else p.encode(frame(msgspec.Raw(record)))

    return to_frame


RELAYS = (
    (jobs.EVENTS, lambda record: p.ReindexFrame(job=record)),
    (sync_progress.STREAM, lambda record: p.SyncFrame(progress=record)),
    (ingest_progress.STREAM, lambda record: p.IngestFrame(progress=record)),
)


def _current(redis_url: str) -> tuple[reindex.ReindexJob | None, list[sync_progress.SyncProgress]]:
    with sync_client(redis_url) as client:
        return reindex.current_job(client), sync_progress.running(client)


def _demo_progress(redis_url: str) -> bytes | None:
    with sync_client(redis_url) as client:
        return ingest_progress.load_raw(client, ingest_progress.DEMO)


class AdminSession(Session):
    decoder = p.admin_decoder

    async def connected(self) -> None:
        require_admin(self.ws, "operator")
        hub = self.services.hub
        buffer = self.settings.ws_send_buffer
        for stream, frame in RELAYS:
            self.follow(await hub.subscribe(stream.key, _relay(stream, frame), buffer), self._send_all)
        current, syncs = await run_blocking(_current, self.settings.redis_url)
        if current is not None:
            await self.reply(p.ReindexFrame(job=msgspec.Raw(msgspec.json.encode(current))))
        for progress in syncs:
            await self.reply(p.SyncFrame(progress=msgspec.Raw(msgspec.json.encode(progress))))
        demo = await run_blocking(_demo_progress, self.settings.redis_url)
        if demo is not None:
            await self.reply(p.IngestFrame(progress=msgspec.Raw(demo)))

    async def _send_all(self, frames: list[bytes]) -> None:
        for data in frames:
            await self.write(data)


async def admin_endpoint(ws: WebSocket) -> None:
    await AdminSession(ws, ws.app.state.services).run()
