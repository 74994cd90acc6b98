"""The GPU targets, and the GPU checks ``fpt-ref bench`` does not make (docs/benchmarks.md).

From the repository root (``PYTHONPATH=.``; ``fpt_ref.benchmarks.gpu.checks`` when installed)::

    python -m benchmarks.gpu.checks OUT_DIR [--budget SECONDS]    # on a GPU machine
    python -m benchmarks.gpu.checks OUT_DIR --smoke                # anywhere: tiny sizes; NumPy
                                                                   # stands in when CuPy is absent
    python -m benchmarks.gpu.checks --summarize OUT_DIR            # summary.md from the JSON files

Writes ``OUT_DIR/gpu_checks.json`` and prints one line per figure. All in float32 with TF32
off (``CUPY_TF32`` must not be ``1``; ``NVIDIA_TF32_OVERRIDE=0`` is set before CuPy loads):

1. ``targets`` at the largest size of the GPU ladder (``xxl``, 1.01B parameters):
   ``ratio_matmul`` of the CuPy forward against an ``n x n`` cuBLAS GEMM (``n = 8192``)
   timed in the same loop (target >= 0.7), and ``speedup`` = NumPy forward on this host's
   CPUs (default threads) over the CuPy forward, same weights and inputs (target >= 20).
   When the NumPy forward at that size would not fit the time budget (estimated from its
   FLOP rate at ``l``), the speedup is measured at the largest size that fits, and says so.
2. ``agreement``: CuPy against NumPy, same model and inputs, at ``l`` in float32 and float64
   and at the largest size in float32, within the preservation bound of docs/tolerance.md
   for two computations of one model in one dtype: ``|out_gpu - out_cpu| <=
   tolerance_abs(m, m, s, S)`` = ``(2 L + 4) ulp(S)``.
3. ``timer``: one forward timed by ``benchmarks.timing.cuda_timer``, by the wall clock with
   a device synchronisation after the call, and without it (what is still queued on return).
4. ``host_input``: the forward with the inputs on the host (their copy to the device
   included) against inputs already on the device.
5. ``free_blocks``: the expansions draw their free blocks on the host
   (``Builder.free``: NumPy's generator, then one copy to the device), so that NumPy and
   CuPy give identical models. Per expansion at ``xl`` (one warm-up call, then the median
   of three): its time, the time inside ``Builder.free`` (draw and copy, the device
   synchronised around each call), and the time to draw the same blocks on the device.

Every section runs under a time budget (``--budget``, default 150 s): a section that would
not fit is skipped with the reason in the JSON and the output, never counted as a pass.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..report import TARGETS  # the one table of targets (gpu_ratio_matmul, gpu_speedup)

SCHEMA = 1
FULL = {"largest": "xxl", "agree": "l", "draw": "xl", "gemm_n": 8192, "cpu_gemm_n": 4096, "ladder": "gpu"}
SMOKE = {"largest": "xs", "agree": "xxs", "draw": "xs", "gemm_n": 256, "cpu_gemm_n": 256, "ladder": "quick"}


# ---- the device (CuPy, or NumPy standing in for it) ------------------------------------------
@dataclass
class Device:
    """The array library the checks run on, and how to time and synchronise it."""

    xp: object
    name: str
    is_gpu: bool
    timer: Callable
    sync: Callable[[], None]

    def draw(self, shape: tuple, dtype: str, seed: int = 0):
        """Standard normal ``shape`` drawn by the device's own generator, in ``dtype``."""
        random = self.xp.random  # type: ignore[attr-defined]
        try:
            return random.default_rng(seed).standard_normal(shape, dtype=dtype)
        except (AttributeError, TypeError):  # a CuPy without Generator.standard_normal(dtype=)
            return random.RandomState(seed).standard_normal(shape, dtype=dtype)


def _tf32_env() -> dict:
    """Turn TF32 off for the CUDA libraries loaded after this call; the settings in force."""
    if os.environ.get("CUPY_TF32") == "1":
        raise ValueError("CUPY_TF32: is 1; the GPU targets are defined for float32 with TF32 off (unset it)")
    os.environ.setdefault("NVIDIA_TF32_OVERRIDE", "0")
    return {k: os.environ.get(k) for k in ("CUPY_TF32", "NVIDIA_TF32_OVERRIDE")}


