"""Daily and monthly budgets per tenant and per user, checked against `store.usage` before any model call.

A budgets file (`DOCENT_BUDGETS_PATH`, JSON or TOML) sets, for every tenant (`[default]`) and for named
tenants (`[tenants.<name>]`, which override the default field by field), the tenant's whole day
(`tenant`) and each of its users' day (`user`, the per-user default), and the same per UTC month:

    [default.user]
    tokens_per_day = 200000
    cost_usd_per_day = 2.0
    [tenants.acme.tenant]
    cost_usd_per_day = 50.0
    cost_usd_per_month = 1000.0

A missing field, or 0, is no limit. Over a budget, a new ask is refused (`BudgetExceeded`, code
`budget_exceeded`, with `retry_after_ms` until the budget renews: the next UTC day or month) and a run in
progress stops before its next model call with a `limit_reached` event (`limit: "budget"`) that hands off
to a human, as the run caps do.

    budgets = load_budgets(settings)             None when no file is set (nothing is checked)
    over = budgets.overspent(tenant, spending, now_ms)   -> Overspend | None (store.usage.Spending)
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
from store.usage import Spending, Usage, ms_until_next_day, ms_until_next_month

Scope = Literal["tenant", "user"]
LimitName = Literal["tokens_per_day", "cost_usd_per_day", "tokens_per_month", "cost_usd_per_month"]


class Budget(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    tokens_per_day: Annotated[int, msgspec.Meta(ge=0)] | None = None
    cost_usd_per_day: Annotated[float, msgspec.Meta(ge=0)] | None = None
    tokens_per_month: Annotated[int, msgspec.Meta(ge=0)] | None = None
    cost_usd_per_month: Annotated[float, msgspec.Meta(ge=0)] | None = None


class TenantBudgets(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    tenant: Budget = Budget()
    user: Budget = Budget()


class BudgetsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    default: TenantBudgets = TenantBudgets()
    tenants: dict[str, TenantBudgets] = {}


def _merged(own: Budget, default: Budget) -> Budget:
    """`own`'s limits, each missing one taken from `default`."""
    fields = {name: getattr(own, name) for name in Budget.__struct_fields__}
    return Budget(**{name: getattr(default, name) if v is None else v for name, v in fields.items()})


class Overspend(msgspec.Struct, frozen=True, kw_only=True):
    """A spent budget: whose, which limit, how much was used against what cap, when it renews."""

    scope: Scope
    limit: LimitName
    used: float
    cap: float
    retry_after_ms: int

    def error(self) -> BudgetExceeded:
        renews = "00:00 UTC" if self.limit.endswith("_day") else "the first of next month (UTC)"
        return BudgetExceeded(
            f"the {self.scope}'s budget is spent ({self.limit} {self.cap:g}); it renews at {renews}",
            **msgspec.structs.asdict(self),
        )


def _over(scope: Scope, budget: Budget, day: Usage, month: Usage, now_ms: int) -> Overspend | None:
    checks: tuple[tuple[LimitName, float, float | None, int], ...] = (
        ("tokens_per_day", day.tokens, budget.tokens_per_day, ms_until_next_day(now_ms)),
        ("cost_usd_per_day", day.cost_usd, budget.cost_usd_per_day, ms_until_next_day(now_ms)),
        ("tokens_per_month", month.tokens, budget.tokens_per_month, ms_until_next_month(now_ms)),
        ("cost_usd_per_month", month.cost_usd, budget.cost_usd_per_month, ms_until_next_month(now_ms)),
    )
    for limit, used, cap, renews_in_ms in checks:
        if cap and used >= cap:
            return Overspend(scope=scope, limit=limit, used=round(float(used), 6), cap=float(cap),
                             retry_after_ms=renews_in_ms)  # fmt: skip
    return None


class Budgets:
    def __init__(self, config: BudgetsConfig) -> None:
        self.config = config

    def for_tenant(self, tenant: str) -> TenantBudgets:
        own = self.config.tenants.get(tenant)
        default = self.config.default
        if own is None:
            return default
        return TenantBudgets(tenant=_merged(own.tenant, default.tenant), user=_merged(own.user, default.user))

    def overspent(self, tenant: str, spent: Spending, now_ms: int) -> Overspend | None:
        budgets = self.for_tenant(tenant)
        return _over("tenant", budgets.tenant, spent.tenant_day, spent.tenant_month, now_ms) or _over(
            "user", budgets.user, spent.user_day, spent.user_month, now_ms
        )


@lru_cache(maxsize=4)
def _load(path: str) -> Budgets:
    return Budgets(load_config_file(Path(path), BudgetsConfig, "budgets file"))


def load_budgets(settings: Settings) -> Budgets | None:
    """The configured budgets (read once per path), or None when `DOCENT_BUDGETS_PATH` is empty."""
    return _load(settings.budgets_path) if settings.budgets_path else None
