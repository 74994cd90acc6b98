"""The transformers reference of the forward benchmark: an fpt-ref model as ``LlamaForCausalLM`` (docs/benchmarks.md).

:func:`hf_model` builds Hugging Face's own ``LlamaForCausalLM`` (``qwen2``:
``Qwen2ForCausalLM``) with eager attention, on the CPU, in the model's dtype, holding the
SAME weights as an fpt-ref model of the ``llama`` or ``qwen2`` preset (docs/spec.md
section 4); :func:`transformers_forward_fn` times its forward under
``torch.inference_mode``. Imports torch and transformers only when called.

The weights and the config are fpt_ref's own export (:mod:`fpt_ref.hf`, the mapping that
``fpt-ref expand`` writes checkpoint folders with; docs/hf.md), loaded into the module with
``load_state_dict(strict=True)``. A benchmark model reads real inputs (no embedding table):
they go in as ``inputs_embeds``, and the export gets a zero table of ``o`` rows that the
forward never reads. HF's causal mask is the model's ``causal=True``. What HF computes in
float32 even in a float64 model (the RMSNorm's mean square, the softmax, the RoPE angles) is
listed with the measured agreement in ``tests/test_benchmarks_hf.py`` and docs/benchmarks.md.
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


def hf_model(model: Model):
    """Hugging Face's ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` with the weights of ``model`` (module doc).

    Eager attention, CPU, the model's dtype, ``eval()`` mode. ``ValueError`` (:func:`check_mappable`,
    then :mod:`fpt_ref.hf`'s refusals) for a model it cannot express.
    """
    import torch
    import transformers

    from fpt_ref import hf

    name = check_mappable(model)
    if model.embed is None:  # real inputs: a table the forward never reads, so that a config can say vocab_size
        model = model.replace(embed=model.xp.zeros((model.o, model.h), dtype=model.dtype))
    base = {"model_type": name, "architectures": [HF_ARCHS[name]], "use_cache": False}
    config, tensors = hf.family_of(base).to_hf(model, base)
    config.pop("architectures", None)
    cfg = transformers.AutoConfig.for_model(**config)
    dtype = getattr(torch, str(model.dtype))
    module = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").to(dtype).eval()
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}
    module.load_state_dict(state, strict=True)
    return module


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
