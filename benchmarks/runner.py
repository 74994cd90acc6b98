"""The benchmark runner: what one run measures (:class:`Config`) and its records.

Timing is :mod:`benchmarks.timing` (interleaved with a reference, docs/benchmarks.md), the
ratios :mod:`benchmarks.ratios`. The forward of each (size, dtype) is timed in alternating
rounds (:func:`benchmarks.timing.measure_rounds`): on the CPU, NumPy, PyTorch and (``llama``
and ``qwen2`` presets) Hugging Face transformers' own model of the same weights
(:mod:`benchmarks.hf`), each with the default thread count and, when ``Config.one_thread``,
with one thread; on the GPU, CuPy and PyTorch (CUDA). Each group is paired with its own
library's matmul. ``Config.arch`` picks the architecture of every model
(:meth:`benchmarks.ops.Size.for_arch`). Thread counts are
switched in the process, OpenBLAS's through ``ctypes`` (:func:`benchmarks.machine.set_blas_threads`)
and PyTorch's with ``torch.set_num_threads``; no dependency is added for it.

Record fields (one dict per measured (op, backend, dtype, size, thread setting)):

``op, backend, dtype, size, arch, dims, params`` identify it (``arch``: the preset;
``dims``: h, N, E, G, k, v, p, o, s, b; ``params``: parameter count of the input model); ``thread_setting`` (``"default"``: the
libraries' own thread count, or ``Config.blas_threads``; ``"one"``: one BLAS / PyTorch
thread) and ``threads`` (the count in force; ``None`` on the GPU or where unreadable);
``seconds`` (median), ``seconds_min``, ``seconds_max``, ``repeats``; work counts ``flops``
(forward/verify/matmul) and ``bytes`` (expansions: the output model's bytes); the paired
reference medians ``ref_matmul_seconds`` with ``ref_matmul_flops``, ``ref_copy_seconds``,
``ref_torch_seconds``, ``ref_transformers_seconds``; and the ratios ``ratio_matmul``,
``ratio_copy``, ``ratio_torch``, ``ratio_transformers``, ``speedup_gpu`` (``None`` where
they do not apply), filled by
:func:`benchmarks.ratios.compute_ratios` from those fields alone. The load: ``loadavg`` (1, 5
and 15 minute load averages when the record was taken), ``cpu_others`` (cores kept busy by
other processes during its timed rounds, :func:`benchmarks.machine.others_load`) and
``under_load`` (:func:`benchmarks.machine.under_load`). Forward records of PyTorch add
``torch_max_rel`` (its largest difference from our output over our largest output entry),
those of transformers ``transformers_max_rel``; verify records add ``verify_ok``,
``verify_max_ulp``; expansion and verify records add ``out_params``.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from fpt_ref.model import param_count

from . import hf, machine, ops
from .ratios import compute_ratios
from .timing import Group, cpu_timer, cuda_timer, measure, measure_rounds, summarize

SCHEMA = 3
BACKENDS = ("numpy", "cupy", "torch", "transformers")
SETTLE_S = 0.1  # pause before each CPU group of a round, so other runtimes' idle threads stop spinning
PRIMER_N = 256  # the small product that wakes a thread pool before its group's timed calls


@dataclass
class Config:
    """What one run measures. ``ladder`` is ``"quick"``, ``"cpu"`` or ``"gpu"`` and ``arch`` one of
    :data:`benchmarks.ops.ARCHS` (see :mod:`benchmarks.ops`).

    ``one_thread``: also time the CPU forward (NumPy and PyTorch, with their matmuls) with
    one thread, in the same alternating rounds as the default thread count. ``settle_s``:
    the pause before each CPU group of a round. ``time_budget_s``: no new (size, backend,
    dtype) is started once the run has taken this long (``None``: no limit); a note says
    what was left out.
    """

    ladder: str = "cpu"
    sizes: list | None = None
    backends: tuple = BACKENDS
    dtypes: tuple = ("float32", "float64")
    ops: tuple = ops.OPS
    min_repeats: int = 3
    max_repeats: int = 9
    budget_s: float = 4.0  # target time of one timed group (all its functions, all rounds)
    matmul_n: dict = field(default_factory=lambda: {"numpy": 2048, "cupy": 8192})
    max_params: dict = field(default_factory=dict)  # backend -> largest model it runs
    blas_threads: int | None = None  # OpenBLAS and PyTorch CPU threads (None: their defaults)
    one_thread: bool = True
    settle_s: float = SETTLE_S
    time_budget_s: float | None = None
    arch: str = "paper"

    @classmethod
    def quick(cls, **kw) -> Config:
        base: dict = dict(
            ladder="quick",
            min_repeats=2,
            max_repeats=5,
            budget_s=0.3,
            matmul_n={"numpy": 512, "cupy": 2048},
            settle_s=0.05,
        )
        base.update(kw)
        return cls(**base)


class _Threads:
    """Switches the CPU thread counts of NumPy's OpenBLAS and of PyTorch between their defaults and one."""

    def __init__(self, torch):
        self.torch = torch
        self.numpy_default = machine.blas_threads()  # None: OpenBLAS not found
        self.torch_default = int(torch.get_num_threads()) if torch is not None else None

    def numpy(self, setting: str) -> int | None:
        n = 1 if setting == "one" else self.numpy_default
        if n is not None:
            machine.set_blas_threads(n)
        return n

    def torch_(self, setting: str) -> int | None:
        n = 1 if setting == "one" else self.torch_default
        if n is not None:
            self.torch.set_num_threads(n)
        return n

    def restore(self) -> None:
        self.numpy("default")
        if self.torch is not None:
            self.torch_("default")


