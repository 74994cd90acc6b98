"""Parameter containers for the transformer of docs/spec.md section 1.

A model is a tree of frozen dataclasses holding arrays (NumPy or CuPy). The containers
hold no state beyond their arrays and two options; every function in this package takes
them as input and returns new ones. Returned models may share untouched arrays with their
inputs, so treat the arrays as read-only.

Shapes use the paper's symbols: ``h`` hidden size, ``o`` output size, ``p_n`` MLP width
of layer ``n``, ``k_ne``/``v_ne`` key/value size of head ``e`` of layer ``n``, ``s_max``
rows of positional parameters, ``vocab`` rows of the optional embedding table.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .blocks import Arch
from .checks import check_float, check_int, is_int
from .names import HEAD_KINDS, KV_KINDS, LAYER_KINDS, MODEL_KINDS, head_prefix, layer_prefix, tensor_name
from .xp import array_namespace

Array = Any


@dataclass(frozen=True)
class Head:
    """One attention head: ``W_Q,e`` [h, k], ``W_K,e`` [h, k], ``W_V,e`` [h, v], ``W_O,e`` [v, h],
    and the optional biases ``b_q`` [k], ``b_k`` [k], ``b_v`` [v] (``Arch.qkv_bias``).

    In a grouped-query layer the heads of one group share ``w_k``, ``w_v``, ``b_k``, ``b_v``
    (equal arrays; :class:`Layer`)."""

    w_q: Array  # [h, k]
    w_k: Array  # [h, k]
    w_v: Array  # [h, v]
    w_o: Array  # [v, h]  the e-th block of rows of W_O
    b_q: Array | None = None  # [k]
    b_k: Array | None = None  # [k]
    b_v: Array | None = None  # [v]

    @property
    def k(self) -> int:
        return int(self.w_q.shape[1])

    @property
    def v(self) -> int:
        return int(self.w_v.shape[1])


@dataclass(frozen=True)
class Layer:
    """One transformer layer: Norm^MHA, heads, Norm^MLP and the MLP (docs/spec.md sections 1, 4.1).

    The optional tensors follow the model's :class:`fpt_ref.blocks.Arch`: ``norm_mha_b`` and
    ``norm_mlp_b`` (LayerNorm biases, [h]), ``b_o`` (attention output bias, [h]), ``w_gate``
    [h, p] and ``b_gate`` [p] (gated MLP), ``b_l1`` and ``b_l2`` (MLP biases). ``kv_heads``:
    the number of key/value heads of a grouped-query layer (it divides ``E``; query head ``j``
    reads the keys and values of group ``j // (E / kv_heads)``), or ``None`` when every head
    has its own (the paper; ``kv_heads == E`` is stored as ``None``).
    """

    norm_mha: Array  # [h]
    heads: tuple[Head, ...]
    norm_mlp: Array  # [h]
    w_l1: Array  # [h, p]  (gated: the "up" projection)
    b_l1: Array | None  # [p]
    w_l2: Array  # [p, h]  (gated: the "down" projection)
    b_l2: Array | None  # [h]
    w_gate: Array | None = None  # [h, p]
    b_gate: Array | None = None  # [p]
    b_o: Array | None = None  # [h]
    norm_mha_b: Array | None = None  # [h]
    norm_mlp_b: Array | None = None  # [h]
    kv_heads: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "heads", tuple(self.heads))
        if self.kv_heads is not None and is_int(self.kv_heads) and int(self.kv_heads) == len(self.heads):
            object.__setattr__(self, "kv_heads", None)

    @property
    def p(self) -> int:
        return int(self.w_l1.shape[1])

    @property
    def E(self) -> int:
        return len(self.heads)

    @property
    def G(self) -> int:
        """Number of key/value heads (``E`` unless grouped)."""
        return self.E if self.kv_heads is None else int(self.kv_heads)

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (1 unless grouped)."""
        return self.E // self.G

    @property
    def grouped(self) -> bool:
        return self.kv_heads is not None

    def group(self, e: int) -> int:
        """The key/value head read by query head ``e``."""
        return int(e) // self.group_size

    def leader(self, e: int) -> int:
        """The first query head of head ``e``'s group: the head whose ``w_k``/``w_v`` the file stores."""
        return self.group(e) * self.group_size


@dataclass(frozen=True)
class Model:
    """The whole model of docs/spec.md sections 1 and 4.

    Parameters
    ----------
    embed : array [vocab, h] or None
        Token table giving the input representation ``I``; ``None`` for real-valued inputs.
    pos : array [s_max, h] or None
        Positional parameters ``P`` (``arch.positions == "learned"``); the first ``s`` rows
        are used. ``None`` for RoPE or no positions (then ``max_seq`` gives ``s_max``).
    w_out : array [h, o] or None
        ``None`` when the output is tied to the embedding (``arch.tied``: ``W_out = embed^T``).
    layers : tuple of Layer
    norm_eps : float
        Epsilon inside every norm (0 is the paper's norm).
    causal : bool
        Whether attention is causally masked.
    arch : Arch
        The blocks (:class:`fpt_ref.blocks.Arch`); the default is the paper's model.
    final_norm, final_norm_b : array [h] or None
        Gain (and LayerNorm bias) of the norm before ``W_out`` (``arch.final_norm``).
    max_seq : int or None
        ``s_max`` of a model without ``pos`` (ignored, and normalised to ``None``, with ``pos``).
    """

    embed: Array | None
    pos: Array | None  # [s_max, h]
    w_out: Array | None  # [h, o]
    layers: tuple[Layer, ...]
    norm_eps: float = 0.0
    causal: bool = False
    arch: Arch = Arch()
    final_norm: Array | None = None  # [h]
    final_norm_b: Array | None = None  # [h]
    max_seq: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))
        validate(self)

    # ---- dimensions -------------------------------------------------------------------
    @property
    def h(self) -> int:
        return int(_first(self).shape[-1] if self.w_out is None else self.w_out.shape[0])

    @property
    def o(self) -> int:
        if self.w_out is None:
            assert self.embed is not None  # tied models have an embedding (validate)
            return int(self.embed.shape[0])
        return int(self.w_out.shape[1])

    @property
    def N(self) -> int:
        return len(self.layers)

    @property
    def s_max(self) -> int:
        if self.pos is None:
            assert self.max_seq is not None  # validate
            return int(self.max_seq)
        return int(self.pos.shape[0])

    @property
    def vocab(self) -> int | None:
        return None if self.embed is None else int(self.embed.shape[0])

    @property
    def dtype(self):
        return _first(self).dtype

    @property
    def xp(self):
        return array_namespace(_first(self))

    @property
    def output_matrix(self):
        """``W_out`` [h, o]: the stored one, or ``embed^T`` (a view) when tied."""
        if self.w_out is None:
            assert self.embed is not None
            return self.embed.T
        return self.w_out

    def replace(self, **changes) -> Model:
        """A new model with some fields replaced (validated again)."""
        return replace(self, **changes)


