"""Scheduled folder syncs: `sync_source(dir)` on the `ingest` queue, for the sources named in configuration.

    # DOCENT_SYNC_SOURCES_PATH=/etc/docent/sources.toml
    [[sources]]
    dir = "/srv/handbook"          # synced exactly as `docent sync DIR` (actors.folder_sync)
    tenant = "acme"
    readers = ["group:staff"]      # where no .docent-readers file applies
    interval_s = 900
    max_delete_share = 0.2         # the mass-deletion guard; a refused sync is reported, never forced

Each ingest worker, when it boots, sends `sync_source(dir)` once per configured source (`kick`). A
`sync_source` message runs only if it claims the source's slot, `sync:due:<digest>` (SET NX, expiring
just before the next run is due): a message that finds the slot taken (the source synced less than an
interval ago, or another chain's message got there first) ends without re-sending, so duplicate chains
collapse into one. The winner syncs, then sends itself again `interval_s` later. A source removed from
the configuration ends its chain. Every run appends its report to the sync reports (store.sync_reports),
which the admin console shows; a refused sync (mass deletion) is reported and retried at the next interval.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Annotated

import dramatiq
import msgspec

from actors.api import send
from actors.broker import INGEST_QUEUE, enqueue_by_name, sending_broker, setup_broker
from index.types import EVERYONE
from store.config_file import load_config_file
from store.exceptions import ConfigError, DocentError, SyncRefused
from store.keys import sync_due
from store.redis import sync_client
from store.settings import Settings, get_settings

SYNC_SOURCE_ACTOR = "sync_source"
MAX_SOURCES = 100
MIN_INTERVAL_S = 1
SLOT_MARGIN = 0.9  # the slot expires at 90% of the interval, so the chain's own next message finds it free
TIME_LIMIT_MS = 6 * 3_600_000

log = logging.getLogger(__name__)


class SyncSource(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    dir: str
    tenant: str = "default"
    readers: tuple[str, ...] = (EVERYONE,)
    interval_s: Annotated[int, msgspec.Meta(ge=MIN_INTERVAL_S)] = 900
    max_delete_share: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.2

    @property
    def root(self) -> Path:
        return Path(self.dir).resolve()


class SyncSources(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    sources: Annotated[list[SyncSource], msgspec.Meta(max_length=MAX_SOURCES)] = []


def configured_sources(settings: Settings) -> list[SyncSource]:
    if not settings.sync_sources_path:
        return []
    sources = load_config_file(Path(settings.sync_sources_path), SyncSources, "sync sources file").sources
    if len({s.root for s in sources}) != len(sources):
        raise ConfigError(f"{settings.sync_sources_path}: a directory is listed twice")
    return sources


def _digest(root: Path) -> str:
    return hashlib.sha256(str(root).encode()).hexdigest()[:16]


def kick(settings: Settings) -> int:
    """One `sync_source` message per configured source (a worker's boot); returns how many were sent."""
    sources = configured_sources(settings)
    for source in sources:
        send(settings, INGEST_QUEUE, SYNC_SOURCE_ACTOR, str(source.root))
    return len(sources)


def sync_source(directory: str) -> None:
    from actors.folder_sync import sync_folder

    settings = get_settings()
    source = next((s for s in configured_sources(settings) if str(s.root) == directory), None)
    if source is None:
        log.info("scheduled sync of %s: no longer configured, the chain ends", directory)
        return
    client = sync_client(settings.redis_url)
    try:
        slot_ms = max(1, int(source.interval_s * 1000 * SLOT_MARGIN))
        if not client.set(sync_due(_digest(source.root)), "1", nx=True, px=slot_ms):
            return  # synced within the interval, or another chain's message won: this one ends
        try:
            report = sync_folder(settings, source.root, tenant=source.tenant, readers=source.readers,
                                 max_delete_share=source.max_delete_share)  # fmt: skip
            log.info("scheduled sync of %s: %s", directory, msgspec.json.encode(report).decode())
        except SyncRefused as exc:  # reported by sync_folder; an operator runs `docent sync --force`
            log.warning("scheduled sync of %s refused: %s", directory, exc.message)
        except DocentError as exc:
            log.error("scheduled sync of %s failed: %s: %s", directory, exc.code, exc.message)
        broker = sending_broker(settings.redis_url)
        try:
            delay_ms = source.interval_s * 1000
            enqueue_by_name(broker, INGEST_QUEUE, SYNC_SOURCE_ACTOR, (directory,), delay_ms=delay_ms)
        finally:
            broker.close()
    finally:
        client.close()


sync_source_actor: dramatiq.Actor[[str], None] = dramatiq.Actor(
    sync_source, broker=setup_broker(), actor_name=SYNC_SOURCE_ACTOR, queue_name=INGEST_QUEUE, priority=10,
    options={"max_retries": 0, "time_limit": TIME_LIMIT_MS},
)  # fmt: skip
