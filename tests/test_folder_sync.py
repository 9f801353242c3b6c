"""The folder connector (issue 12): `docent sync DIR` notices new, changed and deleted files and applies
exactly those changes; readers come from `.docent-readers` rule files (inherited) and a rule change
re-permissions without embedding; deletions reach every index version; the mass-deletion guard; and a
real SIGKILL of the sync process mid-run, twice, after which re-running converges with nothing duplicated.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from actors.folder_sync import READERS_FILE, sync_folder
from index.embed import load_embedder
from index.ingest import Ingestor
from index.lexical import LexicalIndex
from index.search import Mode, Searcher, SearchService
from index.types import Access, Principal
from index.vectors import VectorIndex
from index.versions import create_version, get_active, read_manifest, version_path
from store.catalog import Catalog
from store.exceptions import InputError, SyncRefused
from store.metadata import SearchFilters
from store.settings import Settings
from store.sync_reports import recent_reports
from tests.server_proc import REPO
from tests.test_indexes import make_settings

TENANT = "acme"
STAFF = Principal(tenant=TENANT, user="sam", groups=("staff",))
LAWYER = Principal(tenant=TENANT, user="lee", groups=("staff", "legal"))
BOARD = Principal(tenant=TENANT, user="bo", groups=("staff", "board"))
MODES: tuple[Mode, ...] = ("dense", "bm25", "hybrid")
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo",
         "lima", "mike", "november", "oscar"]  # fmt: skip


def note(n: int, extra: str = "") -> str:
    words = " ".join(WORDS[(n + i) % len(WORDS)] for i in range(12))
    return f"# Note {n}\n\nNote number {n} mentions token{n} and {words}. {extra}\n"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    (tmp_path / "kb").mkdir()
    return make_settings(tmp_path, embed_model="hash", retrieve_k=20, allowed_roots=str(tmp_path / "kb"))


def tree(root: Path) -> Path:
    (root / "legal").mkdir(parents=True)
    (root / READERS_FILE).write_text("# everyone on staff\ngroup:staff\n")
    (root / "legal" / READERS_FILE).write_text("group:legal\n")
    for n in range(4):
        (root / f"note{n}.md").write_text(note(n))
    (root / "legal" / "contract.md").write_text("# Contract\n\nThe zebra clause binds the parties.\n")
    (root / ".hidden.md").write_text("never synced")
    (root / "image.png").write_bytes(b"\x89PNG")
    return root


def ranked(settings: Settings, query: str, principal: Principal, filters: SearchFilters | None = None
           ) -> dict[str, list[str]]:  # fmt: skip
    """Each mode's hits (doc ids, best first). Dense search always returns neighbours: check the top."""
    service = SearchService(settings)
    try:
        return {
            m: [h.doc_id for h in service.search_sync(query, principal, k=10, mode=m, filters=filters).hits]
            for m in MODES
        }
    finally:
        service.close()


def doc_ids(settings: Settings, query: str, principal: Principal, filters: SearchFilters | None = None
            ) -> dict[str, set[str]]:  # fmt: skip
    return {m: set(hits) for m, hits in ranked(settings, query, principal, filters).items()}


def tops(settings: Settings, query: str, principal: Principal) -> set[str | None]:
    return {hits[0] if hits else None for hits in ranked(settings, query, principal).values()}


