"""Machine information recorded with every benchmark run, the load probes, and the GPU/PyTorch probes.

Nothing here needs a dependency beyond NumPy: the BLAS is read from NumPy's build
configuration and, for OpenBLAS, from the loaded library itself through ``ctypes``
(core type, thread count, and the thread-count setter the runner uses for its one-thread
rounds); ``threadpoolctl`` is read when it happens to be installed, never required.
The instruction-set level comes from ``/proc/cpuinfo`` and from NumPy's own dispatch
table; the load of other processes from ``/proc/stat`` (:func:`cpu_sample`,
:func:`others_load`). CuPy and PyTorch are imported only inside the probes, and only when
asked for.
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import sys
import time

import numpy as np

from fpt_ref.memory import meminfo

#: A record is flagged ``under_load`` when other processes kept more than this fraction of
#: the usable cores busy, on average, while it was measured (:func:`others_load`).
LOAD_THRESHOLD = 0.25

ENV_VARS = (
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "CUPY_TF32",
    "NVIDIA_TF32_OVERRIDE",
    "CUDA_VISIBLE_DEVICES",
)


def _cpu_flags() -> tuple:
    """``(model name, feature flags)`` from ``/proc/cpuinfo`` (x86 ``flags``, Arm ``Features``)."""
    model, flags = "", ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key = line.split(":", 1)[0].strip()
                if key == "model name" and not model:
                    model = line.split(":", 1)[1].strip()
                elif key in ("flags", "Features") and not flags:
                    flags = line.split(":", 1)[1]
    except OSError:
        pass
    return model, set(flags.split())


# x86-64 micro-architecture levels (the psABI's x86-64-v2/v3/v4), by the flags /proc/cpuinfo names
_X86_LEVELS = (
    ("x86-64-v4", "AVX-512", {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}),
    ("x86-64-v3", "AVX2", {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}),
    ("x86-64-v2", "SSE4.2", {"cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"}),
)
SIMD_FLAGS = ("avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "avx2", "fma", "asimd", "sve", "sve2")


def isa_level(flags: set) -> str:
    """The CPU's vector instruction-set level from its ``/proc/cpuinfo`` flags.

    ``"AVX-512 (x86-64-v4)"``, ``"AVX2 (x86-64-v3)"``, ``"SSE4.2 (x86-64-v2)"`` on x86-64;
    ``"SVE"`` or ``"NEON"`` on Arm; ``"unknown"`` when no flags are readable.

    >>> isa_level({"avx2", "avx", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave", "avx512f"})
    'AVX2 (x86-64-v3)'
    >>> isa_level({"asimd", "fp"})
    'NEON'
    """
    for level, name, need in _X86_LEVELS:
        if need <= flags:
            return f"{name} ({level})"
    if "sve" in flags:
        return "SVE"
    if "asimd" in flags or "neon" in flags:
        return "NEON"
    return "x86-64" if "sse2" in flags else "unknown"


def numpy_simd() -> dict | None:
    """The SIMD targets NumPy was built for and dispatches to on this CPU (``None`` if unreadable).

    ``baseline``: compiled in unconditionally; ``dispatched``: the optional targets this CPU
    supports, which NumPy's kernels (``exp``, sorting, ...) pick at run time.
    """
    try:
        mod = getattr(np, "_core", None) or np.core  # NumPy 2 / NumPy 1
        mu = mod._multiarray_umath
        feats = mu.__cpu_features__
        return {
            "baseline": list(mu.__cpu_baseline__),
            "dispatched": [t for t in mu.__cpu_dispatch__ if feats.get(t)],
        }
    except Exception:  # a private table: its absence is not an error
        return None


def cpu_info() -> dict:
    """CPU model, instruction-set level, logical cores (all and usable), memory, load average."""
    model, flags = _cpu_flags()
    if not model:
        model = platform.processor() or platform.machine()
    mem = meminfo("MemTotal")
    return {
        "model": model,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "isa": isa_level(flags),
        "simd": [f for f in SIMD_FLAGS if f in flags],
        "numpy_simd": numpy_simd(),
        "hypervisor": "hypervisor" in flags,
        "memory_bytes": mem,
        "loadavg": load_average(),
    }


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; ``os.cpu_count()`` where unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_average() -> list | None:
    """1, 5 and 15 minute load averages (``None`` where the system has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def cpu_sample() -> dict | None:
    """A snapshot for :func:`others_load`: busy CPU seconds of the usable cores, this process's
    CPU seconds, and the wall clock; ``None`` where ``/proc/stat`` cannot be read.

    Busy time is everything but ``idle`` and ``iowait`` (``user``, ``nice``, ``system``,
    ``irq``, ``softirq`` and ``steal``: a hypervisor's steal is capacity this process did
    not get either), summed over the cores in this process's affinity.
    """
    try:
        mine = {f"cpu{i}" for i in os.sched_getaffinity(0)}
    except AttributeError:
        mine = None
    try:
        with open("/proc/stat") as f:
            lines = [ln.split() for ln in f if ln.startswith("cpu") and not ln.startswith("cpu ")]
        tick = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    busy = 0
    for parts in lines:
        if mine is not None and parts[0] not in mine:
            continue
        v = [int(x) for x in parts[1:9]]  # user nice system idle iowait irq softirq steal
        busy += v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
    t = os.times()
    return {"busy_s": busy / tick, "own_s": t.user + t.system, "wall_s": time.perf_counter()}


def others_load(start: dict | None, end: dict | None) -> float | None:
    """Cores kept busy by other processes between two :func:`cpu_sample` snapshots, on average.

    ``(busy CPU seconds of the usable cores - this process's CPU seconds) / wall seconds``,
    at least 0; ``None`` without both snapshots or for an interval under 10 ms (the kernel
    counts CPU time in ticks of 10 ms or less).
    """
    if start is None or end is None:
        return None
    wall = end["wall_s"] - start["wall_s"]
    if wall < 0.01:
        return None
    others = (end["busy_s"] - start["busy_s"]) - (end["own_s"] - start["own_s"])
    return round(max(0.0, others / wall), 3)


def under_load(others: float | None, loadavg: list | None, cores: int) -> bool:
    """Whether a record was taken under load (docs/benchmarks.md).

    With :func:`others_load` known: other processes kept more than :data:`LOAD_THRESHOLD` of
    the ``cores`` busy. Without it (no ``/proc/stat``): the 1-minute load average, which
    counts this process's own threads too, exceeded ``cores``.

    >>> under_load(0.6, [1.0, 1.0, 1.0], 2), under_load(0.4, [5.0, 5.0, 5.0], 2), under_load(None, [2.5, 1, 1], 2)
    (True, False, True)
    """
    if others is not None:
        return others > LOAD_THRESHOLD * cores
    return loadavg is not None and len(loadavg) > 0 and loadavg[0] > cores


def _openblas_lib():
    """The loaded OpenBLAS library (``ctypes.CDLL``) and its symbol prefix/suffix, or ``None``."""
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line})
    except OSError:
        return None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for pre, suf in (("scipy_openblas_", "64_"), ("scipy_openblas_", ""), ("openblas_", "64_"), ("openblas_", "")):
            if hasattr(lib, f"{pre}get_num_threads{suf}"):
                return lib, pre, suf, path
    return None


def blas_info() -> dict:
    """BLAS library, version and runtime state (OpenBLAS core type, threads) where readable."""
    out: dict = {}
    try:
        cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        out.update(name=cfg.get("name"), version=cfg.get("version"), config=cfg.get("openblas configuration"))
    except Exception:  # older NumPy: no dict mode
        out["name"] = "unknown"
    found = _openblas_lib()
    if found is not None:
        lib, pre, suf, path = found
        out["library"] = os.path.basename(path)
        getter = getattr(lib, f"{pre}get_corename{suf}", None)
        if getter is not None:
            getter.restype = ctypes.c_char_p
            out["openblas_core"] = getter().decode()
        out["threads"] = int(getattr(lib, f"{pre}get_num_threads{suf}")())
    try:  # optional, never a dependency
        from threadpoolctl import threadpool_info

        out["threadpoolctl"] = [
            {k: d.get(k) for k in ("internal_api", "version", "num_threads", "architecture")} for d in threadpool_info()
        ]
    except ImportError:
        pass
    return out


def blas_threads() -> int | None:
    """OpenBLAS's thread count in this process now (``None`` where OpenBLAS is not found)."""
    found = _openblas_lib()
    if found is None:
        return None
    lib, pre, suf, _ = found
    return int(getattr(lib, f"{pre}get_num_threads{suf}")())


def set_blas_threads(n: int) -> bool:
    """Set OpenBLAS's thread count for this process (benchmark knob); ``False`` if not possible."""
    found = _openblas_lib()
    if found is None:
        return False
    lib, pre, suf, _ = found
    setter = getattr(lib, f"{pre}set_num_threads{suf}", None)
    if setter is None:
        return False
    setter(int(n))
    return True


def cupy_status() -> tuple:
    """``(cupy module or None, reason)``: CuPy with at least one usable CUDA device, else why not."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA installation
        return None, f"CuPy not importable ({type(exc).__name__}: {exc})"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
        if n < 1:
            return None, "CuPy sees no CUDA device"
        cupy.zeros(1).sum().item()  # a real round trip: catches drivers that list a device but fail
    except Exception as exc:
        return None, f"no usable CUDA device ({type(exc).__name__}: {exc})"
    return cupy, "ok"


def gpu_info(cupy) -> dict:
    """GPU model, memory, CUDA runtime and driver versions, CuPy version, TF32 state."""
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props.get("name", b"?")
    rt = cupy.cuda.runtime.runtimeGetVersion()
    drv = cupy.cuda.runtime.driverGetVersion()
    return {
        "model": name.decode() if isinstance(name, bytes) else str(name),
        "count": cupy.cuda.runtime.getDeviceCount(),
        "memory_bytes": int(props.get("totalGlobalMem", 0)),
        "compute_capability": f"{props.get('major')}.{props.get('minor')}",
        "cuda_runtime": f"{rt // 1000}.{(rt % 1000) // 10}",
        "cuda_driver_api": f"{drv // 1000}.{(drv % 1000) // 10}",
        "driver": _nvidia_driver_version(),
        "cupy": cupy.__version__,
        # CuPy uses TF32 tensor cores for float32 matmul only when CUPY_TF32=1
        "cupy_tf32": os.environ.get("CUPY_TF32", "0") == "1",
    }


def _nvidia_driver_version() -> str | None:
    try:
        with open("/proc/driver/nvidia/version") as f:
            first = f.readline()
        return first.split("Kernel Module")[1].split()[0] if "Kernel Module" in first else first.strip()
    except (OSError, IndexError):
        return None


def torch_status() -> tuple:
    """``(torch module or None, reason)``."""
    try:
        import torch
    except Exception as exc:
        return None, f"PyTorch not importable ({type(exc).__name__}: {exc})"
    return torch, "ok"


def transformers_status() -> tuple:
    """``(transformers module or None, reason)``."""
    try:
        import transformers
    except Exception as exc:
        return None, f"transformers not importable ({type(exc).__name__}: {exc})"
    return transformers, "ok"


def torch_info(torch) -> dict:
    info = {
        "version": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_capability": _torch_cpu_capability(torch),
        "blas": _torch_blas(torch),
        "cuda_available": bool(torch.cuda.is_available()),
    }
    if info["cuda_available"]:
        info["cuda"] = torch.version.cuda
        info["device"] = torch.cuda.get_device_name(0)
        info["tf32_matmul"] = bool(torch.backends.cuda.matmul.allow_tf32)
        info["tf32_cudnn"] = bool(torch.backends.cudnn.allow_tf32)
    return info


def _torch_cpu_capability(torch) -> str | None:
    """The vector kernels PyTorch's CPU operators dispatch to (``"AVX512"``, ``"AVX2"``, ...)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # older PyTorch
        return None


def _torch_blas(torch) -> str | None:
    """The BLAS PyTorch was built with (``BLAS_INFO`` of its build settings, e.g. ``"mkl"``)."""
    try:
        text = torch.__config__.show()
    except Exception:
        return None
    found = re.search(r"BLAS_INFO=(\w+)", text)
    return found.group(1) if found else None


def machine_info(cupy=None, torch=None) -> dict:
    """Everything recorded about the machine (GPU and PyTorch entries when those are given)."""
    info = {
        "cpu": cpu_info(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas_info(),
        "env": {k: os.environ[k] for k in ENV_VARS if k in os.environ},
        "gpu": gpu_info(cupy) if cupy is not None else None,
        "torch": torch_info(torch) if torch is not None else None,
        "argv": list(sys.argv),
    }
    info["summary"] = summary(info)
    return info


def summary(info: dict) -> str:
    """One line naming the machine, e.g.
    ``AMD EPYC (VM), AVX2 (x86-64-v3), 2 cores, 23 GiB, OpenBLAS 0.3.31 (Haswell, 2 threads); no GPU``."""
    cpu = info["cpu"]
    mem = f", {cpu['memory_bytes'] / 2**30:.0f} GiB" if cpu.get("memory_bytes") else ""
    blas = info.get("blas", {})
    detail = ", ".join(
        x for x in (blas.get("openblas_core"), f"{blas['threads']} threads" if blas.get("threads") else None) if x
    )
    blas_s = f"{blas.get('name', '?')} {blas.get('version') or ''}".strip() + (f" ({detail})" if detail else "")
    vm = " (VM)" if cpu.get("hypervisor") else ""
    gpu = info.get("gpu")
    gpu_s = (
        (
            f"{gpu['model']}, CUDA {gpu['cuda_runtime']}, driver {gpu['driver']}, CuPy {gpu['cupy']}, "
            f"TF32 {'on' if gpu['cupy_tf32'] else 'off'}"
        )
        if gpu
        else "no GPU"
    )
    isa = f", {cpu['isa']}" if cpu.get("isa") else ""
    return f"{cpu['model']}{vm}{isa}, {cpu['usable_cores']} cores{mem}, {blas_s}; {gpu_s}"