def open_device(smoke: bool) -> tuple:
    """``(Device or None, note)``: CuPy on a usable GPU; in smoke mode NumPy stands in without one."""
    from .. import machine, timing

    cupy, why = machine.cupy_status()
    if cupy is not None:
        info = machine.gpu_info(cupy)
        dev = Device(cupy, info["model"], True, timing.cuda_timer(cupy), cupy.cuda.Device().synchronize)
        return dev, f"GPU: {info['model']}, CUDA {info['cuda_runtime']}, CuPy {info['cupy']}"
    if not smoke:
        return None, f"no GPU: {why}"
    note = f"CuPy absent ({why}): NumPy stands in for the device; no figure of this run is a GPU figure"
    return Device(np, "NumPy stand-in (no GPU)", False, timing.cpu_timer, lambda: None), note


class Budget:
    """Seconds left of a run's time budget."""

    def __init__(self, seconds: float):
        self.seconds, self.t0 = float(seconds), time.perf_counter()

    def spent(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.seconds - self.spent()


def _median(xs) -> float:
    return float(statistics.median(xs))


def _sizes(cfg: dict) -> dict:
    from .. import ops

    return {s.name: s for s in ops.LADDERS[cfg["ladder"]]}


# ---- 1. targets ------------------------------------------------------------------------------
def check_targets(dev: Device, cfg: dict, budget: Budget, state: dict) -> dict:
    """``ratio_matmul`` against cuBLAS and ``speedup`` over NumPy at the largest size, float32."""
    import fpt_ref

    from .. import ops, ratios, timing

    sizes = _sizes(cfg)
    size = sizes[cfg["largest"]]
    host = ops.build_model(size, "float32")
    x = ops.build_inputs(host, size)  # [b, s, h] NumPy
    gm, gx = fpt_ref.convert(host, dev.xp), dev.xp.asarray(x)  # type: ignore[attr-defined]
    state.update(largest=(size, host, x, gm, gx))
    n = cfg["gemm_n"]
    flops, gemm_flops = ops.forward_flops(host, size.b, size.s), ops.matmul_flops(n)
    t = timing.measure(
        {"forward": lambda: fpt_ref.forward(gm, gx), "gemm": ops.matmul_fn(n, "float32", dev.xp)},
        timer=dev.timer,
        min_repeats=5,
        max_repeats=15,
        budget_s=3.0,
    )
    fwd_s, gemm_s = _median(t["forward"]), _median(t["gemm"])
    out = {
        "size": size.name,
        "params": size.params(),
        "dtype": "float32",
        "forward_flops": flops,
        "gpu_forward_s": fwd_s,
        "gpu_forward_tflops": flops / fwd_s / 1e12,
        "gemm_n": n,
        "gemm_s": gemm_s,
        "gemm_tflops": gemm_flops / gemm_s / 1e12,
        "ratio_matmul": ratios.ratio_matmul(flops, fwd_s, gemm_flops, gemm_s),
        "gpu_forward_samples": t["forward"],
    }
    # NumPy: its FLOP rate at the agreement size predicts the cost at the largest size
    small = sizes[cfg["agree"]]
    ms = ops.build_model(small, "float32")
    xs_ = ops.build_inputs(ms, small)
    t_small = timing.measure({"f": lambda: fpt_ref.forward(ms, xs_)}, min_repeats=2, max_repeats=3, budget_s=0.5)
    rate = ops.forward_flops(ms, small.b, small.s) / _median(t_small["f"])
    reserve = 0.35 * budget.seconds  # for the sections after this one
    fits = [
        s
        for s in ops.LADDERS[cfg["ladder"]]
        if s.params() <= size.params() and 4 * s.forward_flops() / rate < budget.left() - reserve
    ]
    if not fits:
        out["speedup"] = None
        out["speedup_note"] = f"skipped: no size's NumPy forward fits the time budget ({budget.left():.0f} s left)"
        return out
    at = fits[-1]
    if at.name != size.name:
        out["speedup_note"] = (
            f"NumPy at {size.name} would take ~{size.forward_flops() / rate:.0f} s per call "
            f"(its rate at {small.name}: {rate / 1e9:.0f} GFLOP/s): the speedup is measured at {at.name}"
        )
        host_at = ops.build_model(at, "float32")
        x_at = ops.build_inputs(host_at, at)
        g_at, gx_at = fpt_ref.convert(host_at, dev.xp), dev.xp.asarray(x_at)  # type: ignore[attr-defined]
        t_g = timing.measure({"f": lambda: fpt_ref.forward(g_at, gx_at)}, timer=dev.timer, min_repeats=5, budget_s=1)
        gpu_at = _median(t_g["f"])
    else:
        host_at, x_at, gpu_at = host, x, fwd_s
    stash: dict = {}

    def numpy_forward():
        stash["out"] = fpt_ref.forward(host_at, x_at)
        return stash["out"]

    cn = cfg["cpu_gemm_n"]
    t_np = timing.measure(
        {"forward": numpy_forward, "gemm": ops.matmul_fn(cn, "float32")}, min_repeats=2, max_repeats=3, budget_s=0.0
    )
    np_s = _median(t_np["forward"])
    if at.name == size.name:
        state["numpy_out_largest"] = stash["out"]
    out.update(
        speedup=np_s / gpu_at,
        speedup_size=at.name,
        numpy_forward_s=np_s,
        numpy_forward_samples=t_np["forward"],
        numpy_gflops=at.forward_flops() / np_s / 1e9,
        numpy_ratio_matmul=ratios.ratio_matmul(at.forward_flops(), np_s, ops.matmul_flops(cn), _median(t_np["gemm"])),
        numpy_gemm_n=cn,
        gpu_forward_s_at_speedup_size=gpu_at,
    )
    return out


# ---- 2. agreement ----------------------------------------------------------------------------
def _agreement(host, x, out_cpu, out_dev, scale_model, scale_x) -> dict:
    import fpt_ref
    from fpt_ref.tolerance import preservation_scale, tolerance_abs, ulp

    st = fpt_ref.error_stats(out_cpu, out_dev)
    s = int(x.shape[1])
    scale = preservation_scale(scale_model, fpt_ref.trace(scale_model, scale_x))
    tol = tolerance_abs(host, host, s, scale)
    u = ulp(scale, host.dtype)
    return {
        "max_abs": st["max_abs"],
        "max_ulp_of_max_ref": st["max_ulp"],
        "scale_S": scale,
        "max_ulp_of_S": st["max_abs"] / u,
        "tol_abs": tol,
        "tol_ulp_of_S": tol / u,
        "ok": bool(st["max_abs"] <= tol),
    }


def check_agreement(dev: Device, cfg: dict, budget: Budget, state: dict) -> dict:
    """CuPy against NumPy at the agreement size (both dtypes) and at the largest size (float32)."""
    import fpt_ref

    from .. import ops

    size = _sizes(cfg)[cfg["agree"]]
    out: dict = {}
    for dt in ("float32", "float64"):
        host = ops.build_model(size, dt)
        x = ops.build_inputs(host, size)
        ref = fpt_ref.forward(host, x)
        got = fpt_ref.forward(fpt_ref.convert(host, dev.xp), dev.xp.asarray(x))  # type: ignore[attr-defined]
        out[f"{size.name}_{dt}"] = _agreement(host, x, ref, got, host, x)
    if "largest" in state and "numpy_out_largest" in state:
        big, host, x, gm, gx = state["largest"]
        got = fpt_ref.forward(gm, gx)
        # the scale from the device's trace (a NumPy trace at this size costs minutes); S is a
        # maximum of sums of absolute values, which two libraries round alike to ~1e-6
        out[f"{big.name}_float32"] = _agreement(host, x, state["numpy_out_largest"], got, gm, gx)
        out[f"{big.name}_float32"]["scale_from"] = "device trace"
    else:
        out["largest"] = "skipped: NumPy did not run at the largest size (see targets.speedup_note)"
    return out


# ---- 3. timer, 4. host input ------------------------------------------------------------------
def check_timer(dev: Device, cfg: dict, budget: Budget, state: dict) -> dict:
    """One forward at the largest size: CUDA-event timer vs synchronised and unsynchronised wall clock."""
    import fpt_ref

    size, host, x, gm, gx = state["largest"]
    ev, synced, unsynced = [], [], []
    for _ in range(5):
        ev.append(dev.timer(lambda: fpt_ref.forward(gm, gx)))
        dev.sync()
        t0 = time.perf_counter()
        fpt_ref.forward(gm, gx)
        dev.sync()
        synced.append(time.perf_counter() - t0)
        dev.sync()
        t0 = time.perf_counter()
        fpt_ref.forward(gm, gx)
        unsynced.append(time.perf_counter() - t0)
        dev.sync()
    return {
        "size": size.name,
        "cuda_timer_s": _median(ev),
        "wall_synced_s": _median(synced),
        "wall_unsynced_s": _median(unsynced),
        "queued_share_on_return": 1.0 - _median(unsynced) / _median(synced) if dev.is_gpu else None,
    }


def check_host_input(dev: Device, cfg: dict, budget: Budget, state: dict) -> dict:
    """The forward with inputs on the host (copy included) vs inputs on the device."""
    import fpt_ref

    from .. import timing

    size, host, x, gm, gx = state["largest"]
    t = timing.measure(
        {"device_input": lambda: fpt_ref.forward(gm, gx), "host_input": lambda: fpt_ref.forward(gm, x)},
        timer=dev.timer,
        min_repeats=5,
        max_repeats=7,
        budget_s=1.0,
    )
    return {
        "size": size.name,
        "device_input_s": _median(t["device_input"]),
        "host_input_s": _median(t["host_input"]),
        "input_bytes": int(x.nbytes),
    }


# ---- 5. free blocks drawn on the host --------------------------------------------------------
def check_free_blocks(dev: Device, cfg: dict, budget: Budget, state: dict) -> dict:
    """Per expansion: time, time inside ``Builder.free`` (host draw + copy), device-draw time."""
    import fpt_ref
    from fpt_ref.expansions import _common

    from .. import ops, timing

    size = _sizes(cfg)[cfg["draw"]]
    gm = fpt_ref.convert(ops.build_model(size, "float32"), dev.xp)
    out: dict = {"size": size.name, "dtype": "float32", "ops": {}}
    original = _common.Builder.free
    for op in ops.EXPANSIONS:
        if budget.left() < 10:
            out["ops"][op] = "skipped: time budget"
            continue
        fn = ops.expansion_fn(op, gm, size)
        calls: list = []

        def timed_free(self, *args, _calls=calls, **kwargs):
            dev.sync()
            t0 = time.perf_counter()
            part = original(self, *args, **kwargs)
            dev.sync()  # the copy to the device has landed
            _calls.append((time.perf_counter() - t0, tuple(int(d) for d in part.array.shape)))
            return part

        totals, in_free = [], []
        _common.Builder.free = timed_free  # type: ignore[method-assign]
        try:
            for i in range(4):  # one warm-up call, then three timed, each with its time in Builder.free
                calls.clear()
                total = dev.timer(fn)
                if i > 0:
                    totals.append(total)
                    in_free.append(sum(c for c, _ in calls))
        finally:
            _common.Builder.free = original  # type: ignore[method-assign]
        shapes = [s for _, s in calls]
        t_draw = timing.measure(
            {"draw": lambda shapes=shapes: [dev.draw(s, "float32") for s in shapes]},
            timer=dev.timer,
            min_repeats=3,
            max_repeats=5,
            budget_s=0.5,
        )
        exp_s, free_s, dev_s = _median(totals), _median(in_free), _median(t_draw["draw"])
        out["ops"][op] = {
            "seconds": exp_s,
            "free_calls": len(calls),
            "free_entries": int(sum(math.prod(s) for s in shapes)),
            "host_draw_s": free_s,
            "host_draw_share": free_s / exp_s if exp_s > 0 else None,
            "device_draw_s": dev_s,
            "projected_s_with_device_draw": max(0.0, exp_s - free_s) + dev_s,
        }
    done = [v for v in out["ops"].values() if isinstance(v, dict)]
    if done:
        total, host_s = sum(v["seconds"] for v in done), sum(v["host_draw_s"] for v in done)
        out["host_draw_share_all"] = host_s / total if total > 0 else None
        out["device_draw_s_all"] = sum(v["device_draw_s"] for v in done)
    return out


SECTIONS = (
    ("targets", check_targets, 0.35),
    ("agreement", check_agreement, 0.1),
    ("timer", check_timer, 0.02),
    ("host_input", check_host_input, 0.02),
    ("free_blocks", check_free_blocks, 0.15),
)
NEEDS = {"agreement": None, "timer": "largest", "host_input": "largest"}


# ---- the run ---------------------------------------------------------------------------------
def run(out_dir: str, smoke: bool = False, budget_s: float = 150.0, log=print) -> tuple:
    """Run every section; write ``out_dir/gpu_checks.json``. Returns ``(results, exit status)``.

    Exit status: 0 when every section ran (targets met or not: they are reported, not
    enforced), 1 when a section failed, 3 when there is no GPU outside smoke mode.
    """
    tf32 = _tf32_env()
    from .. import machine

    dev, note = open_device(smoke)
    res: dict = {"schema": SCHEMA, "mode": "smoke" if smoke else "gpu", "tf32": tf32, "notes": [note]}
    log(note)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "gpu_checks.json")
    if dev is None:
        res["device"] = None
        _write(path, res)
        log(f"nothing measured; wrote {path}")
        return res, 3
    cfg = SMOKE if smoke else FULL
    res["device"] = dev.name
    res["sizes"] = {k: cfg[k] for k in ("largest", "agree", "draw")}
    res["machine"] = machine.machine_info(dev.xp if dev.is_gpu else None)
    budget = Budget(budget_s)
    state: dict = {}
    status = 0
    for name, fn, share in SECTIONS:
        need = NEEDS.get(name)
        if need is not None and need not in state:
            res[name] = {"skipped": f"needs the models of the targets section, which did not run ({need})"}
            log(f"{name}: {res[name]['skipped']}")
            continue
        if budget.left() < share * budget.seconds * 0.5:
            res[name] = {"skipped": f"time budget: {budget.left():.0f} s of {budget.seconds:.0f} s left"}
            log(f"{name}: {res[name]['skipped']}")
            continue
        t0 = time.perf_counter()
        try:
            res[name] = fn(dev, cfg, budget, state)
        except Exception as exc:  # one failed section must not lose the others' figures
            res[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=-4)}
            status = 1
        res[name]["section_seconds"] = round(time.perf_counter() - t0, 1)
        for line in _lines(name, res[name], dev):
            log(line)
        _write(path, res)  # after every section: a later timeout keeps what was measured
    res["targets_summary"] = target_rows(res)
    res["wall_seconds"] = round(budget.spent(), 1)
    _write(path, res)
    log(f"wrote {path} ({res['wall_seconds']} s)")
    return res, status


