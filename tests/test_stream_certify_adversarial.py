"""Adversarial checks of the streamed certification's shared decoding (:mod:`fpt_ref.certify.stream`).

:func:`~fpt_ref.certify.stream.certify_folders` builds each base layer with every tensor that the
grown layer stores as its leading corner as a read-only view of the grown layer's decoded array
(:meth:`fpt_ref.hf.stream.Stream.layer_within`, :meth:`fpt_ref.hf.files.Tensors.holds_corner`),
and takes runs of consecutive indices as views (:func:`fpt_ref.certify.check.take`). Each test
pins one way that sharing could mislead the audit:

- the base's values placed in the grown tensor's corner while the real old block lies elsewhere
  (query heads added inside key/value groups, RoPE's rotate-half key dims, value dims);
- strided corners (hidden size grown), GPT-2's Conv1D ``[in, out]`` tensors, biases;
- bit patterns that compare equal as values but not as bits (``-0.0``, NaN payloads);
- F16, BF16, F32, F64 and mixed storage; a base tensor larger than the grown one;
- the grown reader's pool of reused arrays (:meth:`fpt_ref.hf.files.Tensors._alloc`) while a
  base view still points into it: layers inserted (LLaMA-Pro) so that a base layer is paired
  with several grown layers, and layers reordered so that the alignment revisits them.

Every certificate must be the in-memory one (:func:`fpt_ref.certify.certify` on
:func:`fpt_ref.hf.read`, same findings, sets, block count and alignment), every non-preserving
folder must be rejected, and every base layer built from views must hold, bit for bit, the
values :func:`fpt_ref.hf.load` reads from the base folder.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from test_stream_certify import in_memory, llama_config, llama_pro, same, write_base

import fpt_ref
from fpt_ref import hf
from fpt_ref.certify.check import layer_tensors, same_bits, take
from fpt_ref.certify.stream import certify_folders
from fpt_ref.hf.files import INDEX, Tensors, read_config, write_checkpoint_tensors, write_safetensors_raw
from fpt_ref.hf.stream import Stream
from fpt_ref.plan import parse_plan, run_plan

L1 = "model.layers.1."
#: a scaled block stored in F32 is rounded to float32: certified in working dtype float32 only
#: (in float64 its rounding is many ulps; docs/certify.md, Limits)
F32_ONLY = ("float32",)


# ---- helpers -------------------------------------------------------------------------------------


def stored(folder) -> tuple[dict, str, dict]:
    """``(tensors as stored, stored dtype, config)`` of a folder: F32 as float32, F16 as float16,
    F64 as float64, BF16 as its ``uint16`` bits; each a new writable array."""
    ts = Tensors(folder)
    return {n: ts.raw(n) for n in ts.names()}, ts.stored_dtype(), read_config(folder)


def write(folder, tensors: dict, st: str, config: dict) -> str:
    """Folder ``folder`` with ``tensors`` (as :func:`stored` gives them) written in ``st``, bits unchanged."""
    os.makedirs(folder)
    write_checkpoint_tensors(folder, tensors, st, {"format": "pt"})
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    return str(folder)


def mutated(folder, out, change, **config) -> str:
    """Folder ``folder`` written again to ``out`` with ``change(tensors)`` applied to its stored values."""
    tensors, st, cfg = stored(folder)
    change(tensors)
    return write(out, tensors, st, dict(cfg, **config))


def bump(a, idx) -> None:
    """Entry ``idx`` of stored array ``a`` (BF16 bits or floats) moved to the next representable value."""
    if a.dtype == np.uint16:
        a[idx] += 1  # the next bfloat16 (finite, positive or negative: away from zero)
    else:
        a[idx] = np.nextafter(a[idx], np.inf, dtype=a.dtype)


def grow(base, plan: str, out, seed: int = 1) -> str:
    """Folder ``out``: the model of folder ``base`` grown by ``plan``, stored in the base's dtype."""
    model = hf.load(base, max_seq=8)
    grown = run_plan(model, parse_plan(plan), seed=seed)[-1].model
    return hf.save(grown, out, like=base)


def verdict(base, grown, ok: bool, dtypes=("float32", "float64")):
    """The streamed certificate in each working dtype: the in-memory one, and ``ok`` as given."""
    cert = None
    for dtype in dtypes:
        cert = certify_folders(base, grown, dtype=dtype)
        same(cert, in_memory(base, grown, dtype))
        assert cert.ok is ok, (dtype, [(f.tensor, f.block, f.reason) for f in cert.findings[:3]])
    return cert


def _bits(a):
    return np.asarray(a).view(f"u{np.asarray(a).dtype.itemsize}")


