"""/ws/admin: reindex and folder-sync progress for the operator console (the protocol's state machine is
server.session's).

No hello: the admin key comes with the handshake (`X-Admin-Key`, or `?admin_key=` from a browser) and is
checked before anything is sent. The socket follows `reindex:events`, `sync:events` (store.keys) and
`ingest:events` (store.ingest_progress) on the shared hub, then gets the job in progress (if any) and every
job update after it as `{"type": "reindex", "job": {...}}`, the folder syncs running (if any) and every
progress update after that as `{"type": "sync", "progress": {...}}` (store.sync_progress), and the background
demo ingest's progress as `{"type": "ingest", "progress": {...}}`. Client frames: `ping` only.
"""

from __future__ import annotations

import msgspec
from starlette.websockets import WebSocket

from index import reindex
from server import protocol as p
from server.callers import require_admin
from server.hub import Fields
from server.session import Session
from store import ingest_progress, keys, sync_progress
from store.blocking import run_blocking
from store.redis import sync_client


def job_frame(entry_id: str, fields: Fields) -> bytes | None:
    job = keys.reindex_event_job(fields)
    return None if job is None else p.encode(p.ReindexFrame(job=msgspec.Raw(job)))


def sync_frame(entry_id: str, fields: Fields) -> bytes | None:
    progress = sync_progress.progress_of(fields)
    return None if progress is None else p.encode(p.SyncFrame(progress=msgspec.Raw(progress)))


def progress_frame(entry_id: str, fields: Fields) -> bytes | None:
    record = ingest_progress.event_record(fields)
    return None if record is None else p.encode(p.IngestFrame(progress=msgspec.Raw(record)))


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
        self.follow(await hub.subscribe(keys.REINDEX_EVENTS, job_frame, buffer), self._send_all)
        self.follow(await hub.subscribe(keys.SYNC_EVENTS, sync_frame, buffer), self._send_all)
        self.follow(await hub.subscribe(ingest_progress.EVENTS, progress_frame, buffer), self._send_all)
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
