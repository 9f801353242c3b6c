"""The pair alias `<index_root>/active.json`: which (version, query embedding model) is active, and the
pair a rollback returns to. One atomic write switches it; `index.versions.get_active` reads the same file.

Also owns the `dropped` marker of a retired version whose data was deleted (it can never be active again).
"""

from __future__ import annotations

from contextlib import suppress

import msgspec

from index.types import ModelIdentity
from index.versions import (
    ACTIVATABLE,
    alias_path,
    atomic_write,
    check_model,
    now_ms,
    read_manifest,
    set_state,
    update_manifest,
    version_path,
)
from store.exceptions import IndexError_, IndexNotFound, ReindexRefused
from store.settings import Settings

DROPPED_FILE = "dropped"


class PairAlias(msgspec.Struct, frozen=True, kw_only=True):
    """`<index_root>/active.json`: the active pair and the pair a rollback returns to.

    A superset of `index.versions.ActiveAlias` (`get_active` reads the same file)."""

    version: str
    switched_at_ms: int
    model: ModelIdentity | None = None  # the query embedding model of `version`
    embedder: str = ""  # its registered name
    previous: str | None = None
    previous_embedder: str = ""
    reason: str = ""


_alias_decoder = msgspec.json.Decoder(PairAlias)
_encoder = msgspec.json.Encoder()


def read_alias(settings: Settings) -> PairAlias | None:
    try:
        return _alias_decoder.decode(alias_path(settings).read_bytes())
    except FileNotFoundError:
        return None
    except msgspec.DecodeError as exc:
        raise IndexError_(f"unreadable active alias: {exc}") from None


def write_alias(settings: Settings, alias: PairAlias) -> None:
    atomic_write(alias_path(settings), _encoder.encode(alias))


def switch_pair(
    settings: Settings,
    version: str,
    identity: ModelIdentity,
    *,
    embedder: str,
    previous: str | None,
    previous_embedder: str = "",
    reason: str = "",
) -> PairAlias:
    """The one alias write that makes (version, identity) the active pair; `previous` becomes retired.

    Raises ModelMismatch when `identity` is not the model the version was built with."""
    _check_activatable(settings, version, identity)
    update_manifest(settings, version, state="active")
    alias = PairAlias(
        version=version, switched_at_ms=now_ms(), model=identity, embedder=embedder,
        previous=previous if previous != version else None, previous_embedder=previous_embedder,
        reason=reason,
    )  # fmt: skip
    write_alias(settings, alias)
    if previous is not None and previous != version:
        with suppress(IndexNotFound):
            set_state(settings, previous, "retired")
    return alias


def _check_activatable(settings: Settings, version: str, identity: ModelIdentity) -> None:
    manifest = read_manifest(settings, version)
    check_model(manifest, identity)
    if manifest.state not in ACTIVATABLE:
        raise ReindexRefused(
            f"version {version} is {manifest.state} and cannot become active", version=version
        )
    if is_dropped(settings, version):
        raise ReindexRefused(f"version {version} was retired and its data dropped", version=version)


def is_dropped(settings: Settings, version: str) -> bool:
    return (version_path(settings, version) / DROPPED_FILE).exists()


def mark_dropped(settings: Settings, version: str) -> None:
    (version_path(settings, version) / DROPPED_FILE).write_text(str(now_ms()))