def views(base, grown, i: int, j: int, dtype="float32") -> set:
    """The tensors of base layer ``i`` that :meth:`Stream.layer_within` takes as views of grown
    layer ``j``; first checks that every array of that base layer holds, bit for bit, what
    :func:`fpt_ref.hf.load` reads from the base folder, and that each view is read-only."""
    b, g = Stream(base, dtype=dtype), Stream(grown, dtype=dtype)
    L, G = b.layer_within(i, g, j), g.layer(j)
    own = hf.load(base, dtype=dtype).layers[i]
    mine, ref, theirs = layer_tensors(L, i), layer_tensors(own, i), layer_tensors(G, j)
    assert mine.keys() == ref.keys()
    grown_arrays = [x for items in theirs.values() for _, x in items]
    out = set()
    for kind in mine:
        assert [n for n, _ in mine[kind]] == [n for n, _ in ref[kind]]
        for (name, a), (_, r) in zip(mine[kind], ref[kind]):
            assert a.shape == r.shape and a.dtype == r.dtype, name
            assert np.array_equal(_bits(a), _bits(r)), name  # the base's own bits, not the grown's
            if any(np.shares_memory(a, x) for x in grown_arrays):
                assert not a.flags.writeable, name  # nothing may write into the grown layer's arrays
                out.add(name)
    return out


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("adversarial")
    return {st: write_base(root / st, llama_config(), st) for st in ("F32", "BF16")}


# ---- base values as a decoy corner ---------------------------------------------------------------


@pytest.mark.parametrize("st", ["F32", "BF16"])
def test_query_heads_added_inside_groups_with_the_base_rows_as_a_decoy_corner(bases, tmp_path, st):
    """Four query heads added to two key/value groups: grown q_proj holds heads [b0, b1, n, n, b2,
    b3, n, n]. The new heads 2, 3 set to base heads 2, 3 make q_proj's leading corner the base's
    q_proj (a view), but base heads 2, 3 belong at grown heads 4, 5: a change there is rejected."""
    base = bases[st]
    grown = grow(base, "add_heads count=4", tmp_path / "g")
    q = L1 + "self_attn.q_proj.weight"
    ref = stored(base)[0][q]  # [4 heads x 8, 32]

    def decoy(t):
        t[q][16:32] = ref[16:32]  # the new (free) heads 2, 3 := base heads 2, 3

    benign = mutated(grown, tmp_path / "benign", decoy)
    assert np.array_equal(stored(benign)[0][q][:32], ref)
    verdict(base, benign, True)
    assert "layers.1.heads.2.w_q" in views(base, benign, 1, 1)

    def moved(t):
        decoy(t)
        bump(t[q], (36, 5))  # grown head 4 (base head 2's place), dim 4

    bad = mutated(grown, tmp_path / "bad", moved)
    cert = verdict(base, bad, False)
    assert cert.first.tensor == "layers.1.heads.4.w_q" and "copied block differs" in cert.first.reason
    assert "layers.1.heads.2.w_q" in views(base, bad, 1, 1)


@pytest.mark.parametrize("tensor,rows", [("q_proj", 32), ("k_proj", 16)])
def test_rope_half_key_growth_with_the_base_rows_as_a_decoy_corner(bases, tmp_path, tensor, rows):
    """Key size 8 -> 16 in RoPE's rotate-half layout: a grown head's old dims are 0:4 and 8:12.
    The base's rows copied into the grown tensor's leading corner (a view) put base head 1's dims
    where head 0's dims 4:8 belong: rejected, as the in-memory audit rejects it."""
    base = bases["F32"]
    grown = grow(base, "heads v=16; attention k=16", tmp_path / "g")
    verdict(base, grown, True, F32_ONLY)
    name = L1 + f"self_attn.{tensor}.weight"
    ref = stored(base)[0][name]

    def decoy(t):
        t[name][:rows] = ref[:rows]

    bad = mutated(grown, tmp_path / "bad", decoy)
    cert = verdict(base, bad, False, F32_ONLY)
    kind = {"q_proj": "w_q", "k_proj": "w_k"}[tensor]
    assert any(f.tensor == f"layers.1.heads.0.{kind}" for f in cert.findings)
    assert f"layers.1.heads.0.{kind}" in views(base, bad, 1, 1)


def test_value_growth_with_the_base_rows_in_the_free_value_dims(bases, tmp_path):
    """Value size 8 -> 16 (keys too: one head_dim) with the new W_O rows zero: the new value dims
    are free, so group 0's (8:16) may hold base group 1's rows; v_proj's leading corner is then
    the base's v_proj (a view) and the checkpoint is preserving. A change to group 1's real rows
    (16:24) is rejected."""
    base = bases["F32"]
    grown = grow(base, "heads v=16; attention k=16", tmp_path / "g")
    v = L1 + "self_attn.v_proj.weight"
    ref = stored(base)[0][v]  # [2 groups x 8, 32]

    def decoy(t):
        t[v][8:16] = ref[8:16]

    benign = mutated(grown, tmp_path / "benign", decoy)
    verdict(base, benign, True, F32_ONLY)
    assert "layers.1.heads.0.w_v" in views(base, benign, 1, 1)

    def moved(t):
        decoy(t)
        bump(t[v], (17, 0))

    bad = mutated(grown, tmp_path / "bad", moved)
    cert = verdict(base, bad, False, F32_ONLY)
    assert cert.first.tensor == "layers.1.heads.2.w_v" and "copied block differs" in cert.first.reason


