"""Convert between our per-head layout and the fused layouts many frameworks use (NumPy only).

Our files store each head separately (row-vector convention, ``x @ W``):
``layers.{n}.heads.{e}.w_q`` [h, k_e], ``w_k`` [h, k_e], ``w_v`` [h, v_e], ``w_o`` [v_e, h].
Heads of one layer may differ in ``k_e`` and ``v_e`` after per-head expansions.

Fused layouts (still ``x @ W``; transpose for ``torch.nn.Linear``, whose weight is [out, in]):

- fused ``W_O`` [sum_e v_e, h]: the heads' ``w_o`` stacked by rows in head order, so
  ``concat_e(H_e) @ W_O == sum_e H_e @ w_o_e`` (paper eq. 3);
- fused QKV [h, sum_e (2 k_e + v_e)], ``layout="grouped"``: columns
  ``[Q_0 .. Q_{E-1} | K_0 .. K_{E-1} | V_0 .. V_{E-1}]`` (GPT-2's ``c_attn`` Conv1D weight;
  transposed, ``torch.nn.MultiheadAttention.in_proj_weight`` when every ``k_e = v_e``);
- ``layout="interleaved"``: columns ``[Q_0 K_0 V_0 | Q_1 K_1 V_1 | ...]`` (per-head blocks).

With heterogeneous heads a fused projection cannot be reshaped to [b, s, E, k]; slice it
per head with :func:`qkv_slices`. After an expansion step, re-fuse from the new file: the
sizes come from the tensors (:func:`head_sizes`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

LAYOUTS = ("grouped", "interleaved")


def head_sizes(tensors: dict, n: int) -> tuple[list[int], list[int]]:
    """``(k_sizes, v_sizes)`` of layer ``n``'s heads, from per-head tensor names."""
    ks, vs = [], []
    e = 0
    while f"layers.{n}.heads.{e}.w_q" in tensors:
        ks.append(int(tensors[f"layers.{n}.heads.{e}.w_q"].shape[1]))
        vs.append(int(tensors[f"layers.{n}.heads.{e}.w_v"].shape[1]))
        e += 1
    if not ks:
        raise ValueError(f"tensors: layer {n} has no heads (no 'layers.{n}.heads.0.w_q')")
    return ks, vs


def fuse_w_o(w_os: Sequence[np.ndarray]) -> np.ndarray:
    """Stack the heads' ``w_o`` [v_e, h] into the fused ``W_O`` [sum v_e, h]."""
    hs = {int(w.shape[1]) for w in w_os}
    if len(hs) != 1:
        raise ValueError(f"w_os: heads disagree on h: shapes {[list(w.shape) for w in w_os]}")
    return np.concatenate(list(w_os), axis=0)  # [sum v_e, h]


def split_w_o(w_o: np.ndarray, v_sizes: Sequence[int]) -> list[np.ndarray]:
    """Inverse of :func:`fuse_w_o`: fused ``W_O`` [sum v_e, h] -> list of [v_e, h]."""
    if int(w_o.shape[0]) != sum(v_sizes):
        raise ValueError(f"w_o: {w_o.shape[0]} rows, but v_sizes {list(v_sizes)} sum to {sum(v_sizes)}")
    cuts = np.cumsum(v_sizes)[:-1]
    return list(np.split(w_o, cuts, axis=0))


