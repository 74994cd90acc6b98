"""The forward pass on every block of docs/spec.md section 4.1, against the naive reference.

``fpt_ref.forward`` is compared in float64 with ``tests/naive.py`` (loops, :mod:`math` per
element, RoPE pair by pair, grouped-query attention read literally) for every preset and for
each single-block variant of the paper's model, causal and not, batched and unbatched, token
ids and real inputs, and on random architectures (hypothesis). Beside that: ``trace`` is the
forward pass bit for bit, ``fpt-ref/2`` files round-trip, ``fpt-ref/1`` files of the paper's
model are byte-identical to those written before the block vocabulary existed, bad models
are refused naming the tensor and the ``Arch`` field, and deliberately broken forward passes
(a bias ignored, the other RoPE layout, the wrong group mapping, no final norm, ...) fail
the comparison.

**Tolerance** (:func:`tol_ulps`). Both computations evaluate the same expression in float64
with different summation orders and elementwise formulas (SiLU through ``tanh`` or ``exp``,
``erf`` from SciPy or :mod:`math`, RoPE angles through ``numpy.power`` or ``**``). As in
docs/tolerance.md, each is within ``L u S`` of the exact output, ``u = 2^-53``, ``S`` the
natural output scale (:func:`naive.naive_scale`: the largest sum of absolute values of the
terms of one output entry, every norm's ``1 / rms`` applied) and ``L`` the length of the
longest path of roundings: :func:`fpt_ref.tolerance.reduction_length` (the paper's
reductions) plus, per layer, ``C_LAYER`` elementwise roundings and ``EXTRA_LAYER`` more for
the blocks of section 4.1, LayerNorm's second mean (``2h`` per layer) and the final norm's
reductions and roundings. Their difference is within ``2 L + C_SCALINGS`` ulps of ``S``,
``ulp(S) <= 2 u S``: about ``1.2e-13 S`` for the models here. Measured on the grid of
:func:`test_forward_matches_naive`: at most 2 ulps of ``S`` (gated MLP; 0.6 elsewhere), at
most 5 ulps of ``max |output|``. The broken forward passes of :data:`MUTANTS` move the
output by ``7e-3 S`` to ``0.4 S``, except the two GELU forms: ``1.8e-5 S``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib
import json
import math

import numpy as np
import pytest
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from naive import naive_forward, naive_scale
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

import fpt_ref
from fpt_ref import Head, Layer, Model
from fpt_ref.blocks import PRESETS, Arch
from fpt_ref.model import named_tensors
from fpt_ref.tolerance import C_LAYER, C_SCALINGS, reduction_length, ulp

F = importlib.import_module("fpt_ref.forward")  # the module (the package's ``forward`` attribute is the function)

#: elementwise roundings per layer beyond the paper's C_LAYER: RoPE (the angle, its cos and sin, two products
#: and a sum, 6), the q/k/v and output biases (2), the gate product (1), the activation's formula (3)
EXTRA_LAYER = 12
#: roundings of the final norm beyond its reductions: x^2, + eps, sqrt, divide, gain, bias (6)
C_FINAL = 6


def tol_ulps(m: Model, s: int) -> int:
    """``2 L + C_SCALINGS``: the bound on ``|forward - naive|`` in ulps of the natural output scale."""
    layer_norm = m.arch.norm == "layer"
    L = reduction_length(m, s) + m.N * (C_LAYER + EXTRA_LAYER)
    if layer_norm:
        L += 2 * m.h * m.N  # the variance's mean after the centring mean, in both norms of every layer
    if m.final_norm is not None:
        L += (2 if layer_norm else 1) * m.h + C_FINAL
    return 2 * L + C_SCALINGS


def check_against_naive(m: Model, x) -> dict:
    """Assert ``|forward(m, x) - naive(m, x)| <= tol_ulps ulp(S)``; returns the measured figures."""
    ref, out = naive_forward(m, x), fpt_ref.forward(m, x)
    assert out.shape == ref.shape and out.dtype == ref.dtype == np.float64
    S = naive_scale(m, x)
    err = float(np.max(np.abs(out - ref))) if ref.size else 0.0
    bound = tol_ulps(m, x.shape[-1] if m.embed is not None else x.shape[-2]) * ulp(S, np.float64)
    assert err <= bound, f"|forward - naive| = {err:.3g} > {bound:.3g} (S = {S:.3g})"
    top = float(np.max(np.abs(ref)))
    return {"abs": err, "ulp_S": err / ulp(S, np.float64), "ulp_max": err / ulp(top, np.float64), "rel": err / top}


# ---- the models ----------------------------------------------------------------------------

DIMS = dict(h=12, p=10, n_heads=4, k=4, v=3, n_layers=2, out_dim=5, max_seq=6, eps=1e-5)

#: name -> (Arch, kv_heads, dimension overrides): the paper's model, each block changed alone, the presets
VARIANTS = {
    "paper": (Arch(), None, {}),
    "layernorm": (Arch(norm="layer"), None, {}),
    "glu": (Arch(mlp="gated"), None, {}),
    "gelu": (Arch(act="gelu"), None, {}),
    "gelu_tanh": (Arch(act="gelu_tanh"), None, {}),
    "silu": (Arch(act="silu"), None, {}),
    "no_mlp_bias": (Arch(mlp_bias=False), None, {}),
    "rope": (Arch(positions="rope"), None, {}),
    "rope_interleaved": (Arch(positions="rope", rope_layout="interleaved"), None, {}),
    "rope_theta": (Arch(positions="rope", rope_theta=7.5), None, {}),
    "no_positions": (Arch(positions="none"), None, {}),
    "qkv_bias": (Arch(qkv_bias=True), None, {}),
    "o_bias": (Arch(o_bias=True), None, {}),
    "final_norm": (Arch(final_norm=True), None, {}),
    "tied": (Arch(tied=True), None, {}),
    "mqa": (Arch(), 1, {}),
    "gqa": (Arch(), 2, {}),
    "gqa_per_layer": (Arch(), [1, 2], dict(n_heads=[3, 4], k=[4, 2], v=[3, 5])),
    "llama": (PRESETS["llama"], None, {}),
    "llama_gqa": (PRESETS["llama"], 2, {}),
    "qwen2": (PRESETS["qwen2"], None, {}),
    "qwen2_mqa": (PRESETS["qwen2"], 1, {}),
    "gpt2": (PRESETS["gpt2"], None, {}),
}


def build(name: str, vocab=20, causal=False, seed=0) -> Model:
    arch, kv, over = VARIANTS[name]
    return fpt_ref.init_model(**{**DIMS, **over}, vocab=vocab, causal=causal, seed=seed, arch=arch, kv_heads=kv)


def inputs(m: Model, batch=3, seq=6, seed=1):
    rng = np.random.default_rng(seed)
    if m.embed is not None:
        return rng.integers(0, m.vocab, size=(batch, seq))
    return rng.normal(size=(batch, seq, m.h))


def test_variants_cover_every_field_and_preset():
    changed = {
        f.name
        for a, _, _ in VARIANTS.values()
        for f in dataclasses.fields(Arch)
        if getattr(a, f.name) != getattr(Arch(), f.name)
    }
    assert changed == {f.name for f in dataclasses.fields(Arch)}
    assert {a for a, _, _ in VARIANTS.values()} >= set(PRESETS.values())
    for name, (arch, _, _) in VARIANTS.items():  # the single-block variants change one block of the paper's model
        if name not in PRESETS and not name.startswith(tuple(PRESETS)) and arch != Arch():
            assert len(arch.names()) == 1 + (arch.rope_layout == "interleaved"), name


# ---- forward against the naive reference ---------------------------------------------------


def _cases(names, kinds):
    """``(name, kind)`` pairs; a tied output needs an embedding table, so a tied model takes token ids only."""
    return [(n, k) for n in names for k in kinds if not (k == "real" and VARIANTS[n][0].tied)]


@pytest.mark.parametrize("name,kind", _cases(VARIANTS, ["tokens", "real"]))
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_forward_matches_naive(name, causal, kind):
    m = build(name, vocab=20 if kind == "tokens" else None, causal=causal)
    x = inputs(m)
    check_against_naive(m, x)  # batched [3, 6]
    check_against_naive(m, x[1])  # unbatched [6]
    assert fpt_ref.forward(m, x[1]).shape == (6, m.o)


@pytest.mark.parametrize("name", ["llama", "qwen2", "gpt2", "llama_gqa"])
def test_presets_at_a_longer_sequence_and_wider_model(name):
    arch, kv, _ = VARIANTS[name]
    m = fpt_ref.init_model(
        h=32,
        p=48,
        n_heads=4,
        k=8,
        v=8,
        n_layers=2,
        vocab=50,
        max_seq=24,
        eps=1e-6,
        causal=True,
        seed=5,
        arch=arch,
        kv_heads=kv,
    )
    check_against_naive(m, inputs(m, batch=2, seq=24, seed=6))


@st.composite
def arch_models(draw):
    """A random architecture, dimensions, grouping and input."""
    positions = draw(st.sampled_from(["learned", "rope", "none"]), label="positions")
    norm = draw(st.sampled_from(["rms", "layer"]), label="norm")
    arch = Arch(
        norm=norm,
        mlp=draw(st.sampled_from(["plain", "gated"])),
        act=draw(st.sampled_from(["relu", "gelu", "gelu_tanh", "silu"])),
        mlp_bias=draw(st.booleans()),
        positions=positions,
        rope_theta=draw(st.sampled_from([10000.0, 10.0, 1e6])),
        rope_layout=draw(st.sampled_from(["half", "interleaved"])),
        qkv_bias=draw(st.booleans()),
        o_bias=draw(st.booleans()),
        final_norm=draw(st.booleans()),
        tied=draw(st.booleans()),
    )
    N = draw(st.integers(0, 2), label="N")
    E = [draw(st.integers(1, 4)) for _ in range(N)]
    G = [draw(st.sampled_from([d for d in range(1, e + 1) if e % d == 0])) for e in E]
    k = [draw(st.integers(1, 3)) * (2 if positions == "rope" else 1) for _ in range(N)]
    vocab = draw(st.integers(1, 7)) if arch.tied else draw(st.one_of(st.none(), st.integers(1, 7)))
    s_max = draw(st.integers(1, 5))
    m = fpt_ref.init_model(
        h=draw(st.integers(1, 6)),
        p=[draw(st.integers(1, 5)) for _ in range(N)],
        n_heads=E,
        k=k,
        v=[draw(st.integers(1, 4)) for _ in range(N)],
        n_layers=N,
        out_dim=draw(st.integers(1, 4)),
        max_seq=s_max,
        vocab=vocab,
        # LayerNorm with eps = 0 divides 0 by 0 on a constant row (h = 1 always); the paper's eps = 0 stays for RMSNorm
        eps=draw(st.sampled_from([1e-6, 0.25] if norm == "layer" else [0.0, 1e-6, 0.25])),
        causal=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32 - 1)),
        arch=arch,
        kv_heads=G,
    )
    batch, seq = draw(st.integers(1, 3)), draw(st.integers(1, s_max))
    return m, inputs(m, batch, seq, seed=draw(st.integers(0, 2**16)))


@settings(max_examples=examples(200))
@given(arch_models())
def test_random_architectures_match_naive(case):
    m, x = case
    check_against_naive(m, x)
    assert np.array_equal(fpt_ref.trace(m, x).output, fpt_ref.forward(m, x))


# ---- the naive reference itself: hand-computed cases ---------------------------------------


def test_naive_rope_rotates_each_pair_by_m_times_its_frequency():
    """One head with W_Q = W_K = I (h = k = 4): the logits are the rotated inputs' inner products."""
    from naive import _rope

    Y = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]])
    half, inter = _rope(Y, 100.0, "half"), _rope(Y, 100.0, "interleaved")
    assert np.array_equal(half[0], Y[0]) and np.array_equal(inter[0], Y[0])  # position 0: angle 0
    # position 1, k = 4: pair 0 angle 1, pair 1 angle 100^(-1/2) = 0.1
    c0, s0, c1, s1 = math.cos(1.0), math.sin(1.0), math.cos(0.1), math.sin(0.1)
    assert np.allclose(
        half[1], [1 * c0 - 3 * s0, 2 * c1 - 4 * s1, 3 * c0 + 1 * s0, 4 * c1 + 2 * s1], rtol=0, atol=1e-15
    )
    assert np.allclose(
        inter[1], [1 * c0 - 2 * s0, 2 * c0 + 1 * s0, 3 * c1 - 4 * s1, 4 * c1 + 3 * s1], rtol=0, atol=1e-15
    )


