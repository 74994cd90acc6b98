"""Hugging Face config bookkeeping: does each ``config.json`` describe its model, and the grown
one keep the base's per-layer settings?

:func:`check_configs` takes the two config dicts (either may be ``None``) and the models they
belong to. It checks the fields a grown checkpoint must update (the issue's list): sizes
(``hidden_size``, ``intermediate_size``, ``num_attention_heads``, ``num_key_value_heads``,
``head_dim``, ``num_hidden_layers``, ``vocab_size``; GPT-2's ``n_embd``, ``n_layer``,
``n_head``, ``n_inner``, ``n_positions``), RoPE's base (``rope_theta`` or
``rope_parameters.rope_theta``), the norm epsilon (``rms_norm_eps``, ``layer_norm_epsilon``,
``layer_norm_eps``), ``tie_word_embeddings``, ``layer_types`` (one per layer, each matched
layer keeping its base layer's type) and ``model_type`` (unchanged). A field a config does not
hold is not checked, except ``head_dim``, which transformers then takes as
``hidden_size // num_attention_heads``.
"""

from __future__ import annotations

import numpy as np

from ..audit import Finding
from ..model import Model

_ALIASES = {
    "hidden_size": ("hidden_size", "n_embd"),
    "num_hidden_layers": ("num_hidden_layers", "n_layer"),
    "num_attention_heads": ("num_attention_heads", "n_head"),
    "intermediate_size": ("intermediate_size", "n_inner"),
    "max_position_embeddings": ("max_position_embeddings", "n_positions"),
    "eps": ("rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps"),
}


def _get(cfg: dict, field: str):
    for key in _ALIASES.get(field, (field,)):
        if key in cfg and cfg[key] is not None:
            return key, cfg[key]
    return None, None


def _uniform(values: list, what: str, where: str, out: list):
    vals = sorted(set(values))
    if len(vals) > 1:
        out.append(Finding(where, f"per-layer {what} {vals} cannot be expressed by one config field"))
        return None
    return vals[0] if vals else None


def describe(cfg: dict, model: Model, label: str) -> list:
    """Findings where ``cfg`` (one ``config.json``) does not describe ``model``."""
    out: list = []

    def check(field: str, want, how=None):
        key, got = _get(cfg, field)
        if key is None or want is None:
            return
        same = how(got, want) if how else got == want
        if not same:
            out.append(Finding(f"{label}: {key}", f"is {got!r}, the model has {want!r}"))

    def close(a, b):
        return float(a) == float(b) or abs(float(a) - float(b)) <= float(np.spacing(abs(float(b))))

    check("hidden_size", model.h)
    check("num_hidden_layers", model.N)
    check("vocab_size", model.vocab)
    heads = _uniform([L.E for L in model.layers], "head counts", f"{label}: num_attention_heads", out)
    check("num_attention_heads", heads)
    kv = _uniform([L.G for L in model.layers], "key/value head counts", f"{label}: num_key_value_heads", out)
    if "num_key_value_heads" in cfg and cfg["num_key_value_heads"] is not None:
        check("num_key_value_heads", kv)
    elif kv is not None and heads is not None and kv != heads:
        out.append(Finding(f"{label}: num_key_value_heads", f"absent (so {heads}), the model has {kv}"))
    p = _uniform([L.p for L in model.layers], "MLP widths", f"{label}: intermediate_size", out)
    key, got = _get(cfg, "intermediate_size")
    if key is not None:
        check("intermediate_size", p)
    elif "n_embd" in cfg and p is not None and p != 4 * model.h:
        out.append(Finding(f"{label}: n_inner", f"absent (so 4 x n_embd = {4 * model.h}), the model has {p}"))
    sizes = {(hd.k, hd.v) for L in model.layers for hd in L.heads}
    if len(sizes) > 1 or (sizes and len({s for kv_ in sizes for s in kv_}) > 1):
        out.append(Finding(f"{label}: head_dim", f"key/value sizes {sorted(sizes)}: one head_dim sets both"))
    elif sizes:
        ((k, _),) = sizes
        if "head_dim" in cfg and cfg["head_dim"] is not None:
            check("head_dim", k)
        elif heads:
            implied = model.h // heads
            if implied != k:
                out.append(
                    Finding(f"{label}: head_dim", f"absent (so hidden_size // heads = {implied}), the model has {k}")
                )
    if model.arch.positions == "learned" and model.pos is not None:
        check("max_position_embeddings", int(model.pos.shape[0]))
    check("eps", model.norm_eps, close)
    if model.arch.positions == "rope":
        theta = cfg.get("rope_theta")
        if theta is None and isinstance(cfg.get("rope_parameters"), dict):
            theta = cfg["rope_parameters"].get("rope_theta")
        if theta is not None and not close(theta, model.arch.rope_theta):
            out.append(Finding(f"{label}: rope_theta", f"is {theta!r}, the model has {model.arch.rope_theta!r}"))
    check("tie_word_embeddings", model.arch.tied)
    types = cfg.get("layer_types")
    if types is not None and len(types) != model.N:
        out.append(
            Finding(
                f"{label}: layer_types", f"{len(types)} entries for {model.N} layers (transformers refuses to load)"
            )
        )
    return out


def check_configs(base_config: dict | None, grown_config: dict | None, base: Model, grown: Model, steps: list) -> list:
    """Findings of the config bookkeeping (module doc); ``steps`` is the layer alignment
    ``[(base layer or None, grown layer), ...]`` of :func:`fpt_ref.certify.infer.align_layers`."""
    out: list = []
    for name, cfg, model, label in (
        ("base_config", base_config, base, "base config"),
        ("grown_config", grown_config, grown, "config"),
    ):
        if cfg is None:
            continue
        if not isinstance(cfg, dict):
            raise TypeError(f"{name}: expected a dict (the contents of config.json), got {type(cfg).__name__}")
        out += describe(cfg, model, label)
    if base_config is None or grown_config is None:
        return out
    base_cfg, grown_cfg = base_config, grown_config
    if base_cfg.get("model_type") != grown_cfg.get("model_type"):
        out.append(
            Finding(
                "config: model_type", f"is {grown_cfg.get('model_type')!r}, the base's {base_cfg.get('model_type')!r}"
            )
        )
    bt, gt = base_cfg.get("layer_types"), grown_cfg.get("layer_types")
    if bt is not None and gt is not None and len(bt) == base.N and len(gt) == grown.N:
        for bi, gj in steps:
            if bi is not None and gt[gj] != bt[bi]:
                out.append(
                    Finding(
                        "config: layer_types", f"layer {gj} is {gt[gj]!r}, but it holds base layer {bi} ({bt[bi]!r})"
                    )
                )
                break
    return out
