"""A folder sync's live progress: documents done / total, rate, ETA, on the `sync:events` stream.

    publisher = ProgressPublisher(client, source="/srv/handbook", tenant="acme")
    publisher(SyncProgress(done=64, total=500, rate_per_s=21.3, eta_s=20.5))   # while it runs
    publisher.finish("completed")                                                # or "refused", "failed"

`docent sync` and the scheduled `sync_source` job publish what their meter reports (actors.folder_sync);
`/ws/admin` relays each entry as `{"type": "sync", "progress": {...}}` and the admin console's documents
card shows the syncs running. The stream is capped (MAXLEN ~ EVENTS_MAXLEN); an update comes at most every
MIN_INTERVAL_S (the first, the last and every phase change always). Publishing is best effort: Redis not
answering costs the live view, never the sync (logged once per sync).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Literal

import msgspec
import redis

from store.clock import now_ms
from store.keys import SYNC_EVENT_FIELD, SYNC_EVENTS
from store.record_stream import RecordStream

log = logging.getLogger(__name__)

EVENTS_MAXLEN = 1_000
MIN_INTERVAL_S = 0.25
RECENT_ENTRIES = 100  # what a new admin socket reads back to find the syncs running now
STALE_AFTER_MS = 15 * 60 * 1000  # a "running" sync silent this long was killed: not shown as running
Phase = Literal["running", "completed", "refused", "failed"]
STREAM = RecordStream(key=SYNC_EVENTS, field=SYNC_EVENT_FIELD, maxlen=EVENTS_MAXLEN)


class SyncProgress(msgspec.Struct, frozen=True, kw_only=True):
    done: int
    total: int
    rate_per_s: float
    eta_s: float | None
    source: str = ""  # the synced directory
    tenant: str = ""
    phase: Phase = "running"
    at_ms: int = 0


_decoder = msgspec.json.Decoder(SyncProgress)


class ProgressPublisher:
    """The progress callback of one sync, appending to `sync:events` (and to an optional next callback)."""

    def __init__(
        self,
        client: redis.Redis | None,
        *,
        source: str,
        tenant: str,
        then: Callable[[SyncProgress], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client, self.source, self.tenant, self.then, self.clock = client, source, tenant, then, clock
        self.last: SyncProgress | None = None
        self._sent_at = -1e9
        self._broken = False

    def __call__(self, progress: SyncProgress) -> None:
        stamped = msgspec.structs.replace(progress, source=self.source, tenant=self.tenant, at_ms=now_ms())
        first = self.last is None
        self.last = stamped
        if self.then is not None:
            self.then(stamped)
        if first or stamped.done >= stamped.total or self.clock() - self._sent_at >= MIN_INTERVAL_S:
            self._publish(stamped)

    def finish(self, phase: Phase) -> None:
        last = self.last or SyncProgress(done=0, total=0, rate_per_s=0.0, eta_s=None)
        eta = 0.0 if phase == "completed" else None
        final = msgspec.structs.replace(
            last, source=self.source, tenant=self.tenant, phase=phase, eta_s=eta, at_ms=now_ms()
        )
        self.last = final
        self._publish(final)

    def _publish(self, progress: SyncProgress) -> None:
        if self.client is None or self._broken:
            return
        try:
            STREAM.append(self.client, msgspec.json.encode(progress))
            self._sent_at = self.clock()
        except redis.RedisError as exc:
            self._broken = True
            log.warning("sync of %s: progress not published (%s); the sync goes on", self.source, exc)


def running(client: redis.Redis, now: int | None = None) -> list[SyncProgress]:
    """The syncs running now as the last RECENT_ENTRIES entries say: each source's latest, if running and
    heard from within STALE_AFTER_MS (a SIGKILLed sync never says it stopped)."""
    now = now_ms() if now is None else now
    latest: dict[tuple[str, str], SyncProgress] = {}
    for raw in STREAM.newest(client, RECENT_ENTRIES):
        try:
            progress = _decoder.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        latest.setdefault((progress.tenant, progress.source), progress)
    return [p for p in reversed(latest.values()) if p.phase == "running" and now - p.at_ms < STALE_AFTER_MS]
