"""The reindex package's shape: the web-safe part loads no numpy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("numpy", "usearch", "ctranslate2", "whoosh", "tokenizers")
WEB_SAFE = (
    "index.reindex",
    "index.reindex.admin",
    "index.reindex.alias",
    "index.reindex.audit",
    "index.reindex.jobs",
    "index.reindex.ledger",
    "index.reindex.locks",
    "index.reindex.verify",
)


def run_python(code: str, *, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_web_safe_modules_import_no_numpy_usearch_or_ctranslate2(tmp_path: Path) -> None:
    code = (
        "import importlib, json, sys\n"
        f"for name in {WEB_SAFE!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    assert json.loads(run_python(code, cwd=REPO)) == []
