"""The scripted model's script file: which replies it gives, step by step, and the faults it injects.

Script file (JSON, decoded strictly with msgspec)::

    {
      "delay_ms": 0,                          # default pause before each streamed delta
      "scripts": {
        "compare": {
          "delay_ms": 5,                      # this script's default (overrides the file's)
          "steps": [
            {"tool_calls": [{"name": "search", "arguments": {"query": "contract A"}}]},
            {"text": "Here is the table [1].", "deltas": 4, "delay_ms": 50,
             "fault": {"kind": "drop", "times": 1, "after_deltas": 2}}
          ]
        }
      }
    }

A step is a text answer (`text`, streamed in `deltas` pieces — 0 means one per word) and/or `tool_calls`
(`name`, `arguments` object, optional `id`, or `raw_arguments` text to script a malformed call; arguments
are streamed in fragments, each counting as a delta). At least one is required.
`fault` applies to the first `times` requests of that step (per counting key):
  - `{"kind": "status", "status": 503}` / `{"kind": "status", "status": 429, "retry_after_s": 1}`
  - `{"kind": "hang", "after_deltas": 0}`: stop sending (0 = before the response headers) until shutdown
  - `{"kind": "drop", "after_deltas": 2}`: cut the TCP connection after that many deltas (0 = at once)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from store.exceptions import ConfigError


class Fault(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    kind: Literal["status", "hang", "drop"]
    times: int = 1
    status: int = 503
    retry_after_s: float | None = None
    after_deltas: int = 0

    def __post_init__(self) -> None:
        if self.times < 1 or self.after_deltas < 0:
            raise ValueError("fault times must be >= 1 and after_deltas >= 0")
        if self.kind == "status" and not 400 <= self.status <= 599:
            raise ValueError("a status fault needs a 4xx/5xx status")


class ScriptedCall(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    arguments: dict[str, Any] = {}
    id: str = ""
    raw_arguments: str | None = None  # sent verbatim instead of `arguments` (to script malformed calls)

    def arguments_text(self) -> str:
        if self.raw_arguments is not None:
            return self.raw_arguments
        return msgspec.json.encode(self.arguments).decode()


class Step(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    text: str = ""
    tool_calls: tuple[ScriptedCall, ...] = ()
    deltas: int = 0  # pieces the text is streamed in; 0 = one per word
    delay_ms: int | None = None
    fault: Fault | None = None
    usage: bool = True  # send a usage chunk

    def __post_init__(self) -> None:
        if not self.text and not self.tool_calls:
            raise ValueError("a step needs text or tool_calls")
        if self.deltas < 0 or (self.delay_ms is not None and self.delay_ms < 0):
            raise ValueError("deltas and delay_ms must be >= 0")


class Script(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    steps: tuple[Step, ...]
    delay_ms: int | None = None


class ScriptFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    scripts: dict[str, Script] = {}
    delay_ms: int = 0


def load_scripts(path: Path) -> ScriptFile:
    try:
        return msgspec.json.decode(path.read_bytes(), type=ScriptFile)
    except (OSError, msgspec.DecodeError) as exc:
        raise ConfigError(f"bad script file {path}: {exc}") from None


def as_script_file(scripts: ScriptFile | Mapping[str, Any] | None) -> ScriptFile:
    """A `ScriptFile`, a `{name: Script}` mapping, or the JSON-shaped dict of either."""
    if scripts is None:
        return ScriptFile()
    if isinstance(scripts, ScriptFile):
        return scripts
    if "scripts" in scripts:
        return msgspec.convert(scripts, ScriptFile)
    return ScriptFile(scripts={name: msgspec.convert(s, Script) for name, s in scripts.items()})
