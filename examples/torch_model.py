"""A plain PyTorch implementation of the model, checked with ``fpt-ref compare``.

Usage::

    python examples/torch_model.py CASE_DIR -o actual.safetensors [--dtype float32] [--fused]
    fpt-ref compare CASE_DIR actual.safetensors

Loads ``model.safetensors`` of a case written by ``fpt-ref vectors`` into ``torch.nn``
modules and runs ``inputs.safetensors``. Our files use the row-vector convention
``x @ W`` with ``W`` [in, out]; ``torch.nn.Linear`` stores ``weight`` as [out, in] and
computes ``x @ weight.T``, so every matrix is transposed on load (``W_Q,e`` [h, k] becomes
``Linear(h, k).weight`` [k, h]). Norm epsilon and causal flag come from the file's
metadata. Each head keeps its own ``k_e``: the logits are scaled by ``1/sqrt(k_e)``.

``--fused`` builds one fused QKV ``Linear`` and one fused ``W_O`` ``Linear`` per layer
(examples/fused.py). ``--wrong-fixed-k K`` / ``--wrong-no-eps`` are the deliberately wrong
variants (a fixed ``1/sqrt(K)``; the norm epsilon ignored) that ``compare`` must reject.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys

import numpy as np
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fused as fz  # noqa: E402  (examples/fused.py)


class RMSNorm(nn.Module):
    """``x g / sqrt(mean(x^2) + eps)`` over the last axis."""

    def __init__(self, h: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(h))
        self.eps = eps

    def forward(self, x):  # [b, s, h]
        return x * self.weight / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


def attend(q, k, v, causal: bool, fixed_k=None):
    """``softmax(q k^T / sqrt(k)) v``; q, k: [b, s, k], v: [b, s, v] -> [b, s, v]."""
    scale = 1.0 / math.sqrt(fixed_k if fixed_k is not None else q.shape[-1])
    logits = (q @ k.transpose(-1, -2)) * scale  # [b, s, s]
    if causal:
        s = logits.shape[-1]
        mask = torch.ones(s, s, dtype=torch.bool, device=q.device).tril()
        logits = logits.masked_fill(~mask, float("-inf"))
    return torch.softmax(logits, dim=-1) @ v  # [b, s, v]


class Head(nn.Module):
    def __init__(self, h: int, k: int, v: int):
        super().__init__()
        self.q = nn.Linear(h, k, bias=False)  # weight [k, h] = W_Q,e^T
        self.k = nn.Linear(h, k, bias=False)
        self.v = nn.Linear(h, v, bias=False)  # weight [v, h] = W_V,e^T
        self.o = nn.Linear(v, h, bias=False)  # weight [h, v] = W_O,e^T


class Attention(nn.Module):
    """Multi-head attention with heads of any ``(k_e, v_e)``, per-head or fused weights."""

    def __init__(self, h, k_sizes, v_sizes, causal, fused=False, fixed_k=None):
        super().__init__()
        self.causal, self.fused, self.fixed_k = causal, fused, fixed_k
        self.k_sizes, self.v_sizes = list(k_sizes), list(v_sizes)
        if fused:
            self.qkv = nn.Linear(h, 2 * sum(k_sizes) + sum(v_sizes), bias=False)
            self.o = nn.Linear(sum(v_sizes), h, bias=False)
            self.slices = fz.qkv_slices(k_sizes, v_sizes, "grouped")
        else:
            self.heads = nn.ModuleList(Head(h, k, v) for k, v in zip(k_sizes, v_sizes))

    def forward(self, x):  # [b, s, h]
        if self.fused:
            qkv = self.qkv(x)  # [b, s, sum(2k + v)]
            outs = [
                attend(qkv[..., sq], qkv[..., sk], qkv[..., sv], self.causal, self.fixed_k)
                for sq, sk, sv in self.slices
            ]
            return self.o(torch.cat(outs, dim=-1))  # [b, s, h]
        return sum(hd.o(attend(hd.q(x), hd.k(x), hd.v(x), self.causal, self.fixed_k)) for hd in self.heads)


class Block(nn.Module):
    def __init__(self, h, p, k_sizes, v_sizes, eps, causal, fused=False, fixed_k=None):
        super().__init__()
        self.norm_mha = RMSNorm(h, eps)
        self.attn = Attention(h, k_sizes, v_sizes, causal, fused, fixed_k)
        self.norm_mlp = RMSNorm(h, eps)
        self.fc1 = nn.Linear(h, p)  # weight [p, h] = W_l1^T, bias b_l1
        self.fc2 = nn.Linear(p, h)  # weight [h, p] = W_l2^T, bias b_l2

    def forward(self, x):  # [b, s, h]
        x = x + self.attn(self.norm_mha(x))
        return x + self.fc2(torch.relu(self.fc1(self.norm_mlp(x))))


class Transformer(nn.Module):
    """docs/spec.md section 1; ``forward`` returns ``(output, [X_1, ..., X_{N+1}])``."""

    def __init__(self, h, o, s_max, vocab, layer_sizes, eps, causal, fused=False, fixed_k=None):
        super().__init__()
        self.embed = nn.Embedding(vocab, h) if vocab is not None else None
        self.pos = nn.Parameter(torch.zeros(s_max, h))
        self.layers = nn.ModuleList(Block(h, p, ks, vs, eps, causal, fused, fixed_k) for p, ks, vs in layer_sizes)
        self.out = nn.Linear(h, o, bias=False)  # weight [o, h] = W_out^T

    def forward(self, x):  # tokens [b, s] (long) or inputs [b, s, h]
        inp = self.embed(x) if self.embed is not None else x
        X = inp + self.pos[: x.shape[1]]
        streams = [X]
        for layer in self.layers:
            X = layer(X)
            streams.append(X)
        return self.out(X), streams


def from_safetensors(path, dtype=torch.float64, fused=False, fixed_k=None, ignore_eps=False) -> Transformer:
    """Build a :class:`Transformer` from one of our model files (transposing for ``nn.Linear``)."""
    with safe_open(path, framework="numpy") as f:
        meta = f.metadata() or {}
    if meta.get("format") != "fpt-ref/1":  # fpt-ref/2: real-architecture blocks (docs/vectors.md)
        print(
            f"{path}: format {meta.get('format')!r}: this example implements the paper's model (fpt-ref/1) only; "
            "the case needs the blocks listed in its manifest.json (model.needs)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    t = load_file(path)
    eps = 0.0 if ignore_eps else float(meta.get("norm_eps", "0.0"))
    causal = meta.get("causal", "false") == "true"
    N = 1 + max((int(m[1]) for m in map(re.compile(r"^layers\.(\d+)\.").match, t) if m), default=-1)
    sizes = [(int(t[f"layers.{n}.w_l1"].shape[1]),) + fz.head_sizes(t, n) for n in range(N)]
    h, o = t["w_out"].shape
    model = Transformer(
        h, o, t["pos"].shape[0], t["embed"].shape[0] if "embed" in t else None, sizes, eps, causal, fused, fixed_k
    ).to(dtype)  # cast first: copy_ then rounds float64 -> dtype once

    def T(a):  # [in, out] -> nn.Linear's [out, in]
        return torch.from_numpy(np.ascontiguousarray(a.T))

    with torch.no_grad():
        if model.embed is not None:
            model.embed.weight.copy_(torch.from_numpy(t["embed"]))
        model.pos.copy_(torch.from_numpy(t["pos"]))
        model.out.weight.copy_(T(t["w_out"]))
        for n, blk in enumerate(model.layers):
            pre = f"layers.{n}"
            blk.norm_mha.weight.copy_(torch.from_numpy(t[f"{pre}.norm_mha"]))
            blk.norm_mlp.weight.copy_(torch.from_numpy(t[f"{pre}.norm_mlp"]))
            blk.fc1.weight.copy_(T(t[f"{pre}.w_l1"]))
            blk.fc1.bias.copy_(torch.from_numpy(t[f"{pre}.b_l1"]))
            blk.fc2.weight.copy_(T(t[f"{pre}.w_l2"]))
            blk.fc2.bias.copy_(torch.from_numpy(t[f"{pre}.b_l2"]))
            E = len(sizes[n][1])
            w = {name: [t[f"{pre}.heads.{e}.{name}"] for e in range(E)] for name in ("w_q", "w_k", "w_v", "w_o")}
            if fused:
                blk.attn.qkv.weight.copy_(T(fz.fuse_qkv(w["w_q"], w["w_k"], w["w_v"], "grouped")))
                blk.attn.o.weight.copy_(T(fz.fuse_w_o(w["w_o"])))
            else:
                for e, hd in enumerate(blk.attn.heads):
                    hd.q.weight.copy_(T(w["w_q"][e]))
                    hd.k.weight.copy_(T(w["w_k"][e]))
                    hd.v.weight.copy_(T(w["w_v"][e]))
                    hd.o.weight.copy_(T(w["w_o"][e]))
    return model


def run_case(case_dir, dtype="float64", fused=False, fixed_k=None, ignore_eps=False) -> dict:
    """``output`` and ``residual.{n}`` of a case as NumPy arrays in ``dtype``."""
    tdtype = {"float64": torch.float64, "float32": torch.float32}[dtype]
    model = from_safetensors(os.path.join(case_dir, "model.safetensors"), tdtype, fused, fixed_k, ignore_eps)
    inputs = load_file(os.path.join(case_dir, "inputs.safetensors"))
    x = torch.from_numpy(inputs["tokens"]) if "tokens" in inputs else torch.from_numpy(inputs["inputs"]).to(tdtype)
    with torch.no_grad():
        out, streams = model(x)
    res = {f"residual.{n}": r.numpy() for n, r in enumerate(streams)}
    res["output"] = out.numpy()
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case_dir")
    ap.add_argument("-o", "--out", required=True, help=".safetensors or .npz")
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    ap.add_argument("--fused", action="store_true", help="fused QKV and W_O Linear layers")
    ap.add_argument("--wrong-fixed-k", type=int, default=None, metavar="K")
    ap.add_argument("--wrong-no-eps", action="store_true")
    args = ap.parse_args(argv)
    res = run_case(args.case_dir, args.dtype, args.fused, args.wrong_fixed_k, args.wrong_no_eps)
    res = {k: np.ascontiguousarray(v) for k, v in res.items()}
    np.savez(args.out, **res) if args.out.endswith(".npz") else save_file(res, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
