"""Property test: random architectures of docs/spec.md section 4 (every Arch field drawn, grouped
layers of random kv_heads) and random compositions of the six expansions with valid arguments
preserve the function (``fpt_ref.verify``: every token id and position, derived tolerance), and
every step's manifest passes the bit-level audit under the architecture's constraint sets.
"""

from __future__ import annotations

from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st

import fpt_ref
from fpt_ref.audit import audit_step
from fpt_ref.blocks import ACTIVATIONS, NORMS, POSITIONS, ROPE_LAYOUTS, Arch


@st.composite
def archs(draw):
    return Arch(
        norm=draw(st.sampled_from(NORMS)),
        mlp=draw(st.sampled_from(("plain", "gated"))),
        act=draw(st.sampled_from(ACTIVATIONS)),
        mlp_bias=draw(st.booleans()),
        positions=draw(st.sampled_from(POSITIONS)),
        rope_theta=draw(st.sampled_from((100.0, 10000.0))),
        rope_layout=draw(st.sampled_from(ROPE_LAYOUTS)),
        qkv_bias=draw(st.booleans()),
        o_bias=draw(st.booleans()),
        final_norm=draw(st.booleans()),
        tied=draw(st.booleans()),
    )


def _step(data, model):
    """One expansion with arguments valid for ``model`` (an exact recipe exists)."""
    arch = model.arch
    ops = ["mlp", "add_heads", "heads", "attention", "add_layer"]
    if not (arch.norm == "layer" and arch.tied and not arch.final_norm):
        ops.append("hidden")
    op = data.draw(st.sampled_from(ops), label="op")
    n = data.draw(st.integers(0, model.N - 1), label="layer")
    L = model.layers[n]
    if op == "mlp":
        zeros = ["M_l2", "M_l1"] + (["M_gate"] if arch.mlp == "gated" else [])
        p = max(x.p for x in model.layers) + data.draw(st.integers(1, 3))
        return fpt_ref.expand_mlp(model, p, zero=data.draw(st.sampled_from(zeros)), return_manifest=True), op
    if op == "add_heads":
        groups = L.grouped and data.draw(st.booleans(), label="groups")
        unit = L.group_size if groups else L.G if L.grouped else 1
        return fpt_ref.add_heads(model, unit, layers=n, groups=groups, return_manifest=True), op
    if op == "heads":
        v = max(hd.v for hd in L.heads) + data.draw(st.integers(1, 3))
        return fpt_ref.expand_heads(model, v, layers=n, return_manifest=True), op
    if op == "attention":
        scale = data.draw(st.sampled_from(("W_K", "W_Q")), label="scale")
        if arch.positions == "rope":  # every head at once, from one even k
            k = model.layers[0].heads[0].k + 2 * data.draw(st.integers(1, 2))
            return fpt_ref.expand_attention(model, k, scale=scale, return_manifest=True), op
        k = max(hd.k for hd in L.heads) + data.draw(st.integers(1, 3))
        return fpt_ref.expand_attention(model, k, layers=n, scale=scale, return_manifest=True), op
    if op == "hidden":
        return fpt_ref.expand_hidden(model, model.h + data.draw(st.integers(1, 3)), return_manifest=True), op
    at = data.draw(st.integers(0, model.N), label="at")
    return fpt_ref.add_layer(model, at, return_manifest=True), op


@settings(max_examples=examples(150), deadline=None)
@given(data=st.data())
def test_random_architectures_and_compositions_preserve(data):
    arch = data.draw(archs(), label="arch")
    n_layers = data.draw(st.integers(1, 2), label="n_layers")
    E = data.draw(st.sampled_from((1, 2, 4)), label="n_heads")
    kv = [data.draw(st.sampled_from([g for g in (1, 2, 4) if E % g == 0]), label="kv_heads") for _ in range(n_layers)]
    base = fpt_ref.init_model(
        h=data.draw(st.integers(3, 6), label="h"),
        p=data.draw(st.integers(2, 5), label="p"),
        n_heads=E,
        k=2,
        v=data.draw(st.integers(1, 3), label="v"),
        n_layers=n_layers,
        vocab=data.draw(st.integers(3, 9), label="vocab"),
        max_seq=data.draw(st.integers(1, 4), label="max_seq"),
        eps=data.draw(st.sampled_from((0.0, 1e-5)), label="eps") if arch.norm == "rms" else 1e-5,
        causal=data.draw(st.booleans(), label="causal"),
        arch=arch,
        kv_heads=kv,
        seed=data.draw(st.integers(0, 99), label="seed"),
    )
    model = base
    for _ in range(data.draw(st.integers(1, 4), label="n_steps")):
        (grown, manifest), op = _step(data, model)
        rep = audit_step(model, grown, manifest, op=op)
        assert rep.ok, (op, rep.findings[:2])
        model = grown
    res = fpt_ref.verify(base, model)
    assert res["ok"], res
