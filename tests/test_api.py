"""The Python API as users call it: NumPy integers, counts vs selections, seeds, in-memory models."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import fpt_ref
from fpt_ref import add_heads, add_layer, expand_attention, expand_heads, expand_hidden, expand_mlp, init_model
from fpt_ref.model import from_tensors, to_tensors

I = np.int64  # noqa: E741


def small(**kw):
    args = dict(h=4, p=6, n_heads=2, k=2, v=2, n_layers=2, out_dim=3, max_seq=4)
    args.update(kw)
    return init_model(**args)


# ---- NumPy integers are integers ----------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda m: init_model(h=I(4), p=I(6), n_heads=I(2), k=I(2), v=I(2), n_layers=I(2), out_dim=I(3), seed=I(1)),
        lambda m: expand_mlp(m, I(8), layers=[I(0)], seed=I(2)),
        lambda m: add_heads(m, count=I(1), layers=I(1), k=I(3), v=I(3)),
        lambda m: expand_heads(m, I(4), layers=[I(0)], heads=[I(0)]),
        lambda m: expand_attention(m, I(4), heads=np.int32(1)),
        lambda m: expand_hidden(m, I(6)),
        lambda m: add_layer(m, I(1), p=I(5), n_heads=I(2), count=I(2)),
        lambda m: fpt_ref.run_plan(m, [{"op": "mlp", "p": I(8), "layers": [I(0)]}], seed=I(3), batch=I(2))[-1].model,
        lambda m: fpt_ref.run_plan(m, "hidden h=6", seed=np.uint8(1))[-1].model,
    ],
)
def test_numpy_integers_are_taken_where_ints_are(call):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        out = call(small())
    assert isinstance(out, fpt_ref.Model)


# ---- counts (n_*) and selections ----------------------------------------------------------


def test_init_model_counts_are_n_layers_and_n_heads():
    m = init_model(h=4, p=6, n_heads=3, k=2, v=2, n_layers=1)
    assert (m.N, m.layers[0].E) == (1, 3)


@pytest.mark.parametrize(
    "old,new",
    [
        (dict(heads=3), dict(n_heads=3)),
        (dict(layers=1), dict(n_layers=1)),
        (dict(heads=[1, 2], layers=2), dict(n_heads=[1, 2], n_layers=2)),
    ],
)
def test_init_model_old_names_still_work_with_a_deprecation_warning(old, new):
    with pytest.warns(DeprecationWarning, match="deprecated, use 'n_"):
        a = init_model(h=4, p=6, k=2, v=2, **old)
    b = init_model(h=4, p=6, k=2, v=2, **new)
    assert fpt_ref.dims(a) == fpt_ref.dims(b)
    assert all(np.array_equal(x, y) for x, y in zip(to_tensors(a).values(), to_tensors(b).values()))


def test_giving_both_names_is_an_error():
    with pytest.raises(ValueError, match="^n_heads: given twice"):
        init_model(heads=2, n_heads=2)


def test_add_layer_n_heads_is_a_count_and_heads_is_its_deprecated_name():
    m = small()
    a = add_layer(m, 1, n_heads=3)
    with pytest.warns(DeprecationWarning, match="'heads=' is deprecated, use 'n_heads='"):
        b = add_layer(m, 1, heads=3)
    assert a.layers[1].E == b.layers[1].E == 3


@pytest.mark.parametrize("count", [1, 2, 3])
def test_add_layer_count_inserts_identity_layers_like_single_steps(count):
    m = small()
    big, manifest = add_layer(m, 1, p=5, n_heads=1, count=count, return_manifest=True, seed=4)
    assert big.N == m.N + count
    assert [L.p for L in big.layers] == [6] + [5] * count + [6]
    assert fpt_ref.verify(m, big)["ok"]
    for n in range(1, 1 + count):  # each new layer is a valid single add_layer: its constrained blocks are zero
        L = big.layers[n]
        assert not np.any(L.w_l2) and not np.any(L.b_l2) and not any(np.any(hd.w_o) for hd in L.heads)
    zero = {b.tensor for b in manifest if b.role == "zero"}
    assert zero == {f"layers.{n}.{t}" for n in range(1, 1 + count) for t in ("w_l2", "b_l2", "heads.0.w_o")}
    # the layers that moved up are the original ones
    assert big.layers[count + 1] is m.layers[1]


def test_add_layer_count_must_be_positive():
    with pytest.raises(ValueError, match="^count: must be at least 1"):
        add_layer(small(), 0, count=0)


def test_add_layer_count_in_a_plan():
    (r,) = fpt_ref.run_plan(small(), "add_layer at=0 count=2 n_heads=1")
    assert r.model.N == 4 and r.error["ok"]


# ---- seeds ---------------------------------------------------------------------------------


def test_run_plan_seed_none_is_fresh_entropy_and_int_seeds_reproduce():
    m = small()
    a, b = (fpt_ref.run_plan(m, "mlp p=9; hidden h=6", seed=None) for _ in range(2))
    assert all(r.error["ok"] for r in a + b)
    assert not np.array_equal(a[0].model.layers[0].w_l1, b[0].model.layers[0].w_l1)
    c, d = (fpt_ref.run_plan(m, "mlp p=9; hidden h=6", seed=5) for _ in range(2))
    assert all(np.array_equal(x, y) for x, y in zip(to_tensors(c[-1].model).values(), to_tensors(d[-1].model).values()))


# ---- models in memory ----------------------------------------------------------------------


def test_from_tensors_is_the_inverse_of_to_tensors_and_load_agrees(tmp_path):
    m = small(vocab=7, eps=1e-5, causal=True)
    t = {k: np.array(v) for k, v in to_tensors(m).items()}
    back = from_tensors(t, norm_eps=1e-5, causal=True)
    path = tmp_path / "m.safetensors"
    fpt_ref.save(back, path)
    loaded = fpt_ref.load(path)
    assert fpt_ref.dims(loaded) == fpt_ref.dims(m) and loaded.causal and loaded.norm_eps == 1e-5
    assert all(np.array_equal(loaded_t, t[k]) for k, loaded_t in to_tensors(loaded).items())


def test_from_tensors_does_not_mutate_its_input():
    m = small()
    t = dict(to_tensors(m))
    keys = list(t)
    from_tensors(t)
    assert list(t) == keys


@pytest.mark.parametrize(
    "change,msg",
    [
        (lambda t: t.pop("w_out"), "^tensors: missing tensor 'w_out'"),
        (lambda t: t.pop("layers.0.heads.0.w_q"), "layers.0.heads.0.w_q"),
        (lambda t: t.__setitem__("layers.0.w_l1", np.zeros((4, 7))), r"layers.0.b_l1: shape \[6\] does not match"),
        (lambda t: t.__setitem__("layers.5.w_l1", np.zeros((4, 7))), "^tensors: layer 2 has no heads"),
    ],
)
def test_from_tensors_names_the_tensor_at_fault(change, msg):
    t = dict(to_tensors(small()))
    change(t)
    with pytest.raises(ValueError, match=msg):
        from_tensors(t)


# ---- the version -----------------------------------------------------------------------------


def test_version_has_one_source_setup_cfg():
    import configparser
    import os

    from fpt_ref._version import version

    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(os.path.dirname(__file__), os.pardir, "setup.cfg"))
    assert version() == cfg.get("metadata", "version")


def test_fpt_ref_version_prints_it(capsys):
    from fpt_ref.cli import main, version

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"fpt-ref {version()}"
