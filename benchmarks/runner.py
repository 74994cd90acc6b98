"""The benchmark runner: what one run measures (:class:`Config`) and its records.

Timing is :mod:`benchmarks.timing` (interleaved with a reference, docs/benchmarks.md), the
ratios :mod:`benchmarks.ratios`. The one exception to interleaving is PyTorch: its forward
and its own matmul reference form a separate group, run right after ours (mixing two
threaded runtimes in one loop makes both pathologically slow on few cores).

Record fields (one dict per measured (op, backend, dtype, size)):

``op, backend, dtype, size, dims, params`` identify it (``dims``: h, N, E, k, v, p, o, s, b;
``params``: parameter count of the input model); ``seconds`` (median), ``seconds_min``,
``seconds_max``, ``repeats``; work counts ``flops`` (forward/verify/matmul) and ``bytes``
(expansions: the output model's bytes); the paired reference medians ``ref_matmul_seconds``
with ``ref_matmul_flops``, ``ref_copy_seconds``, ``ref_torch_seconds``; and the ratios
``ratio_matmul``, ``ratio_copy``, ``ratio_torch``, ``speedup_gpu`` (``None`` where they do
not apply), filled by :func:`benchmarks.ratios.compute_ratios` from those fields alone; ``loadavg`` (the
system load when the record was taken). Forward records of PyTorch add ``torch_max_rel``
(its normwise distance from our output); verify records add ``verify_ok``, ``verify_max_ulp``;
expansion and verify records add ``out_params``.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from fpt_ref.model import param_count

from . import machine, ops
from .ratios import compute_ratios
from .timing import cpu_timer, cuda_timer, measure, summarize

SCHEMA = 1
SETTLE_S = 0.5  # pause between NumPy and PyTorch groups, so idle worker threads stop spinning


@dataclass
class Config:
    """What one run measures. ``ladder`` is ``"quick"``, ``"cpu"`` or ``"gpu"`` (see :mod:`benchmarks.ops`)."""

    ladder: str = "cpu"
    sizes: list | None = None
    backends: tuple = ("numpy", "cupy", "torch")
    dtypes: tuple = ("float32", "float64")
    ops: tuple = ops.OPS
    min_repeats: int = 3
    max_repeats: int = 9
    budget_s: float = 4.0  # target time of one timed group (all its functions, all rounds)
    matmul_n: dict = field(default_factory=lambda: {"numpy": 2048, "cupy": 8192})
    max_params: dict = field(default_factory=dict)  # backend -> largest model it runs
    blas_threads: int | None = None  # OpenBLAS and PyTorch CPU threads (None: their defaults)

    @classmethod
    def quick(cls, **kw) -> Config:
        base = dict(ladder="quick", min_repeats=2, max_repeats=5, budget_s=0.3, matmul_n={"numpy": 512, "cupy": 2048})
        base.update(kw)
        return cls(**base)


# ---- the run ---------------------------------------------------------------------------
def _record(op, backend, dtype, size: ops.Size, samples, **extra) -> dict:
    rec = {
        "op": op,
        "backend": backend,
        "dtype": dtype,
        "size": size.name,
        "dims": size.dims(),
        "params": size.params(),
    }
    rec.update(summarize(samples))
    rec.update(extra)
    rec["loadavg"] = machine.load_average()
    return rec


class _Log:
    def __init__(self, stream):
        self.stream, self.t0 = stream, time.perf_counter()

    def __call__(self, msg: str) -> None:
        if self.stream is not None:
            print(f"[{time.perf_counter() - self.t0:7.1f}s] {msg}", file=self.stream, flush=True)


def run(config: Config, log_stream=sys.stderr) -> dict:
    """Run the benchmarks of ``config``; return ``{"schema", "machine", "config", "notes", "records"}``.

    Backends that are asked for but unusable (CuPy without a CUDA device, PyTorch not
    installed) are skipped with a note; nothing fails because of them.
    """
    log = _Log(log_stream)
    unknown = [b for b in config.backends if b not in ("numpy", "cupy", "torch")]
    if unknown:
        raise ValueError(f"backends: unknown backend(s) {', '.join(unknown)} (numpy, cupy, torch)")
    bad_ops = [o for o in config.ops if o not in ops.OPS]
    if bad_ops:
        raise ValueError(f"ops: unknown op(s) {', '.join(bad_ops)} ({', '.join(ops.OPS)})")
    bad_dt = [d for d in config.dtypes if d not in ("float32", "float64")]
    if bad_dt:
        raise ValueError(f"dtypes: unknown dtype(s) {', '.join(bad_dt)} (float32, float64)")
    notes = []
    if config.blas_threads is not None and not machine.set_blas_threads(config.blas_threads):
        notes.append(f"blas_threads={config.blas_threads}: could not set (OpenBLAS not found)")
    cupy = torch = None
    if "cupy" in config.backends:
        cupy, why = machine.cupy_status()
        if cupy is None:
            notes.append(f"cupy: skipped, {why}")
    if "torch" in config.backends:
        torch, why = machine.torch_status()
        if torch is None:
            notes.append(f"torch: skipped, {why}")
    if config.blas_threads is not None and torch is not None:
        torch.set_num_threads(int(config.blas_threads))
    for n in notes:
        log(n)
    info = machine.machine_info(cupy, torch)
    log(f"machine: {info['summary']}")
    t_start = time.perf_counter()
    records: list = []
    backends = ["numpy"] + (["cupy"] if cupy is not None else [])
    for backend in backends:
        xp = np if backend == "numpy" else cupy
        timer = cpu_timer if backend == "numpy" else cuda_timer(cupy)
        tdev = None
        if torch is not None:
            if backend == "numpy":
                tdev = "cpu"
            elif torch.cuda.is_available():
                tdev = "cuda"
            else:
                notes.append("torch-cuda: skipped, this PyTorch build has no CUDA")
        sizes = ops.ladder(config.ladder, config.sizes, config.max_params.get(backend))
        for size in sizes:
            try:
                for dtype in config.dtypes:
                    records += _run_size(config, backend, xp, timer, torch, tdev, size, dtype, log)
            except MemoryError as exc:  # also CuPy's OutOfMemoryError, a MemoryError subclass
                notes.append(
                    f"{backend}: stopped at size {size.name} ({size.params()} parameters): {type(exc).__name__}"
                )
                log(notes[-1])
                break
    info["loadavg_end"] = machine.load_average()
    info["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    return {
        "schema": SCHEMA,
        "machine": info,
        "config": _config_dict(config),
        "notes": notes,
        "records": compute_ratios(records),
    }


def _config_dict(config: Config) -> dict:
    d = dict(config.__dict__)
    d["ladder_sizes"] = [dict(name=s.name, **s.dims()) for s in ops.LADDERS[config.ladder]]
    for k, v in d.items():
        if isinstance(v, tuple):
            d[k] = list(v)
    return d


def _run_size(config: Config, backend, xp, timer, torch, tdev, size: ops.Size, dtype: str, log) -> list:
    """All ops of one (backend, size, dtype)."""
    kw = dict(timer=timer, min_repeats=config.min_repeats, max_repeats=config.max_repeats, budget_s=config.budget_s)
    tname = None if tdev is None else f"torch-{tdev}"
    model = ops.build_model(size, dtype, xp)
    x = ops.build_inputs(model, size, xp)
    n_mm = config.matmul_n.get(backend, 2048)
    mm = ops.matmul_fn(n_mm, dtype, xp)
    mm_flops = ops.matmul_flops(n_mm)
    recs = []
    log(f"{backend} {size.name} ({size.params():,} params) {dtype}")
    if "forward" in config.ops:
        t = measure({"ours": ops.forward_fn(model, x), "matmul": mm}, **kw)
        check = {}
        if tname is not None:
            # PyTorch is timed in its own group, after a pause, never interleaved with NumPy:
            # two threaded runtimes alternating on few cores steal each other's spinning
            # worker threads (measured: 100x slower on 2 cores, docs/benchmarks.md).
            tfn = ops.torch_forward_fn(model, x, tdev)
            check = _torch_agreement(model, x, tfn)
            time.sleep(SETTLE_S)
            t.update(
                measure(
                    {
                        tname: _synced(tfn, ops.torch_sync(tdev)),
                        "torch-matmul": _torch_matmul(torch, n_mm, dtype, tdev),
                    },
                    **kw,
                )
            )
            time.sleep(SETTLE_S)
        flops = ops.forward_flops(model, size.b, size.s)
        ref = dict(ref_matmul_seconds=statistics.median(t["matmul"]), ref_matmul_flops=mm_flops)
        recs.append(_record("matmul", backend, dtype, size, t["matmul"], flops=mm_flops, matmul_n=n_mm))
        extra = {}
        if tname is not None:
            extra["ref_torch_seconds"] = statistics.median(t[tname])
            tref = dict(ref_matmul_seconds=statistics.median(t["torch-matmul"]), ref_matmul_flops=mm_flops)
            recs.append(_record("forward", tname, dtype, size, t[tname], flops=flops, **tref, **check))
            recs.append(_record("matmul", tname, dtype, size, t["torch-matmul"], flops=mm_flops, matmul_n=n_mm))
        recs.append(_record("forward", backend, dtype, size, t["ours"], flops=flops, **ref, **extra))
        log(
            f"  forward {statistics.median(t['ours']):.4f}s"
            + "".join(f", {k} {statistics.median(v):.4f}s" for k, v in t.items() if k != "ours")
        )
    for op in [o for o in ops.EXPANSIONS + ("plan",) if o in config.ops]:
        fn = ops.expansion_fn(op, model, size)
        out = fn()
        nbytes = ops.model_bytes(out)
        out_params = param_count(out)
        t = measure({"ours": fn, "copy": ops.copy_fn(out)}, **kw)
        del out
        recs.append(
            _record(
                op,
                backend,
                dtype,
                size,
                t["ours"],
                bytes=nbytes,
                out_params=out_params,
                ref_copy_seconds=statistics.median(t["copy"]),
            )
        )
        log(f"  {op} {statistics.median(t['ours']):.4f}s, copy {statistics.median(t['copy']):.4f}s")
    if "verify" in config.ops:
        expanded = ops.expansion_fn("plan", model, size)()
        vfn = ops.verify_fn(model, expanded, size)
        result = vfn()
        t = measure({"ours": vfn, "matmul": mm}, **kw)
        flops = ops.forward_flops(model, size.b, size.s) + ops.forward_flops(expanded, size.b, size.s)
        recs.append(
            _record(
                "verify",
                backend,
                dtype,
                size,
                t["ours"],
                flops=flops,
                ref_matmul_seconds=statistics.median(t["matmul"]),
                ref_matmul_flops=mm_flops,
                verify_ok=bool(result["ok"]),
                verify_max_ulp=float(result["max_ulp"]),
                out_params=param_count(expanded),
            )
        )
        log(f"  verify {statistics.median(t['ours']):.4f}s (preserved: {result['ok']})")
    return recs


def _synced(fn, sync):
    if sync is None:
        return fn

    def run():
        out = fn()
        sync()
        return out

    return run


def _torch_matmul(torch, n: int, dtype: str, device: str):
    g = torch.Generator().manual_seed(1)
    dt = getattr(torch, dtype)
    a = torch.randn(n, n, generator=g, dtype=dt).to(device)  # [n, n]
    b = torch.randn(n, n, generator=g, dtype=dt).to(device)  # [n, n]
    return _synced(lambda: a @ b, None if device == "cpu" else torch.cuda.synchronize)


def _torch_agreement(model, x, tfn) -> dict:
    """How far the PyTorch forward is from ours (normwise relative), so a wrong reference shows."""
    from fpt_ref.forward import forward
    from fpt_ref.xp import to_numpy

    ours = np.asarray(to_numpy(forward(model, x)), dtype=np.float64)
    theirs = tfn().detach().cpu().numpy().astype(np.float64)
    scale = float(np.max(np.abs(ours))) or 1.0
    return {"torch_max_rel": float(np.max(np.abs(ours - theirs))) / scale}