def _first(model: Model):
    """The first model-wide tensor present (``pos``, ``w_out`` or ``embed``): dtype and array library."""
    for a in (model.pos, model.w_out, model.embed):
        if a is not None:
            return a
    raise ValueError("model: needs pos, w_out or embed (nothing gives the hidden size)")


def named_tensors(model: Model) -> dict:
    """All parameters under their file-format names (:mod:`fpt_ref.names`; README, "File format"),
    in file order: the model-wide tensors, then per layer its own tensors and its heads' (a
    grouped layer's keys and values once per group, in the group's first head); absent optional
    tensors are left out."""
    out = {}
    for kind in MODEL_KINDS:
        if getattr(model, kind) is not None:
            out[tensor_name(kind)] = getattr(model, kind)
    for n, layer in enumerate(model.layers):
        for kind in LAYER_KINDS[:3]:  # norm_mha, norm_mha_b, b_o
            if getattr(layer, kind) is not None:
                out[tensor_name(kind, n)] = getattr(layer, kind)
        for e, head in enumerate(layer.heads):
            for kind in HEAD_KINDS:
                if getattr(head, kind) is not None and (kind not in KV_KINDS or layer.leader(e) == e):
                    out[tensor_name(kind, n, e)] = getattr(head, kind)
        for kind in LAYER_KINDS[3:]:
            if getattr(layer, kind) is not None:
                out[tensor_name(kind, n)] = getattr(layer, kind)
    return out


