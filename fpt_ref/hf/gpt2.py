"""GPT-2 checkpoints (transformers' ``GPT2LMHeadModel``).

Tensor names (``transformer.`` prefix, absent in the oldest files) and their fpt_ref
counterparts (docs/hf.md). GPT-2's ``Conv1D`` stores ``[in, out]``, fpt_ref's own
orientation; ``c_attn`` fuses the queries, keys and values of every head (columns
``q | k | v``, each ``n_embd`` wide, head ``e`` at ``e d .. e d + d``, ``d = n_embd / n_head``)::

    wte.weight [V, h]                 embed (the output is tied to it unless tie_word_embeddings is false)
    wpe.weight [n_positions, h]       pos
    h.{n}.ln_1.{weight,bias} [h]      layers.{n}.norm_mha, norm_mha_b
    h.{n}.attn.c_attn.weight [h, 3h]  heads.{e}.w_q, w_k, w_v
    h.{n}.attn.c_attn.bias [3h]       heads.{e}.b_q, b_k, b_v
    h.{n}.attn.c_proj.weight [h, h]   heads.{e}.w_o (rows e d .. e d + d)
    h.{n}.attn.c_proj.bias [h]        layers.{n}.b_o
    h.{n}.ln_2.{weight,bias} [h]      layers.{n}.norm_mlp, norm_mlp_b
    h.{n}.mlp.c_fc.{weight [h, p], bias [p]}    w_l1, b_l1
    h.{n}.mlp.c_proj.{weight [p, h], bias [h]}  w_l2, b_l2
    ln_f.{weight,bias} [h]            final_norm, final_norm_b
    lm_head.weight [V, h]             w_out^T (only when untied)

``h.{n}.attn.bias`` and ``h.{n}.attn.masked_bias`` (causal-mask buffers of older files) are
ignored. The attention scale is ``1/sqrt(d)`` (``scale_attn_weights``).
"""

from __future__ import annotations

import numpy as np

from ..blocks import Arch
from ..model import Head, Layer, Model
from ..xp import to_numpy
from .common import (
    act_name,
    act_of,
    cannot_express,
    check_decoder,
    contig,
    get_float,
    get_int,
    head_sizes,
    read_output,
    refuse,
    t,
    unexpected,
    uniform,
)

MODEL_TYPES = ("gpt2",)
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")


def arch_of(config: dict) -> Arch:
    """The :class:`fpt_ref.blocks.Arch` of a GPT-2 config; refuses the options it cannot hold."""
    if config.get("scale_attn_by_inverse_layer_idx", False):
        raise refuse("scale_attn_by_inverse_layer_idx", "true: logits scaled by 1/(layer+1) are not supported")
    if not config.get("scale_attn_weights", True):
        raise refuse("scale_attn_weights", "false: logits without 1/sqrt(d) are not supported")
    if config.get("add_cross_attention", False):
        raise refuse("add_cross_attention", "true: cross-attention is not supported")
    return Arch(
        norm="layer",
        mlp="plain",
        act=act_of(config, "activation_function", "gelu_new"),
        mlp_bias=True,
        positions="learned",
        qkv_bias=True,
        o_bias=True,
        final_norm=True,
        tied=bool(config.get("tie_word_embeddings", True)),
    )


def to_model(config: dict, tensors, dtype=np.float64, max_seq: int | None = None, layer: int | None = None):
    """An fpt_ref :class:`~fpt_ref.model.Model` from a GPT-2 config and its tensors.

    ``max_seq`` keeps the first ``max_seq`` rows of ``wpe`` (default: all ``n_positions``).
    ``layer``: return layer ``layer`` alone (a :class:`~fpt_ref.model.Layer`; only its tensors
    are read: :mod:`fpt_ref.hf.stream`).
    """
    arch = arch_of(config)
    h = get_int(config, "n_embd")
    H = get_int(config, "n_head")
    if h % H:
        raise refuse("n_head", f"{H} does not divide n_embd={h}")
    d = h // H
    N = get_int(config, "n_layer", minimum=0)
    V = get_int(config, "vocab_size")
    P = get_int(config, "n_positions")
    p = get_int(config, "n_inner", 4 * h)
    names = set(tensors.names())
    pre = "" if any(n.startswith(("h.", "wte.")) for n in names) else "transformer."
    used: set = set()

    def get(name, shape):
        full = name if name.startswith("lm_head") else pre + name
        if full not in tensors:
            raise refuse("tensors", f"missing tensor {full!r}")
        if tensors.shape(full) != list(shape):
            raise refuse("tensors", f"{full!r} has shape {tensors.shape(full)}, the config says {list(shape)}")
        used.add(full)
        return tensors.get(full, dtype)

    layers = []
    for n in range(N) if layer is None else [int(layer)]:
        b = f"h.{n}."
        w = get(b + "attn.c_attn.weight", (h, 3 * h))  # [h, 3h]  q | k | v
        bias = get(b + "attn.c_attn.bias", (3 * h,))  # [3h]
        wo = get(b + "attn.c_proj.weight", (h, h))  # [h (in: heads), h]
        heads = []
        for e in range(H):
            q, k, v = (slice(j * h + e * d, j * h + (e + 1) * d) for j in range(3))
            heads.append(
                Head(
                    w_q=contig(w[:, q]),  # [h, d]
                    w_k=contig(w[:, k]),  # [h, d]
                    w_v=contig(w[:, v]),  # [h, d]
                    w_o=contig(wo[e * d : (e + 1) * d]),  # [d, h]
                    b_q=bias[q].copy(),
                    b_k=bias[k].copy(),
                    b_v=bias[v].copy(),
                )
            )
        layers.append(
            Layer(
                norm_mha=get(b + "ln_1.weight", (h,)),
                norm_mha_b=get(b + "ln_1.bias", (h,)),
                heads=tuple(heads),
                b_o=get(b + "attn.c_proj.bias", (h,)),
                norm_mlp=get(b + "ln_2.weight", (h,)),
                norm_mlp_b=get(b + "ln_2.bias", (h,)),
                w_l1=get(b + "mlp.c_fc.weight", (h, p)),  # [h, p]
                b_l1=get(b + "mlp.c_fc.bias", (p,)),
                w_l2=get(b + "mlp.c_proj.weight", (p, h)),  # [p, h]
                b_l2=get(b + "mlp.c_proj.bias", (h,)),
            )
        )
    if layer is not None:
        return layers[0]
    pos = get("wpe.weight", (P, h))  # [P, h]
    if max_seq is not None and int(max_seq) < P:
        pos = pos[: int(max_seq)].copy()
    w_out = read_output(arch, names, used, get, V, h)  # [h, V] or None (tied)
    model_kw = {
        "embed": get("wte.weight", (V, h)),
        "final_norm": get("ln_f.weight", (h,)),
        "final_norm_b": get("ln_f.bias", (h,)),
    }
    extra = sorted(x for x in names - used if not x.endswith(IGNORED_SUFFIXES))
    if extra:
        raise unexpected(extra, pre + "h.", "n_layer", len(layers))
    return Model(
        pos=pos,
        w_out=w_out,
        layers=tuple(layers),
        norm_eps=get_float(config, "layer_norm_epsilon", 1e-5),
        causal=True,
        arch=arch,
        **model_kw,
    )