# ---- strided corners, Conv1D, biases ------------------------------------------------------------


HIDDEN_CASES = {
    "preserving": (None, True),
    # a new hidden row of down_proj (a stream writer's new column): outside the corner, still a view
    "writer": (lambda t: t[L1 + "mlp.down_proj.weight"].__setitem__((40, 3), 0.5), False),
    # one entry of o_proj's corner: the copied block differs (no view)
    "copied": (lambda t: bump(t[L1 + "self_attn.o_proj.weight"], (7, 3)), False),
    # the gain left unscaled: its corner is the base's gain (a view), and it must be scaled
    "unscaled gain": (None, False),
}


@pytest.mark.parametrize("case", list(HIDDEN_CASES))
def test_hidden_growth_corners_are_strided_views(bases, tmp_path, case):
    """Hidden size 32 -> 64: every base matrix is the leading corner of the grown one (rows of 64
    entries, a strided view); mutations inside and outside the corner are rejected."""
    base = bases["F32"]
    grown = grow(base, "hidden h=64", tmp_path / "g")
    change, ok = HIDDEN_CASES[case]
    if case == "unscaled gain":
        norm = L1 + "post_attention_layernorm.weight"
        old = stored(base)[0][norm]

        def change(t):
            t[norm][:32] = old

    if change is not None:
        grown = mutated(grown, tmp_path / "m", change)
    cert = verdict(base, grown, ok, F32_ONLY)
    shared = views(base, grown, 1, 1)
    assert {"layers.1.w_l1", "layers.1.w_gate", "layers.1.heads.0.w_q", "layers.1.heads.0.w_k"} <= shared
    if case == "preserving":
        assert {"layers.1.w_l2", "layers.1.heads.3.w_o"} <= shared and "layers.1.norm_mlp" not in shared
    elif case == "writer":
        assert "layers.1.w_l2" in shared and cert.first.tensor == "layers.1.w_l2"
        assert "stream writer zero" in cert.first.reason
    elif case == "copied":
        assert cert.first.tensor == "layers.1.heads.0.w_o" and "copied block differs" in cert.first.reason
    else:
        assert "layers.1.norm_mlp" in shared and cert.first.tensor == "layers.1.norm_mlp"
        assert "scaled block must be" in cert.first.reason


def test_hidden_growth_with_the_base_bytes_as_a_flat_prefix(bases, tmp_path):
    """Hidden size 32 -> 64 with q_proj's first 1024 stored values (its rows 0:16, 64 wide) the
    base's q_proj in file order: the same bytes begin both tensors, but the corner [:32, :32]
    is not the base's. No view; rejected as in memory."""
    base = bases["F32"]
    grown = grow(base, "hidden h=64", tmp_path / "g")
    q = L1 + "self_attn.q_proj.weight"
    ref = stored(base)[0][q]  # [32, 32]

    def prefix(t):
        t[q][:16] = ref.reshape(16, 64)

    bad = mutated(grown, tmp_path / "bad", prefix)
    assert np.array_equal(stored(bad)[0][q].reshape(-1)[: ref.size], ref.reshape(-1))
    cert = verdict(base, bad, False, F32_ONLY)
    assert cert.first.tensor == "layers.1.heads.0.w_q" and "copied block differs" in cert.first.reason
    assert "layers.1.heads.0.w_q" not in views(base, bad, 1, 1)


GPT2_CASES = {  # (tensor of layer 1, entry, new value or None: the next representable value)
    "preserving": None,
    "c_fc corner": ("mlp.c_fc.weight", (3, 5), None),
    "c_fc bias corner": ("mlp.c_fc.bias", (7,), None),
    "c_proj corner": ("mlp.c_proj.weight", (5, 3), None),
    # a new unit's row of the Conv1D c_proj ([in, out]): the new units write to the stream
    "c_proj new unit": ("mlp.c_proj.weight", (70, 2), 1.0),
    "c_attn": ("attn.c_attn.weight", (2, 40), None),
}


