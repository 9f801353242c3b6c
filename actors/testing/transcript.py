"""How the scripted model reads a chat request: which script answers, at which step, and its default answer.

It reads the conversation the way a model does, from the messages alone, whatever the caller's prompt
layout (earlier turns as messages, a system prompt, retries with feedback):

  - the task is the latest system or user message naming a script, `[script:NAME]` or `[script:NAME@KEY]`
    (`NAME@KEY` runs script NAME but counts requests under its own key, so two conversations can share a
    script); earlier turns of the conversation come before it and do not count. No marker: default mode;
  - the step is the number of replies the assistant has already given since that message (0 for the first
    call, 1 after the first tool round trip, ...): the model is on its next reply;
  - default mode answers from the numbered passages it was given (lines starting with `[1]`, `[2]`, ...):
    "From the documents: <start of passage 1> [1] <start of passage 2> [2]", or says nothing was found;
  - a follow-up rewrite request (the system prompt is `actors.prompts.REWRITE_SYSTEM`) is answered, under
    the key `rewrite`, with the last question (markers removed) then "about" and the user's previous one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import msgspec

from actors.prompts import REWRITE_SYSTEM

SCRIPT_MARKER = re.compile(r"\[script:([A-Za-z0-9_.\-]+)(?:@([A-Za-z0-9_.:\-]+))?\]")
CONTEXT_PASSAGE = re.compile(r"^\s*\[(\d{1,3})\]\s*(.+)$", re.MULTILINE)
DEFAULT_KEY = "default"
REWRITE_KEY = "rewrite"
MODEL_NAME = "scripted"
CITED_WORDS = 12
CITED_PASSAGES = (1, 2)
NOTHING_FOUND = "I could not find this in the documents."
INSTRUCTION_ROLES = ("system", "user")


class Message(msgspec.Struct):
    role: str
    content: str | list[Any] | None = None


class ChatRequest(msgspec.Struct):
    messages: list[Message]
    stream: bool = False
    model: str = MODEL_NAME


class Reading(msgspec.Struct, frozen=True, kw_only=True):
    """What the scripted model made of a request."""

    script: str | None  # None: default mode
    key: str  # the counting key (`NAME`, `NAME@KEY`, `default` or `rewrite`)
    step: int
    rewrite: bool = False  # a follow-up rewrite request (answered by `default_rewrite`)


def text_of(message: Message) -> str:
    if isinstance(message.content, str):
        return message.content
    if isinstance(message.content, list):  # content parts
        return " ".join(str(p.get("text", "")) for p in message.content if isinstance(p, dict))
    return ""


def _latest_marker(messages: Sequence[Message]) -> tuple[int, re.Match[str] | None]:
    """(index of the message the task starts at, its marker): the latest marked instruction."""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message.role in INSTRUCTION_ROLES and (found := SCRIPT_MARKER.search(text_of(message))):
            return index, found
    return _last_user(messages), None


def _last_user(messages: Sequence[Message]) -> int:
    return max((i for i, m in enumerate(messages) if m.role == "user"), default=0)


def replies_since(messages: Sequence[Message], start: int) -> int:
    return sum(1 for m in messages[start:] if m.role == "assistant")


def read(messages: Sequence[Message], header: str | None = None) -> Reading:
    """The script (a header `NAME[@KEY]` wins over markers), its counting key and the step."""
    if messages and messages[0].role == "system" and text_of(messages[0]).startswith(REWRITE_SYSTEM):
        return Reading(script=None, key=REWRITE_KEY, step=0, rewrite=True)
    start, found = _latest_marker(messages)
    if header and (named := SCRIPT_MARKER.fullmatch(f"[script:{header}]")):
        found = named
    step = replies_since(messages, start)
    if found is None:
        return Reading(script=None, key=DEFAULT_KEY, step=step)
    name, key = found.group(1), found.group(2)
    return Reading(script=name, key=f"{name}@{key}" if key else name, step=step)


def read_logged(messages: Sequence[dict[str, Any]]) -> Reading:
    """The same reading of a prompt as logged (`LLMRequested.messages`)."""
    return read(msgspec.convert(list(messages), list[Message]))


def default_rewrite(messages: Sequence[Message]) -> str:
    """The scripted standalone query: the last question, then "about" and the previous user question."""
    questions = [SCRIPT_MARKER.sub("", text_of(m)).strip() for m in messages if m.role == "user"]
    return " about ".join(questions[-1:-3:-1]) if questions else ""


def default_answer(messages: Sequence[Message]) -> str:
    context = "\n".join(text_of(m) for m in messages if m.role in INSTRUCTION_ROLES)
    passages: dict[int, str] = {}
    for match in CONTEXT_PASSAGE.finditer(context):
        passages.setdefault(int(match.group(1)), match.group(2).strip())
    cited = [n for n in CITED_PASSAGES if n in passages]
    if not cited:
        return NOTHING_FOUND
    parts = ["From the documents:"]
    for n in cited:
        words = passages[n].split()
        parts.append(" ".join(words[:CITED_WORDS]).rstrip(".,;:") + f" [{n}].")
    return " ".join(parts)