def test_naive_scalar_activations_are_the_spec_formulas():
    from naive import SCALAR_ACTIVATIONS as A

    assert A["relu"](-2.0) == 0.0 and A["relu"](3.0) == 3.0
    assert A["gelu"](1.0) == pytest.approx(0.8413447460685429, rel=1e-15)  # Phi(1)
    assert A["gelu_tanh"](1.0) == pytest.approx(0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * 1.044715)), rel=1e-15)
    assert A["silu"](2.0) == pytest.approx(2 / (1 + math.exp(-2.0)), rel=1e-15)
    assert A["silu"](-800.0) == -0.0 and all(A[k](0.0) == 0.0 for k in A)


def test_naive_layernorm_is_centred_and_unit_variance():
    from naive import _norm

    X = np.array([[1.0, 2.0, 3.0, 6.0]])  # mean 3, variance (4 + 1 + 0 + 9) / 4 = 3.5
    out = _norm(X, np.ones(4), np.zeros(4), 0.0, "layer")
    assert np.allclose(out, (X - 3.0) / math.sqrt(3.5), rtol=1e-15, atol=0)
    assert np.allclose(_norm(X, np.full(4, 2.0), np.full(4, 0.5), 0.5, "layer"), 2 * (X - 3) / 2.0 + 0.5, rtol=1e-15)


