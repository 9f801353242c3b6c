"""The workflow definitions a process knows: the shipped file, then the tenant file `DOCENT_WORKFLOWS_PATH`.

Loaded once per path and checked at load (a bad file is a `ConfigError` at start, not at a question).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from actors.workflows.definitions import Definition, Library
from store.config_file import load_config_file
from store.exceptions import ConfigError

SHIPPED = Path(__file__).with_name("shipped.toml")


def read(path: Path) -> Library:
    library = load_config_file(path, Library, "workflows file")
    for definition in library.workflows:
        check(definition, str(path))
    return library


def check(definition: Definition, source: str) -> None:
    for pattern in definition.triggers:
        try:
            re.compile(pattern)
        except re.error as exc:
            where = f"workflows {source}: {definition.name}"
            raise ConfigError(f"{where}: bad trigger {pattern!r}: {exc}") from None
    if not definition.steps:
        raise ConfigError(f"workflows {source}: {definition.name} has no steps")


@functools.cache
def definitions(tenant_path: str = "") -> tuple[Definition, ...]:
    """Tenant definitions first (they win over a shipped one of the same name), then the shipped ones."""
    own = read(Path(tenant_path)).workflows if tenant_path else ()
    return (*own, *read(SHIPPED).workflows)