def test_a_sync_applies_exactly_the_changes(settings: Settings, tmp_path: Path) -> None:
    root = tree(tmp_path / "kb" / "handbook")
    first = sync_folder(settings, root, tenant=TENANT, readers=("*",))
    assert (first.status, first.files, first.added, first.failed) == ("completed", 5, 5, 0)
    contract = "kb/handbook/legal/contract.md"
    assert all(contract in hits for hits in doc_ids(settings, "zebra clause", LAWYER).values())
    assert all(contract not in hits for hits in doc_ids(settings, "zebra clause", STAFF).values())
    legal_only = SearchFilters(path_prefix="legal/")
    filtered = doc_ids(settings, "note zebra token1", LAWYER, legal_only)
    assert all(hits == {contract} for hits in filtered.values())

    again = sync_folder(settings, root, tenant=TENANT)
    assert (again.unchanged, again.added, again.changed, again.updated, again.deleted, again.embedded) == (
        5, 0, 0, 0, 0, 0,
    )  # fmt: skip

    (root / "note1.md").write_text(note(1, "Now it also covers the walrus budget."))
    (root / "note2.md").unlink()
    (root / "note9.md").write_text(note(9))
    third = sync_folder(settings, root, tenant=TENANT)
    assert (third.added, third.changed, third.deleted, third.unchanged) == (1, 1, 1, 3)
    assert tops(settings, "walrus budget", STAFF) == {"kb/handbook/note1.md"}
    assert all("kb/handbook/note2.md" not in hits for hits in doc_ids(settings, "token2", STAFF).values())
    catalog = Catalog.for_data_dir(settings.data_path)
    assert catalog.get_document("kb/handbook/note2.md").deleted  # type: ignore[union-attr]
    assert catalog.get_document("kb/handbook/note9.md").metadata.path == "note9.md"  # type: ignore[union-attr]
    catalog.close()
    reports = recent_reports(settings.data_path)
    assert [r.added for r in reports] == [1, 0, 5] and reports[0].source == str(root.resolve())


def test_a_rule_file_change_repermissions_without_embedding(settings: Settings, tmp_path: Path) -> None:
    root = tree(tmp_path / "kb" / "handbook")
    sync_folder(settings, root, tenant=TENANT)
    (root / "legal" / READERS_FILE).write_text("group:board\n")
    report = sync_folder(settings, root, tenant=TENANT)
    assert (report.updated, report.embedded, report.unchanged) == (1, 0, 4)
    contract = "kb/handbook/legal/contract.md"
    assert all(contract not in hits for hits in doc_ids(settings, "zebra clause", LAWYER).values())
    assert all(contract in hits for hits in doc_ids(settings, "zebra clause", BOARD).values())
    (root / READERS_FILE).write_text("group:staff\nuser:\n")
    with pytest.raises(InputError, match="bad reader token"):
        sync_folder(settings, root, tenant=TENANT)
    assert all(contract in hits for hits in doc_ids(settings, "zebra clause", BOARD).values())  # unchanged


def test_the_mass_deletion_guard(settings: Settings, tmp_path: Path) -> None:
    root = tree(tmp_path / "kb" / "handbook")
    sync_folder(settings, root, tenant=TENANT)
    (root / "note0.md").unlink()  # 1 of 5: 20%, allowed
    assert sync_folder(settings, root, tenant=TENANT).deleted == 1
    for path in [*root.glob("*.md"), *root.glob("legal/*.md")]:
        path.unlink()  # a mounted-but-empty directory
    with pytest.raises(SyncRefused) as refused:
        sync_folder(settings, root, tenant=TENANT)
    assert refused.value.code == "sync_refused" and refused.value.details["deleted"] == 4
    assert all("kb/handbook/note3.md" in hits for hits in doc_ids(settings, "token3", STAFF).values())
    assert recent_reports(settings.data_path)[0].status == "refused"
    forced = sync_folder(settings, root, tenant=TENANT, force=True)
    assert forced.deleted == 4 and all(not hits for hits in doc_ids(settings, "token3", STAFF).values())


def test_a_deletion_reaches_every_index_version(settings: Settings, tmp_path: Path) -> None:
    from index.chunk import CHUNKER_VERSION
    from index.context import context_version

    root = tree(tmp_path / "kb" / "handbook")
    sync_folder(settings, root, tenant=TENANT)
    embedder = load_embedder(settings, "hash", purpose="offline")
    building = create_version(settings, embedder.identity, chunker_version=CHUNKER_VERSION,
                              context_version=context_version(False)).version  # fmt: skip
    with Ingestor(settings, embedder, building) as ingestor:
        ingestor.ingest_document("kb/handbook/note3.md", path=root / "note3.md",
                                 access=Access(tenant=TENANT, readers=("group:staff",)))  # fmt: skip
    versions = [str(get_active(settings)), building]

    def found(version: str) -> set[str]:
        searcher = Searcher(settings, version, embedder)
        try:
            return {h.doc_id for h in searcher.search_sync("token3", STAFF, mode="hybrid").hits}
        finally:
            searcher.close()

    assert all("kb/handbook/note3.md" in found(v) for v in versions)
    (root / "note3.md").unlink()
    sync_folder(settings, root, tenant=TENANT)
    assert all("kb/handbook/note3.md" not in found(v) for v in versions)