@pytest.mark.parametrize("case", list(GPT2_CASES))
def test_gpt2_conv1d_corners(tmp_path, case):
    """GPT-2 stores Conv1D weights ``[in, out]``: the MLP grown 64 -> 96 keeps the base's c_fc as
    its leading columns and c_proj as its leading rows (views); mutations there are rejected."""
    config = {"model_type": "gpt2", "vocab_size": 40, "n_positions": 8, "n_embd": 16, "n_head": 2, "n_layer": 2}
    model = fpt_ref.init_model(
        h=16, p=64, n_heads=2, k=8, v=8, n_layers=2, vocab=40, max_seq=8, causal=True, eps=1e-5, arch="gpt2", seed=3
    )
    base = hf.save(model, tmp_path / "base", like=config, dtype="float32")
    grown = grow(base, "mlp p=96", tmp_path / "g")
    if GPT2_CASES[case] is not None:
        suffix, idx, value = GPT2_CASES[case]

        def change(t):
            (name,) = [n for n in t if n.endswith("h.1." + suffix)]
            if value is None:
                bump(t[name], idx)
            else:
                t[name][idx] = value

        grown = mutated(grown, tmp_path / "m", change)
    verdict(base, grown, GPT2_CASES[case] is None)
    shared = views(base, grown, 1, 1)
    if case == "preserving":
        assert {"layers.1.w_l1", "layers.1.b_l1", "layers.1.w_l2", "layers.1.heads.0.w_q"} <= shared
    if case in ("c_fc corner", "c_proj new unit"):
        assert "layers.1.w_l2" in shared


BIAS_CASES = {
    "preserving": (None, True),
    "b_l1 corner": (lambda t: bump(t[L1 + "mlp.up_proj.bias"], (5,)), False),
    "b_gate corner": (lambda t: bump(t[L1 + "mlp.gate_proj.bias"], (47,)), False),
    "b_k": (lambda t: bump(t[L1 + "self_attn.k_proj.bias"], (3,)), False),
    "b_q moved head": (lambda t: bump(t[L1 + "self_attn.q_proj.bias"], (33,)), False),
    "b_o": (lambda t: bump(t[L1 + "self_attn.o_proj.bias"], (0,)), False),
    "b_l2": (lambda t: bump(t[L1 + "mlp.down_proj.bias"], (31,)), False),
}


@pytest.fixture(scope="module")
def biased(bases, tmp_path_factory):
    """The F32 base with every attention and MLP bias (``attention_bias``, ``mlp_bias``), and it grown."""
    root = tmp_path_factory.mktemp("biased")
    tensors, st, config = stored(bases["F32"])
    rng = np.random.default_rng(7)
    h, p, H, G, d = 32, 48, 4, 2, 8
    for n in range(config["num_hidden_layers"]):
        a = f"model.layers.{n}."
        sizes = {"q_proj": H * d, "k_proj": G * d, "v_proj": G * d, "o_proj": h}
        sizes.update({"gate_proj": p, "up_proj": p, "down_proj": h})
        for proj, size in sizes.items():
            part = "self_attn" if proj.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            tensors[f"{a}{part}.{proj}.bias"] = rng.normal(size=size).astype(np.float32)
    base = write(root / "base", tensors, st, dict(config, attention_bias=True, mlp_bias=True))
    return base, grow(base, "mlp p=64; add_heads count=4", root / "grown")


@pytest.mark.parametrize("case", list(BIAS_CASES))
def test_biases_in_the_corner(biased, tmp_path, case):
    """Biases are 1-d leading corners (MLP width and heads grown): views of the grown biases, and a
    changed old entry is rejected wherever the old block lies (base head 2's b_q at grown head 4)."""
    base, grown = biased
    change, ok = BIAS_CASES[case]
    if change is not None:
        grown = mutated(grown, tmp_path / "m", change)
    verdict(base, grown, ok)
    shared = views(base, grown, 1, 1)
    assert "layers.1.b_l2" in shared or case == "b_l2"
    if case == "preserving":
        assert {"layers.1.b_l1", "layers.1.b_gate", "layers.1.b_o", "layers.1.heads.0.w_k"} <= shared


# ---- bit patterns ----------------------------------------------------------------------------------

ZERO = {"F32": (np.float32(0.0), np.float32(-0.0)), "BF16": (np.uint16(0x0000), np.uint16(0x8000))}


@pytest.mark.parametrize("st", ["F32", "BF16"])
@pytest.mark.parametrize(
    "base_sign,grown_sign,ok",
    [("+", "+", True), ("-", "-", True), ("+", "-", False), ("-", "+", False)],
)
def test_signed_zero_in_a_copied_corner_entry(bases, tmp_path, st, base_sign, grown_sign, ok):
    """A copied entry is compared bit for bit: ``-0.0`` for ``+0.0`` (or back) is not a copy and
    is no view; the same sign is a view and certified."""
    plus, minus = ZERO[st]
    name = L1 + "mlp.up_proj.weight"

    def at(sign):
        return lambda t: t[name].__setitem__((2, 3), plus if sign == "+" else minus)

    base = mutated(bases[st], tmp_path / "b", at(base_sign))
    grown = mutated(grow(base, "mlp p=64", tmp_path / "g0"), tmp_path / "g", at(grown_sign))
    cert = verdict(base, grown, ok)
    assert ("layers.1.w_l1" in views(base, grown, 1, 1)) is ok
    if not ok:
        assert cert.first.tensor == "layers.1.w_l1" and "copied block differs" in cert.first.reason


