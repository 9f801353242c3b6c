"""Keeping an actor's lease renewed while it works: `LeaseKeeper`, served by one renewal thread per process.

    with LeaseKeeper(log, lease) as keeper:   # renewed every third of its TTL until the block ends
        ...                                    # keeper.lost is set once the lease was found taken or expired

An activation used to start (and join) a thread of its own for this: at 40 users that was a thread start,
two GIL hand-offs and a join per turn on the worker's busiest path, for a renewal that a Q&A turn (tens of
milliseconds against a 30 s lease) almost never needs. Now every keeper of the process is due in one heap
that one daemon thread serves. The guarantees are the per-thread keeper's: renewals every `interval` from
entry, `lost` set and renewal stopped at the first StaleEpoch, an unreachable Redis retried at the next
interval, and no renewal after `__exit__` returns (a renewal in flight is waited for).
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time
from typing import TYPE_CHECKING, Protocol

from store.exceptions import LogError, StaleEpoch

if TYPE_CHECKING:
    from store.log import Lease


class Renews(Protocol):
    def renew(self, lease: Lease) -> Lease: ...


class LeaseKeeper:
    """Renews a lease (every third of its TTL, or `interval_ms`) while an actor works.

    `lost` is set, and renewal stops, as soon as the lease is found taken or expired; the actor's next
    append would be refused anyway, but checking `lost` lets it stop before slow work.
    """

    def __init__(self, log: Renews, lease: Lease, interval_ms: int | None = None) -> None:
        self.lease = lease
        self.lost = threading.Event()
        self._log = log
        self._interval_s = (interval_ms or max(1, lease.ttl_ms // 3)) / 1000
        self._turn = threading.Lock()  # held by a renewal in flight; __exit__ waits for it
        self._stopped = False

    def __enter__(self) -> LeaseKeeper:
        _renewer().schedule(self, time.monotonic() + self._interval_s)
        return self

    def __exit__(self, *exc: object) -> None:
        with self._turn:
            self._stopped = True

    def _renew_once(self) -> bool:
        """One renewal when due; whether the keeper is to be scheduled again."""
        with self._turn:
            if self._stopped:
                return False
            try:
                self.lease = self._log.renew(self.lease)
            except StaleEpoch:
                self.lost.set()
                return False
            except LogError:
                pass  # Redis unreachable for now: retry; if the lease lapses meanwhile, fencing holds
            return True


class _Renewer:
    """The process's renewal thread: keepers by due time (a stopped keeper leaves when it comes due)."""

    def __init__(self) -> None:
        self._due: list[tuple[float, int, LeaseKeeper]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="lease-renewer", daemon=True)
        self._thread.start()

    def schedule(self, keeper: LeaseKeeper, at: float) -> None:
        with self._wake:
            heapq.heappush(self._due, (at, next(self._order), keeper))
            if self._due[0][2] is keeper:  # due before all others: the thread's wait is too long now
                self._wake.notify()

    def _next_due(self) -> LeaseKeeper:
        with self._wake:
            while True:
                if not self._due:
                    self._wake.wait()
                    continue
                at, _, keeper = self._due[0]
                if keeper._stopped:
                    heapq.heappop(self._due)
                    continue
                wait_s = at - time.monotonic()
                if wait_s > 0:
                    self._wake.wait(wait_s)
                    continue
                heapq.heappop(self._due)
                return keeper

    def _run(self) -> None:
        while True:
            keeper = self._next_due()
            if keeper._renew_once():
                self.schedule(keeper, time.monotonic() + keeper._interval_s)


_renewers: dict[int, _Renewer] = {}  # by process id: a forked child starts its own thread
_renewers_lock = threading.Lock()


def _renewer() -> _Renewer:
    pid = os.getpid()
    renewer = _renewers.get(pid)
    if renewer is None:
        with _renewers_lock:
            renewer = _renewers.get(pid) or _renewers.setdefault(pid, _Renewer())
    return renewer
