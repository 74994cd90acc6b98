"""A plain JAX implementation of the model, checked with ``fpt-ref compare``.

Usage::

    python examples/jax_model.py CASE_DIR -o actual.npz [--dtype float32]
    fpt-ref compare CASE_DIR actual.npz

Parameters are a pytree of ``jax.numpy`` arrays in our row-vector layout (``x @ W``, no
transposes). float64 needs ``jax_enable_x64``, which this module switches on at import.
Each head keeps its own ``k_e``: logits are scaled by ``1/sqrt(k_e)``. Norm epsilon and
causal flag come from the model file's metadata. ``--wrong-fixed-k K`` / ``--wrong-no-eps``
are the deliberately wrong variants that ``compare`` must reject.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

import jax

jax.config.update("jax_enable_x64", True)  # before any array is made: float64 support

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402


def load_params(path, dtype="float64"):
    """``(params, norm_eps, causal)`` from one of our model files; params is a pytree."""
    with safe_open(path, framework="numpy") as f:
        meta = f.metadata() or {}
    if meta.get("format") != "fpt-ref/1":  # fpt-ref/2: real-architecture blocks (docs/vectors.md)
        print(
            f"{path}: format {meta.get('format')!r}: this example implements the paper's model (fpt-ref/1) only; "
            "the case needs the blocks listed in its manifest.json (model.needs)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    t = {k: jnp.asarray(v, dtype=dtype) for k, v in load_file(path).items()}
    N = 1 + max((int(m[1]) for m in map(re.compile(r"^layers\.(\d+)\.").match, t) if m), default=-1)
    layers = []
    for n in range(N):
        pre = f"layers.{n}"
        E = sum(1 for k in t if re.match(rf"^{re.escape(pre)}\.heads\.\d+\.w_q$", k))
        heads = [{w: t[f"{pre}.heads.{e}.{w}"] for w in ("w_q", "w_k", "w_v", "w_o")} for e in range(E)]
        layers.append(
            {"heads": heads, **{w: t[f"{pre}.{w}"] for w in ("norm_mha", "norm_mlp", "w_l1", "b_l1", "w_l2", "b_l2")}}
        )
    params = {"embed": t.get("embed"), "pos": t["pos"], "w_out": t["w_out"], "layers": layers}
    return params, float(meta.get("norm_eps", "0.0")), meta.get("causal", "false") == "true"


def rms_norm(x, g, eps):
    """x: [b, s, h], g: [h] -> [b, s, h]."""
    return x * g / jnp.sqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)


def attention(head, x, causal, fixed_k=None):
    """One head: ``softmax(x W_Q (x W_K)^T / sqrt(k)) x W_V W_O``; x: [b, s, h] -> [b, s, h]."""
    q, k, v = x @ head["w_q"], x @ head["w_k"], x @ head["w_v"]  # [b, s, k], [b, s, k], [b, s, v]
    kk = fixed_k if fixed_k is not None else q.shape[-1]
    logits = (q @ jnp.swapaxes(k, -1, -2)) / jnp.sqrt(jnp.asarray(kk, dtype=x.dtype))  # [b, s, s]
    if causal:
        s = x.shape[1]
        logits = jnp.where(jnp.tril(jnp.ones((s, s), dtype=bool)), logits, -jnp.inf)
    return (jax.nn.softmax(logits, axis=-1) @ v) @ head["w_o"]  # [b, s, h]


def forward(params, x, eps, causal, fixed_k=None):
    """``(output [b, s, o], [X_1, ..., X_{N+1}])``; x: tokens [b, s] or inputs [b, s, h]."""
    inp = params["embed"][x] if params["embed"] is not None else x
    X = inp + params["pos"][: x.shape[1]]
    streams = [X]
    for L in params["layers"]:
        a = rms_norm(X, L["norm_mha"], eps)
        X = X + sum(attention(hd, a, causal, fixed_k) for hd in L["heads"])
        m = rms_norm(X, L["norm_mlp"], eps)
        X = X + jax.nn.relu(m @ L["w_l1"] + L["b_l1"]) @ L["w_l2"] + L["b_l2"]
        streams.append(X)
    return X @ params["w_out"], streams


def run_case(case_dir, dtype="float64", fixed_k=None, ignore_eps=False) -> dict:
    """``output`` and ``residual.{n}`` of a case as NumPy arrays in ``dtype``."""
    params, eps, causal = load_params(os.path.join(case_dir, "model.safetensors"), dtype)
    inputs = load_file(os.path.join(case_dir, "inputs.safetensors"))
    x = jnp.asarray(inputs["tokens"]) if "tokens" in inputs else jnp.asarray(inputs["inputs"], dtype=dtype)
    out, streams = forward(params, x, 0.0 if ignore_eps else eps, causal, fixed_k)
    res = {f"residual.{n}": np.asarray(r) for n, r in enumerate(streams)}
    res["output"] = np.asarray(out)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case_dir")
    ap.add_argument("-o", "--out", required=True, help=".npz or .safetensors")
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    ap.add_argument("--wrong-fixed-k", type=int, default=None, metavar="K")
    ap.add_argument("--wrong-no-eps", action="store_true")
    args = ap.parse_args(argv)
    res = {
        k: np.ascontiguousarray(v)
        for k, v in run_case(args.case_dir, args.dtype, args.wrong_fixed_k, args.wrong_no_eps).items()
    }
    np.savez(args.out, **res) if args.out.endswith(".npz") else save_file(res, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
