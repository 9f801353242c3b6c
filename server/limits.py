"""Rate limits: `ask` per user and per tenant (Redis token buckets, store.ratelimit), and a per-socket
frame budget kept in memory (a flood of frames closes the socket before it reaches Redis)."""

from __future__ import annotations

import time

from server.auth import Principal
from store.exceptions import RateLimited
from store.ratelimit import AsyncRateLimiter
from store.settings import Settings

FRAMES_PER_S = 20.0
FRAME_BURST = 60


class AskLimits:
    def __init__(self, limiter: AsyncRateLimiter, settings: Settings) -> None:
        self.limiter = limiter
        self.settings = settings

    async def check_ask(self, principal: Principal) -> None:
        """RateLimited (with retry_after_ms) when the user's or the tenant's bucket is empty."""
        s = self.settings
        await self.limiter.check(
            f"ask:user:{principal.tenant}:{principal.user}", s.user_rate_per_s, s.user_burst
        )
        await self.limiter.check(f"ask:tenant:{principal.tenant}", s.tenant_rate_per_s, s.tenant_burst)


class FrameBudget:
    """An in-memory token bucket for one socket's inbound frames."""

    def __init__(self, rate_per_s: float = FRAMES_PER_S, burst: int = FRAME_BURST) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.tokens = float(burst)
        self.at = time.monotonic()

    def take(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate_per_s)
        self.at = now
        if self.tokens < 1:
            retry_after_ms = int((1 - self.tokens) * 1000 / self.rate_per_s) + 1
            raise RateLimited("too many frames on this socket", retry_after_ms=retry_after_ms)
        self.tokens -= 1
