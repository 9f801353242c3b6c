"""A capped Redis stream of records: each entry carries one record's bytes (msgspec JSON) in one field.

    REINDEX = RecordStream(key="reindex:events", field="job", maxlen=2000)
    REINDEX.append(pipe, data)              # an XADD with MAXLEN ~ maxlen, on a client or a pipeline
    REINDEX.record_of(fields)               # the record an entry carries, as bytes (None: none)
    REINDEX.newest(client, count=100)       # the last `count` records, newest first

The admin console's live views are three of them — reindex jobs (index.reindex.jobs), folder syncs
(store.sync_progress) and the background ingest (store.ingest_progress) — and `/ws/admin`
(server.admin_socket) relays each entry's record unparsed in the frame of its stream. One key each: no
hash tag needed on a Redis Cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
from redis.client import Pipeline

Fields = dict[Any, Any]


@dataclass(frozen=True)
class RecordStream:
    key: str
    field: str
    maxlen: int

    def append(self, client: redis.Redis | Pipeline, data: bytes) -> None:
        entry: Fields = {self.field: data}
        client.xadd(self.key, entry, maxlen=self.maxlen, approximate=True)

    def record_of(self, fields: Fields) -> bytes | None:
        value = fields.get(self.field.encode(), fields.get(self.field))
        return value if value is None or isinstance(value, bytes) else str(value).encode()

    def newest(self, client: redis.Redis, count: int) -> list[bytes]:
        entries: Any = client.xrevrange(self.key, "+", "-", count=count)
        return [record for _, fields in entries if (record := self.record_of(fields)) is not None]