# ---- trace is the forward pass ---------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in VARIANTS if n != "paper"])
def test_trace_output_is_forward_bit_for_bit(name):
    for causal, vocab in ((True, 20), (False, None)):
        if vocab is None and VARIANTS[name][0].tied:
            continue
        m = build(name, vocab=vocab, causal=causal, seed=2)
        x = inputs(m, seed=3)
        tr = fpt_ref.trace(m, x)
        assert np.array_equal(tr.output, fpt_ref.forward(m, x))
        assert np.array_equal(fpt_ref.trace(m, x[0]).output, fpt_ref.forward(m, x[0]))
        if m.pos is None:  # no learned positions: X_1 = I
            assert np.array_equal(tr.streams[0], tr.inputs)


# ---- files -----------------------------------------------------------------------------------


def _paper_model() -> Model:
    """The paper's model with exact binary values (no random draw): h=4, o=3, s_max=5, vocab=6, one layer
    of p=3 with heads (k, v) = (2, 3) and (1, 2), eps 1e-5, causal."""
    count = [0]

    def t(*shape):
        n = int(np.prod(shape))
        start = count[0]
        count[0] += n
        return ((np.arange(start, start + n) * 5 % 17) - 8).reshape(shape) / 16.0

    heads = (Head(t(4, 2), t(4, 2), t(4, 3), t(3, 4)), Head(t(4, 1), t(4, 1), t(4, 2), t(2, 4)))
    layer = Layer(
        norm_mha=1 + t(4) / 4, heads=heads, norm_mlp=1 + t(4) / 4, w_l1=t(4, 3), b_l1=t(3), w_l2=t(3, 4), b_l2=t(4)
    )
    return Model(embed=t(6, 4), pos=t(5, 4), w_out=t(4, 3), layers=(layer,), norm_eps=1e-5, causal=True)


