"""Reading the files of ``fpt-ref compare``: a reference case directory and another implementation's tensors.

A case directory (written by ``fpt-ref vectors``, docs/vectors.md) holds ``manifest.json``
and ``outputs.safetensors``; the other implementation's file is a ``.safetensors`` or
``.npz`` archive of named tensors. Errors name the Python parameter (``case_dir``, ``actual``).
"""

from __future__ import annotations

import json
import os
import struct
import zipfile

import numpy as np

from ..tolerance import DTYPES


def read_case(case_dir) -> tuple:
    """``(manifest, reference)`` of a case directory; reference maps name -> float64 array."""
    case_dir = os.fspath(case_dir)
    if not os.path.isdir(case_dir):
        raise FileNotFoundError(f"case_dir: {case_dir} is not a directory")
    man_path = os.path.join(case_dir, "manifest.json")
    out_path = os.path.join(case_dir, "outputs.safetensors")
    if not os.path.isfile(man_path) and os.path.isfile(os.path.join(case_dir, "index.json")):
        raise FileNotFoundError(
            f"case_dir: {case_dir} is the top directory of the vectors; give one case "
            f"directory, e.g. {os.path.join(case_dir, 'tok-causal-eps', 'base')}"
        )
    for p in (man_path, out_path):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"case_dir: {p} not found (not a case written by 'fpt-ref vectors')")
    try:
        with open(man_path, encoding="utf-8") as f:
            man = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"case_dir: {man_path}: invalid JSON ({exc})") from None
    _check_manifest(man, man_path)
    from safetensors.numpy import load_file

    try:
        ref = load_file(out_path)
    except Exception as exc:  # safetensors raises several types for a corrupt file
        raise ValueError(f"case_dir: {out_path}: not a readable safetensors file ({exc})") from None
    missing = [n for n in man["outputs"] if n not in ref]
    if missing:
        raise ValueError(f"case_dir: {out_path} lacks {missing} listed in the manifest")
    return man, ref


def _check_manifest(man, man_path: str) -> None:
    """The parts of a manifest that compare reads: outputs (with ``output``) and numeric tolerances."""
    bad = f"case_dir: {man_path} is not a vectors manifest"
    if (
        not isinstance(man, dict)
        or not isinstance(man.get("outputs"), (list, dict))
        or not isinstance(man.get("tolerance"), dict)
    ):
        raise ValueError(f"{bad} (needs 'outputs' and 'tolerance')")
    if "output" not in man["outputs"]:
        raise ValueError(f"{bad} ('outputs' lacks 'output')")
    for dt, per in man["tolerance"].items():
        if dt not in DTYPES:
            continue
        for name in man["outputs"]:
            t = per.get(name) if isinstance(per, dict) else None
            if not isinstance(t, dict) or not all(
                isinstance(t.get(k), (int, float)) and not isinstance(t.get(k), bool) for k in ("atol", "rtol")
            ):
                raise ValueError(f"{bad} (tolerance.{dt}.{name} needs numeric 'atol' and 'rtol')")


def _safetensors_header(path: str) -> dict:
    """The JSON header of a safetensors file (name -> {dtype, shape, ...}); {} if unreadable."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100_000_000:
                return {}
            return json.loads(f.read(n))
    except (OSError, struct.error, ValueError):
        return {}


def read_actual(actual) -> dict:
    """Tensors of the file ``actual`` (.safetensors or .npz): name -> NumPy array, or a str saying why not.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a file that is not
    a readable safetensors/npz archive; a single unreadable tensor (e.g. bfloat16) becomes
    a string so that it is reported by name.
    """
    path = os.fspath(actual)
    if os.path.isdir(path):
        raise IsADirectoryError(f"actual: {path} is a directory; give a .safetensors or .npz file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"actual: {path} not found")
    ext = os.path.splitext(path)[1].lower()
    out: dict = {}
    if ext == ".safetensors":
        from safetensors import safe_open

        header = _safetensors_header(path)
        try:
            with safe_open(path, framework="numpy") as f:
                for name in f.keys():
                    try:
                        out[name] = f.get_tensor(name)
                    except Exception as exc:  # e.g. BF16 has no NumPy dtype
                        dt = header.get(name, {}).get("dtype", "?")
                        out[name] = f"dtype {dt} cannot be read as a NumPy array ({exc})"
        except Exception as exc:
            raise ValueError(f"actual: {path}: not a readable safetensors file ({exc})") from None
    elif ext == ".npz":
        try:
            z = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"actual: {path}: not a readable npz file ({exc})") from None
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError(f"actual: {path}: holds a single .npy array, not an .npz archive of named tensors")
        try:
            with z:
                for name in z.files:
                    try:
                        out[name] = z[name]
                    except ValueError as exc:  # object arrays need pickle
                        out[name] = f"cannot be read without pickle ({exc})"
        except (OSError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"actual: {path}: not a readable npz file ({exc})") from None
    else:
        raise ValueError(f"actual: {path}: expected a .safetensors or .npz file, got extension {ext!r}")
    return out