def qkv_slices(k_sizes: Sequence[int], v_sizes: Sequence[int], layout: str = "grouped") -> list:
    """Per head, the column ``(q, k, v)`` slices of a fused QKV matrix [h, sum(2 k_e + v_e)]."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout: must be one of {LAYOUTS}, got {layout!r}")
    if len(k_sizes) != len(v_sizes):
        raise ValueError(f"k_sizes and v_sizes: lengths {len(k_sizes)} and {len(v_sizes)} differ")
    out = []
    if layout == "grouped":
        oq, ok, ov = 0, sum(k_sizes), 2 * sum(k_sizes)
        for k, v in zip(k_sizes, v_sizes):
            out.append((slice(oq, oq + k), slice(ok, ok + k), slice(ov, ov + v)))
            oq, ok, ov = oq + k, ok + k, ov + v
    else:
        o = 0
        for k, v in zip(k_sizes, v_sizes):
            out.append((slice(o, o + k), slice(o + k, o + 2 * k), slice(o + 2 * k, o + 2 * k + v)))
            o += 2 * k + v
    return out


def fuse_qkv(w_qs, w_ks, w_vs, layout: str = "grouped") -> np.ndarray:
    """Per-head ``w_q`` [h, k_e], ``w_k`` [h, k_e], ``w_v`` [h, v_e] -> fused [h, sum(2 k_e + v_e)]."""
    ks = [int(w.shape[1]) for w in w_qs]
    vs = [int(w.shape[1]) for w in w_vs]
    if [int(w.shape[1]) for w in w_ks] != ks:
        raise ValueError(f"w_ks: column counts {[int(w.shape[1]) for w in w_ks]} differ from w_qs' {ks}")
    h = int(w_qs[0].shape[0])
    fused = np.zeros((h, 2 * sum(ks) + sum(vs)), dtype=w_qs[0].dtype)  # [h, sum(2k + v)]
    for (sq, sk, sv), wq, wk, wv in zip(qkv_slices(ks, vs, layout), w_qs, w_ks, w_vs):
        fused[:, sq], fused[:, sk], fused[:, sv] = wq, wk, wv
    return fused


def split_qkv(w_qkv: np.ndarray, k_sizes, v_sizes, layout: str = "grouped"):
    """Inverse of :func:`fuse_qkv`: ``(w_qs, w_ks, w_vs)`` lists."""
    if int(w_qkv.shape[1]) != 2 * sum(k_sizes) + sum(v_sizes):
        raise ValueError(
            f"w_qkv: {w_qkv.shape[1]} columns, expected 2*sum(k)+sum(v) = "
            f"{2 * sum(k_sizes) + sum(v_sizes)} for k {list(k_sizes)}, v {list(v_sizes)}"
        )
    sl = qkv_slices(k_sizes, v_sizes, layout)
    return ([w_qkv[:, q] for q, _, _ in sl], [w_qkv[:, k] for _, k, _ in sl], [w_qkv[:, v] for _, _, v in sl])


def fuse_model(tensors: dict, layout: str = "grouped") -> tuple[dict, dict]:
    """Per-head file tensors -> ``(fused, sizes)``.

    ``fused`` replaces each layer's head tensors by ``layers.{n}.w_qkv`` [h, sum(2k+v)] and
    ``layers.{n}.w_o`` [sum v, h]; ``sizes`` maps ``n`` -> ``(k_sizes, v_sizes)``.
    """
    head = re.compile(r"^layers\.(\d+)\.heads\.\d+\.(w_q|w_k|w_v|w_o)$")
    fused = {k: v for k, v in tensors.items() if not head.match(k)}
    layers = sorted({int(m[1]) for m in map(head.match, tensors) if m})
    sizes = {}
    for n in layers:
        ks, vs = head_sizes(tensors, n)
        get = [[tensors[f"layers.{n}.heads.{e}.{w}"] for e in range(len(ks))] for w in ("w_q", "w_k", "w_v", "w_o")]
        fused[f"layers.{n}.w_qkv"] = fuse_qkv(get[0], get[1], get[2], layout)  # [h, sum(2k + v)]
        fused[f"layers.{n}.w_o"] = fuse_w_o(get[3])  # [sum v, h]
        sizes[n] = (ks, vs)
    return fused, sizes


def unfuse_model(fused: dict, sizes: dict, layout: str = "grouped") -> dict:
    """Inverse of :func:`fuse_model`: back to per-head file tensors."""
    out = {k: v for k, v in fused.items() if not re.match(r"^layers\.\d+\.(w_qkv|w_o)$", k)}
    for n, (ks, vs) in sizes.items():
        qs, kk, vv = split_qkv(fused[f"layers.{n}.w_qkv"], ks, vs, layout)
        os_ = split_w_o(fused[f"layers.{n}.w_o"], vs)
        for e in range(len(ks)):
            for name, arr in (("w_q", qs[e]), ("w_k", kk[e]), ("w_v", vv[e]), ("w_o", os_[e])):
                out[f"layers.{n}.heads.{e}.{name}"] = np.ascontiguousarray(arr)
    return out