#: sha256 of the files fpt_ref.save wrote for these paper models at commit 5c00e98, the last commit before the
#: block vocabulary (docs/spec.md section 4) existed: fpt-ref/1 files must stay byte-identical
PAPER_FILES = {
    "explicit": "56af01e21d676715bfc268d189c9aa41365044f63d812c0fe173d5b082fd6d29",
    "init": "718fa357ac73f66bf2421208311927bd1ef0ee609596a0deb57283f74f93f488",
}


def test_paper_model_files_are_byte_identical_to_fpt_ref_1(tmp_path):
    models = {
        "explicit": _paper_model(),
        "init": fpt_ref.init_model(
            h=6,
            p=[5, 7],
            n_heads=[2, 3],
            k=[3, 2],
            v=[2, 4],
            n_layers=2,
            out_dim=3,
            max_seq=5,
            vocab=11,
            eps=1e-6,
            causal=True,
            seed=4,
        ),
    }
    for name, m in models.items():
        path = tmp_path / f"{name}.safetensors"
        fpt_ref.save(m, path)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == PAPER_FILES[name], name
        with safe_open(str(path), framework="numpy") as f:
            assert f.metadata()["format"] == "fpt-ref/1" and "arch" not in f.metadata()
    # the preset name "paper" and kv_heads equal to the head count are the paper's model: the same bytes
    again = fpt_ref.init_model(
        h=6,
        p=[5, 7],
        n_heads=[2, 3],
        k=[3, 2],
        v=[2, 4],
        n_layers=2,
        out_dim=3,
        max_seq=5,
        vocab=11,
        eps=1e-6,
        causal=True,
        seed=4,
        arch="paper",
    )
    fpt_ref.save(again, tmp_path / "again.safetensors")
    assert (tmp_path / "again.safetensors").read_bytes() == (tmp_path / "init.safetensors").read_bytes()
    m = _paper_model()
    full = m.replace(layers=(dataclasses.replace(m.layers[0], kv_heads=2),))
    assert full.layers[0].kv_heads is None
    fpt_ref.save(full, tmp_path / "full.safetensors")
    assert (tmp_path / "full.safetensors").read_bytes() == (tmp_path / "explicit.safetensors").read_bytes()


