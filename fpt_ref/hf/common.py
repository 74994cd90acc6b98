"""What the model families share: reading config fields, refusing what a model cannot hold.

Loading refuses, with ``ValueError`` starting ``config:`` and naming the field, every config
setting whose computation the block vocabulary of docs/spec.md section 4 does not have (RoPE
scaling, partial rotary, a sliding window shorter than the sequences, ...). Saving refuses,
starting ``model:`` and naming the config field, a model a config cannot express.
"""

from __future__ import annotations

import numpy as np

from ..checks import check_float, is_int

#: transformers' activation names (``hidden_act``, GPT-2 ``activation_function``) -> ``Arch.act``
HF_ACTS = {
    "silu": "silu",
    "swish": "silu",
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_python_tanh": "gelu_tanh",
    "relu": "relu",
}
#: RoPE parameter keys that change nothing for the default RoPE type
_ROPE_KEYS = {"rope_theta", "rope_type", "type", "partial_rotary_factor"}
DEFAULT_THETA = 10000.0


def refuse(field: str, why: str) -> ValueError:
    """``ValueError("config: FIELD ...")`` for a config setting the model cannot hold."""
    return ValueError(f"config: {field}: {why}")


def read_output(arch, names: set, used: set, get, V: int, h: int):
    """``W_out`` [h, V] from ``lm_head.weight`` (``nn.Linear``'s [V, h], read by ``get(name, shape)``),
    or ``None`` when the output is tied; a tied checkpoint's stored copy is marked ``used``
    (transformers ties it to the embedding and ignores it). Refuses an untied config without one."""
    if not arch.tied:
        if "lm_head.weight" not in names:
            raise refuse(
                "tie_word_embeddings", "false, but the checkpoint has no lm_head.weight (transformers would draw it)"
            )
        return t(get("lm_head.weight", (V, h)))  # [h, V]
    if "lm_head.weight" in names:
        used.add("lm_head.weight")
    return None


def cannot_express(field: str, family: str, why: str) -> ValueError:
    """``ValueError("model: ...")`` for a model that config field ``field`` of ``family`` cannot express."""
    return ValueError(f"model: a {family} config cannot express this model ({field}): {why}")


def get_int(config: dict, field: str, default=None, minimum: int = 1) -> int:
    """Integer config field ``field`` (``default`` when absent or null)."""
    value = config.get(field)
    if value is None:
        if default is None:
            raise refuse(field, "missing")
        return int(default)
    if not is_int(value) or value < minimum:
        raise refuse(field, f"expected an integer >= {minimum}, got {value!r}")
    return int(value)


def get_float(config: dict, field: str, default: float) -> float:
    value = config.get(field, default)
    value = default if value is None else value
    try:
        return check_float(field, value, minimum=0.0)
    except ValueError as exc:
        raise refuse(field, str(exc).split(": ", 1)[1]) from None


def act_of(config: dict, field: str, default: str) -> str:
    """``Arch.act`` of config field ``field`` (``hidden_act``, ``activation_function``)."""
    name = config.get(field, default)
    if name not in HF_ACTS:
        raise refuse(field, f"activation {name!r} is not supported (supported: {', '.join(sorted(HF_ACTS))})")
    return HF_ACTS[name]


def act_name(act: str, base: str | None, tanh_name: str) -> str:
    """The config's name for ``act``: the base config's own name when it means ``act``."""
    if base in HF_ACTS and HF_ACTS[base] == act:
        return base
    return {"silu": "silu", "gelu": "gelu", "gelu_tanh": tanh_name, "relu": "relu"}[act]


def rope_theta(config: dict) -> float:
    """RoPE base of a config (``rope_parameters["rope_theta"]``, else ``rope_theta``, else 10000).

    Refuses RoPE scaling (``rope_scaling``, or a ``rope_type`` other than ``default``),
    partial rotary (``partial_rotary_factor`` other than 1) and per-layer-type parameters.
    """
    scaling = config.get("rope_scaling")
    if scaling is not None:
        kind = scaling.get("rope_type", scaling.get("type", "default")) if isinstance(scaling, dict) else scaling
        if kind != "default" or set(scaling) - _ROPE_KEYS:
            raise refuse("rope_scaling", f"RoPE scaling {scaling!r} is not supported (only the default RoPE)")
    params = config.get("rope_parameters")
    theta = config.get("rope_theta")
    if params is not None:
        if not isinstance(params, dict) or any(isinstance(v, dict) for v in params.values()):
            raise refuse("rope_parameters", f"expected one dict of the default RoPE, got {params!r}")
        kind = params.get("rope_type", params.get("type", "default"))
        extra = sorted(set(params) - _ROPE_KEYS)
        if kind != "default" or extra:
            raise refuse("rope_parameters", f"RoPE type {kind!r} with {extra} is not supported (only the default RoPE)")
        theta = params.get("rope_theta", theta)
        partial = params.get("partial_rotary_factor", 1.0)
        if partial != 1.0:
            raise refuse("rope_parameters.partial_rotary_factor", f"partial rotary ({partial}) is not supported")
    partial = config.get("partial_rotary_factor", 1.0)
    if partial not in (None, 1.0, 1):
        raise refuse("partial_rotary_factor", f"partial rotary ({partial}) is not supported")
    theta = DEFAULT_THETA if theta is None else theta
    try:
        return check_float("rope_theta", theta, positive=True)
    except ValueError as exc:
        raise refuse("rope_theta", str(exc).split(": ", 1)[1]) from None


