"""The locks that order dual-writes, a build's commits, the cutover, rollback and retire.

The dual-write lock (one flock under the index root) is taken first, then each version's write lock
(`index.versions.write_lock`, what a plain Ingestor takes): between threads and between processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager

from index.versions import file_lock, version_path, write_lock
from store.settings import Settings

DUAL_WRITE_LOCK_FILE = "dualwrite.lock"


def dual_write_lock(settings: Settings) -> AbstractContextManager[None]:
    """Serialises dual-writes, the build's commits and the cutover (flock: between threads and processes)."""
    return file_lock(settings.index_root / DUAL_WRITE_LOCK_FILE)


@contextmanager
def commit_guard(settings: Settings, *versions: str | None) -> Iterator[None]:
    """The dual-write lock, then the write lock of each given version (plain Ingestors take only those)."""
    with ExitStack() as stack:
        stack.enter_context(dual_write_lock(settings))
        for version in dict.fromkeys(v for v in versions if v):
            if version_path(settings, version).is_dir():
                stack.enter_context(write_lock(settings, version))
        yield