@pytest.mark.parametrize(
    "name,kind",
    _cases(["llama", "qwen2_mqa", "gpt2", "gqa_per_layer", "no_positions", "rope_theta", "tied"], ["tokens", "real"]),
)
def test_fpt_ref_2_round_trip(tmp_path, name, kind):
    vocab = 20 if kind == "tokens" else None
    m = build(name, vocab=vocab, causal=True, seed=4)
    path = tmp_path / "m.safetensors"
    fpt_ref.save(m, path)
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata()
    assert meta["format"] == "fpt-ref/2"
    assert Arch.from_dict(json.loads(meta["arch"])) == m.arch
    assert ("max_seq" in meta) == (m.pos is None) and meta.get("max_seq", str(m.s_max)) == str(m.s_max)
    back = fpt_ref.load(path)
    assert back.arch == m.arch and back.s_max == m.s_max and back.norm_eps == m.norm_eps and back.causal
    a, b = named_tensors(m), named_tensors(back)
    assert list(a) == list(b) and all(a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes() for k in a)
    for L0, L1 in zip(m.layers, back.layers):
        assert L1.kv_heads == L0.kv_heads
        for e, hd in enumerate(L1.heads):  # a group's keys and values are stored once and shared again
            assert hd.w_k is L1.heads[L1.leader(e)].w_k and hd.w_v is L1.heads[L1.leader(e)].w_v
    x = inputs(m, seed=5)
    assert np.array_equal(fpt_ref.forward(back, x), fpt_ref.forward(m, x))
    fpt_ref.save(back, tmp_path / "again.safetensors")
    assert (tmp_path / "again.safetensors").read_bytes() == path.read_bytes()


def test_grouped_keys_and_values_are_stored_once(tmp_path):
    m = build("gqa_per_layer", seed=6)  # layer 0: 3 heads, 1 group; layer 1: 4 heads, 2 groups
    fpt_ref.save(m, tmp_path / "m.safetensors")
    names = set(load_file(str(tmp_path / "m.safetensors")))
    assert {n for n in names if n.endswith(".w_k")} == {
        "layers.0.heads.0.w_k",
        "layers.1.heads.0.w_k",
        "layers.1.heads.2.w_k",
    }
    assert {f"layers.1.heads.{e}.w_q" for e in range(4)} <= names


# ---- validation --------------------------------------------------------------------------------


def _set(m: Model, kind: str, value, layer=0, head=0) -> Model:
    """``m`` with one tensor set to ``value`` (None drops it), validated again by ``Model.replace``."""
    if kind in ("embed", "pos", "w_out", "final_norm", "final_norm_b"):
        return m.replace(**{kind: value})
    L = m.layers[layer]
    if kind in ("w_q", "w_k", "w_v", "w_o", "b_q", "b_k", "b_v"):
        heads = list(L.heads)
        heads[head] = dataclasses.replace(heads[head], **{kind: value})
        L = dataclasses.replace(L, heads=tuple(heads))
    else:
        L = dataclasses.replace(L, **{kind: value})
    return m.replace(layers=m.layers[:layer] + (L,) + m.layers[layer + 1 :])


#: (variant, tensor kind, message): the tensor the architecture wants is missing
MISSING = [
    ("layernorm", "norm_mha_b", r"^layers\.0\.norm_mha_b: missing, but the architecture says norm='layer'"),
    ("layernorm", "norm_mlp_b", r"^layers\.0\.norm_mlp_b: missing, but the architecture says norm='layer'"),
    ("o_bias", "b_o", r"^layers\.0\.b_o: missing, but the architecture says o_bias=True"),
    ("glu", "w_gate", r"^layers\.0\.w_gate: missing, but the architecture says mlp='gated'"),
    ("glu", "b_gate", r"^layers\.0\.b_gate: missing, but the architecture says mlp='gated', mlp_bias=True"),
    ("paper", "b_l1", r"^layers\.0\.b_l1: missing, but the architecture says mlp_bias=True"),
    ("paper", "b_l2", r"^layers\.0\.b_l2: missing, but the architecture says mlp_bias=True"),
    ("qkv_bias", "b_q", r"^layers\.0\.heads\.0\.b_q: missing, but the architecture says qkv_bias=True"),
    ("qkv_bias", "b_v", r"^layers\.0\.heads\.0\.b_v: missing, but the architecture says qkv_bias=True"),
    ("final_norm", "final_norm", r"^final_norm: missing, but the architecture says final_norm=True"),
    ("gpt2", "final_norm_b", r"^final_norm_b: missing, but the architecture says .*norm='layer'"),
    ("paper", "pos", r"^pos: missing, but the architecture says positions='learned'"),
    ("paper", "w_out", r"^w_out: missing, but the architecture says tied=False"),
    ("tied", "embed", r"^embed: missing, but the architecture says tied=True"),
]


@pytest.mark.parametrize("name,kind,msg", MISSING)
def test_missing_optional_tensor_names_it_and_the_arch_field(name, kind, msg):
    m = build(name)
    with pytest.raises(ValueError, match=msg):
        _set(m, kind, None)