def _write(path: str, res: dict) -> None:
    from fpt_ref.files import write_text

    write_text(path, json.dumps(res, indent=1, default=float) + "\n", name="out_dir")


def target_rows(res: dict) -> list:
    """``[{name, measured, target, met, detail}]`` for the targets (``met`` is ``None`` when not judged)."""
    judge = bool(res.get("device")) and not str(res["device"]).startswith("NumPy stand-in")
    rows = []
    t = res.get("targets") or {}

    def row(name, measured, target, op, detail):
        met = None if measured is None or not judge else (measured >= target if op == ">=" else measured <= target)
        rows.append({"name": name, "measured": measured, "target": f"{op} {target}", "met": met, "detail": detail})

    if "ratio_matmul" in t:
        row(
            f"CuPy forward / cuBLAS GEMM rate, {t['size']} float32, TF32 off",
            t["ratio_matmul"],
            TARGETS["gpu_ratio_matmul"],
            ">=",
            f"forward {t['gpu_forward_tflops']:.1f} TFLOP/s, GEMM {t['gemm_n']}^3 {t['gemm_tflops']:.1f} TFLOP/s",
        )
    if "speedup" in t:
        row(
            f"CuPy forward speedup over NumPy (CPU), {t.get('speedup_size', '?')} float32",
            t["speedup"],
            TARGETS["gpu_speedup"],
            ">=",
            t.get("speedup_note")
            or f"NumPy {t.get('numpy_forward_s', 0):.3g} s vs CuPy {t.get('gpu_forward_s_at_speedup_size', 0):.3g} s",
        )
    for key, a in (res.get("agreement") or {}).items():
        if isinstance(a, dict) and "ok" in a:
            rows.append(
                {
                    "name": f"CuPy vs NumPy agreement, {key.replace('_', ' ')}",
                    "measured": a["max_ulp_of_S"],
                    "target": f"<= {a['tol_ulp_of_S']:.0f} ulp(S)",
                    "met": a["ok"] if judge else None,
                    "detail": f"max |diff| {a['max_abs']:.3g} <= tol {a['tol_abs']:.3g}",
                }
            )
    return rows


