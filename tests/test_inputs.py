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
    assert np.array_equal(a * 0.01, b)
    assert np.array_equal(a, np.random.default_rng(1).normal(0.0, 1.0, size=(2, 3, 4)))
    for bad in (0, -1.0, float("nan"), float("inf"), "1"):
        with pytest.raises(ValueError, match="^scale: "):
            real_inputs(1, 1, 1, "float64", scale=bad)
