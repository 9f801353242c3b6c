"""Strict parsing of tool calls written as text: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`.

Used by the local backend, whose model has no native tool-call channel. Anything that is not exactly a
closed block holding one JSON object with a known `name` and an object `arguments` is a `MalformedToolCall`
(recoverable: the agent loop may tell the model and ask again); nothing is guessed or repaired.
`validate_call` applies the same rules to calls an OpenAI-compatible server returned as structured data.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import msgspec

from store.events import ToolCall
from store.exceptions import MalformedToolCall

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"
MAX_SNIPPET_CHARS = 300
ALLOWED_KEYS = frozenset({"name", "arguments"})

_encoder = msgspec.json.Encoder(order="sorted")


def _snippet(text: str) -> str:
    return text if len(text) <= MAX_SNIPPET_CHARS else text[:MAX_SNIPPET_CHARS] + "…"


def _arguments_object(raw: str, name: str) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(raw) if raw.strip() else {}
    except msgspec.DecodeError as exc:
        message = f"arguments of {name!r} are not valid JSON: {exc}"
        raise MalformedToolCall(message, raw=_snippet(raw)) from None
    if not isinstance(value, dict):
        raise MalformedToolCall(f"arguments of {name!r} must be a JSON object", raw=_snippet(raw))
    return value


def _check_name(name: object, known_tools: Collection[str], raw: str) -> str:
    if not isinstance(name, str) or not name:
        raise MalformedToolCall("a tool call needs a non-empty string name", raw=_snippet(raw))
    if name not in known_tools:
        raise MalformedToolCall(f"unknown tool {name!r}", raw=_snippet(raw), tool=name)
    return name


def validate_call(call: ToolCall, known_tools: Collection[str]) -> ToolCall:
    """The call with its arguments re-encoded canonically; `MalformedToolCall` if it breaks the rules."""
    name = _check_name(call.name, known_tools, call.arguments)
    arguments = _arguments_object(call.arguments, name)
    return ToolCall(id=call.id, name=name, arguments=_encoder.encode(arguments).decode())


def _parse_block(body: str, known_tools: Collection[str], call_id: str) -> ToolCall:
    try:
        value = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise MalformedToolCall(f"tool call is not valid JSON: {exc}", raw=_snippet(body)) from None
    if not isinstance(value, dict):
        raise MalformedToolCall("tool call must be a JSON object", raw=_snippet(body))
    extra = set(value) - ALLOWED_KEYS
    if extra:
        raise MalformedToolCall(f"unexpected keys in tool call: {sorted(extra)}", raw=_snippet(body))
    name = _check_name(value.get("name"), known_tools, body)
    if "arguments" not in value:
        raise MalformedToolCall(f"tool call {name!r} has no arguments", raw=_snippet(body))
    arguments = value["arguments"]
    if not isinstance(arguments, dict):
        raise MalformedToolCall(f"arguments of {name!r} must be a JSON object", raw=_snippet(body))
    return ToolCall(id=call_id, name=name, arguments=_encoder.encode(arguments).decode())


def parse_tool_calls(
    text: str, known_tools: Collection[str], *, id_prefix: str = "call"
) -> tuple[str, tuple[ToolCall, ...]]:
    """Split model output into (prose outside the blocks, stripped; the calls in order).

    Call ids are `{id_prefix}_{n}`: deterministic, so a replayed step names its calls the same way.
    """
    prose: list[str] = []
    calls: list[ToolCall] = []
    rest = text
    while True:
        start = rest.find(OPEN_TAG)
        stray_close = rest.find(CLOSE_TAG)
        if stray_close != -1 and (start == -1 or stray_close < start):
            raise MalformedToolCall(f"{CLOSE_TAG} without {OPEN_TAG}", raw=_snippet(rest))
        if start == -1:
            prose.append(rest)
            break
        prose.append(rest[:start])
        after = rest[start + len(OPEN_TAG) :]
        end = after.find(CLOSE_TAG)
        if end == -1:
            raise MalformedToolCall(f"{OPEN_TAG} is never closed", raw=_snippet(after))
        body = after[:end]
        if OPEN_TAG in body:
            raise MalformedToolCall(f"nested {OPEN_TAG}", raw=_snippet(body))
        calls.append(_parse_block(body.strip(), known_tools, f"{id_prefix}_{len(calls)}"))
        rest = after[end + len(CLOSE_TAG) :]
    return "".join(prose).strip(), tuple(calls)


class ToolCallFilter:
    """Streams prose while holding back anything that may be the start of a tool-call block.

    `feed` returns the text that is safe to show; once `<tool_call>` has appeared, everything after it is
    withheld (it is markup for the parser, not an answer for the user).
    """

    def __init__(self) -> None:
        self._pending = ""
        self.in_call = False

    def feed(self, delta: str) -> str:
        if self.in_call:
            return ""
        text = self._pending + delta
        start = text.find(OPEN_TAG)
        if start != -1:
            self.in_call = True
            self._pending = ""
            return text[:start]
        keep = _partial_tag_suffix(text)
        self._pending = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """What was held back, once the stream has ended without completing a tag."""
        text, self._pending = self._pending, ""
        return "" if self.in_call else text


def _partial_tag_suffix(text: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of OPEN_TAG."""
    for size in range(min(len(OPEN_TAG) - 1, len(text)), 0, -1):
        if OPEN_TAG.startswith(text[-size:]):
            return size
    return 0
