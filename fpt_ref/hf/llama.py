"""Llama, Mistral and Qwen2 checkpoints (transformers' ``LlamaForCausalLM`` and its kin).

Tensor names (``model.`` prefix) and their fpt_ref counterparts (docs/hf.md), ``d`` the
``head_dim``, ``H`` heads, ``G`` key/value heads; ``nn.Linear`` stores ``[out, in]``, the
transpose of fpt_ref's ``X @ W``::

    embed_tokens.weight [V, h]                      embed
    layers.{n}.input_layernorm.weight [h]           layers.{n}.norm_mha
    layers.{n}.self_attn.q_proj.weight [H d, h]     heads.{e}.w_q = (rows e d .. e d + d)^T
    layers.{n}.self_attn.k_proj.weight [G d, h]     w_k of group g (query heads g H/G .. g H/G + H/G - 1)
    layers.{n}.self_attn.v_proj.weight [G d, h]     w_v of group g
    layers.{n}.self_attn.{q,k,v}_proj.bias          b_q, b_k, b_v (qwen2; llama attention_bias)
    layers.{n}.self_attn.o_proj.weight [h, H d]     heads.{e}.w_o = (columns e d .. e d + d)^T
    layers.{n}.self_attn.o_proj.bias [h]            b_o (llama attention_bias)
    layers.{n}.post_attention_layernorm.weight [h]  layers.{n}.norm_mlp
    layers.{n}.mlp.gate_proj.weight [p, h]          w_gate^T
    layers.{n}.mlp.up_proj.weight [p, h]            w_l1^T
    layers.{n}.mlp.down_proj.weight [h, p]          w_l2^T   (.bias: b_gate, b_l1, b_l2 with llama mlp_bias)
    norm.weight [h]                                 final_norm
    lm_head.weight [V, h] (top level)               w_out^T; absent when tie_word_embeddings

Query head ``j`` reads key/value head ``j // (H/G)`` in transformers' ``repeat_kv`` as in
fpt_ref (docs/spec.md section 4.1); the attention scale is ``head_dim^-1/2 = 1/sqrt(k)``; RoPE
is the ``half`` layout (``rotate_half``) with base ``rope_theta``.
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
    get_float,
    get_int,
    head_sizes,
    read_output,
    refuse,
    rope_theta,
    set_rope_theta,
    t,
    unexpected,
    uniform,
)

MODEL_TYPES = ("llama", "mistral", "qwen2")
#: tensors a checkpoint may hold that carry no parameter (recomputed buffers)
IGNORED_SUFFIXES = (".self_attn.rotary_emb.inv_freq",)


def biases(config: dict) -> tuple:
    """``(qkv_bias, o_bias, mlp_bias)`` of a config of this family."""
    kind = config["model_type"]
    if kind == "qwen2":
        return True, False, False
    if kind == "mistral":
        return False, False, False
    att = bool(config.get("attention_bias", False))
    return att, att, bool(config.get("mlp_bias", False))


def arch_of(config: dict) -> Arch:
    """The :class:`fpt_ref.blocks.Arch` of a config of this family."""
    qkv, o, mlp = biases(config)
    return Arch(
        norm="rms",
        mlp="gated",
        act=act_of(config, "hidden_act", "silu"),
        mlp_bias=mlp,
        positions="rope",
        rope_theta=rope_theta(config),
        rope_layout="half",
        qkv_bias=qkv,
        o_bias=o,
        final_norm=True,
        tied=bool(config.get("tie_word_embeddings", False)),
    )


def sizes(config: dict) -> dict:
    """The sizes a config declares: h, H, G, d, p, N, V, positions."""
    h = get_int(config, "hidden_size")
    H = get_int(config, "num_attention_heads")
    G = get_int(config, "num_key_value_heads", H)
    if H % G:
        raise refuse("num_key_value_heads", f"{G} does not divide num_attention_heads={H}")
    d = get_int(config, "head_dim", h // H if h % H == 0 else None)
    return {
        "h": h,
        "H": H,
        "G": G,
        "d": d,
        "p": get_int(config, "intermediate_size"),
        "N": get_int(config, "num_hidden_layers", minimum=0),
        "V": get_int(config, "vocab_size"),
        "positions": get_int(config, "max_position_embeddings", 2048),
    }


def check_attention(config: dict, s_max: int) -> None:
    """Refuse sliding windows that cut sequences of up to ``s_max`` positions, and non-full layer types.

    A window of ``w`` positions attends to every earlier position of a sequence of at most
    ``w`` positions, so a window of at least ``s_max`` is full causal attention.
    """
    window = config.get("sliding_window")
    used = config["model_type"] == "mistral" or config.get("use_sliding_window", False)
    types = config.get("layer_types")
    if types is not None:
        bad = sorted({x for x in types if x not in ("full_attention", "sliding_attention")})
        if bad:
            raise refuse("layer_types", f"layer types {bad} are not supported (full attention only)")
        used = used or "sliding_attention" in types
        if len(types) != get_int(config, "num_hidden_layers", minimum=0):
            raise refuse("layer_types", f"{len(types)} entries for num_hidden_layers={config['num_hidden_layers']}")
    if used and window is not None and (not isinstance(window, int) or window < s_max):
        raise refuse(
            "sliding_window",
            f"a window of {window} positions is not full attention over {s_max} positions "
            "(load with a smaller max_seq, at most the window)",
        )


def to_model(config: dict, tensors, dtype=np.float64, max_seq: int | None = None, layer: int | None = None):
    """An fpt_ref :class:`~fpt_ref.model.Model` from a config dict and a :class:`~fpt_ref.hf.files.Tensors`.

    ``max_seq`` caps ``s_max`` (default ``max_position_embeddings``). ``ValueError`` starting
    ``config:`` names an unsupported field or tensor. ``layer``: return layer ``layer`` alone
    (a :class:`~fpt_ref.model.Layer`; only its tensors are read: :mod:`fpt_ref.hf.stream`).
    """
    arch = arch_of(config)
    z = sizes(config)
    h, H, G, d, p, N, V = (z[k] for k in ("h", "H", "G", "d", "p", "N", "V"))
    s_max = z["positions"] if max_seq is None else min(z["positions"], int(max_seq))
    check_attention(config, s_max)
    names = set(tensors.names())
    pre = "" if any(n.startswith(("layers.", "embed_tokens.")) for n in names) else "model."
    used: set = set()

    def get(name, shape):
        full = pre + name if not name.startswith("lm_head") else name
        if full not in tensors:
            raise refuse("tensors", f"missing tensor {full!r}")
        if tensors.shape(full) != list(shape):
            raise refuse("tensors", f"{full!r} has shape {tensors.shape(full)}, the config says {list(shape)}")
        used.add(full)
        return tensors.get(full, dtype)

    r = H // G
    layers = []
    for n in range(N) if layer is None else [int(layer)]:
        a = f"layers.{n}.self_attn."
        m = f"layers.{n}.mlp."
        wq, wk, wv = (
            get(a + "q_proj.weight", (H * d, h)),
            get(a + "k_proj.weight", (G * d, h)),
            get(a + "v_proj.weight", (G * d, h)),
        )  # [out, in] each
        wo = get(a + "o_proj.weight", (h, H * d))  # [h, H d]
        bq = bk = bv = None
        if arch.qkv_bias:
            bq, bk, bv = (
                get(a + "q_proj.bias", (H * d,)),
                get(a + "k_proj.bias", (G * d,)),
                get(a + "v_proj.bias", (G * d,)),
            )
        kv = []
        for g in range(G):
            sl = slice(g * d, (g + 1) * d)
            kv.append(
                {
                    "w_k": t(wk[sl]),  # [h, d]
                    "w_v": t(wv[sl]),  # [h, d]
                    "b_k": None if bk is None else bk[sl].copy(),
                    "b_v": None if bv is None else bv[sl].copy(),
                }
            )
        heads = []
        for e in range(H):
            sl = slice(e * d, (e + 1) * d)
            heads.append(
                Head(
                    w_q=t(wq[sl]),  # [h, d]
                    w_o=t(wo[:, sl]),  # [d, h]
                    b_q=None if bq is None else bq[sl].copy(),
                    **kv[e // r],
                )
            )
        mb = arch.mlp_bias
        layers.append(
            Layer(
                norm_mha=get(f"layers.{n}.input_layernorm.weight", (h,)),
                heads=tuple(heads),
                norm_mlp=get(f"layers.{n}.post_attention_layernorm.weight", (h,)),
                w_gate=t(get(m + "gate_proj.weight", (p, h))),  # [h, p]
                b_gate=get(m + "gate_proj.bias", (p,)) if mb else None,
                w_l1=t(get(m + "up_proj.weight", (p, h))),  # [h, p]
                b_l1=get(m + "up_proj.bias", (p,)) if mb else None,
                w_l2=t(get(m + "down_proj.weight", (h, p))),  # [p, h]
                b_l2=get(m + "down_proj.bias", (h,)) if mb else None,
                b_o=get(a + "o_proj.bias", (h,)) if arch.o_bias else None,
                kv_heads=G,
            )
        )
    if layer is not None:
        return layers[0]
    embed = get("embed_tokens.weight", (V, h))
    final = get("norm.weight", (h,))
    w_out = read_output(arch, names, used, get, V, h)  # [h, V] or None (tied)
    extra = sorted(x for x in names - used if not x.endswith(IGNORED_SUFFIXES))
    if extra:
        raise unexpected(extra, "model.layers.", "num_hidden_layers", len(layers))
    return Model(
        embed=embed,
        pos=None,
        w_out=w_out,
        layers=tuple(layers),
        norm_eps=get_float(config, "rms_norm_eps", 1e-6),
        causal=True,
        arch=arch,
        final_norm=final,
        max_seq=s_max,
    )


def check(d: dict, arch: Arch, causal: bool, base: dict, family: str) -> dict:
    """Refuse (``ValueError`` starting ``model:``, naming the config field) a model of dimensions
    ``d`` (:func:`fpt_ref.model.dims`) and blocks ``arch`` that a config of ``base``'s family
    cannot express; returns the config's sizes."""
    arch_of(base)  # the base config itself must be readable (RoPE scaling, activation, ...)
    qkv, o, mlp = biases(base)
    fields = {
        "norm": ("rms_norm_eps", "rms"),
        "mlp": ("intermediate_size", "gated"),
        "positions": ("rope_parameters", "rope"),
        "rope_layout": ("rope_parameters", "half"),
    }
    for key, (field, value) in fields.items():
        if getattr(arch, key) != value:
            raise cannot_express(field, family, f"{key}={getattr(arch, key)!r}, the family has {value!r}")
    if not arch.final_norm:
        raise cannot_express("rms_norm_eps", family, "the family has a final norm")
    if family == "llama":
        if arch.qkv_bias != arch.o_bias:
            raise cannot_express(
                "attention_bias", family, f"qkv_bias={arch.qkv_bias} and o_bias={arch.o_bias}: one flag sets both"
            )
    elif (arch.qkv_bias, arch.o_bias, arch.mlp_bias) != (qkv, o, mlp):
        raise cannot_express(
            "attention_bias",
            family,
            f"biases (qkv, o, mlp)=({arch.qkv_bias}, {arch.o_bias}, {arch.mlp_bias}); the family has ({qkv}, {o}, {mlp})",
        )
    check_decoder(d, arch, causal, family, "is_decoder", "num_hidden_layers")
    layers = d["layers"]
    p = uniform([x["p"] for x in layers], "intermediate_size", family, "MLP width p")
    H = uniform([len(x["heads"]) for x in layers], "num_attention_heads", family, "head count")
    G = uniform([x.get("kv_heads", len(x["heads"])) for x in layers], "num_key_value_heads", family, "kv head count")
    k = head_sizes(d, "head_dim", family)
    if family == "llama" and d["h"] % H:
        raise cannot_express(
            "num_attention_heads",
            family,
            f"transformers' LlamaConfig requires hidden_size={d['h']} to be a multiple of the {H} heads "
            "(even with head_dim set)",
        )
    return {"h": d["h"], "H": H, "G": G, "d": k, "p": p, "N": len(layers), "V": d["vocab"]}


