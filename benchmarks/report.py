"""Benchmark output: JSON results, a markdown table, PNG plots (matplotlib, Agg backend).

``write_all(results, out_dir)`` writes ``results.json``, ``table.md`` and the plots
``time_vs_params.png`` (every op's time against parameter count), ``backends.png``
(forward time per backend: NumPy, PyTorch CPU, transformers CPU, CuPy, PyTorch CUDA) and ``roofline.png``
(forward ``ratio_matmul`` against parameter count, with the targets). Records taken under
load (``under_load``, docs/benchmarks.md) are marked ``*`` in the tables; one-thread
records (``thread_setting == "one"``) get columns of their own beside the default ones.
"""

from __future__ import annotations

import json
import os

from .machine import LOAD_THRESHOLD

#: the performance targets (docs/benchmarks.md, "Where we stand"), each at the ladder's largest size
TARGETS = {
    "cpu_ratio_matmul": 0.8,  # the paper's model
    "cpu_ratio_matmul_arch": 0.7,  # the other presets (llama, qwen2, gpt2)
    "ratio_torch": 0.95,
    "ratio_transformers": 1.0,
    "ratio_copy": 3.0,
    "gpu_speedup": 20.0,
    "gpu_ratio_matmul": 0.7,
}


def cpu_ratio_matmul_target(archs) -> float:
    """The CPU forward's ``ratio_matmul`` target for a run of architectures ``archs``."""
    return TARGETS["cpu_ratio_matmul"] if set(archs) <= {"paper"} else TARGETS["cpu_ratio_matmul_arch"]


def write_json(results: dict, path: str) -> str:
    """``results`` as JSON at ``path``, written atomically (:func:`fpt_ref.files.write_text`)."""
    from fpt_ref.files import write_text

    write_text(path, json.dumps(results, indent=1, sort_keys=False) + "\n", name="path")
    return path


def _fmt(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}f}"


def _t(x: float | None) -> str:
    """Seconds, to three significant digits."""
    if x is None:
        return "-"
    return f"{x:.3g}"


def _params(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.0f}k"


def _find(records, setting: str = "default", **kw):
    """The first record with these fields and thread setting (records without one are ``"default"``)."""
    for r in records:
        if r.get("thread_setting", "default") == setting and all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def _ts(r) -> str:
    """A record's median seconds, marked ``*`` when it was taken under load; ``-`` for no record."""
    if r is None:
        return "-"
    return _t(r["seconds"]) + ("*" if r.get("under_load") else "")


