"""Progress of a background ingest (the rest of the demo knowledge base), for the admin console.

One record per named run, saved whole at every committed slice, and the same bytes on an event stream
that `/ws/admin` relays (server/admin_socket.py). The record is also the run's checkpoint: `done` counts
the documents committed, in the run's fixed order, so a restarted run goes on from there.

    ingest:progress:<name>   the record (msgspec JSON)                    actors/demo_job.py
    ingest:lease:<name>      the worker holding the run (token, expiry)  actors/demo_job.py
    ingest:events            stream: each record update, field `progress` -> /ws/admin

Single-key families: no hash tag needed; the record and its event go on a non-transactional pipeline.
"""

from __future__ import annotations

from typing import Literal

import msgspec
import redis

from store.clock import now_ms
from store.record_stream import RecordStream

DEMO = "demo"  # the background demo ingest's record (actors/demo_job.py)
EVENTS_MAXLEN = 2000
STREAM = RecordStream(key="ingest:events", field="progress", maxlen=EVENTS_MAXLEN)
ERROR_SAMPLES_MAX = 5

Status = Literal["queued", "running", "done"]  # a failing slice is retried; its error is in `message`


class IngestProgress(msgspec.Struct, kw_only=True):
    name: str  # "demo"
    status: Status = "queued"
    fingerprint: str = ""  # what the run covers (the Python version for the demo): a new one starts over
    docs_total: int = 0  # pages to ingest (known once they are rendered; 0 while rendering)
    docs_done: int = 0  # committed, in order: the checkpoint
    docs_indexed: int = 0
    docs_unchanged: int = 0
    docs_failed: int = 0
    chunks_done: int = 0  # chunks of the committed documents
    chunks_embedded: int = 0
    chunks_total_est: int = 0  # estimated from the pages' bytes and the chunks per byte so far
    bytes_total: int = 0
    bytes_done: int = 0
    chunks_per_s: float = 0.0  # over the current message's slice of the run
    eta_s: float | None = None
    started_at_ms: int = 0
    updated_at_ms: int = 0
    finished_at_ms: int = 0
    message: str = ""
    error_samples: list[str] = msgspec.field(default_factory=list)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(IngestProgress)


def progress_key(name: str) -> str:
    return f"ingest:progress:{name}"


def lease_key(name: str) -> str:
    return f"ingest:lease:{name}"


def save(client: redis.Redis, record: IngestProgress) -> None:
    record.updated_at_ms = now_ms()
    data = _encoder.encode(record)
    pipe = client.pipeline(transaction=False)
    pipe.set(progress_key(record.name), data)
    STREAM.append(pipe, data)
    pipe.execute()


def load(client: redis.Redis, name: str) -> IngestProgress | None:
    data = client.get(progress_key(name))
    return None if data is None else _decoder.decode(data)  # type: ignore[arg-type]


def load_raw(client: redis.Redis, name: str) -> bytes | None:
    """The record's bytes as saved (the admin socket forwards them unparsed)."""
    data = client.get(progress_key(name))
    return data if data is None or isinstance(data, bytes) else str(data).encode()


def add_error(record: IngestProgress, sample: str) -> None:
    if len(record.error_samples) < ERROR_SAMPLES_MAX:
        record.error_samples.append(sample)
