"""Reading and writing the tensors of a Hugging Face checkpoint folder, without torch.

A checkpoint folder holds ``config.json`` and either ``model.safetensors`` or shards listed
by ``model.safetensors.index.json`` (``weight_map``: tensor name -> shard file).

Reading: F64, F32 and F16 tensors come from safetensors' NumPy API (``safe_open(...,
framework="numpy")``); NumPy has no bfloat16, so a BF16 tensor is read as raw ``uint16``
bits from the file's header offsets and widened exactly (``uint32(bits) << 16`` viewed as
float32: bfloat16 is the upper half of a float32). Every value is then converted to the
working dtype (float64 by default: exact from every stored dtype).

Writing: :func:`write_checkpoint_tensors` writes every dtype through one writer of the
safetensors layout (8-byte little-endian header length, JSON header with sorted keys padded
with spaces to a multiple of 8 bytes, data), since safetensors' NumPy API cannot write
BF16; each file is written atomically (:func:`fpt_ref.files.atomic_write`). BF16 values are
rounded to nearest, ties to even, directly from float64 (:func:`to_bf16_bits`), never
through float32 (which would round twice).
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np

from ..files import atomic_write, read_safetensors_header, write_text

CONFIG = "config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"

#: safetensors dtype name -> NumPy dtype of the stored values (BF16: the raw bits)
STORED: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
}
#: output dtype names (``save(..., dtype=)``, config ``dtype``) -> safetensors dtype name
DTYPE_NAMES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16"}
#: safetensors dtype name -> config dtype name
CONFIG_DTYPES = {v: k for k, v in DTYPE_NAMES.items()}
#: bytes :meth:`Tensors.read` reads at a time (one buffer of this size is kept)
CHUNK = 1024 * 1024
#: a header larger than this is refused before it is read (the library's own limit)


def bf16_to_float32(bits):
    """bfloat16 bit patterns (``uint16``, any shape) -> float32, exactly (same shape)."""
    bits = np.asarray(bits, dtype=np.uint16)
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def to_bf16_bits(x):
    """Round float values to bfloat16, to nearest with ties to even; returns ``uint16`` bits.

    float64 input is rounded directly (8 significant bits kept from the float64 significand),
    so a value is rounded once; float32 input likewise from its own bits. Values beyond
    bfloat16's range round to infinity, NaN stays NaN (quiet), and values below float32's
    smallest normal (``1.2e-38``, bfloat16's too) go through float32's subnormals.

    x: array of float64 or float32 (any shape) -> uint16 array of the same shape.
    """
    x = np.asarray(x)
    if x.dtype == np.float64:
        u = x.view(np.uint64)
        lsb = (u >> np.uint64(45)) & np.uint64(1)
        r = ((u + np.uint64(2**44 - 1) + lsb) >> np.uint64(45)) << np.uint64(45)  # 7 fraction bits kept
        rounded = r.view(np.float64)
        with np.errstate(over="ignore"):
            f32 = rounded.astype(np.float32)  # exact (or inf beyond float32's range)
        tiny = np.abs(x) < np.finfo(np.float32).tiny
        if np.any(tiny):
            f32 = np.where(tiny, x.astype(np.float32), f32)
        nan = np.isnan(x)
        x = np.where(nan, np.float32(np.nan), f32).astype(np.float32)
    elif x.dtype != np.float32:
        raise TypeError(f"x: expected float64 or float32 values, got {x.dtype}")
    u32 = np.ascontiguousarray(x).view(np.uint32)
    lsb = (u32 >> np.uint32(16)) & np.uint32(1)
    out = ((u32 + np.uint32(0x7FFF) + lsb) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(x)
    if np.any(nan):
        out = np.where(nan, ((u32 >> np.uint32(16)) | np.uint32(0x40)).astype(np.uint16), out)
    return out


def _decode(stored, dt: str, dtype):
    """Stored values (``uint16`` bits for BF16) as a new array of ``dtype`` (exact widening)."""
    if dt == "BF16":
        return bf16_to_float32(stored).astype(dtype, copy=False)
    return np.array(stored, dtype=dtype)


def read_header(path) -> tuple:
    """``(metadata, entries, data_start)`` of a safetensors file, reading only its header.

    ``entries`` maps each name to ``{"dtype", "shape", "data_offsets"}`` as declared;
    ``data_start`` is the byte where the data section begins. ``ValueError`` starting
    ``path:`` for a file that is not safetensors.
    """
    path = os.fspath(path)
    bad = f"path: {path} is not a readable safetensors file"
    header, n = read_safetensors_header(path, os.path.getsize(path), bad)
    meta = header.pop("__metadata__", None) or {}
    return meta, header, 8 + n


class Tensors:
    """The tensors of a checkpoint folder, read one at a time by name.

    Parameters
    ----------
    folder : str
        A folder holding ``model.safetensors`` or ``model.safetensors.index.json`` and its shards.

    Attributes
    ----------
    entries : dict
        name -> (file, safetensors dtype name, shape list).
    """

    def __init__(self, folder):
        self.folder = os.fspath(folder)
        self.entries: dict = {}
        self._headers: dict = {}
        self._handles: dict = {}
        self._buffer = None  # the chunk buffer of read()
        self._pool: list = []  # arrays read() may reuse (_alloc)
        self.pool_bytes = 0
        single = os.path.join(self.folder, SINGLE)
        index = os.path.join(self.folder, INDEX)
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as f:
                try:
                    weight_map = json.load(f)["weight_map"]
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise ValueError(f"path: {index} has no readable weight_map ({exc})") from None
            files = sorted(set(weight_map.values()))
        elif os.path.isfile(single):
            weight_map, files = None, [SINGLE]
        else:
            raise ValueError(f"path: {self.folder} holds neither {SINGLE} nor {INDEX}")
        for name in files:
            if os.path.basename(name) != name:
                raise ValueError(f"path: {index} names a shard outside the folder: {name!r}")
            file = os.path.join(self.folder, name)
            if not os.path.isfile(file):
                raise ValueError(f"path: shard {name} listed in {INDEX} is missing")
            meta, header, start = read_header(file)
            self._headers[file] = (header, start)
            for key, info in header.items():
                if weight_map is not None and weight_map.get(key) != name:
                    raise ValueError(f"path: tensor {key!r} is in shard {name} but {INDEX} maps it elsewhere")
                self.entries[key] = (file, info.get("dtype"), [int(d) for d in info.get("shape", [])])
        if weight_map is not None:
            missing = sorted(set(weight_map) - set(self.entries))
            if missing:
                raise ValueError(f"path: {INDEX} lists tensors no shard holds, e.g. {missing[0]!r}")

    def __contains__(self, name) -> bool:
        return name in self.entries

    def names(self) -> list:
        return sorted(self.entries)

    def shape(self, name) -> list:
        return list(self.entries[name][2])

    def stored_dtype(self) -> str:
        """The safetensors dtype of the floating tensors (the most frequent one; ``F32`` if none)."""
        counts: dict = {}
        for _, dt, _ in self.entries.values():
            if dt in STORED:
                counts[dt] = counts.get(dt, 0) + 1
        return max(sorted(counts), key=lambda d: counts[d]) if counts else "F32"

    def get(self, name, dtype=np.float64):
        """Tensor ``name`` as a new array of ``dtype`` (exact widening; float64 -> float32 rounds)."""
        if name not in self.entries:
            raise ValueError(f"path: tensor {name!r} is missing from {self.folder}")
        file, dt, shape = self.entries[name]
        if dt not in STORED:
            raise ValueError(f"path: tensor {name!r} has dtype {dt}; expected one of {', '.join(STORED)}")
        if dt == "BF16":
            header, start = self._headers[file]
            begin, end = (int(o) for o in header[name]["data_offsets"])
            count = int(np.prod(shape, dtype=np.int64))
            if end - begin != 2 * count:
                raise ValueError(f"path: tensor {name!r} declares shape {shape} but {end - begin} bytes")
            bits = np.fromfile(file, dtype="<u2", count=count, offset=start + begin).reshape(shape)
            return bf16_to_float32(bits).astype(dtype)
        if file not in self._handles:
            from safetensors import safe_open

            self._handles[file] = safe_open(file, framework="numpy")
        return np.asarray(self._handles[file].get_tensor(name)).astype(dtype)

    def _map(self, name):
        """Tensor ``name`` as a read-only memory map of its stored values (BF16: ``uint16`` bits)."""
        if name not in self.entries:
            raise ValueError(f"path: tensor {name!r} is missing from {self.folder}")
        file, dt, shape = self.entries[name]
        if dt not in STORED:
            raise ValueError(f"path: tensor {name!r} has dtype {dt}; expected one of {', '.join(STORED)}")
        header, start = self._headers[file]
        begin, end = (int(o) for o in header[name]["data_offsets"])
        count = int(np.prod(shape, dtype=np.int64))
        if end - begin != STORED[dt].itemsize * count:
            raise ValueError(f"path: tensor {name!r} declares shape {shape} but {end - begin} bytes")
        if count == 0:
            return np.zeros(shape, STORED[dt]), dt
        return np.memmap(file, dtype=STORED[dt], mode="r", offset=start + begin, shape=tuple(shape)), dt

    def read(self, name, dtype=np.float32, index=None):
        """Tensor ``name`` (or its region ``index`` of a memory map) as a new read-only array of ``dtype``.

        The stored values are read once, in chunks of :data:`CHUNK` bytes through one reusable
        buffer, each chunk decoded straight into the result (BF16: ``uint32(bits) << 16``
        viewed as float32). ``dtype`` must hold the stored dtype exactly (float32 for BF16, F16
        and F32; float64 for all). Read-only marks the array as the streaming reader's
        (:func:`fpt_ref.hf.common.t` transposes it as a view).
        """
        dtype = np.dtype(dtype)
        if index is not None:
            mm, dt = self._map(name)
            out = _decode(np.array(mm[index]), dt, dtype)
            del mm
            out.flags.writeable = False
            return out
        mm, dt = self._map(name)  # checks the dtype and the byte count
        del mm
        file, _, shape = self.entries[name]
        header, start = self._headers[file]
        begin = start + int(header[name]["data_offsets"][0])
        stored = STORED[dt]
        count = int(np.prod(shape, dtype=np.int64))
        out = self._alloc(count, np.dtype(np.float32 if dt == "BF16" else dtype))
        step = CHUNK // stored.itemsize
        if self._buffer is None:
            self._buffer = np.empty(CHUNK, dtype=np.uint8)
        buf = self._buffer
        with open(file, "rb", buffering=0) as f:
            for lo in range(0, count, step):
                hi = min(count, lo + step)
                raw = memoryview(buf)[: (hi - lo) * stored.itemsize]
                f.seek(begin + lo * stored.itemsize)
                got = f.readinto(raw)
                if got != len(raw):
                    raise ValueError(f"path: tensor {name!r}: the file ends before its data")
                bits = buf[: len(raw)].view(stored)
                if dt == "BF16":
                    np.left_shift(bits, 16, out=out[lo:hi].view(np.uint32), dtype=np.uint32)
                else:
                    out[lo:hi] = bits
        out = out.reshape(shape)
        if out.dtype != dtype:
            out = out.astype(dtype)
        out.flags.writeable = False
        return out

    def _alloc(self, count: int, dtype):
        """A 1-d array of ``count`` values: a pooled one no array refers to any more (its pages are
        already mapped: no page faults), else a new one, pooled while the pool holds at most
        :attr:`pool_bytes` (0: no pool)."""
        import sys

        nbytes = count * dtype.itemsize
        pool = self._pool
        for i in range(len(pool)):
            if pool[i].nbytes == nbytes and pool[i].dtype == dtype and sys.getrefcount(pool[i]) <= 2:  # list, call
                return self._reuse(i)
        out = np.empty(count, dtype=dtype)
        if nbytes <= self.pool_bytes:
            held = sum(a.nbytes for a in self._pool)
            while held + nbytes > self.pool_bytes:
                free = [i for i in range(len(pool)) if sys.getrefcount(pool[i]) <= 2]
                if not free:
                    return out
                held -= self._pool.pop(free[0]).nbytes
            self._pool.append(out)
        return out

    def _reuse(self, i: int):
        a = self._pool.pop(i)
        self._pool.append(a)  # most recently used last
        return a

    def same_stored(self, name, other: Tensors, other_name) -> bool:
        """Whether tensor ``name`` and tensor ``other_name`` of ``other`` hold the same stored bytes
        (same dtype and shape), compared in chunks of :data:`CHUNK` bytes without decoding."""
        f1, d1, s1 = self.entries[name]
        f2, d2, s2 = other.entries[other_name]
        if d1 != d2 or list(s1) != list(s2):
            return False
        (b1, e1), (b2, e2) = (
            [int(o) for o in t._headers[f][0][n]["data_offsets"]]
            for t, f, n in ((self, f1, name), (other, f2, other_name))
        )
        if e1 - b1 != e2 - b2:
            return False
        start1, start2 = self._headers[f1][1] + b1, other._headers[f2][1] + b2
        size = e1 - b1
        bufs = np.empty(CHUNK, np.uint8), np.empty(CHUNK, np.uint8)  # reused: no allocation per chunk
        with open(f1, "rb", buffering=0) as x, open(f2, "rb", buffering=0) as y:
            x.seek(start1)
            y.seek(start2)
            done = 0
            while done < size:
                n = min(CHUNK, size - done)
                a, b = bufs[0][:n], bufs[1][:n]
                if x.readinto(a.data) != n or y.readinto(b.data) != n:
                    raise ValueError("path: a tensor's file ends before its data")
                if not same_uint_bits(a, b):
                    return False
                done += n
        return True

    def holds_corner(self, name, other: Tensors, other_name) -> bool:
        """Whether tensor ``name`` stores the same values as the leading corner of ``other``'s tensor
        ``other_name`` (``other[:d0, :d1, ...]`` for this tensor's shape ``[d0, d1, ...]``): the same
        stored dtype and rank, each dimension at most ``other``'s, and the same stored bits entry by
        entry. Compared as stored (BF16: ``uint16`` bits) in blocks of rows, nothing decoded."""
        _, d1, s1 = self.entries[name]
        _, d2, s2 = other.entries[other_name]
        if d1 != d2 or d1 not in STORED or len(s1) != len(s2) or any(a > b for a, b in zip(s1, s2)):
            return False
        if list(s1) == list(s2):
            return self.same_stored(name, other, other_name)
        bits = np.dtype(f"<u{STORED[d1].itemsize}")  # compare bits, not values (-0.0, NaN)
        mine, theirs = self._map(name)[0].view(bits), other._map(other_name)[0].view(bits)
        if mine.size == 0:
            return True
        corner = theirs[tuple(slice(0, d) for d in s1)]  # [d0, d1, ...] a strided view of the map
        row = max(1, int(np.prod(s2[1:], dtype=np.int64)) * STORED[d1].itemsize)  # bytes of one row of other's
        step = max(1, CHUNK // row)
        try:
            return all(
                same_uint_bits(mine[lo : lo + step], corner[lo : lo + step]) for lo in range(0, int(s1[0]), step)
            )
        finally:
            del mine, theirs, corner

    def raw(self, name):
        """Tensor ``name`` as stored (BF16: its ``uint16`` bits), a new array: for copying it unchanged."""
        mm, _ = self._map(name)
        out = np.array(mm)
        del mm
        return out

    def nbytes(self, itemsize: int) -> int:
        """Bytes the floating tensors take at ``itemsize`` bytes per value."""
        return sum(
            int(np.prod(shape, dtype=np.int64)) * itemsize for _, dt, shape in self.entries.values() if dt in STORED
        )


def same_uint_bits(a, b) -> bool:
    """Whether unsigned-integer arrays ``a`` and ``b`` (same shape and dtype, any strides) hold the
    same bits, compared 8 bytes at a time where the last axis is contiguous and allows it."""
    n = a.shape[-1] * a.itemsize if a.ndim else 0  # bytes of the last axis
    if n and n % 8 == 0 and a.strides[-1] == b.strides[-1] == a.itemsize:
        a, b = a.view(np.uint64), b.view(np.uint64)
    return bool(np.array_equal(a, b))


def _encode(a, st_dtype: str):
    """``a`` (float64 or float32 NumPy array; for BF16 also ``uint16`` bits, written as they are) as
    little-endian bytes of safetensors dtype ``st_dtype``."""
    if st_dtype == "BF16" and a.dtype == np.uint16:
        return np.ascontiguousarray(a).astype("<u2", copy=False).tobytes()
    if st_dtype == "BF16":
        with np.errstate(over="ignore"):  # beyond bfloat16's range: inf, as for the other dtypes
            return np.ascontiguousarray(to_bf16_bits(a)).astype("<u2").tobytes()
    with np.errstate(over="ignore"):
        return np.ascontiguousarray(a.astype(STORED[st_dtype])).tobytes()


def write_safetensors_raw(path, tensors: dict, st_dtype: str, metadata: dict, name: str = "out_dir") -> str:
    """Write ``tensors`` (name -> float array) as one safetensors file of dtype ``st_dtype``.

    Tensors are stored in sorted name order; the header (sorted keys, padded with spaces to
    a multiple of 8 bytes) is what ``safe_open`` and transformers read. Atomic
    (:func:`fpt_ref.files.atomic_write`). Returns the real path written.
    """
    if st_dtype not in STORED:
        raise ValueError(f"dtype: expected one of {', '.join(STORED)}, got {st_dtype!r}")
    names = sorted(tensors)
    item = STORED[st_dtype].itemsize
    header: dict = {"__metadata__": dict(metadata)}
    offset = 0
    for key in names:
        shape = [int(d) for d in tensors[key].shape]
        size = int(np.prod(shape, dtype=np.int64)) * item
        header[key] = {"dtype": st_dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            for key in names:
                a = np.asarray(tensors[key])
                if a.ndim == 0:
                    f.write(_encode(a, st_dtype))
                    continue
                # blocks of rows: rounding is per entry, so each block's bytes are that block's part
                # of the whole tensor's (C order); temporaries stay the size of a block
                row = int(np.prod(a.shape[1:], dtype=np.int64)) * a.itemsize  # bytes of one row (0: none)
                step = max(1, CHUNK // max(1, row))
                for lo in range(0, a.shape[0], step):
                    f.write(_encode(a[lo : lo + step], st_dtype))

    return atomic_write(path, write, name)


def shard_names(count: int) -> list:
    """``model-00001-of-0000N.safetensors`` ... (transformers' names), or ``[model.safetensors]``."""
    if count == 1:
        return [SINGLE]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def plan_shards(tensors: dict, itemsize: int, shard_bytes: int | None) -> list:
    """Tensor names grouped into shards of at most ``shard_bytes`` (a larger tensor gets its own).

    Names are taken in sorted order; ``None`` puts everything in one file.
    """
    names = sorted(tensors)
    if shard_bytes is None:
        return [names]
    shards: list = [[]]
    used = 0
    for key in names:
        size = int(np.prod(tensors[key].shape, dtype=np.int64)) * itemsize
        if shards[-1] and used + size > shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(key)
        used += size
    return shards


def write_checkpoint_tensors(folder, tensors: dict, st_dtype: str, metadata: dict, shard_bytes=None) -> list:
    """Write ``tensors`` into ``folder`` as ``model.safetensors`` or shards with an index.

    Returns the file names written (the index last when sharded).
    """
    item = STORED[st_dtype].itemsize
    groups = plan_shards(tensors, item, shard_bytes)
    files = shard_names(len(groups))
    for file, group in zip(files, groups):
        write_safetensors_raw(os.path.join(folder, file), {k: tensors[k] for k in group}, st_dtype, metadata)
    if len(files) == 1:
        return files
    total = sum(int(np.prod(a.shape, dtype=np.int64)) * item for a in tensors.values())
    weight_map = {k: file for file, group in zip(files, groups) for k in group}
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    text = json.dumps(index, indent=2, sort_keys=True) + "\n"
    write_text(os.path.join(folder, INDEX), text, "out_dir")
    return files + [INDEX]


def read_config(folder) -> dict:
    """``config.json`` of a checkpoint folder as a dict (``ValueError`` starting ``path:``)."""
    file = os.path.join(os.fspath(folder), CONFIG)
    if not os.path.isfile(file):
        raise ValueError(f"path: {folder} has no {CONFIG}")
    with open(file, encoding="utf-8") as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"path: {file} is not JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ValueError(f"path: {file} is not a JSON object")
    return config


def is_checkpoint(path) -> bool:
    """Whether ``path`` is a folder with ``config.json`` and ``model.safetensors`` or its index."""
    p = os.fspath(path)
    return (
        os.path.isdir(p)
        and os.path.isfile(os.path.join(p, CONFIG))
        and (os.path.isfile(os.path.join(p, SINGLE)) or os.path.isfile(os.path.join(p, INDEX)))
    )
