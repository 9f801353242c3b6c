"""Private data: everything under the data dir is the owner's alone (files 0600, directories 0700).

Docent's processes run with umask 077 (`private_umask`, called by every entry point), so what they create
(the AOF, the catalog and its WAL, index versions, uploads, secrets) is private from the start; the
`docent run` supervisor also tightens a data dir created before this rule (`secure_tree`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_UMASK = 0o077
PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def private_umask() -> None:
    """Files and directories this process (and its children) create are readable by their owner only."""
    os.umask(PRIVATE_UMASK)


def make_private(path: Path) -> None:
    """Drop the group and other bits of one file or directory (keeping its owner's bits)."""
    mode = stat.S_IMODE(path.lstat().st_mode)
    if mode & PRIVATE_UMASK:
        path.chmod(mode & ~PRIVATE_UMASK)


def private_dir(path: Path) -> Path:
    """`path` as a directory (created when missing), mode 0700."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(PRIVATE_DIR)
    return path


def secure_tree(root: Path) -> None:
    """Make `root` and everything under it private (symbolic links are left alone)."""
    if not root.exists():
        return
    make_private(root)
    for directory, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            path = Path(directory) / name
            if not path.is_symlink():
                make_private(path)