def _lines(name: str, r: dict, dev: Device) -> list:
    tag = "" if dev.is_gpu else " [stand-in, not a GPU figure]"
    if "error" in r:
        return [f"{name}: FAILED {r['error']}"]
    if "skipped" in r:
        return [f"{name}: skipped, {r['skipped']}"]
    if name == "targets":
        out = [
            f"targets{tag}: {r['size']} float32: forward {r['gpu_forward_s']:.4g} s "
            f"({r['gpu_forward_tflops']:.2f} TFLOP/s), GEMM {r['gemm_n']} {r['gemm_tflops']:.2f} TFLOP/s, "
            f"ratio_matmul {r['ratio_matmul']:.3f} (target >= {TARGETS['gpu_ratio_matmul']})"
        ]
        if r.get("speedup") is not None:
            out.append(
                f"targets{tag}: speedup over NumPy at {r['speedup_size']}: {r['speedup']:.1f}x "
                f"(NumPy {r['numpy_forward_s']:.4g} s, {r['numpy_gflops']:.0f} GFLOP/s; target >= {TARGETS['gpu_speedup']})"
            )
        if r.get("speedup_note"):
            out.append(f"targets: {r['speedup_note']}")
        return out
    if name == "agreement":
        return [
            f"agreement{tag} {k}: max |diff| {a['max_abs']:.3g} = {a['max_ulp_of_S']:.2f} ulp(S) "
            f"<= {a['tol_ulp_of_S']:.0f} ulp(S): {'ok' if a['ok'] else 'EXCEEDED'}"
            if isinstance(a, dict) and "ok" in a
            else f"agreement {k}: {a}"
            for k, a in r.items()
            if k != "section_seconds"
        ]
    if name == "timer":
        return [
            f"timer{tag} {r['size']}: cuda_timer {r['cuda_timer_s']:.4g} s, wall synced {r['wall_synced_s']:.4g} s, "
            f"unsynced {r['wall_unsynced_s']:.4g} s"
        ]
    if name == "host_input":
        return [
            f"host_input{tag} {r['size']}: device input {r['device_input_s']:.4g} s, host input "
            f"{r['host_input_s']:.4g} s ({r['input_bytes'] / 1e6:.0f} MB copied)"
        ]
    if name == "free_blocks":
        out = []
        for op, v in r["ops"].items():
            if not isinstance(v, dict):
                out.append(f"free_blocks {op}: {v}")
                continue
            out.append(
                f"free_blocks{tag} {r['size']} {op}: {v['seconds']:.4g} s, of which host draw+copy "
                f"{v['host_draw_s']:.4g} s ({100 * (v['host_draw_share'] or 0):.0f}%, {v['free_entries']:,} entries); "
                f"device draw {v['device_draw_s']:.4g} s"
            )
        if r.get("host_draw_share_all") is not None:
            out.append(f"free_blocks{tag}: host draws are {100 * r['host_draw_share_all']:.0f}% of the six expansions")
        return out
    return [f"{name}: {r}"]