@pytest.mark.parametrize("st", ["F32", "BF16"])
def test_negative_zero_in_a_zero_block_is_zero(bases, tmp_path, st):
    """``-0.0`` in a block that must be zero (the new units' down_proj columns) is zero."""
    base = bases[st]
    grown = grow(base, "mlp p=64", tmp_path / "g")
    verdict(base, grown, True)
    name = L1 + "mlp.down_proj.weight"
    t0, _, _ = stored(grown)
    assert not np.any(t0[name][:, 48:].astype(np.float32))  # this grown MLP chose {M_l2} zero
    grown = mutated(grown, tmp_path / "m", lambda t: t[name].__setitem__((4, 50), ZERO[st][1]))
    verdict(base, grown, True)
    assert "layers.1.w_l2" in views(base, grown, 1, 1)


NANS = {  # stored bits of a copied entry: base's, grown's
    "F32": {
        "same payload": (0x7FC00001, 0x7FC00001, True),
        "other payload": (0x7FC00001, 0x7FC00002, False),
        "other sign": (0x7FC00001, 0xFFC00001, False),
        "signalling": (0x7F800001, 0x7FC00001, None),
    },
    "BF16": {
        "same payload": (0x7FC1, 0x7FC1, True),
        "other payload": (0x7FC1, 0x7FC2, False),
        "other sign": (0x7FC1, 0xFFC1, False),
        "signalling": (0x7F81, 0x7FC1, None),
    },
}


@pytest.mark.parametrize("st", ["F32", "BF16"])
@pytest.mark.parametrize("case", ["same payload", "other payload", "other sign", "signalling"])
def test_nan_payloads_in_a_copied_corner_entry(bases, tmp_path, st, case):
    """NaNs compare by their bits: the same payload is a copy (and a view), another payload or
    sign is not (no view, rejected). A signalling NaN against its quiet twin: float32 keeps
    both patterns (rejected); widening to float64 quiets both to one pattern, in the streamed
    and the in-memory readers alike (the certificates agree in each working dtype)."""
    b_bits, g_bits, ok = NANS[st][case]
    name = L1 + "mlp.up_proj.weight"

    def at(bits):
        def change(t):
            a = t[name]
            a.view(f"u{a.dtype.itemsize}")[2, 3] = bits

        return change

    base = mutated(bases[st], tmp_path / "b", at(b_bits))
    grown = mutated(grow(bases[st], "mlp p=64", tmp_path / "g0"), tmp_path / "g", at(g_bits))
    assert int(stored(grown)[0][name].view(f"u{2 if st == 'BF16' else 4}")[2, 3]) == g_bits
    if ok is None:
        with np.errstate(invalid="ignore"):
            assert not verdict(base, grown, False, dtypes=("float32",)).ok
            same(certify_folders(base, grown, dtype="float64"), in_memory(base, grown, "float64"))
        assert "layers.1.w_l1" not in views(base, grown, 1, 1)
        return
    cert = verdict(base, grown, ok)
    assert ("layers.1.w_l1" in views(base, grown, 1, 1)) is ok
    if not ok:
        assert cert.first.tensor == "layers.1.w_l1" and "copied block differs" in cert.first.reason


# ---- storage dtypes -------------------------------------------------------------------------------


@pytest.mark.parametrize("st", ["F16", "F64"])
def test_f16_and_f64_storage(bases, tmp_path, st):
    """F16 (widened exactly to float32) and F64 (working dtype float64) folders: corners are views
    and a one-ulp change inside one is rejected."""
    tensors, _, config = stored(bases["F32"])
    np_dtype = {"F16": np.float16, "F64": np.float64}[st]
    base = write(
        tmp_path / "b",
        {n: a.astype(np_dtype) for n, a in tensors.items()},
        st,
        dict(config, dtype={"F16": "float16", "F64": "float64"}[st]),
    )
    grown = grow(base, "mlp p=64; add_heads count=4", tmp_path / "g")
    assert Tensors(grown).stored_dtype() == st
    dtypes = ("float32", "float64") if st == "F16" else ("float64",)
    verdict(base, grown, True, dtypes)
    work = dtypes[-1]
    assert {"layers.1.w_l1", "layers.1.w_l2", "layers.1.heads.0.w_k"} <= views(base, grown, 1, 1, work)
    bad = mutated(grown, tmp_path / "m", lambda t: bump(t[L1 + "mlp.up_proj.weight"], (40, 31)))
    cert = verdict(base, bad, False, dtypes)
    assert cert.first.tensor == "layers.1.w_l1" and "layers.1.w_l1" not in views(base, bad, 1, 1, work)


