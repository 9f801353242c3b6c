"""Faults the delivery sinks inject, each consumed once per affected delivery, so senders must retry."""

from __future__ import annotations

import threading

import msgspec


class Faults(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How many deliveries each failure still applies to."""

    smtp_drop_after_data: int = 0  # store the message, then hang up before the 250: the sender must retry
    smtp_fail_data: int = 0  # answer DATA with 451 and store nothing
    http_fail_after_effect: int = 0  # do the effect and store its response, but answer 503 this time
    http_fail_before_effect: int = 0  # answer 503 with no effect


class FaultBudget:
    """The faults left to inject, thread-safe (tests set them from another thread than the sink's loop)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.faults = Faults()

    def set(self, faults: Faults) -> None:
        with self._lock:
            self.faults = msgspec.structs.replace(faults)

    def consume(self, name: str) -> bool:
        """True (and one fewer left) when fault `name` applies to this delivery."""
        with self._lock:
            left = getattr(self.faults, name)
            if left > 0:
                setattr(self.faults, name, left - 1)
                return True
            return False
