"""The reindex audit log: every admin action and gate outcome, durable in `<index_root>/audit.jsonl` and
live on the Redis stream `reindex:audit`. No model, no index (the web process writes it)."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import redis

from store import keys
from store.clock import now_ms
from store.redis import REDIS_ERRORS
from store.settings import Settings

log = logging.getLogger(__name__)

AUDIT_MAXLEN = 2000
AUDIT_FILE = "audit.jsonl"

_encoder = msgspec.json.Encoder()


def audit(settings: Settings, client: redis.Redis | None, action: str, **details: object) -> None:
    """Append to the audit log: `<index_root>/audit.jsonl` (durable) and the `reindex:audit` stream."""
    entry = _encoder.encode({"at_ms": now_ms(), "action": action, **details})
    settings.index_root.mkdir(parents=True, exist_ok=True)
    with open(settings.index_root / AUDIT_FILE, "ab") as f:
        f.write(entry + b"\n")
    if client is not None:
        try:
            client.xadd(keys.REINDEX_AUDIT, {"entry": entry}, maxlen=AUDIT_MAXLEN, approximate=True)
        except REDIS_ERRORS as exc:
            log.warning("audit stream write failed: %s", exc)


def read_audit(settings: Settings) -> list[dict[str, Any]]:
    path = settings.index_root / AUDIT_FILE
    if not path.exists():
        return []
    return [msgspec.json.decode(line) for line in path.read_bytes().splitlines() if line.strip()]
