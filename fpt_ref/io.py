"""The model file format (README, "File format"): one safetensors file per model.

Reading is in two stages. :func:`read_header` reads only the safetensors header (names,
dtypes, shapes, data offsets, metadata) and checks every declared size against the file's
size; :func:`load` then checks the layout on the header alone (names and shapes, through
:func:`fpt_ref.model.from_tensors` on zero-stride stand-ins), checks the memory the
tensors need (:func:`fpt_ref.memory.require`), and only then reads the data. A file whose
tensors hold NaN or infinity is refused unless ``allow_nonfinite`` is given.

Writing goes through :func:`fpt_ref.files.write_safetensors`: the output is checked first
(a regular file or a new one), written atomically, keeps an existing file's permission
bits, and the same model gives the same bytes.
"""

from __future__ import annotations

import json
import os
import stat

import numpy as np

from .blocks import Arch
from .checks import parse_int
from .files import file_kind, read_safetensors_header, write_safetensors
from .model import Model, from_tensors, named_tensors
from .xp import to_numpy

#: the paper's model (the ``Arch`` defaults, no grouped-query layer)
FORMAT = "fpt-ref/1"
#: any other architecture: metadata ``arch`` (JSON of :meth:`fpt_ref.blocks.Arch.to_dict`) and,
#: without learned positions, ``max_seq``
FORMAT_ARCH = "fpt-ref/2"

#: safetensors dtype names this format accepts, and their NumPy dtypes
DTYPES: dict[str, np.dtype] = {"F64": np.dtype("float64"), "F32": np.dtype("float32")}


class FormatError(ValueError):
    """A model file that does not follow the documented layout."""


def save(model: Model, path) -> str:
    """Write ``model`` to ``path`` (safetensors; CuPy arrays are copied to the host).

    ``path`` must be a regular file, a symbolic link to one (its target is written) or a
    new file in an existing folder; anything else is refused with ``ValueError`` before
    anything is written (:func:`fpt_ref.files.check_output_file`). The file is written
    atomically; an existing file keeps its permission bits, a new one gets
    ``0666 & ~umask``. The same model gives the same bytes. Returns the real path written.
    """
    tensors = {name: np.ascontiguousarray(to_numpy(a)) for name, a in named_tensors(model).items()}
    meta = {"format": FORMAT, "norm_eps": repr(float(model.norm_eps)), "causal": "true" if model.causal else "false"}
    if not model.arch.is_paper or any(layer.grouped for layer in model.layers):
        meta["format"] = FORMAT_ARCH
        meta["arch"] = json.dumps(model.arch.to_dict(), sort_keys=True)
        if model.max_seq is not None:
            meta["max_seq"] = str(model.max_seq)
    return write_safetensors(path, tensors, meta, name="path")


