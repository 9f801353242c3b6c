"""LLM backends for the agent loop: OpenAI-compatible HTTP and the embedded SmolLM2."""

from actors.llm.backends import load_backend
from actors.llm.types import (
    ChatMessage,
    Completion,
    LLMBackend,
    OnDelta,
    ToolSpec,
    messages_from_builtins,
    messages_to_builtins,
    prompt_hash,
    tool_specs,
)

__all__ = [
    "ChatMessage",
    "Completion",
    "LLMBackend",
    "OnDelta",
    "ToolSpec",
    "load_backend",
    "messages_from_builtins",
    "messages_to_builtins",
    "prompt_hash",
    "tool_specs",
]
