"""The wall clock in milliseconds since the epoch: what every record, event and lease stamps itself with."""

from __future__ import annotations

import time

NS_PER_MS = 1_000_000


def now_ms() -> int:
    return time.time_ns() // NS_PER_MS
