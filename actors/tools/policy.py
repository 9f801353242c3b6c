"""Risk policy: which calls need a human, which reviewer room gets them, how long an approval lives.

Decided by code and configuration only, from (tenant, tool, arguments): nothing a model or a document says
reaches these decisions. A setting is looked up, first match wins, in: the tenant's rule for the tool, the
tenant's defaults, the global rule for the tool, the global defaults, then the built-in defaults below.
Tool keys are exact names or prefixes ending in `*` (`delete_*`); an exact name beats a prefix.

A policy file (JSON or TOML) looks like:

    approval_ttl_s = 86400
    [tools.send_email]
    room = "comms"
    [tenants.acme]
    self_approval_allowed = true
    [tenants.acme.tools.http_request]
    risk = "high"
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from actors.tools.registry import Tool
from store.config_file import load_config_file
from store.events import Risk
from store.settings import Settings

DEFAULT_ROOM = "general"
RoomName = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
RiskSetting = Literal["low", "high", "declared"]  # "declared": what the tool's own risk(args) says


class ToolRule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    risk: RiskSetting | None = None
    room: RoomName | None = None
    approval_ttl_s: Annotated[int, msgspec.Meta(ge=1)] | None = None
    self_approval_allowed: bool | None = None


class TenantPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    approval_ttl_s: Annotated[int, msgspec.Meta(ge=1)] | None = None
    self_approval_allowed: bool | None = None
    tools: dict[str, ToolRule] = {}


class PolicyConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    approval_ttl_s: Annotated[int, msgspec.Meta(ge=1)] | None = None
    self_approval_allowed: bool | None = None
    tools: dict[str, ToolRule] = {}
    tenants: dict[str, TenantPolicy] = {}


BUILTIN_RULES: dict[str, ToolRule] = {
    "send_email": ToolRule(risk="high", room="email"),
    "http_request": ToolRule(risk="declared", room="external-writes"),  # GET low, writes high
    "delete_*": ToolRule(risk="high", room="deletions"),
}


def _rule_for(rules: dict[str, ToolRule], tool: str) -> ToolRule | None:
    if tool in rules:
        return rules[tool]
    prefixes = [k for k in rules if k.endswith("*") and tool.startswith(k[:-1])]
    return rules[max(prefixes, key=len)] if prefixes else None


class RiskPolicy:
    def __init__(self, config: PolicyConfig | None = None, *, default_ttl_s: int) -> None:
        self.config = config or PolicyConfig()
        self.default_ttl_s = default_ttl_s

    @classmethod
    def defaults(cls, settings: Settings) -> RiskPolicy:
        return cls(default_ttl_s=settings.approval_ttl_s)

    @classmethod
    def from_settings(cls, settings: Settings) -> RiskPolicy:
        """The policy `DOCENT_TOOL_POLICY_PATH` names, or the built-in defaults."""
        return cls.load(settings.tool_policy_path or None, settings)

    @classmethod
    def load(cls, path: str | Path | None, settings: Settings) -> RiskPolicy:
        """From a .json or .toml file; no path means the built-in defaults."""
        if not path:
            return cls.defaults(settings)
        return cls(load_config(Path(path)), default_ttl_s=settings.approval_ttl_s)

    def _layers(self, tenant: str, tool: str) -> Iterator[ToolRule | TenantPolicy | PolicyConfig]:
        tenant_policy = self.config.tenants.get(tenant)
        if tenant_policy is not None:
            if (rule := _rule_for(tenant_policy.tools, tool)) is not None:
                yield rule
            yield tenant_policy
        if (rule := _rule_for(self.config.tools, tool)) is not None:
            yield rule
        yield self.config
        if (rule := _rule_for(BUILTIN_RULES, tool)) is not None:
            yield rule

    def _first(self, tenant: str, tool: str, attribute: str) -> Any:
        for layer in self._layers(tenant, tool):
            value = getattr(layer, attribute, None)
            if value is not None:
                return value
        return None

    def risk(self, tenant: str, tool: Tool[Any], args: Any) -> Risk:
        setting: RiskSetting = self._first(tenant, tool.name, "risk") or "declared"
        return tool.risk(args) if setting == "declared" else setting

    def requires_approval(self, tenant: str, tool: Tool[Any], args: Any) -> bool:
        return self.risk(tenant, tool, args) == "high"

    def room_for(self, tenant: str, tool: str) -> str:
        room: str | None = self._first(tenant, tool, "room")
        return room or DEFAULT_ROOM

    def approval_ttl_s(self, tenant: str, tool: str) -> int:
        ttl: int | None = self._first(tenant, tool, "approval_ttl_s")
        return ttl or self.default_ttl_s

    def self_approval_allowed(self, tenant: str, tool: str) -> bool:
        return bool(self._first(tenant, tool, "self_approval_allowed"))


def load_config(path: Path) -> PolicyConfig:
    return load_config_file(path, PolicyConfig, "tool policy")