def _write_mixed(folder, tensors: dict, dtypes: dict, config: dict) -> str:
    """A sharded folder: tensor ``n`` stored in ``dtypes[n]`` (one shard per dtype)."""
    os.makedirs(folder)
    groups: dict = {}
    for n, st in dtypes.items():
        groups.setdefault(st, []).append(n)
    weight_map = {}
    for k, (st, names) in enumerate(sorted(groups.items())):
        file = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        write_safetensors_raw(os.path.join(folder, file), {n: tensors[n] for n in names}, st, {"format": "pt"})
        weight_map.update({n: file for n in names})
    with open(os.path.join(folder, INDEX), "w") as f:
        json.dump({"metadata": {}, "weight_map": dict(sorted(weight_map.items()))}, f)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    return str(folder)


def test_mixed_storage_dtypes_in_one_folder(bases, tmp_path):
    """A BF16 base stored again in F32 (widened exactly) against a BF16 grown folder whose layer 1
    up_proj alone is stored in F32: only same-dtype tensors are views; equal values certify, and a
    change that only F32 can hold is rejected."""
    tensors, _, config = stored(bases["BF16"])
    wide = {n: (a.astype(np.uint32) << np.uint32(16)).view(np.float32) for n, a in tensors.items()}  # exact
    base = _write_mixed(tmp_path / "b", wide, dict.fromkeys(wide, "F32"), dict(config, dtype="float32"))
    grown_bf16 = grow(bases["BF16"], "mlp p=64", tmp_path / "g0")
    gt, _, gconfig = stored(grown_bf16)
    up = L1 + "mlp.up_proj.weight"
    gt[up] = (gt[up].astype(np.uint32) << np.uint32(16)).view(np.float32)
    dtypes = {n: ("F32" if n == up else "BF16") for n in gt}
    grown = _write_mixed(tmp_path / "g", gt, dtypes, gconfig)
    verdict(base, grown, True)
    assert views(base, grown, 1, 1) == {"layers.1.w_l1"}
    gt[up] = gt[up].copy()
    bump(gt[up], (1, 1))  # one float32 ulp: not a bfloat16 value
    bad = _write_mixed(tmp_path / "bad", gt, dtypes, gconfig)
    cert = verdict(base, bad, False)
    assert cert.first.tensor == "layers.1.w_l1" and not views(base, bad, 1, 1)


def test_f16_bits_stored_as_bf16_are_other_values(bases, tmp_path):
    """An F16 base against a grown folder whose layer 1 up_proj stores the very same 16-bit
    patterns, but as BF16: equal bits, other values. No view (the dtypes differ), rejected."""
    tensors, _, config = stored(bases["F32"])
    base = write(
        tmp_path / "b", {n: a.astype(np.float16) for n, a in tensors.items()}, "F16", dict(config, dtype="float16")
    )
    gt, _, gconfig = stored(grow(base, "mlp p=64", tmp_path / "g0"))
    up = L1 + "mlp.up_proj.weight"
    gt[up] = gt[up].view(np.uint16)  # the F16 bits, written unchanged as BF16
    grown = _write_mixed(tmp_path / "g", gt, {n: ("BF16" if n == up else "F16") for n in gt}, gconfig)
    assert np.array_equal(Tensors(grown).raw(up)[:48, :], stored(base)[0][up].view(np.uint16))
    cert = verdict(base, grown, False)
    assert cert.first.tensor == "layers.1.w_l1" and "copied block differs" in cert.first.reason
    assert "layers.1.w_l1" not in views(base, grown, 1, 1)


def test_a_base_tensor_larger_than_the_grown_one(bases, tmp_path):
    """The grown MLP narrower than the base's (48 -> 40 units; its tensors would be corners of the
    base's, not the other way round): no views of them, rejected in every layer as in memory."""
    keep = {"gate_proj": (slice(0, 40), slice(None)), "up_proj": (slice(0, 40), slice(None))}
    keep["down_proj"] = (slice(None), slice(0, 40))

    def narrow(t):
        for n in list(t):
            for proj, idx in keep.items():
                if n.endswith(f"mlp.{proj}.weight"):
                    t[n] = np.ascontiguousarray(t[n][idx])

    grown = mutated(bases["F32"], tmp_path / "g", narrow, intermediate_size=40)
    cert = verdict(bases["F32"], grown, False)
    assert all("smaller than base layer" in f.reason for f in cert.findings if f.tensor.endswith("w_l1"))
    shared = views(bases["F32"], grown, 1, 1)
    assert not {"layers.1.w_l1", "layers.1.w_l2", "layers.1.w_gate"} & shared and "layers.1.heads.0.w_q" in shared


