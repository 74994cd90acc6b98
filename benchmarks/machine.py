"""Machine information recorded with every benchmark run, and the GPU/PyTorch probes.

Nothing here needs a dependency beyond NumPy: the BLAS is read from NumPy's build
configuration and, for OpenBLAS, from the loaded library itself through ``ctypes``
(core type and thread count); ``threadpoolctl`` is used when it happens to be installed.
CuPy and PyTorch are imported only inside the probes, and only when asked for.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

import numpy as np

from fpt_ref.memory import meminfo

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


def cpu_info() -> dict:
    """CPU model, logical cores (all and usable), memory, load average."""
    model = platform.processor() or platform.machine()
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1]
    except OSError:
        pass
    mem = meminfo("MemTotal")
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    simd = [f for f in ("avx512f", "avx2", "fma", "neon") if f" {f} " in f" {flags} "]
    return {
        "model": model,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "simd": simd,
        "hypervisor": " hypervisor " in f" {flags} ",
        "memory_bytes": mem,
        "loadavg": load_average(),
    }


def load_average() -> list | None:
    """1, 5 and 15 minute load averages (``None`` where the system has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


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


def torch_info(torch) -> dict:
    info = {
        "version": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda_available": bool(torch.cuda.is_available()),
    }
    if info["cuda_available"]:
        info["cuda"] = torch.version.cuda
        info["device"] = torch.cuda.get_device_name(0)
        info["tf32_matmul"] = bool(torch.backends.cuda.matmul.allow_tf32)
        info["tf32_cudnn"] = bool(torch.backends.cudnn.allow_tf32)
    return info


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
    """One line naming the machine, e.g. ``AMD EPYC, 2 cores, 23 GiB, OpenBLAS 0.3.31 (Haswell, 2 threads); no GPU``."""
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
    return f"{cpu['model']}{vm}, {cpu['usable_cores']} cores{mem}, {blas_s}; {gpu_s}"
