"""A typed configuration file (.json or .toml) decoded into a msgspec type, or a `ConfigError` naming it.

Used for the files settings point at: the tool risk policy, tenant workflows.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TypeVar

import msgspec

from store.exceptions import ConfigError

T = TypeVar("T")


def load_config_file(path: Path, kind: type[T], what: str) -> T:
    """`kind` from the file at `path`; `what` names it in errors ("tool policy", "workflows file")."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc}") from None
    return decode_config(raw, path.suffix, kind, f"{what} {path}")


def decode_config(raw: bytes, suffix: str, kind: type[T], source: str) -> T:
    try:
        match suffix.lower():
            case ".json":
                return msgspec.json.decode(raw, type=kind)
            case ".toml":
                return msgspec.convert(tomllib.loads(raw.decode("utf-8")), kind)
            case other:
                raise ConfigError(f"{source}: expected .json or .toml, not {other or 'no suffix'}")
    except (msgspec.DecodeError, msgspec.ValidationError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"bad {source}: {exc}") from None
