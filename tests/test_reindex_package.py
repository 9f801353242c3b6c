"""The reindex package's shape: the web-safe part loads no numpy, and the gate finds its demo golden set in
an installed (non-editable) layout, not only in a checkout (tests/ is not part of a wheel)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from index.evaluate import read_qrels
from index.reindex.gate import GOLDEN_DEMO_DIR, golden_dirs, load_golden
from store.settings import Settings

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


def test_the_demo_golden_set_is_package_data(tmp_path: Path) -> None:
    settings = Settings.from_env({"DOCENT_DATA_DIR": str(tmp_path)})
    package = Path(str(resources.files("index")))
    assert package / "golden" / "demo" == GOLDEN_DEMO_DIR  # inside the package, not under tests/
    assert golden_dirs(settings) == [GOLDEN_DEMO_DIR]
    judged = {doc for docs in read_qrels(GOLDEN_DEMO_DIR / "qrels" / "test.tsv").values() for doc in docs}
    golden = load_golden(GOLDEN_DEMO_DIR, judged)
    assert golden is not None and golden.queries


def build_installed_layout(target: Path) -> Path:
    """What a wheel holds: setuptools' build_py output for this project (packages + package data)."""
    pytest.importorskip("setuptools")
    lib = target / "lib"
    target.mkdir(parents=True)
    done = subprocess.run(
        [sys.executable, "-c", "from setuptools import setup; setup()", "-q", "egg_info", "--egg-base",
         str(target), "build_py", "--build-lib", str(lib)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return lib


def test_the_gate_finds_its_golden_set_in_an_installed_layout(tmp_path: Path) -> None:
    lib = build_installed_layout(tmp_path / "build")
    code = (
        "import json, index, index.reindex.gate as gate\n"
        "from store.settings import Settings\n"
        "from index.evaluate import read_qrels\n"
        f"settings = Settings.from_env({{'DOCENT_DATA_DIR': {str(tmp_path / 'data')!r}}})\n"
        "dirs = gate.golden_dirs(settings)\n"
        "judged = {d for docs in read_qrels(dirs[0] / 'qrels' / 'test.tsv').values() for d in docs}\n"
        "golden = gate.load_golden(dirs[0], judged)\n"
        "print(json.dumps({'package': index.__file__, 'dirs': [str(d) for d in dirs],\n"
        "                  'queries': len(golden.queries) if golden else 0}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(lib)}
    found = json.loads(run_python(code, cwd=tmp_path, env=env))
    assert Path(found["package"]).is_relative_to(lib)  # the installed copy, not the checkout
    assert [Path(d) for d in found["dirs"]] == [lib / "index" / "golden" / "demo"]
    assert found["queries"] > 0


def test_an_installed_layout_holds_every_package(tmp_path: Path) -> None:
    lib = build_installed_layout(tmp_path / "build")
    ours = sorted(init.parent.relative_to(REPO) for top in ("store", "index", "actors", "server", "web")
                  for init in (REPO / top).rglob("__init__.py"))  # fmt: skip
    assert [package for package in ours if not (lib / package / "__init__.py").is_file()] == []
