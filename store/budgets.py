"""Daily budgets per tenant and per user, checked against `store.usage` before any model call.

A budgets file (`DOCENT_BUDGETS_PATH`, JSON or TOML) sets, for every tenant (`[default]`) and for named
tenants (`[tenants.<name>]`, which override the default field by field), the tenant's whole day
(`tenant`) and each of its users' day (`user`, the per-user default):

    [default.user]
    tokens_per_day = 200000
    cost_usd_per_day = 2.0
    [tenants.acme.tenant]
    cost_usd_per_day = 50.0

A missing field, or 0, is no limit. Over a budget, a new ask is refused (`BudgetExceeded`, code
`budget_exceeded`, with `retry_after_ms` until the next UTC day) and a run in progress stops before its next
model call with a `limit_reached` event (`limit: "budget"`) that hands off to a human, as the run caps do.

    budgets = load_budgets(settings)             None when no file is set (nothing is checked)
    over = budgets.overspent(tenant, tenant_usage, user_usage, now_ms)   -> Overspend | None
    raise over.error()                           BudgetExceeded: code budget_exceeded, retry_after_ms
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from store.config_file import load_config_file
from store.exceptions import BudgetExceeded
from store.settings import Settings
from store.usage import Usage, ms_until_next_day

Scope = Literal["tenant", "user"]
LimitName = Literal["tokens_per_day", "cost_usd_per_day"]


class Budget(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    tokens_per_day: Annotated[int, msgspec.Meta(ge=0)] | None = None
    cost_usd_per_day: Annotated[float, msgspec.Meta(ge=0)] | None = None


class TenantBudgets(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    tenant: Budget = Budget()
    user: Budget = Budget()


class BudgetsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    default: TenantBudgets = TenantBudgets()
    tenants: dict[str, TenantBudgets] = {}


def _merged(own: Budget, default: Budget) -> Budget:
    return Budget(
        tokens_per_day=own.tokens_per_day if own.tokens_per_day is not None else default.tokens_per_day,
        cost_usd_per_day=own.cost_usd_per_day
        if own.cost_usd_per_day is not None
        else default.cost_usd_per_day,
    )


class Overspend(msgspec.Struct, frozen=True, kw_only=True):
    """A spent budget: whose, which limit, how much was used against what cap, when it renews."""

    scope: Scope
    limit: LimitName
    used: float
    cap: float
    retry_after_ms: int

    def error(self) -> BudgetExceeded:
        return BudgetExceeded(
            f"the {self.scope}'s daily budget is spent ({self.limit} {self.cap:g}); it renews at 00:00 UTC",
            **msgspec.structs.asdict(self),
        )


def _over(scope: Scope, budget: Budget, usage: Usage, now_ms: int) -> Overspend | None:
    limit: LimitName
    if budget.tokens_per_day and usage.tokens >= budget.tokens_per_day:
        limit, used, cap = "tokens_per_day", float(usage.tokens), float(budget.tokens_per_day)
    elif budget.cost_usd_per_day and usage.cost_usd >= budget.cost_usd_per_day:
        limit, used, cap = "cost_usd_per_day", round(usage.cost_usd, 6), budget.cost_usd_per_day
    else:
        return None
    return Overspend(scope=scope, limit=limit, used=used, cap=cap, retry_after_ms=ms_until_next_day(now_ms))


class Budgets:
    def __init__(self, config: BudgetsConfig) -> None:
        self.config = config

    def for_tenant(self, tenant: str) -> TenantBudgets:
        own = self.config.tenants.get(tenant)
        default = self.config.default
        if own is None:
            return default
        return TenantBudgets(tenant=_merged(own.tenant, default.tenant), user=_merged(own.user, default.user))

    def overspent(self, tenant: str, tenant_usage: Usage, user_usage: Usage, now_ms: int) -> Overspend | None:
        budgets = self.for_tenant(tenant)
        return _over("tenant", budgets.tenant, tenant_usage, now_ms) or _over(
            "user", budgets.user, user_usage, now_ms
        )


@lru_cache(maxsize=4)
def _load(path: str) -> Budgets:
    return Budgets(load_config_file(Path(path), BudgetsConfig, "budgets file"))


def load_budgets(settings: Settings) -> Budgets | None:
    """The configured budgets (read once per path), or None when `DOCENT_BUDGETS_PATH` is empty."""
    return _load(settings.budgets_path) if settings.budgets_path else None