#: (variant, tensor kind, message): a tensor the architecture has no place for
EXTRA = [
    ("paper", "b_o", r"^layers\.0\.b_o: present, but the architecture says o_bias=False"),
    ("paper", "w_gate", r"^layers\.0\.w_gate: present, but the architecture says mlp='plain'"),
    ("no_mlp_bias", "b_l1", r"^layers\.0\.b_l1: present, but the architecture says mlp_bias=False"),
    ("paper", "b_q", r"^layers\.0\.heads\.0\.b_q: present, but the architecture says qkv_bias=False"),
    ("paper", "final_norm", r"^final_norm: present, but the architecture says final_norm=False"),
    ("rope", "pos", r"^pos: present, but the architecture says positions='rope'"),
    ("no_positions", "pos", r"^pos: present, but the architecture says positions='none'"),
    ("tied", "w_out", r"^w_out: present, but the architecture says tied=True"),
    ("paper", "norm_mha_b", r"^layers\.0\.norm_mha_b: present, but the architecture says norm='rms'"),
]


@pytest.mark.parametrize("name,kind,msg", EXTRA)
def test_extra_optional_tensor_names_it_and_the_arch_field(name, kind, msg):
    m = build(name)
    value = {
        "w_gate": np.full(m.layers[0].w_l1.shape, 0.5),
        "b_l1": np.full(m.layers[0].p, 0.5),
        "b_q": np.full(m.layers[0].heads[0].k, 0.5),
        "pos": np.full((m.s_max, m.h), 0.5),
        "w_out": np.full((m.h, m.o), 0.5),
    }.get(kind, np.full(m.h, 0.5))
    with pytest.raises(ValueError, match=msg):
        _set(m, kind, value)


def test_files_with_missing_or_extra_optional_tensors_are_format_errors(tmp_path):
    m = build("qwen2", causal=True)
    path = tmp_path / "m.safetensors"
    fpt_ref.save(m, path)
    meta = safe_open(str(path), framework="numpy").metadata()
    tensors = load_file(str(path))
    cut = {k: v for k, v in tensors.items() if k != "layers.1.heads.2.b_k"}
    save_file(cut, str(tmp_path / "cut.safetensors"), metadata=meta)
    with pytest.raises(
        fpt_ref.FormatError, match=r"layers\.1\.heads\.2\.b_k: missing, but the architecture says qkv_bias=True"
    ):
        fpt_ref.load(tmp_path / "cut.safetensors")
    extra = dict(tensors, **{"layers.0.b_o": np.zeros(m.h)})
    save_file(extra, str(tmp_path / "extra.safetensors"), metadata=meta)
    with pytest.raises(fpt_ref.FormatError, match=r"layers\.0\.b_o: present, but the architecture says o_bias=False"):
        fpt_ref.load(tmp_path / "extra.safetensors")
    # the same tensors under the paper's format: the paper's MLP biases are missing (and the others have no place)
    save_file(tensors, str(tmp_path / "v1.safetensors"), metadata={**meta, "format": "fpt-ref/1"})
    with pytest.raises(fpt_ref.FormatError, match=r"v1\.safetensors: missing tensor 'layers\.0\.b_l1'"):
        fpt_ref.load(tmp_path / "v1.safetensors")


def test_kv_heads_must_divide_the_heads():
    m = build("paper")
    with pytest.raises(ValueError, match=r"^layers\.0\.kv_heads: 3 key/value heads do not divide the layer's 4 heads"):
        _set(m, "kv_heads", 3)
    with pytest.raises(ValueError, match=r"^kv_heads: 3 key/value heads do not divide the 4 heads of layer 0"):
        fpt_ref.init_model(**DIMS, kv_heads=3)


def test_rope_needs_an_even_key_size():
    m = fpt_ref.init_model(**{**DIMS, "k": 3})
    with pytest.raises(ValueError, match=r"^layers\.0\.heads\.0\.w_q: key size 3 must be even for RoPE"):
        m.replace(arch=Arch(positions="rope"), pos=None, max_seq=6)
    with pytest.raises(ValueError, match=r"^k: RoPE rotates pairs of dimensions, so the key size must be even, got 3"):
        fpt_ref.init_model(**{**DIMS, "k": 3}, arch="llama")


@pytest.mark.parametrize("kind", ["w_k", "w_v", "b_k", "b_v"])
def test_grouped_heads_must_share_keys_and_values(kind):
    m = build("qwen2_mqa")  # 4 heads reading one key/value head
    other = getattr(m.layers[1].heads[2], kind).copy()
    assert _set(m, kind, other, layer=1, head=2).layers[1].kv_heads == 1  # an equal copy is accepted
    other.flat[0] += 2.0**-40
    with pytest.raises(ValueError, match=rf"^layers\.1\.heads\.2\.{kind}: head 2 reads the keys and values of head 0"):
        _set(m, kind, other, layer=1, head=2)


# ---- mutations: a broken forward pass fails the comparison -------------------------------------


