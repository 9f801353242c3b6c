"""One retry policy type for every "try again later" in the product: how many times, and how long to wait.

    policy = RetryPolicy(max_retries=20, first_s=0.1, max_s=5.0)
    policy.delay_s(attempt)        # 0.1, 0.2, 0.4, ... capped at 5.0 (attempt 0 is the first retry)
    policy.actor_options()         # dramatiq's max_retries / min_backoff / max_backoff, in ms

`factor` is the growth per attempt; `jitter` draws each delay uniformly from [delay / 2, delay] so that
many clients retrying together spread out. `bounded_s` clamps a wait someone else announced (a lease's
expiry, a server's Retry-After) into the policy's range.
"""

from __future__ import annotations

import random
from typing import Any

import msgspec

MS_PER_S = 1000


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    max_retries: int
    first_s: float
    max_s: float
    factor: float = 2.0
    jitter: bool = False

    def delay_s(self, attempt: int) -> float:
        """The wait before retry number `attempt` + 1 (attempt 0 is the first retry)."""
        ceiling = min(self.max_s, self.first_s * self.factor ** max(attempt, 0))
        return random.uniform(ceiling / 2, ceiling) if self.jitter else ceiling

    def bounded_s(self, wait_s: float) -> float:
        return min(self.max_s, max(self.first_s, wait_s))

    def actor_options(self) -> dict[str, Any]:
        """dramatiq's retry options (its Retries middleware backs off exponentially between these)."""
        return {
            "max_retries": self.max_retries,
            "min_backoff": round(self.first_s * MS_PER_S),
            "max_backoff": round(self.max_s * MS_PER_S),
        }