def check_input_file(path) -> int:
    """The size of the regular file ``path``; a one-line error otherwise.

    ``FileNotFoundError`` (``no such file``), ``PermissionError`` (``permission denied``),
    :class:`FormatError` for a device, FIFO, socket or directory (``not a regular file
    (a character device)``).
    """
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except PermissionError:
        raise PermissionError(f"{path}: permission denied") from None
    except OSError as exc:
        raise OSError(f"{path}: cannot read ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise FormatError(f"{path}: not a regular file ({file_kind(st.st_mode)})")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"{path}: permission denied")
    return int(st.st_size)


def read_header(path) -> tuple:
    """``(metadata, entries)`` of a safetensors file, reading only its header.

    ``entries`` maps each tensor name to ``(dtype, shape, (begin, end))`` as declared
    (``dtype`` the safetensors name, ``"F64"``). Every entry's byte size is checked against
    its shape and dtype, every data range against the file's size, and the ranges must tile
    the data section exactly; a violation is a :class:`FormatError` naming the tensor.
    """
    path = os.fspath(path)
    size = check_input_file(path)
    bad = f"{path}: not a readable safetensors file"
    try:
        header, n = read_safetensors_header(path, size, bad, FormatError)
    except PermissionError:
        raise PermissionError(f"{path}: permission denied") from None
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise FormatError(f"{bad} (__metadata__ is not an object of strings)")
    data_size = size - 8 - n
    entries = {}
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], [int(d) for d in info["shape"]], info["data_offsets"]
            begin, end = int(begin), int(end)
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"{bad} (entry {name!r} lacks dtype, shape or data_offsets)") from None
        if dtype not in DTYPES:
            raise FormatError(
                f"{path}: tensor {name!r} has dtype {dtype}; the format holds F64 or F32 (float64 or float32)"
            )
        if any(d < 0 for d in shape):
            raise FormatError(f"{path}: tensor {name!r} has a negative dimension in shape {shape}")
        want = int(np.prod(shape, dtype=object)) * DTYPES[dtype].itemsize
        if not 0 <= begin <= end or end - begin != want:
            raise FormatError(
                f"{path}: tensor {name!r} declares shape {shape} ({want} bytes) but data offsets [{begin}, {end}]"
            )
        if end > data_size:
            raise FormatError(
                f"{path}: tensor {name!r} ends at byte {end} of the data, but the file holds {data_size} bytes of data "
                "(truncated?)"
            )
        entries[name] = (dtype, shape, (begin, end))
    covered = sorted(r for _, _, r in entries.values())
    pos = 0
    for begin, end in covered:
        if begin != pos:
            raise FormatError(f"{bad} (data ranges overlap or leave gaps at byte {pos})")
        pos = end
    if pos != data_size:
        raise FormatError(f"{bad} (the tensors declare {pos} bytes of data, the file holds {data_size})")
    return meta, entries


def _options(path: str, meta: dict) -> tuple:
    """``(norm_eps, causal, arch, max_seq)`` from the file's metadata."""
    fmt = meta.get("format")
    if fmt not in (FORMAT, FORMAT_ARCH):
        raise FormatError(f"{path}: metadata format is {fmt!r}, expected {FORMAT!r} or {FORMAT_ARCH!r}")
    arch, max_seq = Arch(), None
    if fmt == FORMAT_ARCH:
        try:
            arch = Arch.from_dict(json.loads(meta.get("arch", "")))
        except (ValueError, TypeError, AttributeError) as exc:
            raise FormatError(f"{path}: metadata arch={meta.get('arch')!r} is not an architecture ({exc})") from None
        if "max_seq" in meta:
            try:
                max_seq = parse_int("max_seq", meta["max_seq"], 1)
            except ValueError:
                raise FormatError(f"{path}: metadata max_seq={meta['max_seq']!r} is not a positive integer") from None
    try:
        eps = float(meta.get("norm_eps", "0.0"))
    except ValueError:
        raise FormatError(f"{path}: metadata norm_eps={meta.get('norm_eps')!r} is not a float") from None
    causal = meta.get("causal", "false")
    if causal not in ("true", "false"):
        raise FormatError(f"{path}: metadata causal={causal!r}, expected 'true' or 'false'")
    return eps, causal == "true", arch, max_seq


def _build(path: str, tensors: dict, options: tuple, xp) -> Model:
    eps, causal, arch, max_seq = options
    try:
        return from_tensors(tensors, norm_eps=eps, causal=causal, xp=xp, arch=arch, max_seq=max_seq)
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        raise FormatError(f"{path}: {msg[len('tensors: ') :] if msg.startswith('tensors: ') else msg}") from None


def _load_checkpoint(path: str, xp, allow_nonfinite: bool) -> Model:
    """A Hugging Face checkpoint folder as a Model (:func:`load`)."""
    from . import hf
    from .model import convert

    if not hf.is_checkpoint(path):
        raise FormatError(
            f"{path}: not a regular file (a directory), and not a Hugging Face checkpoint (config.json and "
            "model.safetensors or model.safetensors.index.json)"
        )
    try:
        model = hf.load(path)
    except (ValueError, TypeError) as exc:
        raise FormatError(f"{path}: {exc}") from None
    if not allow_nonfinite:
        bad = nonfinite_counts(named_tensors(model))
        if bad:
            name, count = next(iter(bad.items()))
            raise FormatError(
                f"{path}: tensor {name!r} holds {count} non-finite value{'s' if count != 1 else ''} (NaN or inf); "
                "refusing to load it (allow_nonfinite=True accepts it)"
            )
    return model if xp is np else convert(model, xp=xp)