# ---- the run ---------------------------------------------------------------------------
def _record(op, backend, dtype, size: ops.Size, samples, load: dict, **extra) -> dict:
    rec = {
        "op": op,
        "backend": backend,
        "dtype": dtype,
        "size": size.name,
        "arch": size.arch,
        "dims": size.dims(),
        "params": size.params(),
        "thread_setting": "default",
        "threads": None,
    }
    rec.update(summarize(samples))
    rec.update(extra)
    rec["loadavg"] = machine.load_average()
    rec["cpu_others"] = load.get("cpu_others")
    rec["under_load"] = machine.under_load(rec["cpu_others"], rec["loadavg"], load["cores"])
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
    installed) are skipped with a note; nothing fails because of them. Sizes are run in
    ladder order, each on every backend, so a time budget cuts the largest sizes first.
    """
    log = _Log(log_stream)
    unknown = [b for b in config.backends if b not in BACKENDS]
    if unknown:
        raise ValueError(f"backends: unknown backend(s) {', '.join(unknown)} ({', '.join(BACKENDS)})")
    if config.arch not in ops.ARCHS:
        raise ValueError(f"arch: unknown architecture {config.arch!r} ({', '.join(ops.ARCHS)})")
    bad_ops = [o for o in config.ops if o not in ops.OPS]
    if bad_ops:
        raise ValueError(f"ops: unknown op(s) {', '.join(bad_ops)} ({', '.join(ops.OPS)})")
    bad_dt = [d for d in config.dtypes if d not in ("float32", "float64")]
    if bad_dt:
        raise ValueError(f"dtypes: unknown dtype(s) {', '.join(bad_dt)} (float32, float64)")
    ops.ladder(config.ladder, config.sizes, arch=config.arch)  # unknown sizes fail here, before any probing
    notes = []
    if config.blas_threads is not None and not machine.set_blas_threads(config.blas_threads):
        notes.append(f"blas_threads={config.blas_threads}: could not set (OpenBLAS not found)")
    cupy = torch = None
    if "cupy" in config.backends:
        cupy, why = machine.cupy_status()
        if cupy is None:
            notes.append(f"cupy: skipped, {why}")
    if "torch" in config.backends or "transformers" in config.backends:
        torch, why = machine.torch_status()
        if torch is None:
            notes.append(f"torch: skipped, {why}")
    transformers = None
    if "transformers" in config.backends and torch is not None:
        if config.arch not in hf.HF_ARCHS:
            notes.append(f"transformers: skipped, no transformers model for the {config.arch} architecture")
        else:
            transformers, why = machine.transformers_status()
            if transformers is None:
                notes.append(f"transformers: skipped, {why}")
    use_torch = torch is not None and "torch" in config.backends
    if config.blas_threads is not None and torch is not None:
        torch.set_num_threads(int(config.blas_threads))
    threads = _Threads(torch)
    one = _one_thread_plan(config, threads, torch, notes)
    if cupy is not None and use_torch and not torch.cuda.is_available():
        notes.append("torch-cuda: skipped, this PyTorch build has no CUDA")
    for n in notes:
        log(n)
    info = machine.machine_info(cupy, torch)
    info["transformers"] = transformers.__version__ if transformers is not None else None
    log(f"machine: {info['summary']}")
    t_start = time.perf_counter()
    records: list = []
    backends = ["numpy"] + (["cupy"] if cupy is not None else [])
    ladders = {b: ops.ladder(config.ladder, config.sizes, config.max_params.get(b), config.arch) for b in backends}
    stopped: set = set()
    out_of_time = False
    every = ops.ladder(config.ladder, arch=config.arch)
    for size in [s for s in every if any(s in ladders[b] for b in backends)]:
        for backend in backends:
            if backend in stopped or size not in ladders[backend]:
                continue
            xp = np if backend == "numpy" else cupy
            tdev = None
            if use_torch:
                tdev = "cpu" if backend == "numpy" else ("cuda" if torch.cuda.is_available() else None)
            refs = {"torch": tdev, "transformers": "cpu" if transformers is not None and backend == "numpy" else None}
            try:
                for dtype in config.dtypes:
                    spent = time.perf_counter() - t_start
                    if config.time_budget_s is not None and spent > config.time_budget_s:
                        notes.append(
                            f"time budget of {config.time_budget_s:g} s spent after {spent:.0f} s: "
                            f"stopped before {backend} {size.name} {dtype}"
                        )
                        log(notes[-1])
                        out_of_time = True
                        break
                    records += _run_size(config, backend, xp, torch, refs, threads, one, size, dtype, log)
            except MemoryError as exc:  # also CuPy's OutOfMemoryError, a MemoryError subclass
                notes.append(
                    f"{backend}: stopped at size {size.name} ({size.params()} parameters): {type(exc).__name__}"
                )
                log(notes[-1])
                stopped.add(backend)
            finally:
                threads.restore()
            if out_of_time:
                break
        if out_of_time:
            break
    info["loadavg_end"] = machine.load_average()
    info["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    records = compute_ratios(records)
    info["records_under_load"] = sum(1 for r in records if r["under_load"])
    return {
        "schema": SCHEMA,
        "machine": info,
        "config": _config_dict(config),
        "notes": notes,
        "records": records,
    }


def _one_thread_plan(config: Config, threads: _Threads, torch, notes: list) -> dict:
    """Which CPU runtimes also get one-thread rounds: ``{"numpy": bool, "torch": bool}`` (notes say why not)."""
    plan = {"numpy": False, "torch": False}
    if not config.one_thread or "forward" not in config.ops:
        return plan
    if threads.numpy_default is None:
        notes.append(
            "one-thread NumPy rounds: skipped, OpenBLAS not found in this process (run with "
            "OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 for one-thread figures)"
        )
    elif threads.numpy_default == 1:
        notes.append("one-thread NumPy rounds: skipped, the default is one thread")
    else:
        plan["numpy"] = True
    if torch is not None:
        if threads.torch_default == 1:
            notes.append("one-thread PyTorch rounds: skipped, the default is one thread")
        else:
            plan["torch"] = True
    return plan


def _config_dict(config: Config) -> dict:
    d = dict(config.__dict__)
    d["ladder_sizes"] = [dict(name=s.name, **s.dims()) for s in ops.LADDERS[config.ladder]]
    for k, v in d.items():
        if isinstance(v, tuple):
            d[k] = list(v)
    return d


def _primer(xp_or_torch, dtype: str, n: int = PRIMER_N):
    """``() -> None`` running three small products: wakes a library's thread pool, untimed."""
    if xp_or_torch is np:
        a = np.ones((n, n), dtype=dtype)  # [n, n]
    else:
        a = xp_or_torch.ones(n, n, dtype=getattr(xp_or_torch, dtype))  # [n, n]

    def run():
        for _ in range(3):
            a @ a

    return run


