"""When a Q&A turn may use the semantic answer cache: decided by code and configuration, never by a model.

A turn uses the cache (looks it up, and stores its answer) only when all of these hold:
  - the cache is on (DOCENT_ANSWER_CACHE) and on for the tenant (the policy file may turn it on or off);
  - the route is Q&A: agent and workflow runs act through tools and are never served from the cache;
  - the user did not ask to bypass it (`UserMessage.no_cache`);
  - the ask has no metadata filters (`UserMessage.filters`): its search is narrowed, so its answer is not
    the question's answer for anyone else (nor is the question's answer its own);
  - the question stands alone: a follow-up is searched with the turn before it (index.followup), and its
    answer depends on that conversation;
  - no sensitivity classifier matches: a classifier is a name and words or phrases (whole words, case-
    insensitive). The built-in ones mark money, policy/legal and personal-data questions; the policy file
    replaces them, globally or per tenant.

A policy file (DOCENT_ANSWER_CACHE_POLICY_PATH, JSON or TOML):

    [classifiers]
    money = ["refund", "salary", "invoice"]
    [tenants.acme]
    enabled = true
    threshold = 0.93
    [tenants.acme.classifiers]          # replaces the global classifiers for acme ({} = none)
    personal = ["passport", "diagnosis"]
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import msgspec

from store.config_file import load_config_file
from store.events import Route, UserMessage
from store.settings import Settings

Threshold = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]

DEFAULT_CLASSIFIERS: dict[str, tuple[str, ...]] = {
    "money": ("refund", "refunds", "salary", "salaries", "payment", "payments", "invoice", "invoices",
              "price", "prices", "cost", "costs", "fee", "fees", "bonus", "wage", "wages", "reimburse",
              "reimbursed", "reimbursement", "bank", "payroll", "tax", "taxes", "budget", "compensation"),
    "policy": ("policy", "policies", "contract", "contracts", "legal", "lawsuit", "compliance", "terms",
               "liability", "penalty", "disciplinary", "termination"),
    "personal": ("ssn", "social security", "passport", "password", "passwords", "medical", "diagnosis",
                 "health", "home address", "phone number", "date of birth", "my account", "my salary"),
}  # fmt: skip


class TenantCachePolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool | None = None
    threshold: Threshold | None = None
    classifiers: dict[str, tuple[str, ...]] | None = None


class CachePolicyConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    classifiers: dict[str, tuple[str, ...]] = msgspec.field(default_factory=lambda: dict(DEFAULT_CLASSIFIERS))
    tenants: dict[str, TenantCachePolicy] = {}


class CacheDecision(msgspec.Struct, frozen=True, kw_only=True):
    use: bool
    threshold: float = 1.0
    reason: str = ""


def _pattern(words: tuple[str, ...]) -> re.Pattern[str] | None:
    if not words:
        return None
    alternatives = "|".join(re.escape(w.strip()).replace(r"\ ", r"\s+") for w in words if w.strip())
    return re.compile(rf"\b(?:{alternatives})\b", re.IGNORECASE) if alternatives else None


def _compiled(classifiers: dict[str, tuple[str, ...]]) -> dict[str, re.Pattern[str]]:
    return {name: p for name, words in classifiers.items() if (p := _pattern(words)) is not None}


class AnswerCachePolicy:
    def __init__(self, settings: Settings, config: CachePolicyConfig | None = None) -> None:
        self.settings = settings
        self.config = config or CachePolicyConfig()
        self._global = _compiled(self.config.classifiers)
        self._tenants = {
            name: _compiled(t.classifiers)
            for name, t in self.config.tenants.items()
            if t.classifiers is not None
        }

    @classmethod
    def from_settings(cls, settings: Settings) -> AnswerCachePolicy:
        path = settings.answer_cache_policy_path
        config = load_config_file(Path(path), CachePolicyConfig, "answer cache policy") if path else None
        return cls(settings, config)

    def sensitive(self, tenant: str, text: str) -> str:
        """The name of the first classifier that marks `text` sensitive for `tenant`, or ""."""
        for name, pattern in self._tenants.get(tenant, self._global).items():
            if pattern.search(text):
                return name
        return ""

    def decide(self, question: UserMessage, tenant: str, route: Route | None, query: str) -> CacheDecision:
        tenant_policy = self.config.tenants.get(tenant, TenantCachePolicy())
        enabled = self.settings.answer_cache if tenant_policy.enabled is None else tenant_policy.enabled
        if not enabled:
            return CacheDecision(use=False, reason="the answer cache is off for this tenant")
        if route != "qa":
            return CacheDecision(use=False, reason=f"route {route}: only Q&A answers are cached")
        if question.no_cache:
            return CacheDecision(use=False, reason="the user asked to bypass the cache")
        if question.filters is not None:
            return CacheDecision(use=False, reason="metadata filters narrow this turn's search")
        if query != question.text:
            return CacheDecision(use=False, reason="a follow-up: its answer depends on the conversation")
        if label := self.sensitive(tenant, question.text):
            return CacheDecision(use=False, reason=f"sensitive question ({label})")
        threshold = self.settings.answer_cache_threshold
        if tenant_policy.threshold is not None:
            threshold = tenant_policy.threshold
        return CacheDecision(use=True, threshold=threshold)
