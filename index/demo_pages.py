"""Render demo pydoc pages in a process of their own: `python -m index.demo_pages TARGET OUT [MODULE ...]`.

Rendering a page imports its module; the background demo ingest (actors/demo_job.py) imports hundreds of
them, so it does that here, in a child, and the ingest worker never holds them (memory, import side
effects, a module that hangs: the child is killed after RENDER_TIMEOUT_S). No module named = the whole
standard library but the core pages (`index.demo.rest_modules`). The pages go under TARGET/pydoc; OUT gets
the list of `DemoDoc`s as JSON (a file, not stdout: an imported module may print).
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import msgspec

from index.demo import DemoDoc, pydoc_pages, rest_modules

RENDER_TIMEOUT_S = 600

_decoder = msgspec.json.Decoder(list[DemoDoc])


def render(target: Path, out: Path, modules: Sequence[str]) -> list[DemoDoc]:
    """Render in a child process and read back what it wrote."""
    command = [sys.executable, "-m", "index.demo_pages", str(target), str(out), *modules]
    subprocess.run(command, check=True, timeout=RENDER_TIMEOUT_S, stdout=subprocess.DEVNULL)
    return _decoder.decode(out.read_bytes())


def main(argv: Sequence[str]) -> int:
    logging.basicConfig(level=logging.WARNING)
    target, out, *modules = argv
    docs = pydoc_pages(Path(target), modules or rest_modules())
    tmp = Path(out + ".tmp")
    tmp.write_bytes(msgspec.json.encode(docs))
    tmp.replace(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
