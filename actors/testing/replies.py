"""The scripted model's replies in OpenAI's wire shapes: streamed chunks or one JSON body, and errors."""

from __future__ import annotations

import re
import time
from typing import Any

from actors.testing.scripts import ScriptedCall, Step
from actors.testing.transcript import MODEL_NAME, ChatRequest, Reading, text_of

WORDS = re.compile(r"\s*\S+\s*|\s+")
ARGUMENT_FRAGMENTS = 3
CHARS_PER_TOKEN = 4

Chunk = tuple[bool, dict[str, Any]]  # (counts as a delta for faults, the chunk)


def split_deltas(text: str, pieces: int) -> list[str]:
    if pieces <= 0:
        return WORDS.findall(text) or [text]
    return _pieces(text, pieces)


def _pieces(text: str, pieces: int) -> list[str]:
    size = max(1, -(-len(text) // pieces))
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "scripted", "code": status}}


def _finish_reason(step: Step) -> str:
    return "tool_calls" if step.tool_calls else "stop"


def _completion_id(reading: Reading) -> str:
    return f"chatcmpl-{reading.key}-{reading.step}"


def _call_id(reading: Reading, index: int, call: ScriptedCall) -> str:
    return call.id or f"call_{reading.key}_{reading.step}_{index}"


def _usage(step: Step, request: ChatRequest) -> dict[str, int]:
    prompt = sum(len(text_of(m)) for m in request.messages) // CHARS_PER_TOKEN + 1
    generated = len(step.text) + sum(len(c.arguments_text()) for c in step.tool_calls)
    completion = generated // CHARS_PER_TOKEN + 1
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _call_chunks(reading: Reading, index: int, call: ScriptedCall) -> list[dict[str, Any]]:
    head = {"index": index, "id": _call_id(reading, index, call), "type": "function",
            "function": {"name": call.name, "arguments": ""}}  # fmt: skip
    fragments = _pieces(call.arguments_text(), ARGUMENT_FRAGMENTS)
    return [head, *({"index": index, "function": {"arguments": f}} for f in fragments)]


def chunks(step: Step, request: ChatRequest, reading: Reading) -> list[Chunk]:
    """In order: role, text deltas, tool-call fragments (deltas too), finish reason, usage."""
    base = {"id": _completion_id(reading), "object": "chat.completion.chunk", "created": int(time.time()),
            "model": request.model or MODEL_NAME}  # fmt: skip

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    out: list[Chunk] = [(False, chunk({"role": "assistant", "content": ""}))]
    if step.text:
        out += [(True, chunk({"content": piece})) for piece in split_deltas(step.text, step.deltas)]
    for index, call in enumerate(step.tool_calls):
        out += [(True, chunk({"tool_calls": [part]})) for part in _call_chunks(reading, index, call)]
    out.append((False, chunk({}, _finish_reason(step))))
    if step.usage:
        out.append((False, {**base, "choices": [], "usage": _usage(step, request)}))
    return out


def whole_response(step: Step, request: ChatRequest, reading: Reading) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": step.text or None}
    if step.tool_calls:
        message["tool_calls"] = [
            {"id": _call_id(reading, i, c), "type": "function",
             "function": {"name": c.name, "arguments": c.arguments_text()}}
            for i, c in enumerate(step.tool_calls)
        ]  # fmt: skip
    body: dict[str, Any] = {
        "id": _completion_id(reading),
        "object": "chat.completion",
        "model": request.model or MODEL_NAME,
        "choices": [{"index": 0, "message": message, "finish_reason": _finish_reason(step)}],
    }
    if step.usage:
        body["usage"] = _usage(step, request)
    return body
