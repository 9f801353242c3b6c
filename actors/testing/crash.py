"""Crash hooks for the worker runtime (`Runtime.crash`): where `docent chaos` makes a worker die.

    Runtime.from_settings(settings, crash=RandomExit(0.05))

`RandomExit` exits the process hard (`os._exit`: no cleanup, no flush, like SIGKILL) with the given
probability at each crash point the conversation actor passes (right after a tool's effect, right after a
model's response, before either is recorded).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from actors.runtime import CrashPoint

CRASH_EXIT_CODE = 137
CRASH_RATE_ENV = "CHAOS_CRASH_RATE"  # read by `actors.testing.chaos_worker`; not a DOCENT_ setting


class RandomExit:
    def __init__(self, rate: float, draw: Callable[[], float] = random.random) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError("a crash rate is a probability, 0 to 1")
        self.rate = rate
        self.draw = draw

    def __call__(self, point: CrashPoint) -> None:
        if self.rate and self.draw() < self.rate:
            os._exit(CRASH_EXIT_CODE)
