"""The block audit (fpt_ref.audit): every correct step passes, every broken block is named."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fpt_ref.audit import audit_step, correspondence
from fpt_ref.expansions import add_heads, add_layer, expand_attention, expand_heads, expand_hidden, expand_mlp
from fpt_ref.init import init_model
from fpt_ref.model import named_tensors

STEPS = {
    "mlp": (expand_mlp, {"p": 40, "layers": [1]}),
    "add_heads": (add_heads, {"count": 2, "layers": [0]}),
    "heads": (expand_heads, {"v": 12, "layers": [1], "heads": [0]}),
    "attention": (expand_attention, {"k": 10}),
    "attention_q": (expand_attention, {"k": 10, "scale": "W_Q"}),
    "hidden": (expand_hidden, {"h": 24}),
    "add_layer": (add_layer, {"at": 1}),
    "add_layer_first": (add_layer, {"at": 0}),
}


def _base(dtype="float64"):
    return init_model(h=16, p=[32, 24], n_heads=[2, 3], k=[8, 6], v=[8, 5], n_layers=2, vocab=20, eps=1e-3, dtype=dtype)


def _step(name, dtype="float64"):
    fn, kw = STEPS[name]
    base = _base(dtype)
    grown, manifest = fn(base, **kw, return_manifest=True)
    return base, grown, manifest


def with_tensor(model, name, arr):
    """``model`` with tensor ``name`` replaced (a new model; nothing mutated)."""
    parts = name.split(".")
    if parts[0] != "layers":
        return replace(model, **{name: arr})
    n = int(parts[1])
    L = model.layers[n]
    if parts[2] == "heads":
        e = int(parts[3])
        heads = list(L.heads)
        heads[e] = replace(heads[e], **{parts[4]: arr})
        L = replace(L, heads=tuple(heads))
    else:
        L = replace(L, **{parts[2]: arr})
    layers = list(model.layers)
    layers[n] = L
    return replace(model, layers=tuple(layers))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(STEPS))
def test_correct_steps_pass(name, dtype):
    base, grown, manifest = _step(name, dtype)
    rep = audit_step(base, grown, manifest, op=name.split("_q")[0].replace("_first", ""))
    assert rep.ok, [str(f) for f in rep.findings]
    assert rep.blocks == len(manifest) and rep.tensors == len(named_tensors(grown))


def _first(manifest, role, op_filter=lambda b: True):
    return next(b for b in manifest if b.role == role and op_filter(b))


def _perturb(arr, idx):
    out = np.array(arr, copy=True)
    flat = out.reshape(-1)
    flat[idx] = np.nextafter(flat[idx], np.inf)
    return out


def _mutate_block(grown, blk, fn):
    arr = np.array(named_tensors(grown)[blk.tensor], copy=True)
    sl = tuple(slice(a, b) for a, b in blk.index)
    arr[sl] = fn(arr[sl])
    return with_tensor(grown, blk.tensor, arr)


def _one_ulp(part):
    return _perturb(part, part.size // 2)


def _tiny(part):
    out = part.copy()
    out.reshape(-1)[0] = 1e-300
    return out


def _inf(part):
    out = part.copy()
    out.reshape(-1)[-1] = np.inf
    return out


# (label, step, mutation of (base, grown, manifest) -> (grown, manifest), expected reason)
MUTATIONS = [
    (
        "copied block one ulp off",
        "mlp",
        lambda b, g, m: (_mutate_block(g, _first(m, "copied"), _one_ulp), m),
        "copied block differs",
    ),
    ("zero block 1e-300", "mlp", lambda b, g, m: (_mutate_block(g, _first(m, "zero"), _tiny), m), "zero block holds 1"),
    ("zero head rows", "add_heads", lambda b, g, m: (_mutate_block(g, _first(m, "zero"), _tiny), m), "zero block"),
    ("zero W_O rows", "heads", lambda b, g, m: (_mutate_block(g, _first(m, "zero"), _tiny), m), "zero block"),
    (
        "scaled W_K one ulp",
        "attention",
        lambda b, g, m: (_mutate_block(g, _first(m, "scaled"), _one_ulp), m),
        "scaled block is not base",
    ),
    (
        "scaled gain one ulp",
        "hidden",
        lambda b, g, m: (_mutate_block(g, _first(m, "scaled"), _one_ulp), m),
        "scaled block is not base",
    ),
    (
        "embedding column",
        "hidden",
        lambda b, g, m: (_mutate_block(g, _first(m, "zero", lambda x: x.tensor == "embed"), _tiny), m),
        "zero block",
    ),
    ("last new embedding column", "hidden", lambda b, g, m: (_last_column(g), m), "zero block"),
    (
        "new layer W_l2",
        "add_layer",
        lambda b, g, m: (_mutate_block(g, _first(m, "zero", lambda x: x.tensor.endswith("w_l2")), _tiny), m),
        "zero block",
    ),
    ("free block inf", "mlp", lambda b, g, m: (_mutate_block(g, _first(m, "free"), _inf), m), "non-finite"),
    (
        "untouched tensor changed",
        "mlp",
        lambda b, g, m: (with_tensor(g, "layers.0.w_l1", _perturb(named_tensors(g)["layers.0.w_l1"], 3)), m),
        "not in the manifest, yet differs",
    ),
    (
        "renamed layer changed",
        "add_layer_first",
        lambda b, g, m: (with_tensor(g, "layers.2.b_l2", _perturb(named_tensors(g)["layers.2.b_l2"], 0)), m),
        "differs from the base tensor 'layers.1.b_l2'",
    ),
    (
        "block dropped from manifest",
        "mlp",
        lambda b, g, m: (g, [x for x in m if x.role != "free" or x.tensor != "layers.1.b_l1"]),
        "do not tile",
    ),
    (
        "zero block claimed for free data",
        "mlp",
        lambda b, g, m: (g, [replace(x, role="zero") if x.role == "free" else x for x in m]),
        "zero block holds",
    ),
    (
        "factor claimed wrong",
        "attention",
        lambda b, g, m: (g, [replace(x, factor=x.factor * 1.0000001) if x.role == "scaled" else x for x in m]),
        "claims factor",
    ),
    ("layer inserted, manifest empty", "add_layer", lambda b, g, m: (g, []), "does not account for the layers"),
    ("head added, manifest empty", "add_heads", lambda b, g, m: (g, []), "does not account for the heads"),
    ("eps not rescaled", "hidden", lambda b, g, m: (replace(g, norm_eps=b.norm_eps), m), "norm_eps"),
    ("causal flipped", "mlp", lambda b, g, m: (replace(g, causal=not g.causal), m), "causal"),
    ("base tensor lost", "heads", lambda b, g, m: (_drop_pos(g), m), "no counterpart"),
]


def _last_column(g):
    arr = np.array(g.embed, copy=True)
    arr[3, -1] = 1e-12
    return replace(g, embed=arr)


def _drop_pos(g):
    return replace(g, embed=None)


@pytest.mark.parametrize("label,step,mutate,reason", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_every_mutation_is_named(label, step, mutate, reason):
    base, grown, manifest = _step(step)
    g2, m2 = mutate(base, grown, manifest)
    rep = audit_step(base, g2, m2)
    assert not rep.ok
    assert reason in str(rep.first), [str(f) for f in rep.findings]


def test_inputs_are_not_mutated():
    base, grown, manifest = _step("hidden")
    before = {t: np.array(a, copy=True) for t, a in named_tensors(grown).items()}
    audit_step(base, grown, list(manifest))
    assert all(np.array_equal(before[t], a) for t, a in named_tensors(grown).items())


def test_correspondence_maps_inserted_layers_to_none():
    base, grown, manifest = _step("add_layer_first")
    src = correspondence(base, grown, manifest)
    assert src["layers.0.w_l1"] is None and src["layers.1.w_l1"] == "layers.0.w_l1" and src["embed"] == "embed"


def test_float32_scaling_note():
    base, grown, manifest = _step("attention", "float32")
    rep = audit_step(base, grown, manifest)
    assert rep.ok and any("rounds to" in n for n in rep.notes)


def _renamed(m, role_of):
    return [replace(x, role=role_of(x)) for x in m]


# manifests with paper block names: a constraint set is accepted iff it includes a proved one
CONSTRAINT_CASES = [
    ("mlp", lambda x: x.role, True),
    ("mlp", lambda x: "free" if x.block == "M_l2" else x.role, False),
    ("add_layer", lambda x: "free" if x.block == "b_l2" else x.role, False),
]


@pytest.mark.parametrize("op,role_of,ok", CONSTRAINT_CASES)
def test_constraint_sets_are_checked_against_the_paper_table(op, role_of, ok):
    base, grown, manifest = _step(op)
    m2 = _renamed(manifest, role_of)
    rep = audit_step(base, grown, m2, op=op)
    bad = [f for f in rep.findings if f.tensor == "(constraints)"]
    assert (not bad) == ok, [str(f) for f in rep.findings]


def test_alternative_proved_sets_are_accepted():
    # an MLP grown with M_l1 and m_b_l1 zero (the ReLU alternative) and M_l2 free: preserving
    base = _base()
    grown, manifest = expand_mlp(base, 40, init="zeros", return_manifest=True)
    m2 = _renamed(manifest, lambda x: {"M_l2": "free", "M_l1": "zero", "m_b_l1": "zero"}.get(x.block, x.role))
    assert audit_step(base, grown, m2, op="mlp").ok
    # the W_Q mirror of the attention expansion
    base, grown, manifest = _step("attention_q")
    assert audit_step(base, grown, manifest, op="attention").ok


def test_plan_record_replays_and_catches_tampering():
    from fpt_ref.audit import audit_record, plan_record
    from fpt_ref.plan import run_plan

    base = _base()
    plan = (
        "mlp p=40 layers=0; add_heads count=1; heads v=12 layers=1 heads=0; attention k=10; hidden h=24; add_layer at=1"
    )
    results = run_plan(base, plan, seed=3, check=False)
    record = plan_record(base, results, "normal", 3)
    final = results[-1].model
    import json

    record = json.loads(json.dumps(record))  # what a file holds
    rep = audit_record(base, final, record)
    assert rep.ok and rep.blocks == sum(len(r.manifest) for r in results), [str(f) for f in rep.findings]
    # one entry of the final model changed by one ulp
    w = _perturb(named_tensors(final)["layers.0.w_l1"], 0)
    rep = audit_record(base, with_tensor(final, "layers.0.w_l1", w), record)
    assert not rep.ok and rep.first.tensor == "layers.0.w_l1" and "replay" in rep.first.reason
    # a record claiming a zero block free
    forged = json.loads(json.dumps(record))
    forged["steps"][0]["blocks"] = [
        dict(b, role="free") if b["role"] == "zero" else b for b in forged["steps"][0]["blocks"]
    ]
    rep = audit_record(base, final, forged)
    assert not rep.ok and "step 1" in str(rep.first) and "manifest differs" in str(rep.first)
    # another base model
    rep = audit_record(init_model(h=16, seed=9), final, record)
    assert not rep.ok and "another base model" in rep.first.reason


def _unscale(b, g, m, kind, factor):
    """``g`` with every scaled block of tensors whose name ends with ``kind`` replaced by its base times ``factor``
    (1.0: left unscaled), and the manifest claiming that factor (or ``copied`` for 1.0)."""
    base_t = named_tensors(b)
    out, man = g, []
    for x in m:
        if x.role == "scaled" and x.tensor.endswith(kind):
            arr = np.array(named_tensors(out)[x.tensor], copy=True)
            sl = tuple(slice(a0, a1) for a0, a1 in x.index)
            arr[sl] = np.asarray(base_t[x.tensor])[sl] * factor
            out = with_tensor(out, x.tensor, arr)
            x = replace(x, role="copied", factor=None) if factor == 1.0 else replace(x, factor=factor)
        man.append(x)
    return out, man


def _new_w_o_free(b, g, m, rename):
    rng = np.random.default_rng(0)
    out, man = g, []
    for x in m:
        if x.role == "zero" and ".w_o" in x.tensor:
            sl = tuple(slice(a0, a1) for a0, a1 in x.index)
            arr = np.array(named_tensors(out)[x.tensor], copy=True)
            arr[sl] = rng.normal(size=arr[sl].shape)
            out = with_tensor(out, x.tensor, arr)
            x = replace(x, role="free", block=rename)
        man.append(x)
    return out, man


# blocks that are as claimed, yet the claims do not preserve the function: the constraint
# check (with the step's expansion named) must refuse every one
FOOLING = [
    ("W_K left unscaled, claimed copied", "attention", lambda b, g, m: _unscale(b, g, m, "w_k", 1.0)),
    ("W_K x 2, factor claimed 2", "attention", lambda b, g, m: _unscale(b, g, m, "w_k", 2.0)),
    ("one gain left unscaled", "hidden", lambda b, g, m: _unscale(b, g, m, "layers.1.norm_mlp", 1.0)),
    ("new W_O random, renamed", "add_layer", lambda b, g, m: _new_w_o_free(b, g, m, "W_O_free")),
    ("new W_O random, names dropped", "add_layer", lambda b, g, m: _drop_names(*_new_w_o_free(b, g, m, "W_O"))),
    ("M_l2 free", "mlp", lambda b, g, m: _free_m_l2(g, m)),
    ("mlp manifest audited as add_heads", "mlp", lambda b, g, m: (g, m)),
    ("scaled block without a factor", "attention", lambda b, g, m: (g, [replace(x, factor=None) for x in m])),
]


def _drop_names(g, m):
    return g, [replace(x, block=None) for x in m]


def _free_m_l2(g, m):
    rng = np.random.default_rng(1)
    out, man = g, []
    for x in m:
        if x.block == "M_l2":
            sl = tuple(slice(a0, a1) for a0, a1 in x.index)
            arr = np.array(named_tensors(out)[x.tensor], copy=True)
            arr[sl] = rng.normal(size=arr[sl].shape)
            out = with_tensor(out, x.tensor, arr)
            x = replace(x, role="free")
        man.append(x)
    return out, man


@pytest.mark.parametrize("label,step,mutate", FOOLING, ids=[f[0] for f in FOOLING])
def test_claims_that_do_not_preserve_are_refused(label, step, mutate):
    from fpt_ref.verify import verify

    base, grown, manifest = _step(step)
    g2, m2 = mutate(base, grown, manifest)
    op = "add_heads" if label == "mlp manifest audited as add_heads" else STEP_OPS[step]
    rep = audit_step(base, g2, m2, op=op)
    assert not rep.ok, label
    if label not in ("mlp manifest audited as add_heads", "scaled block without a factor"):
        assert not verify(base, g2)["ok"]  # the claims were indeed function-changing


STEP_OPS = {name: name.replace("_q", "").replace("_first", "") for name in STEPS}


def test_mixed_sets_per_layer_are_accepted():
    # layer 0 grown with M_l2 = 0, layer 1 with M_l1 = m_b_l1 = 0: both preserve
    base = _base()
    grown, manifest = expand_mlp(base, 40, init="zeros", return_manifest=True)
    m2 = [replace(x, role="free") if x.block == "M_l2" and x.tensor.startswith("layers.1.") else x for x in manifest]
    m2 = [
        replace(x, role="zero") if x.block in ("M_l1", "m_b_l1") and x.tensor.startswith("layers.1.") else x for x in m2
    ]
    rep = audit_step(base, grown, m2, op="mlp")
    assert rep.ok, [str(f) for f in rep.findings]


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda r: r["steps"][0].update(op="grow"), "unknown step 'grow'"),
        (lambda r: r["steps"][0]["args"].update(init="zeros"), "has no key 'init'"),
        (lambda r: r["steps"][0].pop("seed"), "KeyError"),
        (lambda r: r.update(init="ones"), "init 'ones'"),
        (lambda r: r["steps"][0]["blocks"][0].update(index="x"), "ValueError"),
        (lambda r: r.update(format="other/1"), "not a fpt-ref-manifest/1 record"),
    ],
)
def test_malformed_records_are_one_value_error(edit, message):
    import json

    from fpt_ref.audit import audit_record, plan_record
    from fpt_ref.plan import run_plan

    base = _base()
    results = run_plan(base, "mlp p=40; add_layer at=1", seed=0, check=False)
    record = json.loads(json.dumps(plan_record(base, results, "normal", 0)))
    edit(record)
    with pytest.raises(ValueError, match="^record: ") as exc:
        audit_record(base, results[-1].model, record)
    assert message in str(exc.value)
