"""The transformers reference of the forward benchmark: an fpt-ref model as ``LlamaForCausalLM`` (docs/benchmarks.md).

:func:`hf_model` builds Hugging Face's own ``LlamaForCausalLM`` (``qwen2``:
``Qwen2ForCausalLM``) with eager attention, on the CPU, in the model's dtype, holding the
SAME weights as an fpt-ref model of the ``llama`` or ``qwen2`` preset (docs/spec.md
section 4); :func:`transformers_forward_fn` times its forward under
``torch.inference_mode``. Imports torch and transformers only when called.

**Mapping** (fpt-ref weights are ``[in, out]``, row vectors; ``nn.Linear.weight`` is
``[out, in]``, so every weight is transposed):

- ``q_proj.weight`` ``[E k, h]``: the query heads' ``W_Q^T`` stacked in head order;
  ``k_proj.weight``, ``v_proj.weight`` ``[G k, h]``, ``[G v, h]``: one block per key/value
  head, ``W_K^T``, ``W_V^T`` of the group's first head (``layer.heads[g r]``, which stores
  the group's keys and values; query head ``j`` reads key/value head ``j // r`` in both
  libraries, HF's ``repeat_kv``); Qwen2's ``q/k/v_proj.bias`` the same way;
- ``o_proj.weight`` ``[h, E v]``: the heads' ``W_O`` rows stacked in head order, transposed;
- ``gate_proj``, ``up_proj``, ``down_proj``: ``W_gate^T``, ``W_l1^T``, ``W_l2^T``;
- ``input_layernorm``, ``post_attention_layernorm``, ``model.norm``: ``norm_mha``,
  ``norm_mlp``, ``final_norm``; ``rms_norm_eps`` = ``norm_eps``; ``rope_theta`` =
  ``arch.rope_theta`` (HF's ``rotate_half`` is the ``half`` layout);
- ``lm_head.weight`` = ``W_out^T`` (``tie_word_embeddings=False``; ``vocab_size = o``);
  ``embed_tokens`` = ``embed`` when the model has one, else unused: real inputs go in as
  ``inputs_embeds``.

HF's causal mask is the model's ``causal=True``. What HF computes in float32 even in a
float64 model (the RMSNorm's mean square, the softmax, the RoPE angles) is listed with the
measured agreement in ``tests/test_benchmarks_hf.py`` and docs/benchmarks.md.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from fpt_ref.blocks import PRESETS
from fpt_ref.model import Model

#: fpt-ref preset -> the transformers class that implements it
HF_ARCHS = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def hf_arch(model: Model) -> str | None:
    """The preset of :data:`HF_ARCHS` that ``model`` is (any ``rope_theta``), or ``None``."""
    for name in HF_ARCHS:
        if model.arch.replace(rope_theta=PRESETS[name].rope_theta) == PRESETS[name]:
            return name
    return None


def check_mappable(model: Model) -> str:
    """``ValueError`` naming ``model`` unless :func:`hf_model` can express it; returns its preset name."""
    name = hf_arch(model)
    if name is None:
        raise ValueError(f"model: transformers reference only for the {', '.join(HF_ARCHS)} presets")
    if not model.causal:
        raise ValueError("model: the transformers causal LMs always apply the causal mask; need causal=True")
    if not model.layers:
        raise ValueError("model: needs at least one layer")
    L0 = model.layers[0]
    shape = (L0.E, L0.G, L0.heads[0].k, L0.heads[0].v, L0.p)
    for n, L in enumerate(model.layers):
        if any(hd.k != shape[2] or hd.v != shape[3] for hd in L.heads):
            raise ValueError(f"model: layer {n}: transformers needs one head size for keys and values")
        if (L.E, L.G, L.heads[0].k, L.heads[0].v, L.p) != shape:
            raise ValueError(f"model: layer {n}: transformers needs every layer of one shape")
    if shape[2] != shape[3]:
        raise ValueError(f"model: transformers needs k == v (head_dim), got k={shape[2]}, v={shape[3]}")
    return name


def _cat(arrays: list, axis: int):
    from fpt_ref.xp import to_numpy

    return np.concatenate([to_numpy(a) for a in arrays], axis=axis)


def hf_model(model: Model):
    """Hugging Face's ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` with the weights of ``model`` (module doc).

    Eager attention, CPU, the model's dtype, ``eval()`` mode. ``ValueError`` (:func:`check_mappable`)
    for a model it cannot express.
    """
    import torch
    import transformers

    from fpt_ref.xp import to_numpy

    name = check_mappable(model)
    L0 = model.layers[0]
    E, G, d, p = L0.E, L0.G, L0.heads[0].k, L0.p
    cls = transformers.Qwen2Config if name == "qwen2" else transformers.LlamaConfig
    extra = {} if name == "qwen2" else {"attention_bias": False, "mlp_bias": False}
    cfg = cls(
        vocab_size=model.o if model.embed is None else model.vocab,
        hidden_size=model.h,
        intermediate_size=p,
        num_hidden_layers=model.N,
        num_attention_heads=E,
        num_key_value_heads=G,
        head_dim=d,
        hidden_act="silu",
        max_position_embeddings=model.s_max,
        rms_norm_eps=float(model.norm_eps),
        rope_theta=float(model.arch.rope_theta),
        tie_word_embeddings=False,
        attn_implementation="eager",
        use_cache=False,
        **extra,
    )
    dtype = getattr(torch, str(model.dtype))
    hf = getattr(transformers, HF_ARCHS[name])(cfg).to(dtype).eval()
    if model.o != cfg.vocab_size:  # an embedding table of another size than the output: replace the head
        hf.lm_head = torch.nn.Linear(model.h, model.o, bias=False, dtype=dtype)

    def put(param, array):  # array in nn.Linear layout, shape checked by copy_
        t = torch.from_numpy(np.ascontiguousarray(to_numpy(array)))
        if tuple(param.shape) != tuple(t.shape):
            raise AssertionError(f"hf_model: shape {tuple(t.shape)} for a parameter of shape {tuple(param.shape)}")
        param.copy_(t)

    with torch.no_grad():
        for L, B in zip(model.layers, hf.model.layers):
            r = L.group_size
            leaders = [L.heads[g * r] for g in range(G)]
            a = B.self_attn
            put(a.q_proj.weight, _cat([hd.w_q for hd in L.heads], 1).T)  # [E k, h]
            put(a.k_proj.weight, _cat([hd.w_k for hd in leaders], 1).T)  # [G k, h]
            put(a.v_proj.weight, _cat([hd.w_v for hd in leaders], 1).T)  # [G v, h]
            put(a.o_proj.weight, _cat([hd.w_o for hd in L.heads], 0).T)  # [h, E v]
            if name == "qwen2":
                put(a.q_proj.bias, _cat([hd.b_q for hd in L.heads], 0))  # [E k]
                put(a.k_proj.bias, _cat([hd.b_k for hd in leaders], 0))  # [G k]
                put(a.v_proj.bias, _cat([hd.b_v for hd in leaders], 0))  # [G v]
            put(B.mlp.gate_proj.weight, to_numpy(L.w_gate).T)  # [p, h]
            put(B.mlp.up_proj.weight, to_numpy(L.w_l1).T)  # [p, h]
            put(B.mlp.down_proj.weight, to_numpy(L.w_l2).T)  # [h, p]
            put(B.input_layernorm.weight, L.norm_mha)  # [h]
            put(B.post_attention_layernorm.weight, L.norm_mlp)  # [h]
        put(hf.model.norm.weight, model.final_norm)  # [h]
        put(hf.lm_head.weight, to_numpy(model.w_out).T)  # [o, h]
        if model.embed is not None:
            put(hf.model.embed_tokens.weight, model.embed)  # [vocab, h]
    return hf


def transformers_forward_fn(model: Model, x) -> Callable:
    """``() -> logits`` [b, s, o] of :func:`hf_model` on ``x`` (real inputs [b, s, h] as ``inputs_embeds``, or
    token ids [b, s]), under ``torch.inference_mode``, without a key/value cache. The model is built once."""
    import torch

    from fpt_ref.xp import to_numpy

    hf = hf_model(model)
    xt = torch.from_numpy(np.ascontiguousarray(to_numpy(x)))  # [b, s, h] or [b, s]
    kw = {"input_ids": xt} if model.embed is not None else {"inputs_embeds": xt}

    def run():
        with torch.inference_mode():
            return hf(**kw, use_cache=False).logits  # [b, s, o]

    return run
