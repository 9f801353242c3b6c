"""Chunk keys as numpy arrays: the types both retrievers (USearch and Whoosh) and search share.

A key is an entry's 63-bit id, the same in USearch, Whoosh and the catalog. `Keys` is an array of them,
`AllowedFn` the visibility/ACL callback a retriever applies to candidate keys (a bool mask back), `Scored`
one hit (key, score). Its own module so that `index.lexical` does not import `index.vectors` for them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

Keys = npt.NDArray[np.uint64]
AllowedFn = Callable[[Keys], npt.NDArray[np.bool_]]
Scored = tuple[int, float]  # (key, score): similarity for vectors, BM25 for Whoosh


def as_keys(keys: Sequence[int] | npt.NDArray[np.integer]) -> Keys:
    return np.asarray(keys, dtype=np.uint64).reshape(-1)
