"""The forward pass: the function of docs/spec.md section 1, its options and its input checks."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import build_hetero_model
from naive import naive_forward

import fpt_ref
from fpt_ref import add_heads
from fpt_ref.forward import head_groups, rms_norm
from fpt_ref.tolerance import magnitude_streams, magnitudes, preservation_scale, reduction_length, tolerance_abs


def test_matches_naive_on_heterogeneous_model():
    m = build_hetero_model()
    x = np.random.default_rng(0).integers(0, 50, size=(3, 5))
    ref, out = naive_forward(m, x), fpt_ref.forward(m, x)
    assert out.shape == (3, 5, 3) and out.dtype == np.float64
    assert np.max(np.abs(ref - out)) <= tolerance_abs(m, m, 5, np.max(np.abs(ref)))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_matches_naive_at_sizes_where_blas_blocks(dtype):
    """Sizes large enough for blocked BLAS kernels and several head groups."""
    m = fpt_ref.init_model(
        h=96,
        p=[256, 320],
        n_heads=[6, 4],
        k=[16, 24],
        v=[16, 8],
        n_layers=2,
        out_dim=7,
        max_seq=40,
        vocab=300,
        eps=1e-5,
        causal=True,
        dtype=dtype,
        seed=3,
    )
    m = add_heads(m, 2, layers=[1], k=12, v=20)
    x = np.random.default_rng(9).integers(0, 300, size=(3, 40))
    ref = naive_forward(fpt_ref.convert(m, dtype="float64"), x)  # the same parameters, evaluated in float64
    out = fpt_ref.forward(m, x)
    assert out.dtype == np.dtype(dtype)
    S = preservation_scale(m, fpt_ref.trace(m, x))  # max M_{N+1} @ |W_out|
    assert np.max(np.abs(ref - out)) <= tolerance_abs(m, m, 40, S)


def test_rms_norm_is_the_papers_formula():
    x = np.array([[[3.0, 4.0]]])
    g = np.array([2.0, 0.5])
    # mean of squares = 12.5, so Norm(x) = x * g / sqrt(12.5 + eps)
    assert np.allclose(rms_norm(x, g, 0.0), [[[6 / np.sqrt(12.5), 2 / np.sqrt(12.5)]]], rtol=1e-15)
    assert np.allclose(rms_norm(x, g, 0.5), [[[6 / np.sqrt(13.0), 2 / np.sqrt(13.0)]]], rtol=1e-15)


def test_unbatched_equals_batched():
    m = build_hetero_model()
    x = np.random.default_rng(1).integers(0, 50, size=(2, 4))
    out = fpt_ref.forward(m, x)
    assert np.array_equal(fpt_ref.forward(m, x[1]), out[1])
    mr = build_hetero_model(vocab=None)
    xr = np.random.default_rng(1).normal(size=(2, 4, 6))
    assert np.allclose(fpt_ref.forward(mr, xr[0]), fpt_ref.forward(mr, xr)[0], rtol=0, atol=1e-14)


def test_causal_output_does_not_see_the_future():
    m = build_hetero_model(causal=True)
    x = np.random.default_rng(2).integers(0, 50, size=(1, 5))
    y = x.copy()
    y[0, 3:] = (y[0, 3:] + 1) % 50
    a, b = fpt_ref.forward(m, x), fpt_ref.forward(m, y)
    assert np.array_equal(a[0, :3], b[0, :3]) and not np.allclose(a[0, 3:], b[0, 3:])
    nc = m.replace(causal=False)
    assert not np.allclose(fpt_ref.forward(nc, x)[0, :3], fpt_ref.forward(nc, y)[0, :3])


def test_eps_changes_the_function():
    m = build_hetero_model(eps=0.0)
    x = np.random.default_rng(3).integers(0, 50, size=(1, 5))
    assert not np.allclose(fpt_ref.forward(m, x), fpt_ref.forward(m.replace(norm_eps=0.5), x))


def test_float32_keeps_dtype_and_is_close_to_float64():
    m64 = build_hetero_model()
    m32 = build_hetero_model(dtype="float32")
    x = np.random.default_rng(4).integers(0, 50, size=(2, 5))
    o32, o64 = fpt_ref.forward(m32, x), fpt_ref.forward(m64, x)
    assert o32.dtype == np.float32
    # the same parameters rounded to float32: agreement to float32 precision times the reduction length
    L = reduction_length(m64, 5)
    assert np.max(np.abs(o32 - o64)) <= 2 * L * np.finfo(np.float32).eps * np.max(np.abs(o64))


def test_real_valued_inputs_keep_model_dtype():
    m = build_hetero_model(vocab=None, dtype="float32")
    out = fpt_ref.forward(m, np.ones((2, 3, 6), dtype=np.float64))
    assert out.dtype == np.float32 and out.shape == (2, 3, 3)


def test_inputs_not_mutated():
    m = build_hetero_model(vocab=None)
    x = np.random.default_rng(5).normal(size=(2, 3, 6))
    x.flags.writeable = False
    fpt_ref.forward(m, x)
    fpt_ref.residual_streams(m, x)


def test_residual_streams():
    m = build_hetero_model()
    x = np.random.default_rng(6).integers(0, 50, size=(2, 5))
    rs = fpt_ref.residual_streams(m, x)
    assert len(rs) == m.N + 1 and all(r.shape == (2, 5, 6) for r in rs)
    assert np.array_equal(rs[0], m.embed[x] + m.pos[:5])
    assert np.array_equal(rs[-1] @ m.w_out, fpt_ref.forward(m, x))


@pytest.mark.parametrize(
    "vocab,x,msg",
    [
        (50, np.zeros((2, 3)), "integer token ids"),
        (50, np.array([[0, 50]]), r"\[0, 50\)"),
        (50, np.array([[-1, 0]]), r"\[0, 50\)"),
        (50, np.zeros((1, 6), dtype=int), "s_max=5"),
        (50, np.zeros((1, 2, 3), dtype=int), r"\[s\] or \[b, s\]"),
        (None, np.zeros((2, 3), dtype=int), "real-valued"),
        (None, np.zeros((2, 3, 4)), r"\[2, 3, 4\]"),
    ],
)
def test_bad_inputs(vocab, x, msg):
    m = build_hetero_model(vocab=vocab)
    with pytest.raises(ValueError, match=msg) as exc:
        fpt_ref.forward(m, x)
    assert str(exc.value).startswith("x:")


def test_model_validation_names_tensor_and_shapes():
    m = build_hetero_model()
    bad_layer = m.layers[0].__class__(**{**m.layers[0].__dict__, "w_l2": np.zeros((4, 6))})
    with pytest.raises(ValueError, match=r"layers\.0\.w_l2: shape \[4, 6\] does not match expected \[5, 6\]"):
        m.replace(layers=(bad_layer,) + m.layers[1:])
    with pytest.raises(TypeError, match="w_out: dtype float32"):
        m.replace(w_out=m.w_out.astype(np.float32))
    with pytest.raises(ValueError, match="norm_eps"):
        m.replace(norm_eps=-1.0)


def test_convert_dtype():
    m = build_hetero_model()
    m32 = fpt_ref.convert(m, dtype="float32")
    assert m32.dtype == np.float32 and np.array_equal(m32.w_out, m.w_out.astype(np.float32))
    back = fpt_ref.convert(m32, dtype="float64")
    assert np.array_equal(back.w_out, m32.w_out.astype(np.float64))


def test_magnitude_streams_bound_the_residual_streams():
    m = build_hetero_model()
    x = np.random.default_rng(7).integers(0, 50, size=(2, 5))
    Ms, Xs = magnitude_streams(m, x), fpt_ref.residual_streams(m, x)
    assert len(Ms) == len(Xs)
    for M, X in zip(Ms, Xs):
        assert M.shape == X.shape and np.all(M >= np.abs(X) * (1 - 1e-12))
    assert all(np.all(b >= a) for a, b in zip(Ms, Ms[1:]))  # magnitudes only grow
    # the agreement policy's magnitudes take the branch results as computed: between |X| and the nested ones
    tr = fpt_ref.trace(m, x)
    Us = magnitudes(m, tr, nested=False)
    assert all(np.all(U <= M * (1 + 1e-12)) and np.all(U >= np.abs(X) * (1 - 1e-12)) for U, M, X in zip(Us, Ms, Xs))
    assert all(np.array_equal(a, b) for a, b in zip(magnitudes(m, tr, nested=True), Ms))
    # U computed here one head at a time, from the trace's streams
    U = np.abs(tr.inputs) + np.abs(m.pos[:5])
    for L, t in zip(m.layers, tr.layers):
        for hd in L.heads:
            xn = t.attn_in
            z = (xn @ hd.w_q) @ np.swapaxes(xn @ hd.w_k, -1, -2) / np.sqrt(hd.k)  # [b, s, s]
            z = np.where(np.tril(np.ones((5, 5), dtype=bool)), z, -np.inf)  # causal
            w = np.exp(z - z.max(-1, keepdims=True))
            U = U + np.abs((w / w.sum(-1, keepdims=True)) @ (xn @ hd.w_v)) @ np.abs(hd.w_o)
        U = U + np.abs(np.maximum(t.mlp_in @ L.w_l1 + L.b_l1, 0)) @ np.abs(L.w_l2) + np.abs(L.b_l2)
    assert np.allclose(U, Us[-1], rtol=1e-13, atol=0)


@pytest.mark.parametrize("eps", [float("nan"), float("inf"), True, -1e-3, "0.1"])
def test_bad_norm_eps_rejected(eps):
    with pytest.raises(ValueError, match="norm_eps: must be a finite float >= 0"):
        build_hetero_model().replace(norm_eps=eps)


def test_numpy_float_eps_accepted_and_stored_as_float():
    m = build_hetero_model().replace(norm_eps=np.float32(1e-6))
    assert type(m.norm_eps) is float and m.norm_eps == float(np.float32(1e-6))


def test_verify_never_calls_an_overflowing_model_preserved():
    m = build_hetero_model(dtype="float32")
    huge = m.replace(w_out=m.w_out * np.float32(3e37))  # outputs overflow to inf in float32
    with np.errstate(over="ignore", invalid="ignore"):  # the overflow is the point
        st = fpt_ref.verify(huge, fpt_ref.expand_mlp(huge, 9))
    assert not st["ok"]


@pytest.mark.parametrize("vocab", [50, None])
def test_trace_is_the_forward_pass(vocab):
    m = build_hetero_model(vocab=vocab, eps=1e-3, causal=True)
    rng = np.random.default_rng(8)
    x = rng.integers(0, 50, size=(2, 5)) if vocab else rng.normal(size=(2, 5, 6))
    tr = fpt_ref.trace(m, x)
    assert np.array_equal(tr.output, fpt_ref.forward(m, x))  # bit for bit
    assert len(tr.streams) == m.N + 1 and len(tr.layers) == m.N
    assert all(np.array_equal(a, b) for a, b in zip(tr.streams, fpt_ref.residual_streams(m, x)))
    assert np.array_equal(tr.inputs, m.embed[x] if vocab else x)
    assert np.array_equal(tr.streams[0], tr.inputs + m.pos[:5])
    for n, (layer, t) in enumerate(zip(m.layers, tr.layers)):
        X = tr.streams[n]
        assert np.array_equal(t.attn_in, rms_norm(X, layer.norm_mha, m.norm_eps))
        assert t.heads.shape == (2, 5, sum(hd.v for hd in layer.heads)) and t.w_o.shape == (t.heads.shape[-1], 6)
        assert np.array_equal(t.mid, t.heads @ t.w_o + X)
        assert np.array_equal(t.mlp_in, rms_norm(t.mid, layer.norm_mlp, m.norm_eps))
        assert np.array_equal(t.act, np.maximum(t.mlp_in @ layer.w_l1 + layer.b_l1, 0))
        assert np.array_equal(tr.streams[n + 1], t.act @ layer.w_l2 + layer.b_l2 + t.mid)
    # each head's output, computed here one head at a time, is a block of columns of `heads` (head_groups order)
    t, layer = tr.layers[0], m.layers[0]
    order = [e for _, idx in head_groups(layer) for e in idx]
    blocks = np.split(t.heads, np.cumsum([layer.heads[e].v for e in order])[:-1], axis=-1)
    for e, got in zip(order, blocks):
        hd, xn = layer.heads[e], t.attn_in
        z = (xn @ hd.w_q) @ np.swapaxes(xn @ hd.w_k, -1, -2) / np.sqrt(hd.k)  # [b, s, s]
        z = np.where(np.tril(np.ones((5, 5), dtype=bool)), z, -np.inf)  # causal
        w = np.exp(z - z.max(-1, keepdims=True))  # [b, s, s]
        assert np.allclose(got, (w / w.sum(-1, keepdims=True)) @ (xn @ hd.w_v), rtol=1e-12, atol=1e-14)
    assert np.array_equal(np.concatenate([layer.heads[e].w_o for e in order]), t.w_o)


def test_trace_unbatched_and_inputs_not_mutated():
    m = build_hetero_model(vocab=None)
    x = np.random.default_rng(9).normal(size=(2, 4, 6))
    x.flags.writeable = False
    tr, tr0 = fpt_ref.trace(m, x), fpt_ref.trace(m, x[1])
    assert np.allclose(tr0.output, tr.output[1], rtol=0, atol=1e-14)
    assert tr0.inputs.shape == (4, 6) and all(X.shape == (4, 6) for X in tr0.streams)
    for t0, t in zip(tr0.layers, tr.layers):
        assert t0.heads.shape == t.heads.shape[1:] and t0.act.shape == t.act.shape[1:]
        assert np.array_equal(t0.w_o, t.w_o)


def test_trace_with_another_activation_matches_naive():
    m = build_hetero_model(eps=1e-3)
    x = np.random.default_rng(10).integers(0, 50, size=(2, 5))
    relu = fpt_ref.trace(m, x, activation=lambda a: np.maximum(a, 0))
    assert np.array_equal(relu.output, fpt_ref.forward(m, x))
    tr = fpt_ref.trace(m, x, activation=np.tanh)
    assert all(np.array_equal(t.act, np.tanh(t.mlp_in @ L.w_l1 + L.b_l1)) for t, L in zip(tr.layers, m.layers))
    ref = naive_forward(m, x, activation=np.tanh)
    assert not np.allclose(ref, relu.output)
    assert np.max(np.abs(ref - tr.output)) <= tolerance_abs(m, m, 5, np.max(np.abs(ref)))


def test_fused_attention_weights_are_built_once_per_layer():
    """The concatenated Q/K/V and W_O of a layer are kept with it (fpt_ref.forward.fused): the
    same object on every call, equal to a fresh concatenation, and a replaced layer builds its own."""
    import dataclasses

    from fpt_ref.forward import fused

    m = fpt_ref.init_model(h=8, p=8, n_heads=3, k=2, v=3, n_layers=1, out_dim=4, max_seq=5)
    L = m.layers[0]
    f = fused(L)
    assert fused(L) is f
    assert np.array_equal(
        f.w_qkv, np.concatenate([H.w_q for H in L.heads] + [H.w_k for H in L.heads] + [H.w_v for H in L.heads], axis=1)
    )
    assert np.array_equal(f.w_o, np.concatenate([H.w_o for H in L.heads], axis=0))
    L2 = dataclasses.replace(L, heads=L.heads[:2])
    assert fused(L2) is not f and fused(L2).w_o.shape == (6, 8)
    assert L2 == dataclasses.replace(L2) and "_fused" not in {fl.name for fl in dataclasses.fields(L2)}