# ---- summary.md --------------------------------------------------------------------------------
def summarize(out_dir: str) -> str:
    """``out_dir/summary.md``: the targets, the free-block costs and the tables of the ladder runs."""
    from fpt_ref.files import write_text

    from .. import report

    lines = ["# GPU run", ""]
    path = os.path.join(out_dir, "gpu_checks.json")
    if os.path.exists(path):
        with open(path) as f:
            res = json.load(f)
        lines += [f"Device: {res.get('device')}; TF32 settings {res.get('tf32')}.", ""]
        lines += ["Notes: " + "; ".join(res.get("notes", [])), ""]
        rows = res.get("targets_summary") or target_rows(res)
        if rows:
            lines += ["| target | measured | wanted | met | detail |", "|---|---|---|---|---|"]
            for r in rows:
                m = "-" if r["measured"] is None else f"{r['measured']:.3g}"
                met = {True: "yes", False: "NO", None: "not judged"}[r["met"]]
                lines.append(f"| {r['name']} | {m} | {r['target']} | {met} | {r['detail']} |")
            lines.append("")
        fb = res.get("free_blocks") or {}
        if fb.get("ops"):
            lines += [
                f"**Free blocks drawn on the host** ({fb['size']}, float32): expansion time, time in "
                "`Builder.free` (NumPy draw and copy to the device), drawing the same blocks on the device",
                "",
                "| expansion | seconds | host draw + copy | share | device draw |",
                "|---|---|---|---|---|",
            ]
            for op, v in fb["ops"].items():
                if isinstance(v, dict):
                    lines.append(
                        f"| {op} | {v['seconds']:.3g} | {v['host_draw_s']:.3g} | "
                        f"{100 * (v['host_draw_share'] or 0):.0f}% | {v['device_draw_s']:.3g} |"
                    )
            if fb.get("host_draw_share_all") is not None:
                done = [v for v in fb["ops"].values() if isinstance(v, dict)]
                lines += [
                    f"Host draws are {100 * fb['host_draw_share_all']:.0f}% of the six expansions' time "
                    f"({sum(v['host_draw_s'] for v in done):.3g} s of {sum(v['seconds'] for v in done):.3g} s); "
                    f"drawing the same blocks on the device would take {fb['device_draw_s_all']:.3g} s. "
                    "Host draws give NumPy and CuPy bit-identical models (tests/test_gpu.py checks it); "
                    "device draws would not.",
                ]
            lines.append("")
        for name in ("timer", "host_input", "agreement"):
            if name in res:
                lines += [f"{name}: `{json.dumps({k: v for k, v in res[name].items() if k != 'traceback'})}`", ""]
    for name, title in (("fwd_results.json", "Forward ladder"), ("exp_results.json", "Expansions and verify")):
        p = os.path.join(out_dir, name)
        if os.path.exists(p):
            with open(p) as f:
                lines += [f"## {title} (`{name}`)", "", report.markdown_table(json.load(f)), ""]
    out = os.path.join(out_dir, "summary.md")
    write_text(out, "\n".join(lines) + "\n", name="out_dir")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu.checks", description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--smoke", action="store_true", help="tiny sizes; NumPy stands in when CuPy is absent")
    p.add_argument("--budget", type=float, default=None, help="seconds for all sections (default 150; smoke 40)")
    p.add_argument("--summarize", action="store_true", help="only write OUT_DIR/summary.md from the JSON files")
    a = p.parse_args(argv)
    if a.summarize:
        print(f"wrote {summarize(a.out_dir)}")
        return 0
    budget = a.budget if a.budget is not None else (40.0 if a.smoke else 150.0)
    try:
        _, status = run(a.out_dir, a.smoke, budget, log=lambda m: print(m, flush=True))
    except ValueError as exc:
        print(f"{p.prog}: {exc}", file=sys.stderr)
        return 2
    return status


if __name__ == "__main__":
    sys.exit(main())
