"""The six expansions on the blocks of real transformers (docs/spec.md section 4.2).

Every expansion on every preset preserves the function (verify) and passes the bit-level
audit of its manifest under the architecture's constraint sets; each tempting wrong recipe
of the spec, built here by hand from a correct expansion, is caught by verify; every case
with no exact recipe is refused by the expansion and by a plan before any step runs.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import fpt_ref
from fpt_ref.audit import audit_step
from fpt_ref.blocks import PRESETS, RECIPES, Arch, constraint_sets
from fpt_ref.expansions._common import ROLES
from fpt_ref.model import named_tensors
from fpt_ref.plan import PlanError, parse_plan, run_plan

SIX = "mlp p=24; add_heads count=2; heads v=6; attention k=6; hidden h=12; add_layer at=1"


def make(arch, kv_heads=None, **kw):
    sizes = dict(h=8, p=16, n_heads=4, k=4, v=4, n_layers=2, vocab=20, max_seq=6, eps=1e-5, causal=True, seed=3)
    sizes.update(kw)
    return fpt_ref.init_model(arch=arch, kv_heads=kv_heads, **sizes)


PRESET_MODELS = {
    "paper": lambda: make("paper"),
    "llama": lambda: make("llama", kv_heads=2),
    "qwen2": lambda: make("qwen2", kv_heads=2),
    "gpt2": lambda: make("gpt2"),
    "mqa": lambda: make(PRESETS["llama"].replace(rope_layout="interleaved"), kv_heads=1),
    "layernorm_untied": lambda: make(PRESETS["gpt2"].replace(tied=False, final_norm=False, act="gelu")),
    "rms_tied_nopos": lambda: make(Arch(positions="none", tied=True, final_norm=True, act="silu", mlp_bias=False)),
}

STEPS = {
    "mlp": lambda m: fpt_ref.expand_mlp(m, 24, return_manifest=True),
    "add_heads": lambda m: fpt_ref.add_heads(m, 2, return_manifest=True),
    "add_groups": lambda m: fpt_ref.add_heads(m, 4, groups=True, return_manifest=True),
    "heads": lambda m: fpt_ref.expand_heads(m, 6, return_manifest=True),
    "attention": lambda m: fpt_ref.expand_attention(m, 6, return_manifest=True),
    "attention_mirror": lambda m: fpt_ref.expand_attention(m, 8, scale="W_Q", return_manifest=True),
    "hidden": lambda m: fpt_ref.expand_hidden(m, 12, return_manifest=True),
    "add_layer": lambda m: fpt_ref.add_layer(m, 1, return_manifest=True),
}
OP = {"add_groups": "add_heads", "attention_mirror": "attention"}


GROUPED = ("llama", "qwen2", "mqa")  # whole new groups apply to grouped layers only


@pytest.mark.parametrize(
    "preset,step", [(p, s) for p in PRESET_MODELS for s in STEPS if s != "add_groups" or p in GROUPED]
)
def test_every_expansion_preserves_every_architecture(preset, step):
    model = PRESET_MODELS[preset]()
    big, manifest = STEPS[step](model)
    res = fpt_ref.verify(model, big)
    assert res["ok"], res
    # a few ulps of the output scale in float64 (the bound is derived: docs/tolerance.md)
    assert res["max_ulp"] <= 32, res
    rep = audit_step(model, big, manifest, op=OP.get(step, step))
    assert rep.ok, rep.findings[:3]
    assert {b.role for b in manifest} <= set(ROLES)
    assert big.arch.replace(rope_theta=model.arch.rope_theta) == model.arch
    # grouped layers keep one key/value per group
    for L in big.layers:
        for e, hd in enumerate(L.heads):
            assert hd.w_k is L.heads[L.leader(e)].w_k and hd.w_v is L.heads[L.leader(e)].w_v
    again = fpt_ref.load(_saved(big))
    assert all(np.array_equal(a, b) for a, b in zip(named_tensors(big).values(), named_tensors(again).values()))
    assert again.arch == big.arch


def _saved(model):
    import tempfile

    path = tempfile.mktemp(suffix=".safetensors")
    fpt_ref.save(model, path)
    return path


@pytest.mark.parametrize("preset", ["paper", "llama", "qwen2", "gpt2"])
def test_six_step_plan_on_each_preset(preset):
    model = PRESET_MODELS[preset]()
    results = run_plan(model, parse_plan(SIX), seed=1)
    assert all(r.error is not None and r.error["ok"] for r in results), [r.row() for r in results]
    assert fpt_ref.verify(model, results[-1].model)["ok"]


# ---- the recipes' details ------------------------------------------------------------------


def test_rope_key_growth_keeps_pairs_and_rescales_theta():
    for layout in ("half", "interleaved"):
        m = make(PRESETS["llama"].replace(rope_layout=layout), kv_heads=2)
        big, manifest = fpt_ref.expand_attention(m, 8, return_manifest=True)
        assert big.arch.rope_theta == m.arch.rope_theta**2
        wk, wk0 = big.layers[0].heads[0].w_k, m.layers[0].heads[0].w_k
        f = np.sqrt(2.0)
        if layout == "half":  # old dims [0, 2) -> [0, 2), [2, 4) -> [4, 6); zero gaps [2, 4) and [6, 8)
            assert np.array_equal(wk[:, [0, 1, 4, 5]], wk0 * f)
            assert not np.any(wk[:, [2, 3, 6, 7]])
        else:  # pairs appended
            assert np.array_equal(wk[:, :4], wk0 * f) and not np.any(wk[:, 4:])


def test_gated_mlp_three_zero_sets():
    m = make("llama", kv_heads=2)
    for zero, blocks in (("M_l2", {"M_l2"}), ("M_l1", {"M_l1"}), ("M_gate", {"M_gate"})):
        big, manifest = fpt_ref.expand_mlp(m, 20, zero=zero, return_manifest=True)
        assert {b.block for b in manifest if b.role == "zero"} == blocks  # llama has no MLP biases
        assert fpt_ref.verify(m, big)["ok"]
        assert audit_step(m, big, manifest, op="mlp").ok
    with pytest.raises(ValueError, match="^zero: 'M_gate' needs a gated MLP"):
        fpt_ref.expand_mlp(make("paper"), 20, zero="M_gate")


def test_layernorm_hidden_growth_mean_pads_every_writer():
    m = make("gpt2")
    big, manifest = fpt_ref.expand_hidden(m, 12, return_manifest=True)
    means = {b.block for b in manifest if b.role == "mean"}
    assert means == {"M_I", "M_P", "M_O", "M_l2", "m_b_l2", "m_b_O"}
    assert {b.block for b in manifest if b.role == "zero"} == {"m_beta"}
    assert np.allclose(big.embed[:, 8:], m.embed.mean(axis=1, keepdims=True), rtol=0, atol=1e-15)
    assert big.w_out is None and np.shares_memory(big.output_matrix, big.embed)


def test_grouped_head_addition_places_new_heads_in_their_groups():
    m = make("llama", kv_heads=2)
    big = fpt_ref.add_heads(m, 2)
    L, L0 = big.layers[0], m.layers[0]
    assert (L.E, L.G) == (6, 2)
    for g in range(2):
        assert L.heads[3 * g].w_k is L.heads[3 * g + 2].w_k  # the new head reads its group's keys
        assert np.array_equal(L.heads[3 * g].w_q, L0.heads[2 * g].w_q)
        assert not np.any(L.heads[3 * g + 2].w_o)
    grown = fpt_ref.add_heads(m, 4, groups=True).layers[0]
    assert (grown.E, grown.G) == (8, 4)


# ---- wrong recipes: verify must catch each -----------------------------------------------


def _ok(a, b):
    return fpt_ref.verify(a, b)["ok"]


def test_layernorm_zero_padding_is_caught():
    m = make("gpt2")
    big, manifest = fpt_ref.expand_hidden(m, 12, return_manifest=True)
    assert _ok(m, big)
    t = named_tensors(big)
    broken = {k: v.copy() for k, v in t.items()}
    for blk in manifest:
        if blk.role == "mean":
            sl = tuple(slice(a, b) for a, b in blk.index)
            broken[blk.tensor][sl] = 0.0
    zp = fpt_ref.from_tensors(broken, big.norm_eps, big.causal, arch=big.arch, max_seq=big.max_seq)
    assert not _ok(m, zp)
    assert not audit_step(m, zp, manifest, op="hidden").ok


def test_rope_wrong_recipes_are_caught():
    m = make("llama", kv_heads=2)
    big = fpt_ref.expand_attention(m, 8)
    assert _ok(m, big)
    assert not _ok(m, big.replace(arch=m.arch))  # theta kept
    # columns appended at the end (pairs broken), theta kept
    layers = []
    for L in m.layers:
        heads = []
        for e, hd in enumerate(L.heads):
            pad = np.zeros((m.h, 4))
            wq = np.concatenate([hd.w_q, np.ones((m.h, 4))], axis=1)
            wk = L.heads[L.leader(e)].w_k
            heads.append(hd.__class__(wq, np.concatenate([wk * np.sqrt(2.0), pad], axis=1), hd.w_v, hd.w_o))
        for e in range(len(heads)):  # share the group's keys
            lead = heads[L.leader(e)]
            heads[e] = heads[e].__class__(heads[e].w_q, lead.w_k, lead.w_v, heads[e].w_o)
        layers.append(dataclasses.replace(L, heads=tuple(heads)))
    appended = m.replace(layers=tuple(layers))
    assert not _ok(m, appended)


def test_grouped_head_appended_at_the_end_is_caught():
    m = make("llama", kv_heads=2)
    L = m.layers[0]
    # one new head per group, but appended at the end: every later head is re-grouped
    new = [L.heads[0].__class__(L.heads[0].w_q, L.heads[2].w_k, L.heads[2].w_v, np.zeros_like(L.heads[0].w_o))] * 2
    heads = list(L.heads) + new
    groups = [heads[3 * (e // 3)] for e in range(6)]
    heads = [h.__class__(h.w_q, g.w_k, g.w_v, h.w_o) for h, g in zip(heads, groups)]
    bad = m.replace(layers=(dataclasses.replace(L, heads=tuple(heads)),) + m.layers[1:])
    assert not _ok(m, bad)
    assert _ok(m, fpt_ref.add_heads(m, 2, layers=0))


def test_unscaled_key_bias_and_free_output_bias_are_caught():
    m = make("qwen2", kv_heads=2)
    big, manifest = fpt_ref.expand_attention(m, 8, return_manifest=True)
    t = {k: v.copy() for k, v in named_tensors(big).items()}
    for name in t:
        if name.endswith(".b_k"):
            t[name][[0, 1, 4, 5]] /= np.sqrt(2.0)  # the old entries, unscaled
    bad = fpt_ref.from_tensors(t, big.norm_eps, big.causal, arch=big.arch, max_seq=big.max_seq)
    assert not _ok(m, bad)
    assert not audit_step(m, bad, manifest, op="attention").ok
    g = make("gpt2")
    new, manifest = fpt_ref.add_layer(g, 1, return_manifest=True)
    t = {k: v.copy() for k, v in named_tensors(new).items()}
    # not a constant: LayerNorm (every reader of the gpt2 stream) ignores a constant added to all entries
    t["layers.1.b_o"][:] = np.linspace(-0.5, 0.5, g.h)
    bad = fpt_ref.from_tensors(t, new.norm_eps, new.causal, arch=new.arch)
    assert not _ok(g, bad)
    assert not audit_step(g, bad, manifest, op="add_layer").ok


def test_gated_mlp_with_no_zero_set_is_caught():
    m = make("llama", kv_heads=2)
    big, manifest = fpt_ref.expand_mlp(m, 20, return_manifest=True)
    t = {k: v.copy() for k, v in named_tensors(big).items()}
    for name in t:
        if name.endswith(".w_l2"):
            t[name][16:] = 0.25
    bad = fpt_ref.from_tensors(t, big.norm_eps, big.causal, arch=big.arch, max_seq=big.max_seq)
    assert not _ok(m, bad)
    assert not audit_step(m, bad, manifest, op="mlp").ok


# ---- refusals: the expansion and the plan, before any step runs ---------------------------

REFUSED = [
    ("llama", "attention k=6 layers=0", "heads: RoPE's base theta", "RoPE's base theta is shared"),
    ("llama", "add_heads count=1", "count: layer 0 is grouped", "count must be a multiple of 2"),
    ("llama", "heads v=6 heads=0", "heads: heads 0..1 of layer 0 share", "whole groups"),
    ("gpt2_no_final", "hidden h=12", "h: no exact hidden growth for LayerNorm", "no exact hidden growth"),
    ("paper", "mlp p=20 zero=M_gate", "zero: 'M_gate' needs a gated MLP", "needs a gated MLP"),
]
CALLS = {
    "attention": lambda m, a: fpt_ref.expand_attention(m, int(a["k"]), layers=a.get("layers")),
    "add_heads": lambda m, a: fpt_ref.add_heads(m, int(a["count"])),
    "heads": lambda m, a: fpt_ref.expand_heads(m, int(a["v"]), heads=a.get("heads")),
    "hidden": lambda m, a: fpt_ref.expand_hidden(m, int(a["h"])),
    "mlp": lambda m, a: fpt_ref.expand_mlp(m, int(a["p"]), zero=a["zero"]),
}


@pytest.mark.parametrize("preset,step,lib_msg,plan_msg", REFUSED)
def test_no_exact_recipe_is_refused_before_any_work(preset, step, lib_msg, plan_msg):
    if preset == "gpt2_no_final":
        m = make(PRESETS["gpt2"].replace(final_norm=False))
    else:
        m = PRESET_MODELS[preset]()
    (parsed,) = parse_plan(step)
    with pytest.raises(ValueError, match="^" + lib_msg.replace("(", r"\(").replace(".", r"\.")):
        CALLS[parsed.op](m, parsed.args)
    calls = []
    with pytest.raises(PlanError, match=plan_msg):  # refused in step 2, before step 1 runs
        run_plan(
            m, parse_plan("mlp p=17; " + step), init=lambda shape, like, rng: calls.append(shape) or np.zeros(shape)
        )
    assert calls == []


def test_every_recipe_row_names_an_expansion_and_a_proof():
    from fpt_ref.paper import NAMES

    for row in RECIPES:
        assert row.expansion in NAMES and row.proof.startswith(row.expansion + "/")
    for op in NAMES:  # every architecture has at least one constraint set per expansion
        for arch in PRESETS.values():
            assert constraint_sets(op, arch)
