"""Index versions: one directory per version under `settings.index_root`, a manifest, and the active alias.

    <index_root>/
        active.json                 {"version": ..., "switched_at_ms": ...}: the one alias switch
        <version>/
            manifest.json           index.types.Manifest: model identity, dtype, chunker/context versions,
                                    state, counts
            whoosh/                 the Whoosh index (index.lexical)
            generation              the current USearch generation (index.vectors)
            vectors-<n>.usearch     USearch base files (index.vectors)
            vectors-<n>.delta       the entries since the base (index.vector_delta)
            write.lock              held by the one writer of this version (flock)

Every file is replaced by write-temp, fsync, rename, fsync-directory, so a reader sees the old or the new
content, never a torn one. A version's vector space is its manifest's `model`: `check_model` is what every
query side calls before searching, so an index is never searched with another model's vectors.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path

import msgspec

from index.types import IndexState, Manifest, ModelIdentity
from store.clock import now_ms
from store.exceptions import IndexCorrupt, IndexNotFound, InputError, ModelMismatch
from store.settings import Settings

MANIFEST_FILE = "manifest.json"
ACTIVE_FILE = "active.json"
WRITE_LOCK_FILE = "write.lock"
MANIFEST_LOCK_FILE = "manifest.lock"
VERSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
VECTOR_DTYPES = ("f16", "i8", "f32")
ACTIVATABLE: tuple[IndexState, ...] = ("building", "validating", "active", "retired")


class ActiveAlias(msgspec.Struct, frozen=True, kw_only=True):
    version: str
    switched_at_ms: int


_manifest_decoder = msgspec.json.Decoder(Manifest)
_alias_decoder = msgspec.json.Decoder(ActiveAlias)


def check_version_name(version: str) -> str:
    if not isinstance(version, str) or not VERSION_NAME.match(version):
        raise InputError(f"bad index version name {version!r}", field="version")
    return version


def new_version_name() -> str:
    """Sortable by creation time, unique across machines: v20250101-120000-1a2b."""
    return time.strftime("v%Y%m%d-%H%M%S", time.gmtime()) + f"-{secrets.token_hex(2)}"


def version_path(settings: Settings, version: str) -> Path:
    return settings.index_root / check_version_name(version)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a reader sees the old or the new bytes, even across a crash."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (flock): between processes, and between two opens in one process."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def write_lock(settings: Settings, version: str) -> AbstractContextManager[None]:
    """Held by the one writer of a version for a whole batch (catalog rows, Whoosh and USearch together)."""
    return file_lock(version_path(settings, version) / WRITE_LOCK_FILE)


# -- manifests -----------------------------------------------------------------------------------------


def create_version(
    settings: Settings,
    model: ModelIdentity,
    *,
    chunker_version: str,
    context_version: str,
    version: str | None = None,
    vector_dtype: str | None = None,
) -> Manifest:
    """Create an empty version directory (manifest in state `building`, empty Whoosh index)."""
    # The lexical module owns the Whoosh schema; imported here, not at the top, because it loads whoosh and
    # numpy and the web process imports this module (index.reindex's admin API) without either.
    from index.lexical import LEXICAL_VERSION, LexicalIndex

    name = check_version_name(new_version_name() if version is None else version)
    dtype = vector_dtype or settings.vector_dtype
    if dtype not in VECTOR_DTYPES:
        raise InputError(f"vector_dtype must be one of {VECTOR_DTYPES}", field="vector_dtype")
    if model.dimension < 1:
        raise InputError("model dimension must be positive", field="dimension")
    directory = settings.index_root / name
    try:
        directory.mkdir(parents=True)
    except FileExistsError:
        raise InputError(f"index version {name} already exists", version=name) from None
    manifest = Manifest(
        version=name, model=model, vector_dtype=dtype, chunker_version=chunker_version,
        context_version=context_version, lexical_version=LEXICAL_VERSION, created_at_ms=now_ms(),
    )  # fmt: skip
    LexicalIndex.create(directory)
    atomic_write(directory / MANIFEST_FILE, msgspec.json.encode(manifest))
    fsync_dir(settings.index_root)
    return manifest


def read_manifest(settings: Settings, version: str) -> Manifest:
    path = version_path(settings, version) / MANIFEST_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise IndexNotFound(f"no index version {version}", version=version) from None
    try:
        return _manifest_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise IndexCorrupt(f"unreadable manifest for {version}: {exc}", version=version) from None


def update_manifest(settings: Settings, version: str, **changes: object) -> Manifest:
    """Replace some fields of a version's manifest, under its manifest lock (no state checks)."""
    with file_lock(version_path(settings, version) / MANIFEST_LOCK_FILE):
        manifest = msgspec.structs.replace(read_manifest(settings, version), **changes)
        atomic_write(version_path(settings, version) / MANIFEST_FILE, msgspec.json.encode(manifest))
    return manifest


def set_state(settings: Settings, version: str, state: IndexState) -> Manifest:
    if state == "active":
        raise InputError("a version becomes active through set_active", field="state")
    if get_active(settings) == version and state != "active":
        raise InputError(f"{version} is the active version: activate another one first", version=version)
    return update_manifest(settings, version, state=state)


def set_counts(settings: Settings, version: str, *, documents: int, chunks: int) -> Manifest:
    return update_manifest(settings, version, documents=documents, chunks=chunks)


def list_versions(settings: Settings) -> list[Manifest]:
    """Every version with a readable manifest, oldest first."""
    if not settings.index_root.is_dir():
        return []
    manifests = []
    for directory in sorted(settings.index_root.iterdir()):
        if directory.is_dir() and VERSION_NAME.match(directory.name) and (directory / MANIFEST_FILE).exists():
            manifests.append(read_manifest(settings, directory.name))
    return sorted(manifests, key=lambda m: (m.created_at_ms, m.version))


# -- the active alias ------------------------------------------------------------------------------------


def alias_path(settings: Settings) -> Path:
    return settings.index_root / ACTIVE_FILE


def get_active(settings: Settings) -> str | None:
    try:
        raw = alias_path(settings).read_bytes()
    except FileNotFoundError:
        return None
    try:
        return _alias_decoder.decode(raw).version
    except msgspec.DecodeError as exc:
        raise IndexCorrupt(f"unreadable active alias: {exc}") from None


def set_active(settings: Settings, version: str) -> Manifest:
    """The one alias switch: new queries use `version`; the previous active version becomes `retired`."""
    manifest = read_manifest(settings, version)
    if manifest.state not in ACTIVATABLE:
        raise InputError(f"version {version} is {manifest.state} and cannot become active", version=version)
    previous = get_active(settings)
    manifest = update_manifest(settings, version, state="active")
    alias = ActiveAlias(version=version, switched_at_ms=now_ms())
    atomic_write(alias_path(settings), msgspec.json.encode(alias))
    if previous is not None and previous != version:
        with suppress(IndexNotFound):
            update_manifest(settings, previous, state="retired")
    return manifest


# -- model identity ----------------------------------------------------------------------------------------


def check_model(manifest: Manifest, identity: ModelIdentity) -> None:
    """Raise ModelMismatch unless `identity` is exactly the model the version was built with."""
    differs = [
        field
        for field in ("name", "weights_sha256", "dimension", "tokenizer_sha256")
        if getattr(manifest.model, field) != getattr(identity, field)
    ]
    if differs:
        raise ModelMismatch(
            f"embedder {identity.name} does not match index {manifest.version} "
            f"(built with {manifest.model.name}): {', '.join(differs)} differ",
            version=manifest.version,
            fields=differs,
        )
