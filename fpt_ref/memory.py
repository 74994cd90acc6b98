"""Memory a command will need, computed from dimensions before anything is allocated.

Every figure here is arithmetic over a model's :func:`~fpt_ref.model.dims` (plain Python
integers), so a plan whose third step would need 40 GiB is refused before its first step
runs. The figures are upper estimates of what the NumPy code paths hold at their peak:

- a model: the bytes of its tensors (``param_count x itemsize``);
- a forward pass on ``b`` sequences of ``s`` positions (:func:`forward_bytes`): the
  residual stream and the branch outputs (4 arrays ``[b, s, h]``), the fused Q/K/V
  weights and projections, the logits of the widest group of heads twice (the array and
  the temporary of one in-place step) ``2 b E s^2`` plus three ``[s, s]`` arrays of the
  causal mask, the MLP activations twice
  ``2 b s p``, and the output ``[b, s, o]``;
- a check comparing models (``verify``, ``expand``): the models, plus one forward pass of
  the largest of them, plus the inputs.

:func:`require` compares an estimate with the memory available (``MemAvailable`` of
``/proc/meminfo``, lowered to a cgroup limit when one is set) and raises
:class:`ResourceError` naming both figures.
"""

from __future__ import annotations

import os
from collections import Counter

GiB = 1024**3


class ResourceError(ValueError):
    """An operation that would need more memory than is available."""


def param_count_of(d: dict) -> int:
    """Number of parameters of a model with dimensions ``d`` (:func:`fpt_ref.model.dims`)."""
    h = d["h"]
    n = (d.get("vocab") or 0) * h + d["s_max"] * h + h * d["o"]
    mlp = int(d.get("mlp_matrices", 2))  # 3 for a gated MLP (W_gate)
    for layer in d["layers"]:
        p = layer["p"]
        n += 2 * h + mlp * h * p + p + h  # two gains, W_l1 (and W_gate), b_l1, W_l2, b_l2
        n += sum(h * (2 * k + v) + v * h for k, v in layer["heads"])  # W_Q, W_K, W_V, W_O (upper bound with GQA)
    return int(n)


def model_bytes(d: dict, itemsize: int) -> int:
    """Bytes of the tensors of a model with dimensions ``d``."""
    return param_count_of(d) * int(itemsize)


def forward_bytes(d: dict, batch: int, seq: int, itemsize: int) -> int:
    """Peak bytes of the temporaries of one forward pass (see the module docstring)."""
    h, o = d["h"], d["o"]
    rows = int(batch) * int(seq)
    peak_layer = 0
    fused = 0  # every layer's W_QKV and W_O concatenated, kept with the layer (fpt_ref.forward.fused)
    for layer in d["layers"]:
        heads = layer["heads"]
        qkv = sum(2 * k + v for k, v in heads)
        widest = max(Counter(map(tuple, heads)).values(), default=0)  # the largest group of equal (k, v)
        logits = (2 * int(batch) * widest + 3) * int(seq) ** 2  # + the causal mask's [s, s] temporaries
        fused += h * qkv + sum(v for _, v in heads) * h
        here = rows * (2 * qkv) + logits + 3 * rows * layer["p"]  # (a gated MLP holds 3 [rows, p])
        peak_layer = max(peak_layer, here)
    return int(itemsize) * (4 * rows * h + fused + peak_layer + rows * o)