def load_header(path) -> Model:
    """The model of ``path`` with its layout checked but no data read.

    Every tensor is a zero-stride stand-in of the declared shape and dtype (it reads as
    zeros and takes no memory), so the dimensions (``h``, ``N``, each layer's ``p`` and
    heads), :func:`fpt_ref.param_count` and :func:`fpt_ref.dims` are those of the file.
    Raises as :func:`load` does, except for values.
    """
    path = os.fspath(path)
    meta, entries = read_header(path)
    options = _options(path, meta)
    stand_ins = {
        name: np.broadcast_to(np.zeros((), DTYPES[dtype]), tuple(shape)) for name, (dtype, shape, _) in entries.items()
    }
    return _build(path, stand_ins, options, None)


def nonfinite_counts(tensors: dict) -> dict:
    """``{name: count}`` of NaN and infinite entries, for the tensors that have any (file order)."""
    out = {}
    for name, a in tensors.items():
        a = to_numpy(a)
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        if bad:
            out[name] = bad
    return out


def load(path, xp=np, allow_nonfinite: bool = False) -> Model:
    """Read a model written by :func:`save`, or a Hugging Face checkpoint folder; ``xp=cupy``
    puts it on the GPU.

    A folder with ``config.json`` and ``model.safetensors`` (or shards and their index) is read
    by :func:`fpt_ref.hf.load` (float64; docs/hf.md), its errors raised as :class:`FormatError`.
    For a model file the header is checked first (:func:`load_header`: names, shapes, dtypes, declared sizes
    against the file's size), then the memory the tensors need, and only then is the data read.

    Parameters
    ----------
    path : str or os.PathLike
    xp : module
        ``numpy`` (default) or ``cupy``.
    allow_nonfinite : bool
        Accept tensors holding NaN or infinity (default: refuse them, naming the first such
        tensor and its count; :func:`nonfinite_counts` lists them all).

    Raises
    ------
    FileNotFoundError
        ``no such file``.
    PermissionError
        ``permission denied``.
    FormatError
        Not a regular file (a device, a FIFO, a directory), not a safetensors file, a
        declared size the file does not hold, a missing, extra, misnamed or wrongly shaped
        tensor, bad metadata, or (without ``allow_nonfinite``) a non-finite value.
    fpt_ref.memory.ResourceError
        The tensors would not fit in the memory available.
    """
    from safetensors import SafetensorError, safe_open

    from .memory import fmt_bytes, require

    path = os.fspath(path)
    if os.path.isdir(path):
        return _load_checkpoint(path, xp, allow_nonfinite)
    shell = load_header(path)
    _, entries = read_header(path)
    nbytes = sum(end - begin for _, _, (begin, end) in entries.values())
    require(nbytes, f"loading {path} ({fmt_bytes(nbytes)} of tensors)")
    try:
        with safe_open(path, framework="numpy") as f:
            tensors = {name: f.get_tensor(name) for name in entries}
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise FormatError(f"{path}: not a readable safetensors file ({exc})") from None
    if not allow_nonfinite:
        for name in named_tensors(shell):  # file order: embed, pos, w_out, layer by layer
            a = tensors[name]
            bad = int(a.size - np.count_nonzero(np.isfinite(a)))
            if bad:
                raise FormatError(
                    f"{path}: tensor {name!r} holds {bad} non-finite value{'s' if bad != 1 else ''} (NaN or inf) "
                    f"of {a.size}; refusing to load it (allow_nonfinite=True accepts it)"
                )
    return _build(path, tensors, (shell.norm_eps, shell.causal, shell.arch, shell.max_seq), xp)
