"""Folder sync: the first (full) sync, a no-op sync and an incremental one, in one run.

    .venv/bin/python -m bench.sync [--files 1000] [--changed 0.01] [--repeats 5] [--embed hash|minilm]

A fresh data dir and a directory of `--files` Markdown notes (~150 words each, one or two chunks). The
first `docent sync` ingests them all (full ingest); then `--repeats` rounds of: a no-op sync (nothing
changed), and an incremental sync after `--changed` of the files were edited, as many deleted and as many
added (so the file count stays put). Every sync goes through `actors.folder_sync.sync_folder` exactly as
the CLI does: scan and sha256 every file, compare with the catalog, apply through the dual writer.
Printed: seconds and files/s per kind (median and p95 of the repeats), with the embedder named; `hash`
isolates the connector's own cost from the embedding model's (MiniLM embeds ~50 chunks/s on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from actors.folder_sync import sync_folder
from store.settings import Settings

WORDS = [
    "policy",
    "travel",
    "budget",
    "leave",
    "contract",
    "invoice",
    "vendor",
    "laptop",
    "password",
    "security",
    "office",
    "meeting",
    "quarter",
    "revenue",
    "forecast",
    "hiring",
    "review",
    "audit",
    "report",
    "training",
    "safety",
    "badge",
    "parking",
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def note(rng: random.Random, n: int, edit: int = 0) -> str:
    body = " ".join(rng.choice(WORDS) for _ in range(150))
    return f"# Note {n}\n\nNote {n} (edit {edit}) says: {body}.\n"


def timed(settings: Settings, root: Path) -> tuple[float, dict[str, int]]:
    started = time.perf_counter()
    report = sync_folder(settings, root, tenant="bench", force=True)
    seconds = time.perf_counter() - started
    counts = {k: getattr(report, k) for k in ("files", "added", "changed", "deleted", "unchanged", "failed")}
    return seconds, counts | {"embedded": report.embedded}


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--changed", type=float, default=0.01, help="share edited (and deleted, and added)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--embed", default="hash", choices=["hash", "minilm"])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--model-dir", default="", help="converted models to reuse (DOCENT_MODEL_DIR)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="docent-bench-sync-"))
    root = work / "src" / "notes"
    root.mkdir(parents=True)
    env = {
        "DOCENT_DATA_DIR": str(work / "data"),
        "DOCENT_LLM_BACKEND": "none",
        "DOCENT_EMBED_MODEL": args.embed,
        "DOCENT_ALLOWED_ROOTS": str(work / "src"),
        "DOCENT_MODEL_DIR": args.model_dir,
    }
    settings = Settings.from_env(env)
    for n in range(args.files):
        (root / f"n{n:05d}.md").write_text(note(rng, n))
    full_s, full = timed(settings, root)
    rows: dict[str, list[float]] = {"no-op": [], "incremental": []}
    counts: dict[str, dict[str, int]] = {}
    next_n = args.files
    per_round = max(1, round(args.files * args.changed))
    for round_ in range(1, args.repeats + 1):
        seconds, counts["no-op"] = timed(settings, root)
        rows["no-op"].append(seconds)
        picked = rng.sample(sorted(root.glob("*.md")), 2 * per_round)
        for path in picked[:per_round]:
            path.write_text(note(rng, int(path.stem[1:]), round_))
        for path in picked[per_round:]:
            path.unlink()
        for _ in range(per_round):
            (root / f"n{next_n:05d}.md").write_text(note(rng, next_n))
            next_n += 1
        seconds, counts["incremental"] = timed(settings, root)
        rows["incremental"].append(seconds)
    churn = f"{per_round} edited + {per_round} deleted + {per_round} added"
    print(f"embedder {args.embed}; {args.files} files; {churn} per incremental round; {args.repeats} rounds")
    print(f"{'sync':<12} {'median s':>9} {'p95 s':>8} {'files/s':>9}  report")
    print(f"{'full':<12} {full_s:>9.2f} {full_s:>8.2f} {args.files / full_s:>9.0f}  {json.dumps(full)}")
    for kind, values in rows.items():
        median = statistics.median(values)
        print(
            f"{kind:<12} {median:>9.3f} {percentile(values, 0.95):>8.3f} {args.files / median:>9.0f}  "
            f"{json.dumps(counts[kind])}"
        )


if __name__ == "__main__":
    main()
