"""A plain NumPy implementation of the model, independent of fpt_ref, for ``fpt-ref compare``.

Usage::

    python examples/numpy_model.py CASE_DIR -o actual.npz [--dtype float32]
    fpt-ref compare CASE_DIR actual.npz

It reads ``model.safetensors`` (norm epsilon and causal flag from the file's metadata) and
``inputs.safetensors`` of a case written by ``fpt-ref vectors``, computes every head in its
own loop iteration (heads may differ in ``k`` and ``v``), and writes ``output`` [b, s, o]
and ``residual.{n}`` [b, s, h] (``residual.0`` = ``I + P``, ``residual.n`` = output of layer
``n-1``).

Two deliberately wrong variants show what ``compare`` catches:

- ``--wrong-fixed-k K`` scales every head's logits by ``1/sqrt(K)`` (a fixed head size,
  e.g. the base model's) instead of ``1/sqrt(k_e)`` of the head's current ``W_Q``;
- ``--wrong-no-eps`` ignores the norm epsilon stored in the model file.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file


def load_model(path: str):
    """``(tensors, norm_eps, causal)``: name -> float64 array, and the file's metadata."""
    with safe_open(path, framework="numpy") as f:
        meta = f.metadata() or {}
    if meta.get("format") != "fpt-ref/1":  # fpt-ref/2: real-architecture blocks (docs/vectors.md)
        print(
            f"{path}: format {meta.get('format')!r}: this example implements the paper's model (fpt-ref/1) only; "
            "the case needs the blocks listed in its manifest.json (model.needs)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    tensors = load_file(path)
    return tensors, float(meta.get("norm_eps", "0.0")), meta.get("causal", "false") == "true"


def layer_structure(tensors: dict) -> list:
    """Number of heads of each layer, from the tensor names ``layers.{n}.heads.{e}.w_q``."""
    heads: dict = {}
    for name in tensors:
        m = re.match(r"^layers\.(\d+)\.heads\.(\d+)\.w_q$", name)
        if m:
            heads[int(m[1])] = max(heads.get(int(m[1]), 0), int(m[2]) + 1)
    return [heads[n] for n in range(len(heads))]


def rms_norm(x, g, eps):
    """x: [b, s, h], g: [h] -> [b, s, h]."""
    return x * g / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def softmax(z):
    z = z - np.max(z, axis=-1, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=-1, keepdims=True)


def run(tensors: dict, norm_eps: float, causal: bool, x, dtype="float64", fixed_k=None, ignore_eps=False) -> dict:
    """``output`` [b, s, o] and ``residual.{n}`` [b, s, h] in ``dtype``.

    x: token ids [b, s] (model with ``embed``) or real inputs [b, s, h].
    """
    t = {k: v.astype(dtype) for k, v in tensors.items()}
    eps = 0.0 if ignore_eps else norm_eps
    s = x.shape[1]
    inp = t["embed"][x] if "embed" in t else x.astype(dtype)  # [b, s, h]
    X = inp + t["pos"][:s]  # [b, s, h]
    out = {"residual.0": X}
    mask = np.tril(np.ones((s, s), dtype=bool))  # [s, s]
    for n, E in enumerate(layer_structure(t)):
        pre = f"layers.{n}"
        a = rms_norm(X, t[f"{pre}.norm_mha"], eps)  # [b, s, h]
        mha = np.zeros_like(X)  # [b, s, h]
        for e in range(E):
            hp = f"{pre}.heads.{e}"
            q, k, v = a @ t[f"{hp}.w_q"], a @ t[f"{hp}.w_k"], a @ t[f"{hp}.w_v"]  # [b, s, k], [b, s, k], [b, s, v]
            kk = fixed_k if fixed_k is not None else q.shape[-1]
            logits = (q @ k.transpose(0, 2, 1)) / np.sqrt(np.asarray(kk, dtype=dtype))  # [b, s, s]
            if causal:
                logits = np.where(mask, logits, -np.inf)
            mha = mha + (softmax(logits) @ v) @ t[f"{hp}.w_o"]  # [b, s, h]
        X = X + mha  # X'_n
        m = rms_norm(X, t[f"{pre}.norm_mlp"], eps)  # [b, s, h]
        hidden = np.maximum(m @ t[f"{pre}.w_l1"] + t[f"{pre}.b_l1"], 0)  # [b, s, p]
        X = X + hidden @ t[f"{pre}.w_l2"] + t[f"{pre}.b_l2"]  # X_{n+1} [b, s, h]
        out[f"residual.{n + 1}"] = X
    out["output"] = X @ t["w_out"]  # [b, s, o]
    return out


def run_case(case_dir: str, dtype="float64", fixed_k=None, ignore_eps=False) -> dict:
    """Load a case's model and inputs and run :func:`run`."""
    tensors, eps, causal = load_model(os.path.join(case_dir, "model.safetensors"))
    inputs = load_file(os.path.join(case_dir, "inputs.safetensors"))
    x = inputs["tokens"] if "tokens" in inputs else inputs["inputs"]
    return run(tensors, eps, causal, x, dtype, fixed_k, ignore_eps)


def write(path: str, tensors: dict) -> None:
    """Write ``tensors`` as .npz or .safetensors (by extension)."""
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    if path.endswith(".npz"):
        np.savez(path, **arrays)
    else:
        save_file(arrays, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case_dir")
    ap.add_argument("-o", "--out", required=True, help=".npz or .safetensors")
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    ap.add_argument("--wrong-fixed-k", type=int, default=None, metavar="K")
    ap.add_argument("--wrong-no-eps", action="store_true")
    args = ap.parse_args(argv)
    write(args.out, run_case(args.case_dir, args.dtype, args.wrong_fixed_k, args.wrong_no_eps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
