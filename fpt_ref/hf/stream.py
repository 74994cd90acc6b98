"""A checkpoint folder read a layer at a time: the streaming side of :mod:`fpt_ref.hf` (docs/hf.md).

:class:`Stream` opens a folder without reading its tensors: the family reader
(:func:`fpt_ref.hf.llama.to_model`, :func:`fpt_ref.hf.gpt2.to_model`) runs on *placeholders*,
read-only zero-stride arrays of the right shape and dtype that take no memory, so the config,
every tensor name and shape are checked exactly as :func:`fpt_ref.hf.read` checks them and the
result, :attr:`Stream.skeleton`, is a :class:`~fpt_ref.model.Model` with every dimension and no
values. :meth:`Stream.layer` then reads the tensors of one layer (the same reader, with only that
layer's tensors real), :meth:`Stream.model_tensor` one model-wide tensor, :meth:`Stream.sample`
row 0 of the two MLP matrices (a cheap fingerprint for the layer alignment).

Tensors are read in chunks from the files (:meth:`fpt_ref.hf.files.Tensors.read`) into the working
dtype: float32 for BF16, F16 and F32 storage (exact widening), float64 when any tensor is
stored in F64. Nothing is transposed: ``nn.Linear``'s ``[out, in]`` becomes fpt_ref's
``[in, out]`` as a view.
"""

from __future__ import annotations

import os
import re

import numpy as np

from .files import Tensors, read_config

__all__ = ["Stream", "working_dtype", "placeholder"]

#: the layer index of a tensor name (llama ``model.layers.{n}.``, gpt2 ``h.{n}.``)
_LAYER = re.compile(r"(?:^|\.)(?:layers|h)\.([0-9]+)\.")
#: per family module name: the two MLP tensors whose row 0 is :meth:`Stream.sample`'s fingerprint
SAMPLED = {
    "fpt_ref.hf.llama": ("mlp.up_proj.weight", "mlp.down_proj.weight"),
    "fpt_ref.hf.gpt2": ("mlp.c_fc.weight", "mlp.c_proj.weight"),
}


def placeholder(shape, dtype):
    """A read-only array of zeros of ``shape`` and ``dtype`` that takes no memory (zero strides)."""
    return np.broadcast_to(np.zeros((), dtype=dtype), tuple(int(d) for d in shape))


def is_placeholder(a) -> bool:
    return a is not None and a.size > 1 and all(s == 0 for s in a.strides)


def working_dtype(*tensors: Tensors) -> np.dtype:
    """float64 when any floating tensor of ``tensors`` is stored in F64, else float32 (exact for BF16, F16, F32)."""
    for ts in tensors:
        if any(dt == "F64" for _, dt, _ in ts.entries.values()):
            return np.dtype(np.float64)
    return np.dtype(np.float32)


class _View:
    """The :class:`~fpt_ref.hf.files.Tensors` interface the family readers use, with only ``real`` names read."""

    def __init__(self, tensors: Tensors, real=(), check: bool = False, given=None):
        self._t = tensors
        self.real = set(real)
        self.given = {} if given is None else given  # name -> an array already holding its values
        self.loaded: dict = {}  # name -> the array get() returned for a real name
        self.requested: list = []
        self.probes: dict = {}
        self.check = check

    def __contains__(self, name) -> bool:
        return name in self._t

    def names(self) -> list:
        return self._t.names()

    def shape(self, name) -> list:
        return self._t.shape(name)

    def get(self, name, dtype=np.float64):
        self.requested.append(name)
        if name in self.given and self.given[name].dtype == np.dtype(dtype):
            self.loaded[name] = self.given[name]
            return self.given[name]
        if name in self.real:
            self.loaded[name] = self._t.read(name, dtype)
            return self.loaded[name]
        if self.check:
            self._t._map(name)  # the dtype and byte count are checked as reading would check them
        if name in self.probes:  # a constant naming the tensor: which model attribute it becomes (Stream.kinds)
            return np.broadcast_to(np.full((), self.probes[name], dtype=dtype), tuple(self._t.shape(name)))
        return placeholder(self._t.shape(name), dtype)