def _forward_groups(config, backend, xp, torch, tdev, threads, one, model, x, mm, tfn, dtype, hfn=None) -> tuple:
    """The groups of the forward's alternating rounds, and ``{group: (backend label, setting)}``.

    ``tfn``: the PyTorch forward (or None), ``hfn``: the transformers forward (CPU only, or None)."""
    fwd = ops.forward_fn(model, x)
    groups: dict = {}
    labels: dict = {}
    if backend != "numpy":  # GPU: CuPy and PyTorch CUDA, default settings, no settling needed
        timer = cuda_timer(xp)
        groups["ours"] = Group({"ours": fwd, "matmul": mm}, timer)
        labels["ours"] = (backend, "default")
        if tfn is not None:
            tmm = _torch_matmul(torch, config.matmul_n.get(backend, 2048), dtype, tdev)
            groups["torch"] = Group({"ours": _synced(tfn, ops.torch_sync(tdev)), "matmul": tmm}, timer)
            labels["torch"] = (f"torch-{tdev}", "default")
        return groups, labels
    n_mm = config.matmul_n.get(backend, 2048)
    settings = ["default"] + (["one"] if one["numpy"] or one["torch"] else [])
    np_primer = _primer(np, dtype)
    uses_torch = tfn is not None or hfn is not None
    t_primer = _primer(torch, dtype) if uses_torch else None
    tmm = _torch_matmul(torch, n_mm, dtype, "cpu") if uses_torch else None
    for st in settings:
        if st == "default" or one["numpy"]:

            def enter_np(st=st):
                threads.numpy(st)
                np_primer()

            groups[f"numpy/{st}"] = Group({"ours": fwd, "matmul": mm}, cpu_timer, enter_np, config.settle_s)
            labels[f"numpy/{st}"] = ("numpy", st)
        if uses_torch and (st == "default" or one["torch"]):

            def enter_t(st=st):  # PyTorch and transformers share the thread setting and the primer
                threads.torch_(st)
                t_primer()

            for key, fn, label in (("torch", tfn, "torch-cpu"), ("transformers", hfn, "transformers-cpu")):
                if fn is not None:
                    groups[f"{key}/{st}"] = Group({"ours": fn, "matmul": tmm}, cpu_timer, enter_t, config.settle_s)
                    labels[f"{key}/{st}"] = (label, st)
    if len(groups) == 1:  # nothing to alternate with: no pause needed
        groups[next(iter(groups))].settle_s = 0.0
    return groups, labels


