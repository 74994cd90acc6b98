"""The ratios of a benchmark record, computed from its own fields (docs/benchmarks.md).

``ratio_matmul``: achieved FLOP/s over the paired reference matmul's FLOP/s;
``ratio_copy``: time over the paired copy of the output model's tensors; ``ratio_torch``:
time over the paired PyTorch forward (same thread setting); ``ratio_transformers``: time over
the paired Hugging Face transformers forward of the same weights (same thread setting);
``speedup_gpu``: the NumPy
record's time (default threads) over the CuPy record's (same op, dtype and size). ``None``
where a ratio does not apply.
"""

from __future__ import annotations

RATIOS = ("ratio_matmul", "ratio_copy", "ratio_torch", "ratio_transformers", "speedup_gpu")


def ratio_matmul(flops: float, seconds: float, ref_flops: float, ref_seconds: float) -> float:
    """Achieved FLOP/s over the reference matmul's FLOP/s: ``(flops/seconds) / (ref_flops/ref_seconds)``."""
    return (flops / seconds) / (ref_flops / ref_seconds)


def compute_ratios(records: list) -> list:
    """Fill the ratio fields of every record from its own fields (and, for ``speedup_gpu``,
    from the default-thread NumPy record of the same op, dtype and size). Returns new record dicts."""
    out = []
    for r in records:
        r = dict(r)
        for key in RATIOS:
            r[key] = None
        if r.get("flops") and r.get("ref_matmul_seconds") and r.get("ref_matmul_flops"):
            r["ratio_matmul"] = ratio_matmul(r["flops"], r["seconds"], r["ref_matmul_flops"], r["ref_matmul_seconds"])
        if r.get("ref_copy_seconds"):
            r["ratio_copy"] = r["seconds"] / r["ref_copy_seconds"]
        if r.get("ref_torch_seconds"):
            r["ratio_torch"] = r["seconds"] / r["ref_torch_seconds"]
        if r.get("ref_transformers_seconds"):
            r["ratio_transformers"] = r["seconds"] / r["ref_transformers_seconds"]
        out.append(r)
    cpu = {
        (r["op"], r["dtype"], r["size"]): r
        for r in out
        if r["backend"] == "numpy" and r.get("thread_setting", "default") == "default"
    }
    for r in out:
        if r["backend"] == "cupy" and (r["op"], r["dtype"], r["size"]) in cpu:
            r["speedup_gpu"] = cpu[(r["op"], r["dtype"], r["size"])]["seconds"] / r["seconds"]
    return out