def test_holds_corner_compares_bits_shape_rank_and_dtype(tmp_path, monkeypatch):
    """:meth:`Tensors.holds_corner` on hand-made tensors: only a same-dtype, same-rank tensor whose
    every dimension fits and whose bits equal the corner's holds; a difference in the last row of
    the corner is found when the rows are compared in several blocks."""
    from fpt_ref.hf import files

    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 6)).astype(np.float32)
    big = rng.normal(size=(6, 8)).astype(np.float32)
    big[:4, :6] = a
    last = big.copy()
    last[3, 5] = np.nextafter(last[3, 5], np.inf, dtype=np.float32)
    outside = big.copy()
    outside[4, 0] = np.nan
    mine = {"a": a, "v": a[0].copy(), "z": np.zeros((0, 6), np.float32)}
    theirs = {"big": big, "last": last, "outside": outside, "T": a.T.copy(), "flat": a.reshape(-1).copy()}
    theirs["v"] = np.concatenate([a[0], [1.0]]).astype(np.float32)
    theirs["short"] = a[:3].copy()
    write(tmp_path / "m", mine, "F32", {})
    write(tmp_path / "t", theirs, "F32", {})
    write(tmp_path / "h", {"big": big.astype(np.float16)}, "F16", {})
    m, t, h = Tensors(tmp_path / "m"), Tensors(tmp_path / "t"), Tensors(tmp_path / "h")
    monkeypatch.setattr(files, "CHUNK", 32)  # one row of `big` per block
    expect = {"big": True, "outside": True, "last": False, "T": False, "flat": False, "short": False}
    for name, held in expect.items():
        assert m.holds_corner("a", t, name) is held, name
    assert m.holds_corner("v", t, "v") and not m.holds_corner("v", t, "big")
    assert m.holds_corner("z", t, "big") and not m.holds_corner("a", h, "big")


# ---- the pool of reused arrays --------------------------------------------------------------------


@pytest.fixture(scope="module")
def pro(bases, tmp_path_factory):
    """LLaMA-Pro over a widened model: every layer's MLP 48 -> 64, then after layers 0 and 1 a copy
    with gate_proj and o_proj zero (an identity layer whose row 0 of up_proj and down_proj is
    the original's: the alignment pairs base layers 0 and 1 with two grown layers each)."""
    root = tmp_path_factory.mktemp("pro")
    out = {}
    for st in ("F32", "BF16"):
        wide = grow(bases[st], "mlp p=64", root / f"wide_{st}")
        out[st] = llama_pro(wide, root / f"pro_{st}", after=[0, 1], zero=("self_attn.o_proj", "mlp.gate_proj"))
        out[f"wide_{st}"] = wide
    return out


@pytest.mark.parametrize("st", ["F32", "BF16"])
def test_inserted_layers_pair_one_base_layer_with_two_grown_layers(bases, pro, st):
    """Each base layer's sample matches the original and its inserted copy: the full audit of the
    copy runs with the base layer built within the original (its views), and certifies."""
    cert = verdict(bases[st], pro[st], True)
    assert [L["base"] for L in cert.layers] == [0, None, 1, None, 2]


@pytest.mark.parametrize("st", ["F32", "BF16"])
def test_base_views_survive_the_grown_reader_moving_on(bases, pro, st):
    """Base layer 0 built within grown layer 0 (views of its pooled arrays) keeps its values while
    the grown reader reads layers 1..4 of the same shapes (which would reuse those arrays if they
    were free), and no grown layer is read into the memory the base views hold."""
    b, g = Stream(bases[st]), Stream(pro[st])
    L = b.layer_within(0, g, 0)
    held = layer_tensors(L, 0)
    shared = [
        a for items in held.values() for _, a in items if any(np.shares_memory(a, x) for x in _arrays(g.layer(0)))
    ]
    assert len(shared) >= 8  # q, k, v, o, gate, up, down, norms: views of grown layer 0
    snapshot = {n: a.copy() for items in held.values() for n, a in items}
    full = hf.load(pro[st], dtype="float32")
    for j in (1, 2, 3, 4, 1):
        G = g.layer(j)
        assert b.layer_within(0, g, j) is L  # kept: the alignment asks for base layer 0 again
        for a in _arrays(G):
            assert not any(np.shares_memory(a, x) for x in shared), j
        ref = layer_tensors(full.layers[j], j)
        for kind, items in layer_tensors(G, j).items():
            for (n, a), (_, r) in zip(items, ref[kind]):
                assert np.array_equal(_bits(a), _bits(r)), (j, n)
        for items in held.values():
            for n, a in items:
                assert np.array_equal(_bits(a), _bits(snapshot[n])), (j, n)
    own = layer_tensors(hf.load(bases[st], dtype="float32").layers[0], 0)
    for kind, items in held.items():
        for (n, a), (_, r) in zip(items, own[kind]):
            assert np.array_equal(_bits(a), _bits(r)), n