class Stream:
    """Checkpoint folder ``path`` opened for reading one layer at a time.

    Parameters
    ----------
    path : str or os.PathLike
        A folder with ``config.json`` and ``model.safetensors`` (or shards and their index).
    dtype : {"float32", "float64"} or None
        The working dtype; ``None``: :func:`working_dtype` of the folder.
    max_seq : int, optional
        As :func:`fpt_ref.hf.read`.

    Attributes
    ----------
    skeleton : Model
        Every dimension, option and architecture field of the model; placeholder arrays.
    config : dict
    stored_dtype : str
        The safetensors dtype of the stored tensors (``BF16``, ``F32``, ...).
    reads : int
        Bytes of stored values read so far (the I/O this object did).
    """

    def __init__(self, path, dtype=None, max_seq: int | None = None):
        from . import family_of

        folder = os.fspath(path)
        if not os.path.isdir(folder):
            raise ValueError(f"path: {folder} is not a folder")
        self.folder = folder
        self.config = read_config(folder)
        self.module = family_of(self.config)
        self.tensors = Tensors(folder)
        self.dtype = working_dtype(self.tensors) if dtype is None else np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype: the working dtype must be float32 or float64, got {self.dtype}")
        self.max_seq = max_seq
        self.stored_dtype = self.tensors.stored_dtype()
        view = _View(self.tensors, check=True)
        model_wide = [n for n in self.tensors.names() if not _LAYER.search(n)]
        view.probes = {n: i + 1 for i, n in enumerate(model_wide)}
        self.skeleton = self.module.to_model(self.config, view, dtype=self.dtype, max_seq=max_seq)
        self.layer_names: dict = {}
        self.model_names: list = []
        for name in view.requested:
            m = _LAYER.search(name)
            if m:
                self.layer_names.setdefault(int(m.group(1)), []).append(name)
            else:
                self.model_names.append(name)
        self.kinds: dict = {}  # model-wide kind (embed, pos, w_out, final_norm, final_norm_b) -> tensor name
        from ..names import MODEL_KINDS

        for kind in MODEL_KINDS:
            a = getattr(self.skeleton, kind)
            if a is not None and a.size:
                self.kinds[kind] = model_wide[int(a.flat[0]) - 1]
        self.reads = 0
        self._cache: tuple | None = None
        # the arrays of a dropped layer are reused for the next (Tensors._alloc): one layer's worth
        self.tensors.pool_bytes = max(
            (
                sum(int(np.prod(self.tensors.shape(t), dtype=np.int64)) * self.dtype.itemsize for t in names)
                for names in self.layer_names.values()
            ),
            default=0,
        )

    @property
    def N(self) -> int:
        return self.skeleton.N

    def _build(self, real, layer=None, given=None):
        """The model with tensors ``real`` read (``given``: name -> array already holding its
        values, not read): what ``to_model`` returns for ``layer``, and ``{name: array as read}``."""
        given = {} if given is None else given
        self.reads += sum(
            int(np.prod(self.tensors.shape(n), dtype=np.int64)) * _itemsize(self.tensors, n)
            for n in real
            if n not in given
        )
        view = _View(self.tensors, real, given=given)
        built = self.module.to_model(self.config, view, dtype=self.dtype, max_seq=self.max_seq, layer=layer)
        return built, view.loaded

    def layer(self, n: int):
        """Layer ``n`` with its values (the last one read is kept: reading it again is free)."""
        if self._cache is not None and self._cache[0] == n:
            return self._cache[1]
        self._cache = None  # the previous layer is freed before the next is read
        built, loaded = self._build(self.layer_names.get(n, []), layer=n)
        self._cache = (n, built, loaded)
        return built

    def layer_within(self, n: int, other: Stream, m: int):
        """Layer ``n``, as :meth:`layer`, with every tensor that stores the leading corner of its
        counterpart in ``other``'s layer ``m`` (same name within the layer; the stored bits compared
        in the files, :meth:`~fpt_ref.hf.files.Tensors.holds_corner`) taken as a view of that
        corner of ``other``'s decoded array instead of being decoded again.

        The values are the same either way (the same stored bits decode to the same values); a
        grown layer that holds its base layer's tensors as its leading corners (MLP width, heads
        appended, layers stored alike) is then decoded once, and the audit's comparison of a copied
        block with the base finds the same memory. Reads ``other``'s layer ``m`` if it is not kept.
        """
        if self._cache is not None and self._cache[0] == n:
            return self._cache[1]
        self._cache = None
        other.layer(m)
        assert other._cache is not None  # other.layer(m) keeps layer m
        loaded = other._cache[2] if other.dtype == self.dtype else {}
        theirs = other._suffixes(m)
        given = {}
        for key, name in self._suffixes(n).items():
            oname = theirs.get(key)
            if oname not in loaded:
                continue
            shape = self.tensors.shape(name)
            size = int(np.prod(shape, dtype=np.int64)) * _itemsize(self.tensors, name)
            self.reads += size  # both sides' stored bits are read to compare them
            other.reads += size
            if self.tensors.holds_corner(name, other.tensors, oname):
                given[name] = loaded[oname][tuple(slice(0, d) for d in shape)]  # a read-only view
        built, mine = self._build(self.layer_names.get(n, []), layer=n, given=given)
        self._cache = (n, built, mine)
        return built

    def drop(self) -> None:
        """Forget the layer kept by :meth:`layer`."""
        self._cache = None

    def model_tensor(self, kind: str):
        """Model-wide tensor ``kind`` (``embed``, ``pos``, ``w_out``, ``final_norm``, ``final_norm_b``)
        with its values, as the model holds it (``None`` when the model has none)."""
        if kind not in self.kinds:
            return None
        return getattr(self._build([self.kinds[kind]])[0], kind)

    def _suffixes(self, n: int) -> dict:
        """Layer ``n``'s tensor names by their name within the layer (``mlp.up_proj.weight``)."""
        out = {}
        for name in self.layer_names.get(n, []):
            m = _LAYER.search(name)
            assert m is not None  # layer_names holds only names the pattern matched
            out[name[m.end() :]] = name
        return out

    def same_layer(self, n: int, other: Stream, m: int) -> bool:
        """Whether layer ``n`` here and layer ``m`` of ``other`` store the same bytes in the same
        tensors, and have the same structure (heads, groups, sizes): then their fpt_ref layers are
        equal. Compared in chunks from the files, nothing decoded."""
        a, b = self.skeleton.layers[n], other.skeleton.layers[m]
        if _signature(a) != _signature(b):
            return False
        mine, theirs = self._suffixes(n), other._suffixes(m)
        if set(mine) != set(theirs):
            return False
        for key, name in mine.items():
            size = int(np.prod(self.tensors.shape(name), dtype=np.int64)) * _itemsize(self.tensors, name)
            self.reads += size
            other.reads += size
            if not self.tensors.same_stored(name, other.tensors, theirs[key]):
                return False
        return True

    def unit0(self, n: int):
        """MLP unit 0 of layer ``n`` from the files: ``(w_l2_row, w_l1_col, b_l1_0, w_gate_col,
        b_gate_0)`` as :func:`fpt_ref.certify.infer.unit0_writes` takes them (``None`` where
        absent), or ``None`` for a family without a map (:data:`UNIT0`)."""
        where = UNIT0.get(self.module.__name__)
        if where is None:
            return None
        names = self._suffixes(n)
        out: dict = {}
        for key, (suffix, how) in where.items():
            if suffix not in names:
                out[key] = None
                continue
            index = (0,) if how in ("row", "first") else (slice(None), 0)
            v = self.tensors.read(names[suffix], self.dtype, index=index)
            self.reads += v.size * _itemsize(self.tensors, names[suffix])
            out[key] = v
        return out["w_l2"], out["w_l1"], out["b_l1"], out.get("w_gate"), out.get("b_gate")

    def sample(self, n: int) -> tuple | None:
        """Row 0 of the two MLP matrices of layer ``n`` as stored (``SAMPLED``), in the working
        dtype; ``None`` for a family without a fingerprint."""
        names = SAMPLED.get(self.module.__name__)
        if names is None:
            return None
        out = []
        for suffix in names:
            (full,) = [x for x in self.layer_names.get(n, []) if x.endswith("." + suffix)]
            row = self.tensors.read(full, self.dtype, index=(0,))
            self.reads += row.size * _itemsize(self.tensors, full)
            out.append(row)
        return tuple(out)


#: per family module name: where MLP unit 0's entries are stored (``(tensor suffix, "row" or "col")``)
UNIT0 = {
    "fpt_ref.hf.llama": {
        "w_l2": ("mlp.down_proj.weight", "col"),
        "w_l1": ("mlp.up_proj.weight", "row"),
        "w_gate": ("mlp.gate_proj.weight", "row"),
        "b_l1": ("mlp.up_proj.bias", "first"),
        "b_gate": ("mlp.gate_proj.bias", "first"),
    },
    "fpt_ref.hf.gpt2": {
        "w_l2": ("mlp.c_proj.weight", "row"),
        "w_l1": ("mlp.c_fc.weight", "col"),
        "b_l1": ("mlp.c_fc.bias", "first"),
    },
}


def _itemsize(tensors: Tensors, name: str) -> int:
    from .files import STORED

    return STORED[tensors.entries[name][1]].itemsize


def _signature(layer) -> tuple:
    return (layer.p, layer.G, tuple((hd.k, hd.v) for hd in layer.heads))
