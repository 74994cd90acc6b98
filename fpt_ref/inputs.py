"""Inputs that exercise a whole model: every token id, every position, in bounded batches.

A check that draws a few random sequences can miss a change confined to one embedding
row or one positional row: 4 random sequences of 12 tokens from a 50-token vocabulary
leave about a third of the rows unread. :func:`token_tiling` lays out every token id of
the vocabulary over sequences of the full length, so every row of ``embed`` and of ``pos``
is read; :func:`batches` cuts any input set into batches whose forward pass fits a memory
budget (:mod:`fpt_ref.memory`), so a 150,000-token vocabulary is covered in pieces.

>>> token_tiling(5, 3)
array([[0, 1, 2],
       [3, 4, 0]])
"""

from __future__ import annotations

import numpy as np

from .checks import check_float, check_int


def token_tiling(vocab: int, seq: int) -> np.ndarray:
    """Token ids ``0 .. vocab-1`` in order, row after row, ``[ceil(vocab / seq), seq]``.

    The last row continues from id 0 where the vocabulary runs out, so every row is a full
    sequence: every id occurs at least once and every position ``0 .. seq-1`` occurs in
    every row.
    """
    vocab = check_int("vocab", vocab, 1)
    seq = check_int("seq", seq, 1)
    rows = -(-vocab // seq)
    return (np.arange(rows * seq, dtype=np.int64) % vocab).reshape(rows, seq)  # [rows, seq]


def real_inputs(batch: int, seq: int, h: int, dtype, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    """Real-valued inputs ``N(0, scale^2)``, ``[batch, seq, h]`` in ``dtype``.

    ``scale`` matters for checks: an un-rescaled norm epsilon changes the output by a
    relative amount that grows as the inputs shrink (about ``eps / mean(x^2)``), so a
    small scale (e.g. 0.01) exposes it where scale 1 hides it.
    """
    scale = check_float("scale", scale, positive=True)
    rng = np.random.default_rng(check_int("seed", seed, 0))
    x = rng.normal(0.0, 1.0, size=(batch, seq, h))  # [batch, seq, h]
    return (x * float(scale)).astype(dtype)


def batches(x: np.ndarray, rows: int):
    """``x`` cut along its first axis into pieces of at most ``rows`` rows (views, in order)."""
    rows = check_int("rows", rows, 1)
    for start in range(0, int(x.shape[0]), rows):
        yield x[start : start + rows]
