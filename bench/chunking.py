"""What the chunk size costs: bm25 / dense / hybrid per collection and chunk size, and the LOCO choice.

    .venv/bin/python -m bench.chunking                          # 128 256 384 512 tokens, 4 collections
    .venv/bin/python -m bench.chunking --sizes 256 512 DIR [DIR ...]

Each (collection, chunk size) index is built once by `docent eval`'s machinery and cached under
DOCENT_DATA_DIR/eval (a new size re-embeds the collection: minutes per collection on 2 cores). Queries run
with the shipped query-time settings (BM25 k1/b, z-score fusion and its dense weight). The default collections
leave out vaswani: 4 of its 11,429 abstracts are longer than 250 tokens, so every size from 256 up gives it
the same chunks. The choice per held-out collection uses bench/retrieval_quality.py's max-min rule over the
other collections' hybrid nDCG@10.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import msgspec

from bench.retrieval_quality import DEFAULT_DIRS, METRIC, prepare, score
from index.evalrun import TABLE_METRICS
from store.settings import Settings, get_settings

SIZES = (128, 256, 384, 512)
OVERLAP = 32
RUNS = ("bm25", "dense", "hybrid")

Table = dict[int, dict[str, dict[str, dict[str, float]]]]  # size -> collection -> run -> metric -> value


def measure(settings: Settings, directories: Sequence[Path], sizes: Sequence[int]) -> Table:
    table: Table = {}
    for size in sizes:
        sized = msgspec.structs.replace(settings, chunk_tokens=size, chunk_overlap=min(OVERLAP, size // 4))
        table[size] = {}
        for directory in directories:
            prepared = prepare(sized, directory)
            table[size][directory.name] = {run: score(prepared, run) for run in RUNS}  # type: ignore[arg-type]
            hybrid = table[size][directory.name]["hybrid"][METRIC]
            print(f"  {size} tokens, {directory.name}: hybrid {hybrid:.3f}", file=sys.stderr)
    return table


def choose_size(table: Table, names: Sequence[str]) -> int:
    best = {n: max(table[s][n]["hybrid"][METRIC] for s in table) or 1.0 for n in names}
    return max(table, key=lambda s: min(table[s][n]["hybrid"][METRIC] / best[n] for n in names))


def format_table(table: Table) -> str:
    names = list(next(iter(table.values())))
    head = "| collection | chunk tokens | run | " + " | ".join(label for _, label in TABLE_METRICS) + " |"
    lines = [head, "|" + " --- |" * (len(TABLE_METRICS) + 3)]
    for name in names:
        for size, runs in table.items():
            for run in RUNS:
                cells = " | ".join(f"{runs[name][run][m]:.3f}" for m, _ in TABLE_METRICS)
                lines.append(f"| {name} | {size} | {run} | {cells} |")
    lines += ["", "| held out | size chosen on the others | its hybrid nDCG@10 |", "| --- | --- | --- |"]
    for name in names:
        size = choose_size(table, [n for n in names if n != name])
        lines.append(f"| {name} | {size} | {table[size][name]['hybrid'][METRIC]:.3f} |")
    lines.append(f"| all (the rule on every collection) | {choose_size(table, names)} | |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    defaults = [d for d in DEFAULT_DIRS if d.name != "vaswani"]
    parser.add_argument("directories", nargs="*", type=Path, default=defaults)
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    table = measure(get_settings(), args.directories, args.sizes)
    print(format_table(table))
    if args.json:
        print(json.dumps(table, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
