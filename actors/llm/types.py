"""The LLM backend contract: chat messages, tool specs, completions, and the `LLMBackend` protocol.

The backends themselves and `load_backend` live in `actors/llm/backends.py` (they import this module).

Backends stream text deltas through `on_delta` as they arrive and return one `Completion`. Errors are
`store.exceptions` LLM errors: `LLMTimeout`, `LLMUnavailable` (429/5xx after retries, connection errors),
`MalformedToolCall` (recoverable: the model proposed a call that does not parse), `LLMError` otherwise.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

import msgspec

from store.events import ToolCall
from store.exceptions import InputError

if TYPE_CHECKING:
    from store.settings import Settings

Role = Literal["system", "user", "assistant", "tool"]
OnDelta = Callable[[str], Awaitable[None]]
CHARS_PER_TOKEN_ESTIMATE = 4
TOKENS_PER_MESSAGE_ESTIMATE = 4  # role markers and separators
USD_PER_MTOK = 1_000_000


class ChatMessage(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One chat message. `omit_defaults` keeps `prompt_hash` stable when optional fields are added later."""

    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()  # role=assistant: the calls it proposed
    tool_call_id: str = ""  # role=tool: which call this is the result of
    name: str = ""  # role=tool: the tool's name


class ToolSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    description: str = ""
    parameters: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "object", "properties": {}})

    @classmethod
    def from_openai(cls, spec: Mapping[str, Any]) -> ToolSpec:
        """From one element of an OpenAI `tools` array (`{"type": "function", "function": {...}}`)."""
        function = spec.get("function", spec)
        try:
            return msgspec.convert(function, cls)
        except msgspec.ValidationError as exc:
            raise InputError(f"bad tool spec: {exc}") from None

    def to_openai(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


def tool_specs(openai_tools: Iterable[Mapping[str, Any]]) -> tuple[ToolSpec, ...]:
    """`ToolSpec`s from an OpenAI-style `tools` array, e.g. `Registry.spec()`."""
    return tuple(ToolSpec.from_openai(spec) for spec in openai_tools)


class Completion(msgspec.Struct, frozen=True, kw_only=True):
    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    model: str = ""
    latency_ms: float = 0.0  # from the call to the last byte, retries included
    first_token_ms: float = 0.0  # from the call to the first delta (0 when nothing was streamed)
    usage_estimated: bool = False  # the backend reported no usage: token counts are estimates


class LLMBackend(Protocol):
    @property
    def model_name(self) -> str: ...

    async def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[ToolSpec] = (),
        max_tokens: int | None = None,
        temperature: float = 0.0,
        on_delta: OnDelta | None = None,
        request_id: str = "",
    ) -> Completion:
        """Generate one reply, awaiting `on_delta(text)` for each text fragment as it arrives.

        `max_tokens=None` means `settings.llm_max_tokens`. `request_id` identifies this logical request
        (the same id on every retry); backends that talk HTTP send it as `X-Request-Id`/`Idempotency-Key`.
        """
        ...

    def price(self, tokens_in: int, tokens_out: int) -> float: ...

    async def aclose(self) -> None: ...


def price_usd(settings: Settings, tokens_in: int, tokens_out: int) -> float:
    return (
        tokens_in * settings.llm_price_in_per_mtok + tokens_out * settings.llm_price_out_per_mtok
    ) / USD_PER_MTOK


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN_ESTIMATE)


def estimate_prompt_tokens(messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()) -> int:
    total = 0
    for message in messages:
        total += TOKENS_PER_MESSAGE_ESTIMATE + estimate_tokens(message.content)
        total += sum(estimate_tokens(c.name) + estimate_tokens(c.arguments) for c in message.tool_calls)
    if tools:
        total += estimate_tokens(msgspec.json.encode(tools).decode())
    return total


_canonical = msgspec.json.Encoder(order="sorted")


def prompt_hash(messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()) -> str:
    """sha256 of the canonical JSON of (messages, tools): equal prompts hash equal across processes."""
    return hashlib.sha256(_canonical.encode([list(messages), list(tools)])).hexdigest()


def messages_to_builtins(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """For the durable log (`LLMRequested.messages`)."""
    return [msgspec.to_builtins(m) for m in messages]


def messages_from_builtins(raw: Sequence[Mapping[str, Any]]) -> list[ChatMessage]:
    try:
        return msgspec.convert(list(raw), list[ChatMessage])
    except msgspec.ValidationError as exc:
        raise InputError(f"bad chat message: {exc}") from None