def to_tensors(model: Model) -> dict:
    """The inverse of :func:`from_tensors`: every parameter under its file-format name.

    The same dict as :func:`named_tensors` (file order); its arrays are the model's own
    arrays, not copies (NumPy or CuPy as the model holds them), so treat them as read-only.
    ``from_tensors(to_tensors(m), m.norm_eps, m.causal, arch=m.arch, max_seq=m.max_seq)``
    rebuilds ``m``.
    """
    return named_tensors(model)


def from_tensors(
    tensors: dict, norm_eps: float = 0.0, causal: bool = False, xp=None, arch: Arch | None = None, max_seq=None
) -> Model:
    """A model from a dict of arrays under their file-format names (:mod:`fpt_ref.names`).

    The in-memory counterpart of :func:`fpt_ref.load` (which reads the dict from a file
    and calls this). The number of layers, of heads per layer and of key/value heads of a
    grouped layer (the heads holding ``w_k``) follow from the names; every tensor's shape is
    checked (:func:`validate`).

    Parameters
    ----------
    tensors : dict of str to array
        ``embed`` [vocab, h] (optional), ``pos`` [s_max, h], ``w_out`` [h, o] and per layer
        ``n`` and head ``e`` the tensors ``layers.{n}.*`` and ``layers.{n}.heads.{e}.*``.
    norm_eps : float
        Epsilon of the norms (``>= 0``).
    causal : bool
        Whether attention is causally masked.
    xp : module, optional
        ``numpy`` or ``cupy``: the arrays are converted with ``xp.asarray`` (no copy when
        they already are). ``None`` keeps each array as it is.
    arch : Arch, optional
        The blocks (default: the paper's model); the tensors must match it.
    max_seq : int, optional
        ``s_max`` of a model without ``pos``.

    Returns
    -------
    Model

    Raises
    ------
    ValueError
        Starting ``tensors:`` for an unexpected, missing or wrongly shaped tensor (naming it
        and the shapes); ``TypeError`` for mixed dtypes or array libraries.

    Examples
    --------
    >>> import numpy as np
    >>> t = {"pos": np.zeros((4, 2)), "w_out": np.zeros((2, 3))}
    >>> from_tensors(t).h, from_tensors(t).N
    (2, 0)
    >>> from_tensors(dict(t, extra=np.zeros(1)))
    Traceback (most recent call last):
    ...
    ValueError: tensors: unexpected tensor 'extra' with shape [1]
    """
    from .names import parse_name

    if not isinstance(tensors, dict):
        raise TypeError(f"tensors: expected a dict of arrays, got {type(tensors).__name__}")
    arch = Arch() if arch is None else arch
    if not isinstance(arch, Arch):
        raise TypeError(f"arch: expected an Arch, got {type(arch).__name__}")
    layer_parts: dict = {}
    head_parts: dict = {}
    for name in tensors:
        try:
            kind, n, e = parse_name(name)
        except ValueError:
            shape = list(getattr(tensors[name], "shape", ()))
            raise ValueError(f"tensors: unexpected tensor {name!r} with shape {shape}") from None
        if e is not None:
            head_parts.setdefault(n, set()).add(e)
        elif n is not None:
            layer_parts.setdefault(n, None)

    def get(name):
        if name not in tensors:
            raise ValueError(f"tensors: missing tensor {name!r}")
        a = tensors[name]
        return a if xp is None else xp.asarray(a)

    def opt(name):
        return get(name) if name in tensors else None

    n_layers = 1 + max(list(layer_parts) + list(head_parts), default=-1)
    layers = []
    for n in range(n_layers):
        n_heads = 1 + max(head_parts.get(n, ()), default=-1)
        if n_heads == 0:
            raise ValueError(f"tensors: layer {n} has no heads (missing tensor {tensor_name('w_q', n, 0)!r})")
        leaders = [e for e in range(n_heads) if tensor_name("w_k", n, e) in tensors]
        G = len(leaders)
        if G == 0 or n_heads % G or leaders != list(range(0, n_heads, n_heads // G)):
            raise ValueError(
                f"tensors: layer {n} has w_k in heads {leaders} of {n_heads}: every head holds it, or (grouped "
                "query attention) the first head of each of G equal groups"
            )
        r = n_heads // G
        heads: list[Head] = []
        for e in range(n_heads):
            lead = e - e % r
            kv = {kind: opt(tensor_name(kind, n, lead)) for kind in KV_KINDS}
            if e != lead:
                for kind in KV_KINDS:
                    if tensor_name(kind, n, e) in tensors:
                        raise ValueError(
                            f"tensors: unexpected tensor {tensor_name(kind, n, e)!r}: head {e} reads the keys and "
                            f"values of head {lead} (grouped query attention)"
                        )
                kv = {kind: getattr(heads[lead], kind) for kind in KV_KINDS}
            heads.append(
                Head(
                    w_q=get(tensor_name("w_q", n, e)),
                    w_o=get(tensor_name("w_o", n, e)),
                    b_q=opt(tensor_name("b_q", n, e)),
                    **kv,
                )
            )
        kw = {kind: opt(tensor_name(kind, n)) for kind in LAYER_KINDS}
        for req in _required_layer_kinds(arch):
            get(tensor_name(req, n))
        layers.append(Layer(heads=tuple(heads), kv_heads=None if r == 1 else G, **kw))
    for req in ("pos",) * (arch.positions == "learned") + ("w_out",) * (not arch.tied) + ("embed",) * arch.tied:
        get(req)
    model_kw = {kind: opt(kind) for kind in MODEL_KINDS}
    return Model(
        layers=tuple(layers),
        norm_eps=norm_eps,
        causal=causal,
        arch=arch,
        max_seq=max_seq if model_kw["pos"] is None else None,
        **model_kw,
    )


def _required_layer_kinds(arch: Arch) -> list:
    """The layer tensors an architecture requires (the optional ones of :class:`Layer` it has)."""
    out = ["norm_mha", "norm_mlp", "w_l1", "w_l2"]
    if arch.norm == "layer":
        out += ["norm_mha_b", "norm_mlp_b"]
    if arch.o_bias:
        out.append("b_o")
    if arch.mlp == "gated":
        out += ["w_gate"] + ["b_gate"] * arch.mlp_bias
    if arch.mlp_bias:
        out += ["b_l1", "b_l2"]
    return out


def param_count(model: Model) -> int:
    """Number of scalar parameters."""
    return int(sum(int(a.size) for a in named_tensors(model).values()))


def dims(model: Model) -> dict:
    """Dimensions as plain Python values: h, o, s_max, vocab, and per layer p and (k, v) per head."""
    return {
        "h": model.h,
        "o": model.o,
        "s_max": model.s_max,
        "vocab": model.vocab,
        "N": model.N,
        "layers": [_layer_dims(layer) for layer in model.layers],
        **({"mlp_matrices": 3} if model.arch.mlp == "gated" else {}),
    }


def _layer_dims(layer: Layer) -> dict:
    out = {"p": layer.p, "heads": [[hd.k, hd.v] for hd in layer.heads]}
    if layer.grouped:
        out["kv_heads"] = layer.G
    return out


def dims_summary(model: Model) -> str:
    """Short text such as ``h=16 | p=32 E=2 k/v=8/8x2 | p=48 E=3 k/v=8/8x2,12/8``."""
    parts = [f"h={model.h}"]
    for layer in model.layers:
        runs: list = []  # consecutive heads of equal (k, v) as [k, v, count]
        for hd in layer.heads:
            if runs and runs[-1][:2] == [hd.k, hd.v]:
                runs[-1][2] += 1
            else:
                runs.append([hd.k, hd.v, 1])
        kv = ",".join(f"{k}/{v}" + (f"x{c}" if c > 1 else "") for k, v, c in runs)
        grouped = f" G={layer.G}" if layer.grouped else ""
        parts.append(f"p={layer.p} E={layer.E}{grouped} k/v={kv}")
    return " | ".join(parts)


def _expect(name: str, arr, shape: tuple, dtype, xp) -> None:
    if not hasattr(arr, "shape") or not hasattr(arr, "dtype"):
        raise TypeError(f"{name}: expected an array, got {type(arr).__name__}")
    if array_namespace(arr) is not xp:
        raise TypeError(f"{name}: all parameters must live in one array library (NumPy or CuPy)")
    if arr.dtype != dtype:
        raise TypeError(f"{name}: dtype {arr.dtype} differs from the model's dtype {dtype}")
    if len(arr.shape) != len(shape) or any(
        want is not None and int(got) != want for got, want in zip(arr.shape, shape)
    ):
        want = "[" + ", ".join("?" if w is None else str(w) for w in shape) + "]"
        raise ValueError(f"{name}: shape {list(arr.shape)} does not match expected {want}")
    if any(int(d) < 1 for d in arr.shape):
        raise ValueError(f"{name}: every dimension must be at least 1, got shape {list(arr.shape)}")


def _present(name: str, arr, wanted: bool, why: str) -> None:
    """``ValueError`` naming tensor ``name`` and ``why`` (the architecture's fields that want it or not)."""
    if (arr is not None) != wanted:
        state = "missing, but the architecture says" if wanted else "present, but the architecture says"
        raise ValueError(f"{name}: {state} {why}")


def validate(model: Model) -> None:
    """Check every tensor's shape and dtype against the model's dimensions and architecture.

    Raises ``ValueError``/``TypeError`` naming the offending tensor and the shapes (or the
    architecture field that wants it present or absent).
    """
    arch = model.arch
    if not isinstance(arch, Arch):
        raise TypeError(f"arch: expected an Arch, got {type(arch).__name__}")
    first = _first(model)
    if not hasattr(first, "shape") or not hasattr(first, "dtype"):
        raise TypeError(f"pos: expected an array, got {type(first).__name__}")
    xp = array_namespace(first)
    dtype = first.dtype
    if dtype not in (xp.float32, xp.float64):
        raise TypeError(f"{_name_of_first(model)}: dtype must be float32 or float64, got {dtype}")
    if len(first.shape) != 2:
        raise ValueError(f"{_name_of_first(model)}: expected a matrix, got shape {list(first.shape)}")
    h = model.h
    _present("pos", model.pos, arch.positions == "learned", f"positions={arch.positions!r}")
    if model.pos is not None:
        _expect("pos", model.pos, (None, h), dtype, xp)
        object.__setattr__(model, "max_seq", None)
    else:
        if model.max_seq is None:
            raise ValueError(f"max_seq: a model with positions={arch.positions!r} (no pos tensor) needs max_seq")
        object.__setattr__(model, "max_seq", check_int("max_seq", model.max_seq, 1))
    if arch.tied:
        if model.embed is None:
            raise ValueError("embed: missing, but the architecture says tied=True (W_out = embed^T)")
        _present("w_out", model.w_out, False, "tied=True (W_out = embed^T)")
    else:
        _present("w_out", model.w_out, True, "tied=False")
        _expect("w_out", model.w_out, (h, None), dtype, xp)
    if model.embed is not None:
        _expect("embed", model.embed, (None, h), dtype, xp)
    _present("final_norm", model.final_norm, arch.final_norm, f"final_norm={arch.final_norm}")
    _present(
        "final_norm_b",
        model.final_norm_b,
        arch.final_norm and arch.norm == "layer",
        f"final_norm={arch.final_norm}, norm={arch.norm!r}",
    )
    for kind in ("final_norm", "final_norm_b"):
        if getattr(model, kind) is not None:
            _expect(kind, getattr(model, kind), (h,), dtype, xp)
    try:  # one representation (e.g. from np.float32)
        object.__setattr__(model, "norm_eps", check_float("norm_eps", model.norm_eps, minimum=0.0))
    except ValueError:
        raise ValueError(f"norm_eps: must be a finite float >= 0, got {model.norm_eps!r}") from None
    if not isinstance(model.causal, bool):
        raise TypeError(f"causal: must be a bool, got {model.causal!r}")
    layer_norm = arch.norm == "layer"
    for n, layer in enumerate(model.layers):
        pre = layer_prefix(n)
        if not isinstance(layer, Layer):
            raise TypeError(f"{pre}: expected a Layer, got {type(layer).__name__}")
        if len(layer.heads) < 1:
            raise ValueError(f"{pre}.heads: a layer needs at least one head")

        def name(kind, e=None, n=n):
            return tensor_name(kind, n, e)

        _expect(name("norm_mha"), layer.norm_mha, (h,), dtype, xp)
        _expect(name("norm_mlp"), layer.norm_mlp, (h,), dtype, xp)
        _expect(name("w_l1"), layer.w_l1, (h, None), dtype, xp)
        p = int(layer.w_l1.shape[1])
        optional = {
            "norm_mha_b": (layer_norm, (h,), f"norm={arch.norm!r}"),
            "norm_mlp_b": (layer_norm, (h,), f"norm={arch.norm!r}"),
            "b_o": (arch.o_bias, (h,), f"o_bias={arch.o_bias}"),
            "w_gate": (arch.mlp == "gated", (h, p), f"mlp={arch.mlp!r}"),
            "b_gate": (arch.mlp == "gated" and arch.mlp_bias, (p,), f"mlp={arch.mlp!r}, mlp_bias={arch.mlp_bias}"),
            "b_l1": (arch.mlp_bias, (p,), f"mlp_bias={arch.mlp_bias}"),
            "b_l2": (arch.mlp_bias, (h,), f"mlp_bias={arch.mlp_bias}"),
        }
        for kind, (wanted, shape, why) in optional.items():
            _present(name(kind), getattr(layer, kind), wanted, why)
            if wanted:
                _expect(name(kind), getattr(layer, kind), shape, dtype, xp)
        _expect(name("w_l2"), layer.w_l2, (p, h), dtype, xp)
        if layer.kv_heads is not None:
            G = check_int(f"{pre}.kv_heads", layer.kv_heads, 1)
            if layer.E % G:
                raise ValueError(f"{pre}.kv_heads: {G} key/value heads do not divide the layer's {layer.E} heads")
        for e, head in enumerate(layer.heads):
            hp = head_prefix(n, e)
            if not isinstance(head, Head):
                raise TypeError(f"{hp}: expected a Head, got {type(head).__name__}")
            _expect(name("w_q", e), head.w_q, (h, None), dtype, xp)
            k = int(head.w_q.shape[1])
            _expect(name("w_k", e), head.w_k, (h, k), dtype, xp)
            _expect(name("w_v", e), head.w_v, (h, None), dtype, xp)
            v = int(head.w_v.shape[1])
            _expect(name("w_o", e), head.w_o, (v, h), dtype, xp)
            for kind, size in (("b_q", k), ("b_k", k), ("b_v", v)):
                _present(name(kind, e), getattr(head, kind), arch.qkv_bias, f"qkv_bias={arch.qkv_bias}")
                if arch.qkv_bias:
                    _expect(name(kind, e), getattr(head, kind), (size,), dtype, xp)
            if arch.positions == "rope" and k % 2:
                raise ValueError(f"{name('w_q', e)}: key size {k} must be even for RoPE (rotated in pairs)")
            lead = layer.leader(e)
            if lead != e:
                first_head = layer.heads[lead]
                for kind in KV_KINDS:
                    a, b = getattr(head, kind), getattr(first_head, kind)
                    if a is b:
                        continue
                    if a is None or b is None or a.shape != b.shape or not bool(xp.array_equal(a, b)):
                        raise ValueError(
                            f"{name(kind, e)}: head {e} reads the keys and values of head {lead} (grouped query "
                            f"attention, kv_heads={layer.G}) and must hold the same {kind}"
                        )


def _name_of_first(model: Model) -> str:
    return "pos" if model.pos is not None else "w_out" if model.w_out is not None else "embed"


def convert(model: Model, xp=None, dtype=None) -> Model:
    """The same model in another array library (``xp``: numpy or cupy) and/or dtype.

    Values are converted exactly when the dtype is unchanged or widened; float64 -> float32
    rounds each parameter once. Arrays shared by the heads of a group stay shared.
    """
    xp = model.xp if xp is None else xp
    dtype = model.dtype if dtype is None else dtype
    done: dict = {}

    def conv(a):
        if a is None:
            return None
        if id(a) not in done:
            host = a.get() if type(a).__module__.startswith("cupy") and xp.__name__ == "numpy" else a
            done[id(a)] = (a, xp.asarray(host, dtype=dtype))
        return done[id(a)][1]

    def conv_all(obj, kinds):
        return {kind: conv(getattr(obj, kind)) for kind in kinds}

    layers = tuple(
        replace(L, heads=tuple(Head(**conv_all(H, HEAD_KINDS)) for H in L.heads), **conv_all(L, LAYER_KINDS))
        for L in model.layers
    )
    return replace(model, layers=layers, **conv_all(model, MODEL_KINDS))