def markdown_table(results: dict) -> str:
    """The results as markdown: a header naming the machine, a forward table, an expansion table."""
    recs = results["records"]
    m = results["machine"]
    cfg = results.get("config", {})
    sizes = []
    for r in recs:
        if r["size"] not in sizes:
            sizes.append(r["size"])
    dtypes = [d for d in ("float32", "float64") if any(r["dtype"] == d for r in recs)]
    gpu = any(r["backend"] == "cupy" for r in recs)
    torch_cpu = any(r["backend"] == "torch-cpu" for r in recs)
    hf_cpu = any(r["backend"] == "transformers-cpu" for r in recs)
    archs = sorted({r.get("arch", "paper") for r in recs})
    torch_cuda = any(r["backend"] == "torch-cuda" for r in recs)
    one = any(r.get("thread_setting") == "one" for r in recs)
    threads = cfg.get("blas_threads")
    cpu = m["cpu"]
    n_load = sum(1 for r in recs if r.get("under_load"))
    simd = cpu.get("numpy_simd") or {}
    torch_cap = (m.get("torch") or {}).get("cpu_capability")
    lines = [
        f"Machine: {m.get('summary', '?')}.",
        f"BLAS/PyTorch threads: {threads if threads is not None else 'library default'}"
        + ("; also one thread each, in the same alternating rounds (`1 thr` columns)" if one else "")
        + f"; load average {cpu.get('loadavg')} at start, {m.get('loadavg_end')} at end; "
        f"run took {m.get('wall_seconds')} s (ladder `{cfg.get('ladder')}`).",
        "Architecture: " + ", ".join(f"`{a}`" for a in archs or [cfg.get("arch", "paper")]) + _arch_note(recs),
    ]
    if simd or torch_cap:
        lines.append(
            "Vector kernels: "
            + "; ".join(
                x
                for x in (
                    f"NumPy dispatches to {', '.join(simd.get('dispatched') or []) or 'its baseline only'}"
                    if simd
                    else "",
                    f"PyTorch CPU capability {torch_cap}" if torch_cap else "",
                )
                if x
            )
            + "."
        )
    lines += [
        f"Under load: {n_load} of {len(recs)} records (marked *: other processes kept more than "
        f"{LOAD_THRESHOLD:.0%} of the {cpu.get('usable_cores') or ''} usable cores busy while they were measured).".replace(
            "the  usable", "the usable"
        ),
        "",
    ]
    if not gpu:
        lines += ["No GPU results: this run had no usable CUDA device (CuPy columns omitted).", ""]
    head = ["size", "params", "dtype", "NumPy s", "ratio_matmul"]
    if torch_cpu:
        head += ["PyTorch CPU s", "ratio_torch"]
    if hf_cpu:
        head += ["transformers s", "ratio_transformers"]
    if one:
        head += ["NumPy s (1 thr)", "ratio_matmul (1 thr)"]
        if torch_cpu:
            head += ["PyTorch CPU s (1 thr)", "ratio_torch (1 thr)"]
        if hf_cpu:
            head += ["transformers s (1 thr)", "ratio_transformers (1 thr)"]
    if gpu:
        head += ["CuPy s", "speedup_gpu", "GPU ratio_matmul"]
        if torch_cuda:
            head += ["PyTorch CUDA s"]
    fwd = [
        "**Forward** (median seconds; ratio_matmul = forward FLOP/s / same-run matmul FLOP/s, "
        f"target >= {cpu_ratio_matmul_target(archs)} on CPU at the largest size; ratio_torch = ours / PyTorch eager, "
        f"target <= {TARGETS['ratio_torch']}"
        + (
            f"; ratio_transformers = ours / transformers' eager model of the same weights, "
            f"target <= {TARGETS['ratio_transformers']} at the largest size"
            if hf_cpu
            else ""
        )
        + ")",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for size in sizes:
        for dt in dtypes:
            r = _find(recs, op="forward", backend="numpy", size=size, dtype=dt)
            if r is None:
                continue
            row = [size, _params(r["params"]), dt, _ts(r), _fmt(r["ratio_matmul"])]
            if torch_cpu:
                t = _find(recs, op="forward", backend="torch-cpu", size=size, dtype=dt)
                row += [_ts(t), _fmt(r["ratio_torch"])]
            if hf_cpu:
                t = _find(recs, op="forward", backend="transformers-cpu", size=size, dtype=dt)
                row += [_ts(t), _fmt(r.get("ratio_transformers"))]
            if one:
                r1 = _find(recs, "one", op="forward", backend="numpy", size=size, dtype=dt)
                row += [_ts(r1), _fmt(r1 and r1["ratio_matmul"])]
                if torch_cpu:
                    t1 = _find(recs, "one", op="forward", backend="torch-cpu", size=size, dtype=dt)
                    row += [_ts(t1), _fmt(r1 and r1["ratio_torch"])]
                if hf_cpu:
                    t1 = _find(recs, "one", op="forward", backend="transformers-cpu", size=size, dtype=dt)
                    row += [_ts(t1), _fmt(r1 and r1.get("ratio_transformers"))]
            if gpu:
                g = _find(recs, op="forward", backend="cupy", size=size, dtype=dt)
                row += [_ts(g), _fmt(g and g["speedup_gpu"], 1), _fmt(g and g["ratio_matmul"])]
                if torch_cuda:
                    tc = _find(recs, op="forward", backend="torch-cuda", size=size, dtype=dt)
                    row += [_ts(tc)]
            fwd.append("| " + " | ".join(row) + " |")
    lines += fwd + [""]
    ops_ = []
    for r in recs:
        if r.get("ref_copy_seconds") is not None and r["op"] not in ops_:
            ops_.append(r["op"])
    if ops_:
        head = ["size", "params", "dtype"] + [f"{op}" for op in ops_]
        lines += [
            f"**Expansions** (NumPy: median seconds / ratio_copy = time / same-run time to copy the output "
            f"model's bytes, target <= {TARGETS['ratio_copy']}; `plan` = the six composed)",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "|".join("---" for _ in head) + "|",
        ]
        for size in sizes:
            for dt in dtypes:
                cells = []
                base = None
                for op in ops_:
                    r = _find(recs, op=op, backend="numpy", size=size, dtype=dt)
                    base = base or r
                    cells.append("-" if r is None else f"{_ts(r)} / {_fmt(r['ratio_copy'], 1)}")
                if base is not None:
                    lines.append("| " + " | ".join([size, _params(base["params"]), dt] + cells) + " |")
        lines.append("")
    if gpu and ops_:
        head = ["size", "params", "dtype"] + list(ops_)
        lines += [
            "**Expansions on the GPU** (CuPy: median seconds / ratio_copy / speedup_gpu over NumPy where NumPy ran)",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "|".join("---" for _ in head) + "|",
        ]
        for size in sizes:
            for dt in dtypes:
                cells, base = [], None
                for op in ops_:
                    r = _find(recs, op=op, backend="cupy", size=size, dtype=dt)
                    base = base or r
                    cells.append(
                        "-" if r is None else f"{_ts(r)} / {_fmt(r['ratio_copy'], 1)} / {_fmt(r.get('speedup_gpu'), 1)}"
                    )
                if base is not None:
                    lines.append("| " + " | ".join([size, _params(base["params"]), dt] + cells) + " |")
        lines.append("")
    ver = [r for r in recs if r["op"] == "verify" and r["backend"] in ("numpy", "cupy")]
    if ver:
        lines += [
            "**Verify** (forward of the base and the plan-expanded model, and the comparison)",
            "",
            "| size | params (base -> expanded) | dtype | backend | seconds | ratio_matmul | preserved (max ulp) |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in ver:
            lines.append(
                f"| {r['size']} | {_params(r['params'])} -> {_params(r['out_params'])} | {r['dtype']} | "
                f"{r['backend']} | "
                f"{_ts(r)} | {_fmt(r['ratio_matmul'])} | "
                f"{'yes' if r['verify_ok'] else 'NO'} ({r['verify_max_ulp']:.1f}) |"
            )
        lines.append("")
    if results.get("notes"):
        lines += ["Notes: " + "; ".join(results["notes"]), ""]
    return "\n".join(lines)


def _arch_note(recs) -> str:
    """`` (dims ...)``: the dimensions that differ from the paper ladder's (key/value heads, MLP width), or ``"."``."""
    fwd = [r for r in recs if r["op"] == "forward" and r.get("arch", "paper") != "paper" and "dims" in r]
    seen, parts = set(), []
    for r in fwd:
        d = r["dims"]
        if r["size"] in seen:
            continue
        seen.add(r["size"])
        parts.append(f"{r['size']}: E={d['E']}, G={d.get('G', d['E'])}, p={d['p']}")
    return " (" + "; ".join(parts) + "; G key/value heads, p the MLP width)." if parts else "."


# ---- plots -----------------------------------------------------------------------------
def _series(recs, op, backend, dtype, key="seconds", setting="default"):
    pts = sorted(
        (r["params"], r[key])
        for r in recs
        if r["op"] == op
        and r["backend"] == backend
        and r["dtype"] == dtype
        and r.get("thread_setting", "default") == setting
        and r.get(key) is not None
    )
    return [p for p, _ in pts], [v for _, v in pts]


def plot_all(results: dict, out_dir: str) -> list:
    """Write the three PNG plots; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = results["records"]
    title = results["machine"].get("summary", "")
    if len(title) > 90:
        title = title[:87] + "..."
    paths = []
    dtypes = [d for d in ("float32", "float64") if any(r["dtype"] == d for r in recs)]
    styles = {"float32": "-", "float64": "--"}

    # 1. time vs params, every op on NumPy
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=80)
    ops_ = []
    for r in recs:
        if r["backend"] == "numpy" and r["op"] != "matmul" and r["op"] not in ops_:
            ops_.append(r["op"])
    for i, op in enumerate(ops_):
        for dt in dtypes:
            x, y = _series(recs, op, "numpy", dt)
            if x:
                ax.plot(
                    x,
                    y,
                    styles[dt],
                    marker="o",
                    ms=3,
                    color=f"C{i % 10}",
                    label=f"{op} {dt}" if dt == dtypes[0] else None,
                )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="parameters",
        ylabel="seconds (median)",
        title="NumPy: time vs model size (solid float32, dashed float64)",
    )
    ax.legend(fontsize=7, ncol=2)
    ax.grid(True, which="both", alpha=0.3)
    fig.text(0.01, 0.01, title, fontsize=6)
    paths.append(_save(fig, out_dir, "time_vs_params.png"))

    # 2. backends: forward time per backend (CPU vs GPU)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=80)
    backends = [
        b
        for b in ("numpy", "torch-cpu", "transformers-cpu", "cupy", "torch-cuda")
        if any(r["backend"] == b for r in recs)
    ]
    for i, b in enumerate(backends):
        for dt in dtypes:
            x, y = _series(recs, "forward", b, dt)
            if x:
                ax.plot(x, y, styles[dt], marker="o", ms=3, color=f"C{i}", label=f"{b} {dt}")
            x, y = _series(recs, "forward", b, dt, setting="one")
            if x:
                ax.plot(x, y, styles[dt], marker="x", ms=4, lw=0.7, color=f"C{i}", label=f"{b} {dt}, 1 thread")
    gpu = any(r["backend"] == "cupy" for r in recs)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="parameters",
        ylabel="forward seconds (median)",
        title="Forward: CPU vs GPU" + ("" if gpu else " (no GPU in this run)"),
    )
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.text(0.01, 0.01, title, fontsize=6)
    paths.append(_save(fig, out_dir, "backends.png"))

    # 3. roofline share
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=80)
    for i, b in enumerate(backends):
        for dt in dtypes:
            x, y = _series(recs, "forward", b, dt, "ratio_matmul")
            if x:
                ax.plot(x, y, styles[dt], marker="o", ms=3, color=f"C{i}", label=f"{b} {dt}")
    cpu_target = cpu_ratio_matmul_target({r.get("arch", "paper") for r in recs})
    ax.axhline(cpu_target, color="k", lw=0.8, ls=":", label=f"CPU target {cpu_target}")
    if gpu:
        ax.axhline(
            TARGETS["gpu_ratio_matmul"],
            color="gray",
            lw=0.8,
            ls="-.",
            label=f"GPU target {TARGETS['gpu_ratio_matmul']}",
        )
    ax.set(
        xscale="log",
        ylim=(0, 1.1),
        xlabel="parameters",
        ylabel="forward FLOP/s / matmul FLOP/s",
        title="Roofline share of the forward pass (ratio_matmul)",
    )
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.text(0.01, 0.01, title, fontsize=6)
    paths.append(_save(fig, out_dir, "roofline.png"))
    return paths


def _save(fig, out_dir, name):
    import matplotlib.pyplot as plt

    from fpt_ref.files import atomic_write

    path = os.path.join(out_dir, name)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"), name="out_dir")
    finally:
        plt.close(fig)
    return path


def write_all(results: dict, out_dir: str) -> list:
    """``results.json``, ``table.md`` and the PNG plots in ``out_dir`` (created); returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [write_json(results, os.path.join(out_dir, "results.json"))]
    from fpt_ref.files import write_text

    table = os.path.join(out_dir, "table.md")
    write_text(table, markdown_table(results) + "\n", name="out_dir")
    paths.append(table)
    paths += plot_all(results, out_dir)
    return paths
