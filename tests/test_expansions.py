"""Each expansion on its own: shapes, the paper's constraints checked tensor by tensor,
manifests that match the tensors, free blocks, preservation, no mutation, bad arguments.

The constraint checks here restate docs/spec.md section 2 directly; they do not use the
manifests, which are checked separately against the tensors.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from naive import naive_forward

import fpt_ref
from fpt_ref import add_heads, add_layer, expand_attention, expand_heads, expand_hidden, expand_mlp, paper
from fpt_ref.expansions._common import Builder
from fpt_ref.model import named_tensors
from fpt_ref.names import parse_name


def snapshot(model):
    return {k: np.array(v, copy=True) for k, v in named_tensors(model).items()}


def frozen(model):
    """The same model with every array read-only, so any in-place write raises."""
    for a in named_tensors(model).values():
        a.flags.writeable = False
    return model


def preserved(a, b):
    st = fpt_ref.verify(a, b, batch=3, seed=5)
    assert st["ok"], st
    return st


def test_mlp_expansion(hetero_model):
    m = frozen(hetero_model())
    before = snapshot(m)
    big = expand_mlp(m, 9, layers=[0, 1])
    for L, B in zip(m.layers, big.layers):
        p = L.p
        assert B.w_l1.shape == (6, 9) and B.b_l1.shape == (9,) and B.w_l2.shape == (9, 6)
        assert np.array_equal(B.w_l1[:, :p], L.w_l1) and np.array_equal(B.b_l1[:p], L.b_l1)
        assert np.array_equal(B.w_l2[:p], L.w_l2)
        assert np.all(B.w_l2[p:] == 0)  # M_l2 = 0
        assert np.any(B.w_l1[:, p:] != 0) and np.any(B.b_l1[p:] != 0)  # M_l1, m_b_l1 free
        assert B.heads is L.heads and B.norm_mha is L.norm_mha
    preserved(m, big)
    assert all(np.array_equal(before[k], v) for k, v in named_tensors(m).items())


def test_mlp_expansion_single_layer_only_touches_that_layer(hetero_model):
    m = hetero_model()
    big = expand_mlp(m, 8, layers=1)
    assert big.layers[0] is m.layers[0]
    assert big.layers[1].p == 8


def test_head_addition(hetero_model):
    m = frozen(hetero_model())
    big = add_heads(m, count=2, layers=[0], k=5, v=3)
    L, B = m.layers[0], big.layers[0]
    assert B.E == L.E + 2
    assert B.heads[: L.E] == L.heads
    for hd in B.heads[L.E :]:
        assert hd.w_q.shape == (6, 5) and hd.w_k.shape == (6, 5) and hd.w_v.shape == (6, 3) and hd.w_o.shape == (3, 6)
        assert np.all(hd.w_o == 0)  # M_O = 0
        assert np.any(hd.w_q != 0) and np.any(hd.w_k != 0) and np.any(hd.w_v != 0)
    assert big.layers[1] is m.layers[1]
    preserved(m, big)


def test_head_addition_default_dims_follow_last_head(hetero_model):
    m = hetero_model()
    big = add_heads(m, layers=[1])
    new, last = big.layers[1].heads[-1], m.layers[1].heads[-1]
    assert (new.k, new.v) == (last.k, last.v)


def test_heads_expansion(hetero_model):
    m = frozen(hetero_model())
    big = expand_heads(m, 5, layers=[1], heads=[0, 2])
    for e, (H, B) in enumerate(zip(m.layers[1].heads, big.layers[1].heads)):
        if e not in (0, 2):
            assert B is H
            continue
        v = H.v
        assert B.w_v.shape == (6, 5) and B.w_o.shape == (5, 6)
        assert np.array_equal(B.w_v[:, :v], H.w_v) and np.array_equal(B.w_o[:v], H.w_o)
        assert np.all(B.w_o[v:] == 0)  # M_O,e = 0
        assert np.any(B.w_v[:, v:] != 0)  # M_V,e free
        assert B.w_q is H.w_q and B.w_k is H.w_k
    preserved(m, big)


@pytest.mark.parametrize("scale", ["W_K", "W_Q"])
def test_attention_expansion(scale, hetero_model):
    m = frozen(hetero_model())
    big = expand_attention(m, 6, scale=scale)
    for L, BL in zip(m.layers, big.layers):
        for H, B in zip(L.heads, BL.heads):
            k = H.k
            f = np.float64(math.sqrt(6 / k))
            scaled, other = ("w_k", "w_q") if scale == "W_K" else ("w_q", "w_k")
            assert np.array_equal(getattr(B, scaled)[:, :k], getattr(H, scaled) * f)  # exact scaling
            assert np.all(getattr(B, scaled)[:, k:] == 0)  # M_K = 0 (or M_Q = 0, mirror)
            assert np.array_equal(getattr(B, other)[:, :k], getattr(H, other))
            assert np.any(getattr(B, other)[:, k:] != 0)  # the other new block is free
    preserved(m, big)


def test_attention_expansion_without_scaling_breaks_preservation(hetero_model):
    """The sqrt(k^/k) scaling is needed: undo it and the function changes."""
    m = hetero_model()
    big = expand_attention(m, 6, layers=[0], heads=[0])
    H, B = m.layers[0].heads[0], big.layers[0].heads[0]
    unscaled = np.concatenate([H.w_k, B.w_k[:, H.k :]], axis=1)  # undo sqrt(k^/k) on the old columns
    layer0 = replace(big.layers[0], heads=(replace(B, w_k=unscaled),) + big.layers[0].heads[1:])
    bad = big.replace(layers=(layer0,) + big.layers[1:])
    assert not fpt_ref.verify(m, bad, batch=3, seed=5)["ok"]


@pytest.mark.parametrize("vocab", [50, None])
def test_hidden_expansion(vocab, hetero_model):
    m = frozen(hetero_model(vocab=vocab))
    big = expand_hidden(m, 10)
    h = 6
    f = np.float64(math.sqrt(6 / 10))
    assert big.h == 10 and big.norm_eps == m.norm_eps * 6 / 10
    zero_cols = [("pos", m.pos, big.pos)] + ([("embed", m.embed, big.embed)] if vocab else [])
    for L, B in zip(m.layers, big.layers):
        zero_cols += [("w_l2", L.w_l2, B.w_l2), ("b_l2", L.b_l2, B.b_l2)]
        zero_cols += [("w_o", H.w_o, HB.w_o) for H, HB in zip(L.heads, B.heads)]
        for g_old, g_new in ((L.norm_mha, B.norm_mha), (L.norm_mlp, B.norm_mlp)):
            assert np.array_equal(g_new[:h], g_old * f)  # exact gain scaling
            assert np.any(g_new[h:] != 0)  # new gain entries free
        free_rows = [(L.w_l1, B.w_l1)] + [
            (getattr(H, w), getattr(HB, w)) for H, HB in zip(L.heads, B.heads) for w in ("w_q", "w_k", "w_v")
        ]
        for old, new in free_rows:
            assert new.shape == (10, old.shape[1])
            assert np.array_equal(new[:h], old) and np.any(new[h:] != 0)
        assert B.b_l1 is L.b_l1
    for name, old, new in zero_cols:
        assert new.shape == old.shape[:-1] + (10,), name
        assert np.array_equal(new[..., :h], old), name
        assert np.all(new[..., h:] == 0), name  # M_I, M_P, W_O, W_l2, b_l2 columns zero
    assert np.array_equal(big.w_out[:h], m.w_out) and np.any(big.w_out[h:] != 0)
    preserved(m, big)


def test_hidden_expansion_needs_eps_rescaled(hetero_model):
    """docs/spec.md trap 2: keeping eps fixed breaks exact preservation when eps > 0."""
    m = hetero_model(eps=1e-3)
    big = expand_hidden(m, 10)
    assert fpt_ref.verify(m, big)["ok"]
    assert not fpt_ref.verify(m, big.replace(norm_eps=m.norm_eps))["ok"]


def test_hidden_expansion_needs_zero_embedding_columns(hetero_model):
    """docs/spec.md trap 1: random new embedding columns break preservation."""
    m = hetero_model()
    big = expand_hidden(m, 10)
    rng = np.random.default_rng(0)
    bad = big.replace(embed=np.concatenate([m.embed, rng.normal(size=(m.vocab, 4))], axis=1))
    assert not fpt_ref.verify(m, bad)["ok"]


@pytest.mark.parametrize("at", [0, 1, 2])
def test_layer_addition(at, hetero_model):
    m = frozen(hetero_model())
    big = add_layer(m, at)
    assert big.N == 3
    assert big.layers[:at] == m.layers[:at] and big.layers[at + 1 :] == m.layers[at:]
    new = big.layers[at]
    ref = m.layers[at - 1 if at else 0]
    assert new.p == ref.p and [(h.k, h.v) for h in new.heads] == [(h.k, h.v) for h in ref.heads]
    assert np.all(new.w_l2 == 0) and np.all(new.b_l2 == 0)
    assert all(np.all(h.w_o == 0) for h in new.heads)
    for a in [new.norm_mha, new.norm_mlp, new.w_l1, new.b_l1] + [
        getattr(h, w) for h in new.heads for w in ("w_q", "w_k", "w_v")
    ]:
        assert np.any(a != 0)
    preserved(m, big)


def test_layer_addition_overrides_and_empty_model(hetero_model):
    m = hetero_model()
    big = add_layer(m, 1, p=3, n_heads=4, k=2, v=5)
    assert big.layers[1].p == 3 and [(h.k, h.v) for h in big.layers[1].heads] == [(2, 5)] * 4
    preserved(m, big)
    empty = fpt_ref.init_model(h=4, n_layers=0, p=[], n_heads=[], k=[], v=[], vocab=9)
    grown = add_layer(empty, 0, p=3, n_heads=2, k=2, v=2)
    assert grown.N == 1
    preserved(empty, grown)
    with pytest.raises(ValueError, match="give all four"):
        add_layer(empty, 0)


# ---- manifests ---------------------------------------------------------------------------

EXPANSIONS = [
    ("mlp", lambda m, **kw: expand_mlp(m, 9, **kw)),
    ("add_heads", lambda m, **kw: add_heads(m, 2, **kw)),
    ("heads", lambda m, **kw: expand_heads(m, 6, **kw)),
    ("attention_W_K", lambda m, **kw: expand_attention(m, 6, **kw)),
    ("attention_W_Q", lambda m, **kw: expand_attention(m, 6, scale="W_Q", **kw)),
    ("hidden", lambda m, **kw: expand_hidden(m, 9, **kw)),
    ("add_layer", lambda m, **kw: add_layer(m, 1, **kw)),
]


@pytest.mark.parametrize("name,fn", EXPANSIONS, ids=[e[0] for e in EXPANSIONS])
def test_manifest_matches_tensors(name, fn, hetero_model):
    m = hetero_model()
    big, manifest = fn(m, return_manifest=True)
    tensors = named_tensors(big)
    old = named_tensors(m)
    covered: dict = {}
    assert manifest, "an expansion must report what it changed"
    for blk in manifest:
        t = tensors[blk.tensor]
        sl = tuple(slice(a, b) for a, b in blk.index)
        part = t[sl]
        assert part.size > 0
        mask = covered.setdefault(blk.tensor, np.zeros(t.shape, dtype=int))
        mask[sl] += 1
        if blk.role == "zero":
            assert np.all(part == 0), blk
        elif blk.role == "free":
            assert np.any(part != 0), blk  # default init draws non-zero values
        elif blk.role in ("copied", "scaled"):
            # the old tensor of the same name (layer addition at 1 renames nothing it copies)
            src = old[blk.tensor][sl]
            want = src if blk.role == "copied" else src * np.float64(blk.factor)
            assert np.array_equal(part, want), blk
        else:
            pytest.fail(f"unknown role {blk.role}")
    for tname, mask in covered.items():
        assert np.all(mask == 1), f"{tname}: manifest blocks must tile the tensor exactly once"
    # and nothing changed goes unreported: every tensor that is not one of the input's arrays
    # (possibly under a new name, after a layer insertion) is in the manifest
    old_ids = {id(a) for a in old.values()}
    for tname, t in tensors.items():
        assert id(t) in old_ids or tname in covered, f"{tname} is new or changed but not in the manifest"
    roles = {b.role for b in manifest}
    assert "zero" in roles and "free" in roles


# one call of each expansion of the paper's table (fpt_ref.paper), on a model with a token table
PAPER_CALLS = {
    "mlp": lambda m, **kw: expand_mlp(m, 9, **kw),
    "add_heads": lambda m, **kw: add_heads(m, 2, **kw),
    "heads": lambda m, **kw: expand_heads(m, 6, **kw),
    "attention": lambda m, **kw: expand_attention(m, 6, **kw),
    "hidden": lambda m, **kw: expand_hidden(m, 9, **kw),
    "add_layer": lambda m, **kw: add_layer(m, 1, **kw),
}


def test_paper_calls_cover_the_papers_table():
    assert set(PAPER_CALLS) == set(paper.NAMES)


@pytest.mark.parametrize("op", paper.NAMES)
def test_manifest_names_the_papers_blocks(op, hetero_model):
    """The manifest's new blocks are exactly the paper's new blocks of that expansion, and its
    zero blocks exactly the theorem's constraint set: the expected values are the paper's table."""
    row = paper.EXPANSIONS[op]
    _, manifest = PAPER_CALLS[op](hetero_model(), return_manifest=True)
    new = [b for b in manifest if b.role in ("zero", "free")]
    assert {b.block for b in new} == set(row.blocks)
    assert {b.block for b in new if b.role == "zero"} == set(row.zero), f"{op}: zero blocks"
    assert {b.block for b in new if b.role == "free"} == set(row.blocks) - set(row.zero), f"{op}: free blocks"
    for b in new:  # each new block lies in a tensor the table places it in
        assert parse_name(b.tensor)[0] in row.tensors[b.block], b
    for b in manifest:  # an existing block is named by its tensor's paper symbol
        if b.role in ("copied", "scaled"):
            assert b.block == paper.SYMBOLS[parse_name(b.tensor)[0]], b
    # a tensor is scaled exactly when the paper's recipe scales one
    assert any(b.role == "scaled" for b in manifest) == bool(row.paper_scalings), op


def test_manifest_block_names_spelled_out(hetero_model):
    """The naming convention on examples, written by hand (not from the table)."""
    m = hetero_model()
    _, man = expand_mlp(m, 9, layers=[0], return_manifest=True)
    assert [(b.role, b.block) for b in man] == [
        ("copied", "W_l1"),
        ("free", "M_l1"),
        ("copied", "b_l1"),
        ("free", "m_b_l1"),
        ("copied", "W_l2"),
        ("zero", "M_l2"),
    ]
    for scale, zero, free, scaled, copied in (
        ("W_K", "M_K", "M_Q", "W_K,e", "W_Q,e"),
        ("W_Q", "M_Q", "M_K", "W_Q,e", "W_K,e"),
    ):
        _, man = expand_attention(m, 6, layers=[0], heads=[0], scale=scale, return_manifest=True)
        got = [(b.role, b.block) for b in man]
        assert sorted(got) == sorted([("copied", copied), ("free", free), ("scaled", scaled), ("zero", zero)])
    _, man = expand_hidden(m, 9, return_manifest=True)
    assert {b.block for b in man if b.role == "scaled"} == {"g_MHA", "g_MLP"}
    _, man = expand_hidden(hetero_model(vocab=None), 9, return_manifest=True)  # no token table: no M_I
    assert {b.block for b in man if b.role == "zero"} == {"M_P", "M_O", "M_l2", "m_b_l2"}
    _, man = add_heads(m, 1, layers=[0], return_manifest=True)
    blk = man[-1]
    assert str(blk) == "layers.0.heads.2.w_o[0:2, 0:6] zero (M_O)"
    assert blk.to_dict() == {
        "tensor": "layers.0.heads.2.w_o",
        "index": [[0, 2], [0, 6]],
        "role": "zero",
        "factor": None,
        "block": "M_O",
    }


def test_builder_refuses_a_block_the_papers_table_does_not_have(hetero_model):
    """Mutations of an expansion's naming: a block of another expansion, or a block placed in
    the wrong tensor, are programming errors the builder stops."""
    m = hetero_model()
    b = Builder(m, "mlp")
    with pytest.raises(AssertionError, match="'M_O' is not a new block of mlp"):
        b.zeros("M_O", (2, 6))
    with pytest.raises(AssertionError, match="block M_l2 does not lie in a w_l1 tensor"):
        b.concat("layers.0.w_l1", [b.copied(m.layers[0].w_l1), b.zeros("M_l2", (6, 2))], axis=1)
    with pytest.raises(ValueError, match="^name: unknown expansion 'grow'"):
        Builder(m, "grow")


@pytest.mark.parametrize("name,fn", EXPANSIONS, ids=[e[0] for e in EXPANSIONS])
def test_init_zeros_and_callable(name, fn, hetero_model):
    m = hetero_model()
    big, manifest = fn(m, init="zeros", return_manifest=True)
    for blk in manifest:
        if blk.role == "free":
            assert np.all(named_tensors(big)[blk.tensor][tuple(slice(a, b) for a, b in blk.index)] == 0)
    calls = []

    def fill(shape, like, rng):
        calls.append(shape)
        return np.full(shape, 0.5)

    big2, manifest2 = fn(m, init=fill, return_manifest=True)
    free = [b for b in manifest2 if b.role == "free"]
    assert len(calls) == len(free)
    for blk in free:
        assert np.all(named_tensors(big2)[blk.tensor][tuple(slice(a, b) for a, b in blk.index)] == 0.5)
    preserved(m, big2)


@pytest.mark.parametrize("name,fn", EXPANSIONS, ids=[e[0] for e in EXPANSIONS])
def test_seeded_and_float32(name, fn, hetero_model):
    m = hetero_model()
    a, b = fn(m, seed=3), fn(m, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(named_tensors(a).values(), named_tensors(b).values()))
    m32 = hetero_model(dtype="float32")
    big = fn(m32)
    assert all(t.dtype == np.float32 for t in named_tensors(big).values())
    assert fpt_ref.forward(big, np.zeros((2, 3), dtype=int)).dtype == np.float32
    preserved(m32, big)


def test_expanded_model_matches_naive_forward(hetero_model):
    """The composed model's output from the naive implementation equals the base's too."""
    m = hetero_model()
    big = fpt_ref.run_plan(m, "mlp p=9; add_heads; heads v=6; attention k=7; hidden h=8; add_layer at=0", check=False)[
        -1
    ].model
    x = np.random.default_rng(0).integers(0, 50, size=(2, 5))
    ref, out = naive_forward(m, x), naive_forward(big, x)
    assert np.max(np.abs(ref - out)) <= fpt_ref.tolerance_abs(m, big, 5, np.max(np.abs(ref)))


# ---- bad arguments ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call,arg",
    [
        (lambda m: expand_mlp(m, 5), "p"),  # layer 0 already has p=5: no growth
        (lambda m: expand_mlp(m, 3, layers=[0]), "p"),
        (lambda m: expand_mlp(m, 9, layers=[2]), "layers"),
        (lambda m: expand_mlp(m, 9, layers=[0, 0]), "layers"),
        (lambda m: expand_mlp(m, 9, layers=[]), "layers"),
        (lambda m: expand_mlp(m, "9"), "p"),
        (lambda m: add_heads(m, 0), "count"),
        (lambda m: add_heads(m, -1), "count"),
        (lambda m: add_heads(m, 1, k=0), "k"),
        (lambda m: expand_heads(m, 2), "v"),
        (lambda m: expand_heads(m, 9, layers=[0], heads=[5]), "heads"),
        (lambda m: expand_attention(m, 3), "k"),
        (lambda m: expand_attention(m, 9, scale="W_V"), "scale"),
        (lambda m: expand_hidden(m, 6), "h"),
        (lambda m: expand_hidden(m, 2.5), "h"),
        (lambda m: add_layer(m, 3), "at"),
        (lambda m: add_layer(m, -1), "at"),
        (lambda m: add_layer(m, 0, p=0), "p"),
        (lambda m: expand_mlp(m, 9, init="uniform"), "init"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(call, arg, hetero_model):
    m = hetero_model()
    before = snapshot(m)
    with pytest.raises(ValueError) as exc:
        call(m)
    assert str(exc.value).startswith(f"{arg}:"), str(exc.value)
    assert all(np.array_equal(before[k], v) for k, v in named_tensors(m).items())


def test_expansions_on_a_model_without_layers_raise_instead_of_doing_nothing():
    empty = fpt_ref.init_model(h=4, n_layers=0, p=[], n_heads=[], k=[], v=[])
    for call in (
        lambda: expand_mlp(empty, 5),
        lambda: add_heads(empty),
        lambda: expand_heads(empty, 9),
        lambda: expand_attention(empty, 9),
    ):
        with pytest.raises(ValueError, match=r"layers: the model has no layers \(N=0\)"):
            call()
    assert expand_hidden(empty, 6).h == 6  # hidden and add_layer need no layer


@pytest.mark.parametrize(
    "call,msg",
    [
        (lambda m: expand_mlp(m, 9, layers="0"), "layers: expected a layer index"),
        (lambda m: expand_mlp(m, 9, layers=[1.0]), "layers: layer index 1.0 is not an integer"),
        (lambda m: expand_heads(m, 9, layers=[0], heads=[0.5]), "heads: head index 0.5 is not an integer"),
        (lambda m: expand_mlp(m, 9, seed=-1), "seed: must be at least 0"),
        (lambda m: expand_mlp(m, 9, seed="a"), "seed: expected an integer"),
    ],
)
def test_argument_type_errors_name_the_argument(call, msg, hetero_model):
    with pytest.raises(ValueError, match=msg):
        call(hetero_model())


def test_numpy_integer_arguments_are_accepted(hetero_model):
    m = hetero_model()
    assert add_layer(m, np.int64(1)).N == 3
    assert expand_mlp(m, np.int32(9), layers=np.array([0, 1])).layers[1].p == 9
