"""The agent's tools: a registry of typed, risk-rated tools, and the policy that says which need a human."""

from __future__ import annotations

from actors.tools.compare import COMPARE_TOOL
from actors.tools.email import SEND_EMAIL_TOOL
from actors.tools.http import HTTP_REQUEST_TOOL
from actors.tools.knowledge import READ_TOOL, SEARCH_TOOL
from actors.tools.knowledge_base import KnowledgeBase
from actors.tools.match import MATCH_TOOL
from actors.tools.policy import RiskPolicy
from actors.tools.registry import (
    Registry,
    Tool,
    ToolArgs,
    ToolContext,
    ToolOutput,
    args_hash,
    args_to_builtins,
    canonical_args,
    fence_data,
    idempotency_key,
)

ALL_TOOLS = (SEARCH_TOOL, READ_TOOL, COMPARE_TOOL, SEND_EMAIL_TOOL, HTTP_REQUEST_TOOL, MATCH_TOOL)


def default_registry() -> Registry:
    """Every tool Docent ships. A run gets `default_registry().subset(names)` chosen by code."""
    return Registry(ALL_TOOLS)


__all__ = [
    "ALL_TOOLS",
    "KnowledgeBase",
    "Registry",
    "RiskPolicy",
    "Tool",
    "ToolArgs",
    "ToolContext",
    "ToolOutput",
    "args_hash",
    "args_to_builtins",
    "canonical_args",
    "default_registry",
    "fence_data",
    "idempotency_key",
]