def to_hf(model: Model, base: dict) -> tuple:
    """``(config, tensors)``: the config (``base`` with every size field replaced) and the
    tensors (HF names -> float NumPy arrays in the model's dtype) of ``model``.

    Refuses (before building anything) a model the family's config cannot express.
    """
    from ..model import dims

    family = base["model_type"]
    z = check(dims(model), model.arch, model.causal, base, family)
    cfg = dict(base)
    check_attention(base, model.s_max)
    cfg.update(
        hidden_size=z["h"],
        intermediate_size=z["p"],
        num_attention_heads=z["H"],
        num_key_value_heads=z["G"],
        head_dim=z["d"],
        num_hidden_layers=z["N"],
        vocab_size=z["V"],
        rms_norm_eps=float(model.norm_eps),
        tie_word_embeddings=model.arch.tied,
        hidden_act=act_name(model.arch.act, base.get("hidden_act"), "gelu_pytorch_tanh"),
        max_position_embeddings=max(int(base.get("max_position_embeddings") or 0), model.s_max),
    )
    if family == "llama":
        cfg.update(attention_bias=model.arch.qkv_bias, mlp_bias=model.arch.mlp_bias)
    if "layer_types" in base and base["layer_types"] is not None:
        cfg["layer_types"] = ["full_attention"] * z["N"]
    set_rope_theta(cfg, model.arch.rope_theta)

    def np_(a):
        return np.asarray(to_numpy(a))

    out = {"model.embed_tokens.weight": np_(model.embed), "model.norm.weight": np_(model.final_norm)}
    if not model.arch.tied:
        out["lm_head.weight"] = t(np_(model.w_out))  # [V, h]
    for n, L in enumerate(model.layers):
        a, m = f"model.layers.{n}.self_attn.", f"model.layers.{n}.mlp."
        leaders = [L.heads[e] for e in range(0, L.E, L.group_size)]
        out[f"model.layers.{n}.input_layernorm.weight"] = np_(L.norm_mha)
        out[f"model.layers.{n}.post_attention_layernorm.weight"] = np_(L.norm_mlp)
        out[a + "q_proj.weight"] = t(np.concatenate([np_(H.w_q) for H in L.heads], axis=1))  # [H d, h]
        out[a + "k_proj.weight"] = t(np.concatenate([np_(H.w_k) for H in leaders], axis=1))  # [G d, h]
        out[a + "v_proj.weight"] = t(np.concatenate([np_(H.w_v) for H in leaders], axis=1))  # [G d, h]
        out[a + "o_proj.weight"] = t(np.concatenate([np_(H.w_o) for H in L.heads], axis=0))  # [h, H d]
        if model.arch.qkv_bias:
            out[a + "q_proj.bias"] = np.concatenate([np_(H.b_q) for H in L.heads])  # [H d]
            out[a + "k_proj.bias"] = np.concatenate([np_(H.b_k) for H in leaders])  # [G d]
            out[a + "v_proj.bias"] = np.concatenate([np_(H.b_v) for H in leaders])  # [G d]
        if model.arch.o_bias:
            out[a + "o_proj.bias"] = np_(L.b_o)
        out[m + "gate_proj.weight"] = t(np_(L.w_gate))  # [p, h]
        out[m + "up_proj.weight"] = t(np_(L.w_l1))  # [p, h]
        out[m + "down_proj.weight"] = t(np_(L.w_l2))  # [h, p]
        if model.arch.mlp_bias:
            out[m + "gate_proj.bias"] = np_(L.b_gate)
            out[m + "up_proj.bias"] = np_(L.b_l1)
            out[m + "down_proj.bias"] = np_(L.b_l2)
    return cfg, out
