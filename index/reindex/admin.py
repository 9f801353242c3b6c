"""Admin actions on index versions: list them, roll back to the previous pair, retire (drop) a version.

Files, the catalog and Redis job records only (no model, no index): the web process runs these for the
admin API. Every action is audited (index.reindex.audit).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import msgspec
import redis

from index.reindex.alias import PairAlias, is_dropped, mark_dropped, read_alias, switch_pair, write_alias
from index.reindex.audit import audit
from index.reindex.jobs import current_job
from index.reindex.ledger import LEDGER_FILE
from index.reindex.locks import commit_guard
from index.reindex.verify import verify
from index.types import Manifest
from index.versions import list_versions, read_manifest, set_state, version_path
from store.catalog import Catalog
from store.exceptions import ReindexRefused
from store.settings import Settings

DATA_FILES = ("generation", "whoosh", LEDGER_FILE)  # with every vectors-* file: what retire deletes


class VersionInfo(msgspec.Struct, kw_only=True):
    manifest: Manifest
    active: bool
    previous: bool  # the rollback target
    dropped: bool


def versions_info(settings: Settings) -> list[VersionInfo]:
    alias = read_alias(settings)
    return [
        VersionInfo(
            manifest=m,
            active=alias is not None and alias.version == m.version,
            previous=alias is not None and alias.previous == m.version,
            dropped=is_dropped(settings, m.version),
        )
        for m in list_versions(settings)
    ]


def rollback(
    settings: Settings,
    client: redis.Redis | None,
    *,
    by: str = "",
    force: bool = False,
    catalog: Catalog | None = None,
) -> PairAlias:
    """Switch the alias back to the previous pair (the same one write). The previous version must still
    hold exactly the catalog's documents (dual-write keeps it so) unless `force`."""
    alias = read_alias(settings)
    if alias is None or not alias.previous:
        raise ReindexRefused("no previous index version to roll back to")
    if client is not None and current_job(client) is not None:
        raise ReindexRefused("a reindex job is running: cancel it first")
    target = alias.previous
    manifest = read_manifest(settings, target)
    owns = catalog is None
    catalog = catalog or Catalog.for_data_dir(settings.data_path)
    try:
        with commit_guard(settings, alias.version, target):
            check = verify(settings, catalog, target, strict_ledger=False)
            if not check.exact and not force:
                raise ReindexRefused(f"rollback refused: {check.summary()}", version=target)
            switched = switch_pair(
                settings, target, manifest.model, embedder=alias.previous_embedder, previous=alias.version,
                previous_embedder=alias.embedder, reason="rollback",
            )  # fmt: skip
    finally:
        if owns:
            catalog.close()
    audit(
        settings, client, "rollback", to=target, from_=alias.version, by=by, forced=force, exact=check.exact
    )
    return switched


def _check_retirable(settings: Settings, client: redis.Redis | None, version: str) -> None:
    alias = read_alias(settings)
    if alias is not None and alias.version == version:
        raise ReindexRefused(f"{version} is the active version", version=version)
    running = current_job(client) if client is not None else None
    if running is not None and running.new_version == version:
        raise ReindexRefused(f"{version} is being built by {running.id}: cancel it first", version=version)


def retire(settings: Settings, client: redis.Redis | None, version: str, *, by: str = "") -> Manifest:
    """Drop a non-active version's data (catalog rows, Whoosh, USearch); its manifest stays, `retired`."""
    manifest = read_manifest(settings, version)
    _check_retirable(settings, client, version)
    with commit_guard(settings, version):
        mark_dropped(settings, version)
        if manifest.state != "rejected":
            manifest = set_state(settings, version, "retired")
        _drop_catalog_rows(settings, version)
        _delete_data_files(version_path(settings, version))
        alias = read_alias(settings)
        if alias is not None and alias.previous == version:
            write_alias(settings, msgspec.structs.replace(alias, previous=None))
    audit(settings, client, "retire", version=version, by=by)
    return manifest


def _drop_catalog_rows(settings: Settings, version: str) -> None:
    catalog = Catalog.for_data_dir(settings.data_path)
    try:
        catalog.drop_version(version)
    finally:
        catalog.close()


def _delete_data_files(directory: Path) -> None:
    for path in directory.iterdir():
        if path.name.startswith("vectors-") or path.name in DATA_FILES:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