def _run_size(config: Config, backend, xp, torch, refs: dict, threads, one, size: ops.Size, dtype: str, log) -> list:
    """All ops of one (backend, size, dtype); ``refs``: the device of each forward reference
    (``{"torch": "cpu" | "cuda" | None, "transformers": "cpu" | None}``, ``None``: not run)."""
    tdev = refs.get("torch")
    kw = dict(min_repeats=config.min_repeats, max_repeats=config.max_repeats, budget_s=config.budget_s)
    timer = cpu_timer if backend == "numpy" else cuda_timer(xp)
    cores = machine.usable_cores()
    model = ops.build_model(size, dtype, xp)
    x = ops.build_inputs(model, size, xp)
    n_mm = config.matmul_n.get(backend, 2048)
    mm = ops.matmul_fn(n_mm, dtype, xp)
    mm_flops = ops.matmul_flops(n_mm)
    recs = []
    log(f"{backend} {size.name} ({size.params():,} params) {dtype}")

    def timed(fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` and the load of other processes while it ran: ``(result, load dict)``."""
        a = machine.cpu_sample()
        out = fn(*args, **kwargs)
        return out, {"cpu_others": machine.others_load(a, machine.cpu_sample()), "cores": cores}

    if "forward" in config.ops:
        tfn = ops.torch_forward_fn(model, x, tdev) if tdev is not None else None
        hfn = hf.transformers_forward_fn(model, x) if refs.get("transformers") is not None else None
        checks = {
            "torch": _torch_agreement(model, x, tfn, "torch_max_rel") if tfn is not None else {},
            "transformers": _torch_agreement(model, x, hfn, "transformers_max_rel") if hfn is not None else {},
        }
        groups, labels = _forward_groups(config, backend, xp, torch, tdev, threads, one, model, x, mm, tfn, dtype, hfn)
        t, load = timed(measure_rounds, groups, **kw)
        threads.restore()
        flops = ops.forward_flops(model, size.b, size.s)
        for g, (label, st) in labels.items():
            n_threads = None
            if backend == "numpy":
                n_threads = (
                    1 if st == "one" else (threads.torch_default if label == "torch-cpu" else threads.numpy_default)
                )
            common = dict(thread_setting=st, threads=n_threads)
            ref = dict(ref_matmul_seconds=statistics.median(t[g]["matmul"]), ref_matmul_flops=mm_flops)
            extra = dict(checks[label.split("-")[0]]) if label.split("-")[0] in checks else {}
            if label == backend:  # our forward: the paired references of the same thread setting
                for ref_name in ("torch", "transformers"):
                    paired = ref_name if backend != "numpy" else f"{ref_name}/{st}"
                    if paired in t:
                        extra[f"ref_{ref_name}_seconds"] = statistics.median(t[paired]["ours"])
            recs.append(
                _record("matmul", label, dtype, size, t[g]["matmul"], load, flops=mm_flops, matmul_n=n_mm, **common)
            )
            recs.append(
                _record("forward", label, dtype, size, t[g]["ours"], load, flops=flops, **ref, **extra, **common)
            )
        log(
            "  forward "
            + ", ".join(
                f"{g} {statistics.median(v['ours']):.4f}s (matmul {statistics.median(v['matmul']):.4f}s)"
                for g, v in t.items()
            )
            + (f"; others used {load['cpu_others']} cores" if load["cpu_others"] is not None else "")
        )
    for op in [o for o in ops.EXPANSIONS + ("plan",) if o in config.ops]:
        fn = ops.expansion_fn(op, model, size)
        out = fn()
        nbytes = ops.model_bytes(out)
        out_params = param_count(out)
        t, load = timed(measure, {"ours": fn, "copy": ops.copy_fn(out)}, timer=timer, **kw)
        del out
        recs.append(
            _record(
                op,
                backend,
                dtype,
                size,
                t["ours"],
                load,
                threads=threads.numpy_default if backend == "numpy" else None,
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
        t, load = timed(measure, {"ours": vfn, "matmul": mm}, timer=timer, **kw)
        flops = ops.forward_flops(model, size.b, size.s) + ops.forward_flops(expanded, size.b, size.s)
        recs.append(
            _record(
                "verify",
                backend,
                dtype,
                size,
                t["ours"],
                load,
                threads=threads.numpy_default if backend == "numpy" else None,
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


def _torch_agreement(model, x, tfn, key: str = "torch_max_rel") -> dict:
    """How far a PyTorch-based forward is from ours (largest difference over our largest entry), so a wrong
    reference shows: ``{key: value}``."""
    from fpt_ref.forward import forward
    from fpt_ref.xp import to_numpy

    ours = np.asarray(to_numpy(forward(model, x)), dtype=np.float64)
    theirs = tfn().detach().cpu().numpy().astype(np.float64)
    scale = float(np.max(np.abs(ours))) or 1.0
    return {key: float(np.max(np.abs(ours - theirs))) / scale}
