"""Random models for demos, tests and benchmarks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Union, cast

import numpy as np

from .blocks import PRESETS, Arch
from .checks import check_int, is_int
from .deprecation import renamed
from .memory import require
from .model import Head, Layer, Model

IntOrList = Union[int, Sequence[int]]


def _per_layer(name: str, value: IntOrList, layers: int) -> list:
    vals = [value] * layers if is_int(value) else list(cast(Sequence[int], value))
    if len(vals) != layers:
        raise ValueError(f"{name}: expected one value per layer ({layers}), got {len(vals)}")
    return [check_int(name, x, 1) for x in vals]


@renamed(heads="n_heads", layers="n_layers")
def init_model(
    h: int = 16,
    p: IntOrList = 32,
    n_heads: IntOrList = 2,
    k: IntOrList = 8,
    v: IntOrList = 8,
    n_layers: int = 2,
    out_dim: int = 10,
    max_seq: int = 12,
    vocab: int | None = None,
    eps: float = 0.0,
    causal: bool = False,
    dtype="float64",
    seed: int = 0,
    xp=np,
    arch: Arch | str | None = None,
    kv_heads: IntOrList | None = None,
) -> Model:
    """A randomly initialised model.

    ``p``, ``n_heads``, ``k``, ``v`` are one int for every layer or a list with one per layer;
    ``n_layers`` and ``n_heads`` are counts (``layers=`` and ``heads=`` are their deprecated
    names). The memory the model needs is checked before anything is drawn
    (:class:`fpt_ref.memory.ResourceError`, a ``ValueError``, naming both figures).
    Weights are drawn ``N(0, 1/fan_in)``; gains ``1 + N(0, 0.1^2)``; biases ``N(0, 0.1^2)``;
    embedding and positions ``N(0, 1)`` and ``N(0, 0.1^2)``. ``xp`` picks NumPy or CuPy.

    ``arch``: the blocks (:class:`fpt_ref.blocks.Arch` or a preset name of
    :data:`fpt_ref.blocks.PRESETS`; default the paper's model, drawn exactly as always for a
    given seed). A tied architecture needs ``vocab`` and has ``out_dim = vocab`` (``out_dim``
    is then ignored). ``kv_heads``: key/value heads per layer (one int or one per layer; it
    must divide ``n_heads``; default: every head its own).

    Examples
    --------
    >>> model = init_model(h=4, p=[8, 6], n_heads=2, k=2, v=3, n_layers=2, out_dim=3, max_seq=5, vocab=10)
    >>> model.h, model.N, model.vocab, [layer.p for layer in model.layers], model.layers[0].heads[0].v
    (4, 2, 10, [8, 6], 3)
    >>> init_model(h=0)
    Traceback (most recent call last):
    ...
    ValueError: h: must be at least 1, got 0
    """
    h, layers, out_dim, max_seq = (
        check_int(name, val, lo)
        for name, val, lo in (("h", h, 1), ("n_layers", n_layers, 0), ("out_dim", out_dim, 1), ("max_seq", max_seq, 1))
    )
    if vocab is not None:
        vocab = check_int("vocab", vocab, 1)
    if arch is None:
        arch = Arch()
    elif isinstance(arch, str):
        if arch not in PRESETS:
            raise ValueError(f"arch: unknown preset {arch!r}; choose from {', '.join(PRESETS)}")
        arch = PRESETS[arch]
    elif not isinstance(arch, Arch):
        raise TypeError(f"arch: expected an Arch or a preset name, got {type(arch).__name__}")
    if arch.tied:
        if vocab is None:
            raise ValueError("vocab: a tied architecture (W_out = embed^T) needs an embedding table")
        out_dim = vocab
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise ValueError(f"dtype: must be float32 or float64, got {dtype!r}")
    if seed is not None:
        seed = check_int("seed", seed, 0)
    per = {n: val for n, val in (("p", p), ("n_heads", n_heads), ("k", k), ("v", v))}
    for name, val in per.items():
        if is_int(val):
            check_int(name, val, 1)
    # the memory, from the sizes alone: before any per-layer list is built or any value drawn
    itemsize = np.dtype(dtype).itemsize
    if all(is_int(val) for val in per.values()):
        # each is an int here (is_int above), which mypy cannot follow
        sizes = [(int(cast(int, p)), int(cast(int, n_heads)), int(cast(int, k)), int(cast(int, v)))]
        repeat = layers
    else:
        sizes = list(zip(*(_per_layer(n, val, layers) for n, val in per.items())))
        repeat = 1
    n_params = (vocab or 0) * h + max_seq * h + h * out_dim
    n_params += repeat * sum(3 * h + 2 * h * p_ + p_ + E_ * (h * (2 * k_ + v_) + v_ * h) for p_, E_, k_, v_ in sizes)
    # each tensor is drawn in float64, then converted: the model plus its largest tensor in float64
    largest = h * max([out_dim, max_seq, vocab or 1] + [max(p_, k_, v_) for p_, _, k_, v_ in sizes])
    require(n_params * itemsize + 8 * largest, f"init_model ({n_params} parameters)")
    ps, Es, ks, vs = (_per_layer(n, val, layers) for n, val in per.items())
    Gs = list(Es) if kv_heads is None else _per_layer("kv_heads", kv_heads, layers)
    for n in range(layers):
        if Es[n] % Gs[n]:
            raise ValueError(f"kv_heads: {Gs[n]} key/value heads do not divide the {Es[n]} heads of layer {n}")
        if arch.positions == "rope" and ks[n] % 2:
            raise ValueError(f"k: RoPE rotates pairs of dimensions, so the key size must be even, got {ks[n]}")
    rng = np.random.default_rng(seed)

    def w(*shape, std=None):
        std = 1.0 / math.sqrt(shape[0]) if std is None else std
        return xp.asarray(rng.normal(0.0, std, size=shape), dtype=dtype)

    def gain():
        return xp.asarray(1.0 + rng.normal(0.0, 0.1, size=h), dtype=dtype)

    if arch.is_paper and kv_heads is None:  # the paper's model: the historical draw order
        layer_list = []
        for n in range(layers):
            hs = tuple(Head(w(h, ks[n]), w(h, ks[n]), w(h, vs[n]), w(vs[n], h)) for _ in range(Es[n]))
            layer_list.append(
                Layer(
                    norm_mha=gain(),
                    heads=hs,
                    norm_mlp=gain(),
                    w_l1=w(h, ps[n]),
                    b_l1=w(ps[n], std=0.1),
                    w_l2=w(ps[n], h),
                    b_l2=w(h, std=0.1),
                )
            )
        return Model(
            embed=None if vocab is None else w(vocab, h, std=1.0),
            pos=w(max_seq, h, std=0.1),
            w_out=w(h, out_dim),
            layers=tuple(layer_list),
            norm_eps=float(eps),
            causal=bool(causal),
        )

    def bias(n, on=True):
        return w(n, std=0.1) if on else None

    layer_norm = arch.norm == "layer"
    layer_list = []
    for n in range(layers):
        r = Es[n] // Gs[n]
        group: list = []
        for e in range(Es[n]):
            w_q, w_o, b_q = w(h, ks[n]), w(vs[n], h), bias(ks[n], arch.qkv_bias)
            if e % r == 0:
                kv = dict(
                    w_k=w(h, ks[n]), w_v=w(h, vs[n]), b_k=bias(ks[n], arch.qkv_bias), b_v=bias(vs[n], arch.qkv_bias)
                )
            else:  # the group's keys and values, shared
                kv = {kind: getattr(group[e - e % r], kind) for kind in ("w_k", "w_v", "b_k", "b_v")}
            group.append(Head(w_q=w_q, w_o=w_o, b_q=b_q, **kv))
        gated = arch.mlp == "gated"
        layer_list.append(
            Layer(
                norm_mha=gain(),
                norm_mha_b=bias(h, layer_norm),
                heads=tuple(group),
                b_o=bias(h, arch.o_bias),
                norm_mlp=gain(),
                norm_mlp_b=bias(h, layer_norm),
                w_gate=w(h, ps[n]) if gated else None,
                b_gate=bias(ps[n], gated and arch.mlp_bias),
                w_l1=w(h, ps[n]),
                b_l1=bias(ps[n], arch.mlp_bias),
                w_l2=w(ps[n], h),
                b_l2=bias(h, arch.mlp_bias),
                kv_heads=Gs[n],
            )
        )
    return Model(
        embed=None if vocab is None else w(vocab, h, std=1.0),
        pos=w(max_seq, h, std=0.1) if arch.positions == "learned" else None,
        w_out=None if arch.tied else w(h, out_dim),
        layers=tuple(layer_list),
        norm_eps=float(eps),
        causal=bool(causal),
        arch=arch,
        final_norm=gain() if arch.final_norm else None,
        final_norm_b=bias(h, arch.final_norm and layer_norm),
        max_seq=max_seq,
    )


def random_inputs(model: Model, batch: int = 4, seq: int | None = None, seed: int = 0, h: int | None = None):
    """Inputs for ``model``: token ids [batch, seq] or real inputs [batch, seq, h] (NumPy).

    ``h`` draws real inputs of a smaller width (to be zero-padded for a wider model).
    """
    rng = np.random.default_rng(seed)
    seq = model.s_max if seq is None else seq
    if model.embed is not None:
        return rng.integers(0, model.vocab, size=(batch, seq))
    return rng.normal(0.0, 1.0, size=(batch, seq, model.h if h is None else h)).astype(model.dtype)
