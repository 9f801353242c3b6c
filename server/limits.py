"""Limits on what one client can make the web process do.

- `ActionLimits`: `ask`, `cancel` and `feedback` frames per user and per tenant (Redis token buckets,
  store.ratelimit), each action with its own buckets at the same rates; a user's and their tenant's bucket
  are one check (one script call, in the tenant bucket's slot: taken from both or neither).
- `FrameBudget`: a per-socket frame budget kept in memory (a flood of frames closes the socket before it
  reaches Redis).
- `SocketQuota`: concurrent sockets per user and per tenant in this web process (a socket holds its slot
  from its hello to its close).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Literal

from server.auth import Principal
from store.exceptions import RateLimited, TooManySockets
from store.ratelimit import AsyncRateLimiter, Bucket
from store.settings import Settings

FRAMES_PER_S = 20.0
FRAME_BURST = 60

Action = Literal["ask", "cancel", "feedback"]


class ActionLimits:
    def __init__(self, limiter: AsyncRateLimiter, settings: Settings) -> None:
        self.limiter = limiter
        self.settings = settings

    async def check(self, principal: Principal, action: Action) -> None:
        """RateLimited (with retry_after_ms) when the user's or the tenant's bucket for `action` is empty."""
        s = self.settings
        tenant = Bucket(f"{action}:tenant:{principal.tenant}", s.tenant_rate_per_s, s.tenant_burst)
        user = Bucket(f"{action}:user:{principal.tenant}:{principal.user}", s.user_rate_per_s, s.user_burst)
        await self.limiter.check_all([tenant, user])


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


class SocketSlot:
    """One socket's place in its user's and tenant's count; `release` once, when it closes."""

    def __init__(self, quota: SocketQuota, user: tuple[str, str], tenant: str) -> None:
        self.quota = quota
        self.user = user
        self.tenant = tenant
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.quota.give_back(self)


class SocketQuota:
    """Concurrent sockets per user and per tenant in this process: past a cap, TooManySockets."""

    def __init__(self, per_user: int, per_tenant: int) -> None:
        self.per_user = per_user
        self.per_tenant = per_tenant
        self._users: Counter[tuple[str, str]] = Counter()
        self._tenants: Counter[str] = Counter()

    def take(self, principal: Principal) -> SocketSlot:
        user = (principal.tenant, principal.user)
        if self._users[user] >= self.per_user:
            raise TooManySockets(f"at most {self.per_user} open sockets per user")
        if self._tenants[principal.tenant] >= self.per_tenant:
            raise TooManySockets(f"at most {self.per_tenant} open sockets per tenant")
        self._users[user] += 1
        self._tenants[principal.tenant] += 1
        return SocketSlot(self, user, principal.tenant)

    def give_back(self, slot: SocketSlot) -> None:
        self._users[slot.user] -= 1
        self._tenants[slot.tenant] -= 1
        if self._users[slot.user] <= 0:
            del self._users[slot.user]
        if self._tenants[slot.tenant] <= 0:
            del self._tenants[slot.tenant]
