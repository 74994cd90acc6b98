"""The model file format (README, "File format"): one safetensors file per model."""

from __future__ import annotations

import os

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from .model import Head, Layer, Model, named_tensors
from .names import HEAD_KINDS, parse_name, tensor_name
from .xp import to_numpy

FORMAT = "fpt-ref/1"


class FormatError(ValueError):
    """A model file that does not follow the documented layout."""


def save(model: Model, path) -> None:
    """Write ``model`` to ``path`` (safetensors; CuPy arrays are copied to the host)."""
    tensors = {name: np.ascontiguousarray(to_numpy(a)) for name, a in named_tensors(model).items()}
    meta = {"format": FORMAT, "norm_eps": repr(float(model.norm_eps)), "causal": "true" if model.causal else "false"}
    try:
        save_file(tensors, os.fspath(path), metadata=meta)
    except SafetensorError as exc:  # e.g. a missing folder: a user error about the path
        raise OSError(f"{os.fspath(path)}: cannot write ({exc})") from None


def load(path, xp=np) -> Model:
    """Read a model written by :func:`save`; ``xp=cupy`` puts it on the GPU.

    Raises ``FileNotFoundError`` for a missing file and :class:`FormatError` naming the
    tensor and shapes for a missing, extra, misnamed or wrongly shaped tensor or bad metadata.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        from safetensors import safe_open

        with safe_open(path, framework="numpy") as f:
            meta = f.metadata() or {}
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError, TypeError) as exc:  # TypeError: e.g. a bfloat16 tensor
        raise FormatError(f"{path}: not a readable safetensors file ({exc})") from None
    if meta.get("format") != FORMAT:
        raise FormatError(f"{path}: metadata format is {meta.get('format')!r}, expected {FORMAT!r}")
    try:
        eps = float(meta.get("norm_eps", "0.0"))
    except ValueError:
        raise FormatError(f"{path}: metadata norm_eps={meta.get('norm_eps')!r} is not a float") from None
    causal = meta.get("causal", "false")
    if causal not in ("true", "false"):
        raise FormatError(f"{path}: metadata causal={causal!r}, expected 'true' or 'false'")

    layer_parts: dict = {}
    head_parts: dict = {}
    for name in tensors:
        try:
            kind, n, e = parse_name(name)
        except ValueError:
            raise FormatError(f"{path}: unexpected tensor {name!r} with shape {list(tensors[name].shape)}") from None
        if e is not None:
            head_parts.setdefault(n, {}).setdefault(e, set()).add(kind)
        elif n is not None:
            layer_parts.setdefault(n, set()).add(kind)
    for req in ("pos", "w_out"):
        if req not in tensors:
            raise FormatError(f"{path}: missing tensor {req!r}")
    n_layers = 1 + max(list(layer_parts) + list(head_parts), default=-1)

    def get(name):
        if name not in tensors:
            raise FormatError(f"{path}: missing tensor {name!r}")
        return xp.asarray(tensors[name])

    layers = []
    for n in range(n_layers):
        heads_here = head_parts.get(n, {})
        n_heads = 1 + max(heads_here, default=-1)
        heads = tuple(Head(**{kind: get(tensor_name(kind, n, e)) for kind in HEAD_KINDS}) for e in range(n_heads))
        if not heads:
            raise FormatError(f"{path}: layer {n} has no heads (missing tensor {tensor_name('w_q', n, 0)!r})")
        layers.append(
            Layer(
                norm_mha=get(tensor_name("norm_mha", n)),
                heads=heads,
                norm_mlp=get(tensor_name("norm_mlp", n)),
                w_l1=get(tensor_name("w_l1", n)),
                b_l1=get(tensor_name("b_l1", n)),
                w_l2=get(tensor_name("w_l2", n)),
                b_l2=get(tensor_name("b_l2", n)),
            )
        )
    try:
        return Model(
            embed=xp.asarray(tensors["embed"]) if "embed" in tensors else None,
            pos=get("pos"),
            w_out=get("w_out"),
            layers=tuple(layers),
            norm_eps=eps,
            causal=causal == "true",
        )
    except (ValueError, TypeError) as exc:
        raise FormatError(f"{path}: {exc}") from None