def set_rope_theta(config: dict, theta: float) -> None:
    """Write RoPE base ``theta`` into ``config`` (a copy being built) in the fields it uses.

    ``rope_parameters["rope_theta"]`` when the config has ``rope_parameters`` (transformers 5),
    the top-level ``rope_theta`` when it has that (both when both); a config with neither gets
    ``rope_parameters`` (the base ``10000`` stays implicit).
    """
    theta = float(theta)
    params = config.get("rope_parameters")
    if isinstance(params, dict):
        config["rope_parameters"] = dict(params, rope_theta=theta)
    if "rope_theta" in config:
        config["rope_theta"] = theta
    if not isinstance(params, dict) and "rope_theta" not in config and theta != DEFAULT_THETA:
        config["rope_parameters"] = {"rope_theta": theta, "rope_type": "default"}


def uniform(values: list, field: str, family: str, what: str):
    """The one value of ``values`` (per layer or head); :func:`cannot_express` when they differ."""
    distinct = sorted(set(values))
    if len(distinct) > 1:
        raise cannot_express(field, family, f"one {what} for every layer and head, got {distinct}")
    return distinct[0]


def head_sizes(d: dict, field: str, family: str) -> int:
    """The one key and value size of every head (``dims(model)`` ``d``): HF's one ``head_dim``."""
    ks = [k for layer in d["layers"] for k, _ in layer["heads"]]
    vs = [v for layer in d["layers"] for _, v in layer["heads"]]
    k = uniform(ks, field, family, "key size k")
    v = uniform(vs, field, family, "value size v")
    if k != v:
        raise cannot_express(field, family, f"key size k={k} differs from value size v={v}; one head_dim sets both")
    return k


def t(a):
    """A 2-d array transposed into a new C-contiguous array (``nn.Linear`` ``[out, in]`` <-> ``[in, out]``).

    A read-only array (the streaming reader's tensors and placeholders, :mod:`fpt_ref.hf.stream`)
    is transposed as a view: no copy, no memory.
    """
    a = np.asarray(a)
    return a.T if not a.flags.writeable else np.ascontiguousarray(a.T)


def contig(a):
    """``a`` as a C-contiguous array (a copy of a strided view); a read-only array stays a view (:func:`t`)."""
    a = np.asarray(a)
    return a if not a.flags.writeable else np.ascontiguousarray(a)


def unexpected(extra: list, layer_prefix: str, field: str, n_layers: int) -> ValueError:
    """The error for tensors no reader of the family consumed: layers beyond the config's count
    name the count field (a grown checkpoint whose config was not updated, as LLaMA-Pro#8
    reports); anything else names the first such tensor."""
    beyond = []
    for name in extra:
        if name.startswith(layer_prefix):
            index = name[len(layer_prefix) :].split(".", 1)[0]
            if index.isdigit() and int(index) >= n_layers:
                beyond.append(int(index))
    if beyond:
        return refuse(
            field,
            f"{n_layers}, but the checkpoint holds layers up to {max(beyond)} ({layer_prefix}{max(beyond)}.*): "
            f"the config was not updated",
        )
    return refuse("tensors", f"unexpected tensor {extra[0]!r} (a block this family's reader does not support)")


def check_decoder(d: dict, arch, causal: bool, family: str, causal_field: str, layers_field: str) -> None:
    """What every family's config needs of a model (dims ``d``): causal attention, an embedding
    table, an output over the vocabulary (or tied), at least one layer; ``cannot_express``
    naming the family's field otherwise."""
    if not causal:
        raise cannot_express(causal_field, family, "the model is not causal")
    if d["vocab"] is None:
        raise cannot_express("vocab_size", family, "the model has no embedding table")
    if not arch.tied and d["o"] != d["vocab"]:
        raise cannot_express("vocab_size", family, f"output size o={d['o']} differs from the vocabulary {d['vocab']}")
    if not d["layers"]:
        raise cannot_express(layers_field, family, "the model has no layers")