# -- a real SIGKILL of the sync process ----------------------------------------------------------------

FILES = 300


def sync_process(settings: Settings, root: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCENT_")}
    env |= {"DOCENT_DATA_DIR": str(settings.data_path), "DOCENT_ALLOWED_ROOTS": settings.allowed_roots,
            "DOCENT_EMBED_MODEL": "hash", "DOCENT_LLM_BACKEND": "none"}  # fmt: skip
    command = [sys.executable, "-m", "server.cli", "sync", str(root), "--tenant", TENANT]
    return subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip


def kill_after(settings: Settings, root: Path, done_at_least: int) -> None:
    """Start a sync and SIGKILL it once it reports `done_at_least` documents done (and not all)."""
    process = sync_process(settings, root)
    assert process.stderr is not None
    for line in process.stderr:
        if line.startswith("sync: "):
            done, total = (int(x) for x in line.split()[1].split("/"))
            if done >= done_at_least:
                process.send_signal(signal.SIGKILL)
                break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL and done < total  # killed mid-sync


def index_state(settings: Settings, tenant: str = TENANT) -> tuple[int, int, int, int]:
    """(live documents, visible chunks, USearch vectors, Whoosh entries) of the active version."""
    version = str(get_active(settings))
    catalog = Catalog.for_data_dir(settings.data_path)
    documents = len([d for d in catalog.list_documents(tenant=tenant, limit=1000)])
    _, chunks = catalog.counts(version)
    catalog.close()
    manifest = read_manifest(settings, version)
    directory = version_path(settings, version)
    vectors = VectorIndex.open_reader(directory, ndim=manifest.model.dimension, dtype=manifest.vector_dtype)
    lexical = LexicalIndex.open(directory)
    try:
        return documents, chunks, len(vectors.keys()), lexical.doc_count()
    finally:
        lexical.close()


def test_a_sigkilled_sync_converges_when_run_again(settings: Settings, tmp_path: Path) -> None:
    root = tmp_path / "kb" / "big"
    root.mkdir()
    for n in range(FILES):
        (root / f"n{n:03d}.md").write_text(note(n))
    kill_after(settings, root, 1)  # during the first slice's commit or just after it
    catalog = Catalog.for_data_dir(settings.data_path)
    partial = len(catalog.list_documents(tenant=TENANT, limit=1000))
    catalog.close()
    assert 0 < partial < FILES
    first = sync_folder(settings, root, tenant=TENANT)
    assert (first.added, first.unchanged, first.failed) == (FILES - partial, partial, 0)
    assert index_state(settings) == (FILES, FILES, FILES, FILES)

    # An incremental run with deletions and changes, killed twice: during the deletions, then the ingest.
    for n in range(0, 40):
        (root / f"n{n:03d}.md").unlink()
    for n in range(40, 140):
        (root / f"n{n:03d}.md").write_text(note(n, f"Edited: gamma{n}."))
    for n in range(FILES, FILES + 100):
        (root / f"n{n:03d}.md").write_text(note(n))
    kill_after(settings, root, 1)
    kill_after(settings, root, 64)
    final = sync_folder(settings, root, tenant=TENANT)
    assert final.failed == 0 and final.files == FILES + 60
    assert index_state(settings) == (FILES + 60, FILES + 60, FILES + 60, FILES + 60)  # nothing duplicated
    assert tops(settings, "gamma77 edited", STAFF) == {"kb/big/n077.md"}
    assert all("kb/big/n007.md" not in hits for hits in doc_ids(settings, "token7", STAFF).values())
    settled = sync_folder(settings, root, tenant=TENANT)
    assert (settled.unchanged, settled.embedded) == (FILES + 60, 0)
