"""Hypothesis strategies: random small heterogeneous models and random expansion plans."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from fpt_ref import Head, Layer, Model
from fpt_ref.paper import NAMES


def build_model(spec: dict) -> Model:
    """A model from a spec of dims (as drawn by :func:`model_specs`), with seeded random values."""
    rng = np.random.default_rng(spec["seed"])
    dt = spec["dtype"]
    h = spec["h"]

    def w(*shape, std=None):
        return rng.normal(0.0, 1.0 / np.sqrt(shape[0]) if std is None else std, size=shape).astype(dt)

    layers = []
    for p, kv in zip(spec["p"], spec["heads"]):
        heads = tuple(Head(w(h, k), w(h, k), w(h, v), w(v, h)) for k, v in kv)
        layers.append(
            Layer(
                norm_mha=(1 + w(h, std=0.1)),
                heads=heads,
                norm_mlp=(1 + w(h, std=0.1)),
                w_l1=w(h, p),
                b_l1=w(p, std=0.1),
                w_l2=w(p, h),
                b_l2=w(h, std=0.1),
            )
        )
    return Model(
        embed=w(spec["vocab"], h, std=1.0) if spec["vocab"] else None,
        pos=w(spec["s_max"], h, std=0.1),
        w_out=w(h, spec["o"]),
        layers=tuple(layers),
        norm_eps=spec["eps"],
        causal=spec["causal"],
    )


@st.composite
def model_specs(draw, dtype="float64", max_layers=3):
    N = draw(st.integers(0, max_layers))
    return {
        "h": draw(st.integers(1, 6)),
        "o": draw(st.integers(1, 4)),
        "s_max": draw(st.integers(1, 5)),
        "vocab": draw(st.one_of(st.none(), st.integers(1, 7))),
        "eps": draw(st.sampled_from([0.0, 1e-6, 0.25])),
        "causal": draw(st.booleans()),
        "dtype": dtype,
        "seed": draw(st.integers(0, 2**32 - 1)),
        "p": [draw(st.integers(1, 5)) for _ in range(N)],
        "heads": [
            [(draw(st.integers(1, 4)), draw(st.integers(1, 4))) for _ in range(draw(st.integers(1, 3)))]
            for _ in range(N)
        ],
    }


STEP_NAMES = list(NAMES)  # the paper's order (fpt_ref.paper)


def draw_step(data, model: Model):
    """One random, valid step for ``model`` as ``(op, kwargs)``; layer/head indices refer to ``model``."""
    ops = [op for op in STEP_NAMES if model.N > 0 or op in ("hidden", "add_layer")]
    op = data.draw(st.sampled_from(ops), label="op")
    grow = data.draw(st.integers(1, 3), label="grow")
    if op == "hidden":
        return op, {"h": model.h + grow}
    if op == "add_layer":
        at = data.draw(st.integers(0, model.N), label="at")
        kw = {"at": at}
        if model.N == 0 or data.draw(st.booleans(), label="override"):
            kw.update(
                p=data.draw(st.integers(1, 4)),
                n_heads=data.draw(st.integers(1, 2)),
                k=data.draw(st.integers(1, 3)),
                v=data.draw(st.integers(1, 3)),
            )
        return op, kw
    layers = data.draw(st.lists(st.integers(0, model.N - 1), min_size=1, max_size=model.N, unique=True), label="layers")
    if op == "mlp":
        return op, {"p": max(model.layers[n].p for n in layers) + grow, "layers": layers}
    if op == "add_heads":
        kw = {"count": data.draw(st.integers(1, 2)), "layers": layers}
        if data.draw(st.booleans(), label="kv"):
            kw.update(k=data.draw(st.integers(1, 3)), v=data.draw(st.integers(1, 3)))
        return op, kw
    # heads= applies to every chosen layer, so draw indices valid in all of them
    E_min = min(model.layers[n].E for n in layers)
    heads = data.draw(st.lists(st.integers(0, E_min - 1), min_size=1, unique=True), label="heads")
    key = "v" if op == "heads" else "k"
    size = max(getattr(model.layers[n].heads[e], key) for n in layers for e in heads) + grow
    kw = {key: size, "layers": layers, "heads": heads}
    if op == "attention":
        kw["scale"] = data.draw(st.sampled_from(["W_K", "W_Q"]), label="scale")
    return op, kw
