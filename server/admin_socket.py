"""/ws/admin: reindex progress for the operator console (the protocol's state machine is server.session's).

No hello: the admin key comes with the handshake (`X-Admin-Key`, or `?admin_key=` from a browser) and is
checked before anything is sent. The socket follows `reindex:events` (store.keys) on the shared hub, then
gets the job in progress (if any) and every job update after it as `{"type": "reindex", "job": {...}}`;
likewise the background demo ingest's progress (`ingest:events`, store.ingest_progress) as
`{"type": "ingest", "progress": {...}}`. Client frames: `ping` only.
"""

from __future__ import annotations

import msgspec
from starlette.websockets import WebSocket

from index import reindex
from server import protocol as p
from server.callers import require_admin
from server.hub import Fields
from server.session import Session
from store import ingest_progress, keys
from store.blocking import run_blocking
from store.redis import sync_client


def job_frame(entry_id: str, fields: Fields) -> bytes | None:
    job = keys.reindex_event_job(fields)
    return None if job is None else p.encode(p.ReindexFrame(job=msgspec.Raw(job)))


def progress_frame(entry_id: str, fields: Fields) -> bytes | None:
    record = ingest_progress.event_record(fields)
    return None if record is None else p.encode(p.IngestFrame(progress=msgspec.Raw(record)))


def _current_job(redis_url: str) -> reindex.ReindexJob | None:
    with sync_client(redis_url) as client:
        return reindex.current_job(client)


def _demo_progress(redis_url: str) -> bytes | None:
    with sync_client(redis_url) as client:
        return ingest_progress.load_raw(client, ingest_progress.DEMO)


class AdminSession(Session):
    decoder = p.admin_decoder

    async def connected(self) -> None:
        require_admin(self.ws, "operator")
        hub = self.services.hub
        subscription = await hub.subscribe(keys.REINDEX_EVENTS, job_frame, self.settings.ws_send_buffer)
        self.follow(subscription, self._send_all)
        ingest = await hub.subscribe(ingest_progress.EVENTS, progress_frame, self.settings.ws_send_buffer)
        self.follow(ingest, self._send_all)
        current = await run_blocking(_current_job, self.settings.redis_url)
        if current is not None:
            await self.reply(p.ReindexFrame(job=msgspec.Raw(msgspec.json.encode(current))))
        demo = await run_blocking(_demo_progress, self.settings.redis_url)
        if demo is not None:
            await self.reply(p.IngestFrame(progress=msgspec.Raw(demo)))

    async def _send_all(self, frames: list[bytes]) -> None:
        for data in frames:
            await self.write(data)


async def admin_endpoint(ws: WebSocket) -> None:
    await AdminSession(ws, ws.app.state.services).run()