def meminfo(field: str) -> int | None:
    """A ``/proc/meminfo`` field in bytes (``"MemAvailable"``, ``"MemTotal"``), or ``None``."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_bytes() -> int | None:
    """Memory this process may still use, or ``None`` where it cannot be read."""
    avail = meminfo("MemAvailable")
    for path, used_path in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            with open(path) as f:
                text = f.read().strip()
            if text == "max":
                continue
            with open(used_path) as f:
                left = int(text) - int(f.read().strip())
        except (OSError, ValueError):
            continue
        if left < (1 << 60):  # "no limit" is written as a huge number in cgroup v1
            avail = left if avail is None else min(avail, left)
    if avail is None and hasattr(os, "sysconf"):
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            pass
    return avail


def fmt_bytes(n: float) -> str:
    """``1.5 GiB``, ``320.0 MiB``, ``12 B``."""
    for unit, size in (("TiB", 1024**4), ("GiB", GiB), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def require(nbytes: int, what: str, available: int | None = None) -> None:
    """Raise :class:`ResourceError` when ``nbytes`` exceeds the memory available.

    ``what`` names the operation (``"step 2 (hidden h=1000000000)"``); ``available``
    defaults to :func:`available_bytes` (no check when it cannot be read).
    """
    avail = available_bytes() if available is None else available
    if avail is not None and nbytes > avail:
        raise ResourceError(
            f"{what} needs about {fmt_bytes(nbytes)} of memory, {fmt_bytes(avail)} available; "
            "use smaller sizes (or a larger machine)"
        )


def _chosen(n_items: int, sel) -> list:
    if sel is None:
        return list(range(n_items))
    sel = [sel] if isinstance(sel, int) else list(sel)
    return [i for i in sel if isinstance(i, int) and 0 <= i < n_items]


def dims_after(d: dict, op: str, args: dict) -> dict:
    """The dimensions after plan step ``op`` with ``args`` (plan keys), without building it.

    Mirrors what each expansion does to the sizes (paper sections 3.1-3.6, defaults as in
    :mod:`fpt_ref.expansions`); out-of-range selections are ignored here, since the
    expansion itself rejects them. Used to size a plan before running it.
    """
    layers = [dict(L, heads=[list(kv) for kv in L["heads"]]) for L in d["layers"]]
    out = dict(d, layers=layers)
    if op == "mlp":
        for n in _chosen(len(layers), args.get("layers")):
            layers[n]["p"] = int(args["p"])
    elif op == "add_heads":
        for n in _chosen(len(layers), args.get("layers")):
            L = layers[n]
            k, v = L["heads"][-1] if L["heads"] else (0, 0)
            new = [int(args.get("k", k)), int(args.get("v", v))]
            count = int(args.get("count", 1))
            G = L.get("kv_heads")
            if G is None or args.get("groups"):  # appended at the end (whole groups in a grouped layer)
                L["heads"] += [list(new) for _ in range(count)]
                if G is not None:
                    L["kv_heads"] = G + count // max(1, len(L["heads"][:-count]) // G)
            else:  # count / G new heads at the end of every group, of the group's sizes
                r, c = len(L["heads"]) // G, count // G
                L["heads"] = [
                    list(kv) for g in range(G) for kv in L["heads"][g * r : (g + 1) * r] + [L["heads"][g * r]] * c
                ]
    elif op in ("heads", "attention"):
        axis, key = (1, "v") if op == "heads" else (0, "k")
        for n in _chosen(len(layers), args.get("layers")):
            for e in _chosen(len(layers[n]["heads"]), args.get("heads")):
                layers[n]["heads"][e][axis] = int(args[key])
    elif op == "hidden":
        out["h"] = int(args["h"])
    elif op == "add_layer":
        at = int(args["at"])
        ref: dict = layers[at - 1 if at > 0 else 0] if layers else {"p": 0, "heads": []}
        if args.get("n_heads") is None:
            kv = [[int(args.get("k", k)), int(args.get("v", v))] for k, v in ref["heads"]]
        else:
            k0, v0 = ref["heads"][0] if ref["heads"] else (0, 0)
            kv = [[int(args.get("k", k0)), int(args.get("v", v0))] for _ in range(int(args["n_heads"]))]
        new_layer = {"p": int(args.get("p", ref["p"])), "heads": kv}
        G = args.get("kv_heads", ref.get("kv_heads") if args.get("n_heads") is None else None)
        if G is not None and int(G) != len(kv):
            new_layer["kv_heads"] = int(G)
        layers.insert(min(max(at, 0), len(layers)), new_layer)
    else:
        raise ValueError(f"op: unknown expansion {op!r}")
    out["N"] = len(layers)
    return out