def check(d: dict, arch: Arch, causal: bool, base: dict) -> dict:
    """Refuse (``ValueError`` starting ``model:``, naming the config field) a model of dimensions
    ``d`` and blocks ``arch`` that a GPT-2 config cannot express; returns its sizes."""
    family = "gpt2"
    arch_of(base)
    want = {
        "norm": ("layer_norm_epsilon", "layer"),
        "mlp": ("n_inner", "plain"),
        "positions": ("n_positions", "learned"),
        "qkv_bias": ("n_embd", True),
        "o_bias": ("n_embd", True),
        "mlp_bias": ("n_inner", True),
        "final_norm": ("layer_norm_epsilon", True),
    }
    for key, (field, value) in want.items():
        if getattr(arch, key) != value:
            raise cannot_express(field, family, f"{key}={getattr(arch, key)!r}, GPT-2 has {value!r}")
    check_decoder(d, arch, causal, family, "n_layer", "n_layer")
    layers = d["layers"]
    if any("kv_heads" in x for x in layers):
        raise cannot_express("n_head", family, "GPT-2 has no grouped-query attention")
    p = uniform([x["p"] for x in layers], "n_inner", family, "MLP width p")
    H = uniform([len(x["heads"]) for x in layers], "n_head", family, "head count")
    k = head_sizes(d, "n_embd", family)
    if H * k != d["h"]:
        raise cannot_express("n_embd", family, f"n_embd={d['h']} must equal n_head x head size = {H} x {k}")
    return {"h": d["h"], "H": H, "d": k, "p": p, "N": len(layers), "V": d["vocab"]}


def to_hf(model: Model, base: dict) -> tuple:
    """``(config, tensors)`` of ``model`` as a GPT-2 checkpoint (``base`` gives the other fields)."""
    from ..model import dims

    z = check(dims(model), model.arch, model.causal, base)
    cfg = dict(base)
    h, p = z["h"], z["p"]
    cfg.update(
        n_embd=h,
        n_head=z["H"],
        n_layer=z["N"],
        n_inner=None if p == 4 * h and base.get("n_inner") is None else p,
        n_positions=model.s_max,
        vocab_size=z["V"],
        layer_norm_epsilon=float(model.norm_eps),
        tie_word_embeddings=model.arch.tied,
        activation_function=act_name(model.arch.act, base.get("activation_function"), "gelu_new"),
    )
    if "n_ctx" in cfg:
        cfg["n_ctx"] = model.s_max

    def np_(a):
        return np.asarray(to_numpy(a))

    pre = "transformer."
    out = {
        pre + "wte.weight": np_(model.embed),
        pre + "wpe.weight": np_(model.pos),
        pre + "ln_f.weight": np_(model.final_norm),
        pre + "ln_f.bias": np_(model.final_norm_b),
    }
    if not model.arch.tied:
        out["lm_head.weight"] = t(np_(model.w_out))  # [V, h]
    for n, L in enumerate(model.layers):
        b = f"{pre}h.{n}."
        out[b + "ln_1.weight"], out[b + "ln_1.bias"] = np_(L.norm_mha), np_(L.norm_mha_b)
        out[b + "ln_2.weight"], out[b + "ln_2.bias"] = np_(L.norm_mlp), np_(L.norm_mlp_b)
        out[b + "attn.c_attn.weight"] = np.concatenate(
            [np_(getattr(H, kind)) for kind in ("w_q", "w_k", "w_v") for H in L.heads], axis=1
        )  # [h, 3h]
        out[b + "attn.c_attn.bias"] = np.concatenate(
            [np_(getattr(H, kind)) for kind in ("b_q", "b_k", "b_v") for H in L.heads]
        )  # [3h]
        out[b + "attn.c_proj.weight"] = np.concatenate([np_(H.w_o) for H in L.heads], axis=0)  # [h, h]
        out[b + "attn.c_proj.bias"] = np_(L.b_o)
        out[b + "mlp.c_fc.weight"], out[b + "mlp.c_fc.bias"] = np_(L.w_l1), np_(L.b_l1)
        out[b + "mlp.c_proj.weight"], out[b + "mlp.c_proj.bias"] = np_(L.w_l2), np_(L.b_l2)
    return cfg, out