def _forward_fails(m: Model, x) -> None:
    with pytest.raises(AssertionError, match=r"\|forward - naive\|"):
        check_against_naive(m, x)


def _without_arch_flag(model, **changes):
    """A copy of ``model`` whose ``arch`` has ``changes``, not validated (what a forward pass ignoring a block sees)."""
    fake = copy.copy(model)
    object.__setattr__(fake, "arch", model.arch.replace(**changes))
    return fake


MUTANTS = {
    # name: (variant, patch(monkeypatch)); each keeps the model and breaks one block of the forward pass
    "qkv_bias ignored": (
        "qwen2",
        lambda mp: mp.setattr(
            F,
            "mha",
            _wrap(
                F.mha,
                lambda mo, L: (
                    mo,
                    dataclasses.replace(
                        L, heads=tuple(dataclasses.replace(H, b_q=None, b_k=None, b_v=None) for H in L.heads)
                    ),
                ),
            ),
        ),
    ),
    "o_bias ignored": (
        "gpt2",
        lambda mp: mp.setattr(F, "mha", _wrap(F.mha, lambda mo, L: (mo, dataclasses.replace(L, b_o=None)))),
    ),
    "mlp biases ignored": (
        "gpt2",
        lambda mp: mp.setattr(F, "mlp", _wrap(F.mlp, lambda mo, L: (mo, dataclasses.replace(L, b_l1=None, b_l2=None)))),
    ),
    "gate bias ignored": (
        "glu",
        lambda mp: mp.setattr(F, "mlp", _wrap(F.mlp, lambda mo, L: (mo, dataclasses.replace(L, b_gate=None)))),
    ),
    "gate and up swapped": (
        "glu",
        lambda mp: mp.setattr(
            F,
            "mlp",
            _wrap(
                F.mlp,
                lambda mo, L: (mo, dataclasses.replace(L, w_gate=L.w_l1, w_l1=L.w_gate, b_gate=L.b_l1, b_l1=L.b_gate)),
            ),
        ),
    ),
    "rope layout half for interleaved": ("rope_interleaved", lambda mp: mp.setattr(F, "rope", _other_layout(F.rope))),
    "rope layout interleaved for half": ("llama", lambda mp: mp.setattr(F, "rope", _other_layout(F.rope))),
    "rope not applied": ("rope", lambda mp: mp.setattr(F, "rope", lambda x, cos, sin, layout: x)),
    "rope theta ignored": (
        "rope_theta",
        lambda mp: mp.setattr(F, "rope_tables", lambda theta, *a: _ROPE_TABLES(10000.0, *a)),
    ),
    "final norm skipped": ("final_norm", lambda mp: mp.setattr(F, "output", lambda model, X: X @ model.output_matrix)),
    "final norm skipped (gpt2)": ("gpt2", lambda mp: mp.setattr(F, "output", lambda model, X: X @ model.output_matrix)),
    "layernorm not centred": (
        "layernorm",
        lambda mp: mp.setattr(F, "layer_norm", lambda x, g, b, eps: F.rms_norm(x, g, eps) + b),
    ),
    "layernorm bias ignored": ("gpt2", lambda mp: mp.setattr(F, "layer_norm", _wrap_ln)),
    "gelu as tanh approximation": ("gelu", lambda mp: mp.setitem(F.ACTIVATIONS, "gelu", F.gelu_tanh)),
    "gelu_tanh as erf": ("gelu_tanh", lambda mp: mp.setitem(F.ACTIVATIONS, "gelu_tanh", F.gelu)),
    "silu as relu": ("silu", lambda mp: mp.setitem(F.ACTIVATIONS, "silu", F.relu)),
    "every query head reads group 0": (
        "gqa",
        lambda mp: (
            mp.setattr(F, "head_groups", _interleaved_groups(F.head_groups)),
            mp.setattr(F, "fused", _uncached(F.fused)),
        ),
    ),
}


def _uncached(fused):
    """``fused`` rebuilt on every call and never kept on the layer (a patched head order must
    neither read nor leave a cached concatenation)."""

    def fresh(layer):
        saved = layer.__dict__.pop("_fused", None)
        try:
            return fused(layer)
        finally:
            layer.__dict__.pop("_fused", None)
            if saved is not None:
                layer.__dict__["_fused"] = saved

    return fresh


_ROPE_TABLES = F.rope_tables


def _wrap(fn, change):
    def wrapped(model, layer, x, *args, **kwargs):
        model, layer = change(model, layer)
        return fn(model, layer, x, *args, **kwargs)

    return wrapped


def _other_layout(fn):
    return lambda x, cos, sin, layout: fn(x, cos, sin, "interleaved" if layout == "half" else "half")


_LAYER_NORM = F.layer_norm