def _arrays(layer) -> list:
    return [a for items in layer_tensors(layer, 0).values() for _, a in items]


def test_a_base_layer_kept_across_grown_layers_is_not_the_next_grown_layer(bases, pro, tmp_path):
    """Grown layer 0 an identity copy of widened layer 0 (gate_proj, o_proj zero), grown layer 1
    widened layer 0 with its q_proj and up_proj doubled, but for up_proj's row 0 (the streamed
    alignment's sample, row 0 of up_proj and down_proj as stored, still holds the base's). Base
    layer 0 is built within grown layer 0 (views of its arrays) and asked for again with grown
    layer 1, read into the same shapes: were grown layer 0's arrays reused for it while the views
    point into them, base layer 0 would be grown layer 1's own corners and the garbage layer would
    certify. It is rejected, as in memory."""

    def change(t):
        for n in [n for n in t if n.startswith("model.layers.0.")]:
            m = n.replace("model.layers.0.", "model.layers.1.")
            t[n], t[m] = t[m], t[n]  # the identity copy first, the original second
        t["model.layers.1.self_attn.q_proj.weight"] *= 2
        t["model.layers.1.mlp.up_proj.weight"][1:] *= 2

    grown = mutated(pro["F32"], tmp_path / "g", change)
    cert = verdict(bases["F32"], grown, False)
    assert any(f.tensor.startswith("layers.1.") and "copied block differs" in f.reason for f in cert.findings)


def test_an_inserted_copy_that_writes_is_rejected(bases, pro, tmp_path):
    """The inserted copy's o_proj left non-zero: not an identity layer, rejected as in memory."""
    name = "model.layers.1.self_attn.o_proj.weight"
    grown = mutated(pro["F32"], tmp_path / "g", lambda t: t[name].__setitem__((3, 4), 0.25))
    cert = verdict(bases["F32"], grown, False)
    assert any(f.tensor.startswith("layers.1.") for f in cert.findings)


def test_reordered_layers_are_revisited_out_of_order(bases, pro, tmp_path):
    """Widened layers 1 and 2 exchanged: the alignment audits pairs out of grown order (the
    reordering hint), with base layers built within earlier grown layers; rejected as in memory."""

    def swap(t):
        for n in [n for n in t if n.startswith("model.layers.1.")]:
            m = n.replace("model.layers.1.", "model.layers.2.")
            t[n], t[m] = t[m], t[n]

    grown = mutated(pro["wide_F32"], tmp_path / "g", swap)
    cert = verdict(bases["F32"], grown, False)
    assert any("layers reordered?" in f.reason for f in cert.findings)


# ---- index runs as views ---------------------------------------------------------------------------


def test_take_index_runs_equal_numpy_fancy_indexing():
    """:func:`take` with runs turned into slices gives numpy's fancy-indexing region, a view for
    runs and a copy otherwise (reversed, repeated, gapped, empty, unsigned)."""
    a = np.arange(6 * 7, dtype=np.float32).reshape(6, 7)
    specs = [
        (np.arange(2, 5), slice(0, 3)),
        (np.arange(6, dtype=np.uint64), np.arange(1, 7)),
        (np.array([4, 3, 2]), slice(None)),
        (np.array([2, 2, 3]), np.arange(3)),
        (np.array([0, 1, 3]), np.array([5, 6])),
        (np.array([], dtype=np.intp), slice(None)),
        (slice(1, 4), np.array([0])),
        (np.array([-3, -2, -1]), np.arange(2)),
    ]
    for spec in specs:
        axes = [
            np.arange(d)[s] if isinstance(s, slice) else np.asarray(s, dtype=np.intp) for s, d in zip(spec, a.shape)
        ]
        ref = a[np.ix_(*axes)]
        got = take(a, spec)
        assert got.shape == ref.shape and np.array_equal(got, ref), spec
    assert np.shares_memory(take(a, specs[0]), a) and np.shares_memory(take(a, specs[1]), a)
    assert not np.shares_memory(take(a, specs[2]), a)
    for beyond in (np.arange(3, 7), np.arange(5, 9)):  # a run past the axis (6 rows) raises as fancy indexing does
        with pytest.raises(IndexError):
            take(a, (beyond, slice(None)))


def test_same_bits_takes_the_same_memory_only_with_the_same_strides():
    """:func:`same_bits`' fast path (one data pointer) needs equal strides too: a square matrix and
    its transpose start at the same byte and differ; a dtype view of the same bytes is no copy."""
    a = np.arange(16, dtype=np.float32).reshape(4, 4)
    assert a.T.__array_interface__["data"][0] == a.__array_interface__["data"][0]
    assert not same_bits(a, a.T) and same_bits(a, a[:, :]) and same_bits(a.T, a.T.copy())
    assert not same_bits(a, a.view(np.int32))
