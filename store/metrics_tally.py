"""Observations counted in the process and written to prometheus-client's multiprocess files in one pass.

    tally_of(child) -> CounterTally | HistogramTally | child   what `store.metrics.Bound` hands the seams
    tally.inc(amount) / tally.observe(amount)                  a turn's observation: an add under a lock
    flush()                                                    write what is counted to the files, now
    FLUSH_MS                                                   how often a process's thread writes them

In multiprocess mode (PROMETHEUS_MULTIPROC_DIR) each observation of prometheus-client's own children takes
its lock, checks the process id (a system call) and writes the new value into a memory-mapped file: a
histogram's observe writes its sum and a bucket, so a Q&A turn's 23 writes were a few tens of µs of the
actor's thread. A tally keeps the counts in plain Python (a counter's amount; a histogram's sum and
per-bucket counts) and a thread of the process (`docent-metrics`, started by the first observation) adds
them to the children's values every FLUSH_MS, one write per value that moved, however many observations
there were. So what a scrape reads from another process's file is at most FLUSH_MS (plus that thread's
wait for the interpreter under load) behind its observations — well below any scrape interval (Prometheus'
default is one minute, 15 s a common setting). The scraping process writes its own first
(`store.metrics.exposition`), and every process writes what it holds when it exits (atexit); a process
killed with SIGKILL loses at most the last FLUSH_MS of its observations, as it would lose a turn in flight.

Without a multiprocess directory the children's values are plain floats under a lock, already as cheap
as a tally: `tally_of` then hands back the child itself (nothing is late). The tallies write through the
children's own value objects (a histogram's `_sum` and `_buckets`, in its `_upper_bounds` order): a
prometheus-client whose children lack them gets its children back, observed directly.

After a fork the child process forgets the parent's pending counts (the parent writes them to its own
file; prometheus-client starts the child's values afresh) and starts its own thread at its first
observation.
"""

from __future__ import annotations

import atexit
import math
import os
import threading
import time
from bisect import bisect_left
from typing import Any

from prometheus_client import values

FLUSH_MS = 1000
THREAD_NAME = "docent-metrics"


class _Pending:
    """This process's tallies with counts not yet written, under one lock (a turn's observations and the
    thread's pass take it for a few additions or one swap), and the thread's state: it sleeps FLUSH_MS
    between passes while there are counts, and waits for the next observation when there are none (a
    thread's wake costs tens of µs of CPU on a virtual machine: an idle process has none)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # the counts, `dirty`, `idle`
        self.writing = threading.Lock()  # one pass at a time: a scrape's flush waits for the thread's
        self.dirty: list[_Tally] = []
        self.started = False  # this process's thread
        self.idle = False  # the thread waits for `wake`: the next observation sets it
        self.wake = threading.Event()

    def start(self) -> None:
        with self.lock:
            if self.started:
                return
            self.started = True
        threading.Thread(target=self.run, name=THREAD_NAME, daemon=True).start()

    def run(self) -> None:
        while True:  # a daemon: the process's exit ends it (atexit writes what is left)
            time.sleep(FLUSH_MS / 1000)
            flush()
            with self.lock:
                if self.dirty:
                    continue
                self.idle = True
                self.wake.clear()
            self.wake.wait()


_pending = _Pending()
_tallies: list[_Tally] = []  # every tally made (bounded: one per bound label set), for a fork's reset


class _Tally:
    __slots__ = ("child", "dirty")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.dirty = False
        _tallies.append(self)

    def _mark(self) -> None:
        """Under the lock: the tally has counts to write (the thread's next pass writes them)."""
        if not self.dirty:
            self.dirty = True
            _pending.dirty.append(self)
            if _pending.idle:
                _pending.idle = False
                _pending.wake.set()

    def take(self) -> Any:
        """Under the lock: the counts to write, reset to none."""
        raise NotImplementedError

    def write(self, taken: Any) -> None:
        """Outside the lock: add the counts taken to the child's values (the files)."""
        raise NotImplementedError

    def forget(self) -> None:
        self.dirty = False


class CounterTally(_Tally):
    __slots__ = ("amount",)

    def __init__(self, child: Any) -> None:
        super().__init__(child)
        self.amount = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        with _pending.lock:
            self.amount += amount
            self._mark()
        if not _pending.started:
            _pending.start()

    def take(self) -> float:
        amount, self.amount, self.dirty = self.amount, 0.0, False
        return amount

    def write(self, taken: float) -> None:
        self.child.inc(taken)

    def forget(self) -> None:
        super().forget()
        self.amount = 0.0


class HistogramTally(_Tally):
    """A histogram child's sum and per-bucket counts (not cumulative, as prometheus-client keeps them)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, child: Any) -> None:
        super().__init__(child)
        self.bounds: list[float] = list(child._upper_bounds)
        self.sum = 0.0
        self.counts = [0] * len(self.bounds)

    def observe(self, amount: float) -> None:
        at = bisect_left(self.bounds, amount)  # the first bound >= amount, as the child's `observe` finds
        with _pending.lock:
            self.sum += amount
            if not math.isnan(amount):  # the child's: NaN is in no bucket (`amount <= bound` is never true)
                self.counts[at] += 1
            self._mark()
        if not _pending.started:
            _pending.start()

    def take(self) -> tuple[float, list[int]]:
        taken = self.sum, self.counts
        self.sum, self.counts, self.dirty = 0.0, [0] * len(self.bounds), False
        return taken

    def write(self, taken: tuple[float, list[int]]) -> None:
        total, counts = taken
        self.child._sum.inc(total)
        buckets = self.child._buckets
        for at, count in enumerate(counts):
            if count:
                buckets[at].inc(count)

    def forget(self) -> None:
        super().forget()
        self.sum, self.counts = 0.0, [0] * len(self.bounds)


def multiprocess() -> bool:
    """Whether prometheus-client writes its values to the multiprocess files (decided at its import)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


def tally_of(child: Any) -> Any:
    """A tally of a Counter's or Histogram's child in multiprocess mode; else the child itself."""
    if not multiprocess():
        return child
    if hasattr(child, "_upper_bounds") and hasattr(child, "_sum") and hasattr(child, "_buckets"):
        return HistogramTally(child)
    if hasattr(child, "inc") and not hasattr(child, "observe"):
        return CounterTally(child)
    return child  # another kind, or a prometheus-client whose histogram children differ: observed directly


def flush() -> None:
    """Write every count taken so far to the children's values (their files), in this thread."""
    with _pending.writing:
        with _pending.lock:
            dirty, _pending.dirty = _pending.dirty, []
            taken = [tally.take() for tally in dirty]
        for tally, counts in zip(dirty, taken, strict=True):
            tally.write(counts)


def _forked() -> None:
    """In a forked child: the parent's counts are the parent's to write; a fresh lock, no thread yet."""
    global _pending
    _pending = _Pending()
    for tally in _tallies:
        tally.forget()


os.register_at_fork(after_in_child=_forked)
atexit.register(flush)