def _wrap_ln(x, g, beta, eps):
    return _LAYER_NORM(x, g, 0 * beta, eps)


def _interleaved_groups(fn):
    """``head_groups`` with each batch's heads in the order 0, r, 2r, ..., 1, r + 1, ...: the query heads of a group
    are no longer consecutive, so the forward pass broadcasts them against the wrong key/value heads."""

    def wrong(layer):
        r = layer.group_size
        return [(kv, sorted(idx, key=lambda e: (e % r, e))) for kv, idx in fn(layer)]

    return wrong


@pytest.mark.parametrize("mutant", list(MUTANTS))
def test_a_broken_block_fails_the_comparison(monkeypatch, mutant):
    name, patch = MUTANTS[mutant]
    m = build(name, causal=True, seed=7)
    x = inputs(m, seed=8)
    check_against_naive(m, x)  # the comparison passes on the intact forward pass
    patch(monkeypatch)
    _forward_fails(m, x)


@pytest.mark.parametrize("name", ["gqa", "llama_gqa", "gqa_per_layer"])
def test_the_group_mapping_is_checked(name):
    """A forward pass reading key/value head ``j mod G`` for query head ``j`` (``repeat`` for ``repeat_interleave``)
    computes the naive reference with that mapping: the comparison tells it from the spec's ``floor(j / (E / G))``."""
    m = build(name, causal=True, seed=9)
    x = inputs(m, seed=10)
    out, S = fpt_ref.forward(m, x), naive_scale(m, x)
    bound = tol_ulps(m, 6) * ulp(S, np.float64)
    assert np.max(np.abs(naive_forward(m, x, group=lambda j, E, G: j % G) - out)) > 1e3 * bound


def test_half_and_interleaved_give_different_functions():
    """The same parameters under the two layouts (k = 4: two pairs per head) differ far beyond the tolerance,
    and each matches the naive reference under its own layout only."""
    m = build("llama", causal=True, seed=11)
    x = inputs(m, seed=12)
    inter = m.replace(arch=m.arch.replace(rope_layout="interleaved"))
    a, b = fpt_ref.forward(m, x), fpt_ref.forward(inter, x)
    bound = tol_ulps(m, 6) * ulp(naive_scale(m, x), np.float64)
    assert np.max(np.abs(a - b)) > 1e3 * bound
    assert np.max(np.abs(naive_forward(m, x, rope_layout="interleaved") - b)) <= bound
    # k = 2: one pair per head, where the two layouts coincide
    m2 = fpt_ref.init_model(**{**DIMS, "k": 2}, vocab=20, arch="llama", seed=11)
    i2 = m2.replace(arch=m2.arch.replace(rope_layout="interleaved"))
    assert np.array_equal(fpt_ref.forward(m2, x), fpt_ref.forward(i2, x))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_rope_is_the_spec_expression_bit_for_bit(dtype, layout):
    """``rope`` is the spec's expression ``(a cos - b sin, b cos + a sin)`` on each pair, bit for
    bit, on a strided view (as the fused Q/K/V columns are) and with the shared tables."""
    rng = np.random.default_rng(3)
    x = np.swapaxes(rng.normal(size=(2, 5, 3, 8)).astype(dtype), 1, 2)  # [b, G, s, k]  a strided view
    cos, sin = F.rope_tables(10000.0, 8, 5, np, np.dtype(dtype))
    a, b = (x[..., :4], x[..., 4:]) if layout == "half" else (x[..., 0::2], x[..., 1::2])
    first, second = a * cos - b * sin, b * cos + a * sin
    if layout == "half":
        expected = np.concatenate([first, second], axis=-1)
    else:
        expected = np.stack([first, second], axis=-1).reshape(x.shape)
    got = F.rope(x, cos, sin, layout)
    assert got.dtype == x.dtype and np.array_equal(got.view(f"u{got.itemsize}"), expected.view(f"u{got.itemsize}"))


def test_rope_tables_are_kept_read_only_and_equal_fresh_ones():
    """The tables are computed once per (theta, k, s, array library, dtype) and shared: read-only,
    with the values of the float64 angles computed afresh."""
    c1, s1 = F.rope_tables(500000.0, 16, 7, np, np.dtype("float32"))
    c2, s2 = F.rope_tables(500000.0, 16, 7, np, np.dtype("float32"))
    assert c1 is c2 and s1 is s2 and not c1.flags.writeable and not s1.flags.writeable
    ang = np.arange(7.0)[:, None] * 500000.0 ** (-2.0 * np.arange(8.0) / 16)
    assert np.array_equal(c1, np.cos(ang).astype(np.float32)) and np.array_equal(s1, np.sin(ang).astype(np.float32))
    with pytest.raises(ValueError):
        c1[0, 0] = 2.0
