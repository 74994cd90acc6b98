"""Inputs that exercise every token id and position (fpt_ref.inputs)."""

from __future__ import annotations

import numpy as np
import pytest

from fpt_ref.inputs import batches, real_inputs, token_tiling


@pytest.mark.parametrize("vocab,seq", [(1, 1), (1, 5), (5, 3), (50, 12), (48, 12), (7, 7), (150_000, 2048)])
def test_tiling_covers_every_id_and_position(vocab, seq):
    t = token_tiling(vocab, seq)
    assert t.shape == (-(-vocab // seq), seq) and t.dtype == np.int64
    assert set(np.unique(t)) == set(range(vocab))  # every id, nothing outside the vocabulary


def test_batches_cover_everything_once():
    x = token_tiling(50, 4)  # 13 rows
    parts = list(batches(x, 5))
    assert [len(p) for p in parts] == [5, 5, 3]
    assert np.array_equal(np.concatenate(parts), x)


def test_real_inputs_scale_and_reproducibility():
    a = real_inputs(2, 3, 4, "float64", seed=1)
    b = real_inputs(2, 3, 4, "float64", seed=1, scale=0.01)
    assert a.shape == (2, 3, 4) and a.dtype == np.float64
    assert np.array_equal(a * 0.01, b)
    assert np.array_equal(real_inputs(2, 3, 4, "float64", seed=1), a)  # the seed fixes the draw
    assert not np.array_equal(real_inputs(2, 3, 4, "float64", seed=2), a)
    # the first draws of seed 1, written out (NumPy's PCG64 normal stream; the reference vectors depend on it)
    assert np.allclose(a[0, 0], [0.34558419, 0.82161814, 0.33043708, -1.30315723], rtol=0, atol=5e-9)
    a32 = real_inputs(2, 3, 4, "float32", seed=1)
    assert a32.dtype == np.float32 and np.array_equal(a32, a.astype(np.float32))  # the same draw, rounded
    # N(0, 1): 100,000 draws have mean within 5 standard errors of 0 and standard deviation within 1%
    big = real_inputs(10, 100, 100, "float64", seed=0)
    assert abs(big.mean()) < 5 / np.sqrt(big.size) and abs(big.std() - 1) < 0.01
    for bad in (0, -1.0, float("nan"), float("inf"), "1", True):
        with pytest.raises(ValueError, match="^scale: "):
            real_inputs(1, 1, 1, "float64", scale=bad)
