"""The web process's garbage-collector settings, applied once at start-up (`configure`, from the lifespan).

Thousands of sockets keep millions of live objects. CPython's default thresholds (700, 10, 10) then stall
every socket for hundreds of ms (bench/ws.py at 5,000 sockets: fan-out p95 268 ms with the defaults), so
the web process freezes its start-up objects (`gc.freeze`: imports, routes, settings leave the
collector's scans for good) and sets its own generation thresholds, `DOCENT_WEB_GC_THRESHOLDS`
("gen0,gen1,gen2"; README "WebSockets" has the runs behind the defaults):

- gen0: tracked allocations (net of deallocations) between young collections. A young collection scans
  every object born since the last one that is still alive (at many sockets mostly state replaced at a
  steady rate: README "WebSockets"), so its pause grows with the time between collections.
- gen1: young collections between middle ones. A middle collection scans what survived those young
  collections: a socket's objects (~230 tracked each, born at its connect: bench/ws.py counted 46 young
  collections of 50,000 for 10,000 sockets) sit there until the next middle collection, so a large gen1
  makes a connect storm's sockets one long middle pause (1.2-3.1 s at 19,600 sockets with the defaults).
- gen2: middle collections between full ones (CPython also waits until 25% more objects are long-lived).

`DOCENT_WEB_GC_LOG_PATH` (a diagnostic, off by default) appends one JSON line per collection: when, the
generation, its wall and CPU time, the counts it started from, and what it freed (`Collection`);
bench/ws.py reads it to report the pauses that fell in its event window.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from store.exceptions import ConfigError

DEFAULT_THRESHOLDS = (50_000, 50, 1_000)  # CPython's own: (700, 10, 10)
GENERATIONS = 3


class Collection(msgspec.Struct, frozen=True, kw_only=True):
    """One garbage collection, as `DOCENT_WEB_GC_LOG_PATH` records it."""

    at_s: float  # wall clock (time.time) at its end
    generation: int  # the oldest generation collected: 0 young, 1 middle, 2 full
    wall_ms: float
    cpu_ms: float  # this thread's CPU time
    counts: tuple[int, int, int]  # gc.get_count() at its start
    collected: int
    uncollectable: int
    thresholds: tuple[int, int, int]  # gc.get_threshold() then: the settings in force


def parse_thresholds(setting: str) -> tuple[int, int, int]:
    """ "gen0,gen1,gen2" (each >= 1); empty: DEFAULT_THRESHOLDS."""
    if not setting.strip():
        return DEFAULT_THRESHOLDS
    parts = setting.split(",")
    try:
        values = tuple(int(part) for part in parts)
    except ValueError:
        values = ()
    if len(values) != GENERATIONS or min(values) < 1:
        raise ConfigError(
            f"DOCENT_WEB_GC_THRESHOLDS must be three positive integers gen0,gen1,gen2, not {setting!r}",
            setting="DOCENT_WEB_GC_THRESHOLDS",
        )
    return values[0], values[1], values[2]


class CollectionLog:
    """A `gc.callbacks` entry that appends a `Collection` line to `path` after each collection."""

    def __init__(self, path: Path) -> None:
        self._out: BinaryIO = path.open("ab")
        self._encoder = msgspec.json.Encoder()
        self._started: tuple[float, float, tuple[int, int, int]] | None = None

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = (time.perf_counter(), time.thread_time(), gc.get_count())
            return
        if self._started is None:  # installed during a collection
            return
        wall, cpu, counts = self._started
        self._started = None
        record = Collection(
            at_s=time.time(),
            generation=info["generation"],
            wall_ms=(time.perf_counter() - wall) * 1000,
            cpu_ms=(time.thread_time() - cpu) * 1000,
            counts=counts,
            collected=info["collected"],
            uncollectable=info["uncollectable"],
            thresholds=gc.get_threshold(),
        )
        self._out.write(self._encoder.encode(record) + b"\n")
        self._out.flush()

    def close(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)
        self._out.close()


def configure(thresholds: str, log_path: str) -> CollectionLog | None:
    """Freeze what exists now, set the thresholds, and start the collection log when asked; the log (to
    close at shutdown) or None."""
    values = parse_thresholds(thresholds)
    gc.freeze()
    gc.set_threshold(*values)
    if not log_path:
        return None
    log = CollectionLog(Path(log_path))
    gc.callbacks.append(log)
    return log


def read_log(path: Path) -> list[Collection]:
    """Every collection a `CollectionLog` wrote to `path`, in order."""
    decoder = msgspec.json.Decoder(Collection)
    return [decoder.decode(line) for line in path.read_bytes().splitlines() if line]
