"""The job lease `reindex:lease:<job>`: one worker works on a job at a time. A thread renews it; when a
renewal finds another owner the lease is `lost` and the slice stops. A killed worker's lease expires after
`settings.reindex_lease_ms` and another worker takes the job over from its checkpoint. The same lease
holds other background runs under their own key (`key=`: the demo ingest, actors/demo_job.py)."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from contextlib import suppress

import redis

from store import keys
from store.redis import REDIS_ERRORS

log = logging.getLogger(__name__)

RENEWALS_PER_LEASE = 3
RENEW = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) "
    "else return 0 end"
)
RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end"


class Lease:
    """`reindex:lease:<job>` held by one worker, renewed by a thread; lost => the slice stops."""

    def __init__(self, client: redis.Redis, job_id: str, lease_ms: int, *, key: str = "") -> None:
        self.client = client
        self.key = key or keys.reindex_lease(job_id)
        self.lease_ms = lease_ms
        self.token = hashlib.sha1(f"{time.time_ns()}:{threading.get_ident()}".encode()).hexdigest()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        if not self.client.set(self.key, self.token, nx=True, px=self.lease_ms):
            return False
        self._thread = threading.Thread(target=self._renew, name=f"lease-{self.key}", daemon=True)
        self._thread.start()
        return True

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_ms / 1000 / RENEWALS_PER_LEASE):
            try:
                if not self.client.eval(RENEW, 1, self.key, self.token, self.lease_ms):
                    self.lost.set()
                    return
            except REDIS_ERRORS as exc:
                log.warning("reindex lease renewal failed: %s", exc)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with suppress(*REDIS_ERRORS):
            self.client.eval(RELEASE, 1, self.key, self.token)
