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

from .checks import check_float
from .names import HEAD_KINDS, head_prefix, layer_prefix, tensor_name
from .xp import array_namespace

Array = Any


@dataclass(frozen=True)
class Head:
    """One attention head: ``W_Q,e`` [h, k], ``W_K,e`` [h, k], ``W_V,e`` [h, v], ``W_O,e`` [v, h]."""

    w_q: Array  # [h, k]
    w_k: Array  # [h, k]
    w_v: Array  # [h, v]
    w_o: Array  # [v, h]  the e-th block of rows of W_O

    @property
    def k(self) -> int:
        return int(self.w_q.shape[1])

    @property
    def v(self) -> int:
        return int(self.w_v.shape[1])


@dataclass(frozen=True)
class Layer:
    """One transformer layer: Norm^MHA gains, heads, Norm^MLP gains and the MLP."""

    norm_mha: Array  # [h]
    heads: tuple[Head, ...]
    norm_mlp: Array  # [h]
    w_l1: Array  # [h, p]
    b_l1: Array  # [p]
    w_l2: Array  # [p, h]
    b_l2: Array  # [h]

    def __post_init__(self):
        object.__setattr__(self, "heads", tuple(self.heads))

    @property
    def p(self) -> int:
        return int(self.w_l1.shape[1])

    @property
    def E(self) -> int:
        return len(self.heads)


@dataclass(frozen=True)
class Model:
    """The whole model of docs/spec.md section 1.

    Parameters
    ----------
    embed : array [vocab, h] or None
        Token table giving the input representation ``I``; ``None`` for real-valued inputs.
    pos : array [s_max, h]
        Positional parameters ``P``; the first ``s`` rows are used.
    w_out : array [h, o]
    layers : tuple of Layer
    norm_eps : float
        Epsilon inside the RMS norm (0 is the paper's norm).
    causal : bool
        Whether attention is causally masked.
    """

    embed: Array | None
    pos: Array  # [s_max, h]
    w_out: Array  # [h, o]
    layers: tuple[Layer, ...]
    norm_eps: float = 0.0
    causal: bool = False

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))
        validate(self)

    # ---- dimensions -------------------------------------------------------------------
    @property
    def h(self) -> int:
        return int(self.pos.shape[1])

    @property
    def o(self) -> int:
        return int(self.w_out.shape[1])

    @property
    def N(self) -> int:
        return len(self.layers)

    @property
    def s_max(self) -> int:
        return int(self.pos.shape[0])

    @property
    def vocab(self) -> int | None:
        return None if self.embed is None else int(self.embed.shape[0])

    @property
    def dtype(self):
        return self.pos.dtype

    @property
    def xp(self):
        return array_namespace(self.pos)

    def replace(self, **changes) -> Model:
        """A new model with some fields replaced (validated again)."""
        return replace(self, **changes)


def named_tensors(model: Model) -> dict:
    """All parameters under their file-format names (:mod:`fpt_ref.names`; README, "File format"),
    in file order: ``embed``, ``pos``, ``w_out``, then per layer ``norm_mha``, its heads, and the rest."""
    out = {}
    if model.embed is not None:
        out[tensor_name("embed")] = model.embed
    out[tensor_name("pos")] = model.pos
    out[tensor_name("w_out")] = model.w_out
    for n, layer in enumerate(model.layers):
        out[tensor_name("norm_mha", n)] = layer.norm_mha
        for e, head in enumerate(layer.heads):
            for kind in HEAD_KINDS:
                out[tensor_name(kind, n, e)] = getattr(head, kind)
        for kind in ("norm_mlp", "w_l1", "b_l1", "w_l2", "b_l2"):
            out[tensor_name(kind, n)] = getattr(layer, kind)
    return out


def to_tensors(model: Model) -> dict:
    """The inverse of :func:`from_tensors`: every parameter under its file-format name.

    The same dict as :func:`named_tensors` (file order); its arrays are the model's own
    arrays, not copies (NumPy or CuPy as the model holds them), so treat them as read-only.
    ``from_tensors(to_tensors(m), m.norm_eps, m.causal)`` rebuilds ``m``.
    """
    return named_tensors(model)


def from_tensors(tensors: dict, norm_eps: float = 0.0, causal: bool = False, xp=None) -> Model:
    """A model from a dict of arrays under their file-format names (:mod:`fpt_ref.names`).

    The in-memory counterpart of :func:`fpt_ref.load` (which reads the dict from a file
    and calls this). The number of layers and of heads per layer follow from the names;
    every tensor's shape is checked (:func:`validate`).

    Parameters
    ----------
    tensors : dict of str to array
        ``embed`` [vocab, h] (optional), ``pos`` [s_max, h], ``w_out`` [h, o] and per layer
        ``n`` and head ``e`` the tensors ``layers.{n}.*`` and ``layers.{n}.heads.{e}.*``.
    norm_eps : float
        Epsilon of the RMS norms (``>= 0``).
    causal : bool
        Whether attention is causally masked.
    xp : module, optional
        ``numpy`` or ``cupy``: the arrays are converted with ``xp.asarray`` (no copy when
        they already are). ``None`` keeps each array as it is.

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

    for req in ("pos", "w_out"):
        get(req)
    n_layers = 1 + max(list(layer_parts) + list(head_parts), default=-1)
    layers = []
    for n in range(n_layers):
        n_heads = 1 + max(head_parts.get(n, ()), default=-1)
        if n_heads == 0:
            raise ValueError(f"tensors: layer {n} has no heads (missing tensor {tensor_name('w_q', n, 0)!r})")
        heads = tuple(Head(**{kind: get(tensor_name(kind, n, e)) for kind in HEAD_KINDS}) for e in range(n_heads))
        layers.append(
            Layer(
                heads=heads,
                **{
                    kind: get(tensor_name(kind, n)) for kind in ("norm_mha", "norm_mlp", "w_l1", "b_l1", "w_l2", "b_l2")
                },
            )
        )
    return Model(
        embed=get("embed") if "embed" in tensors else None,
        pos=get("pos"),
        w_out=get("w_out"),
        layers=tuple(layers),
        norm_eps=norm_eps,
        causal=causal,
    )


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
        "layers": [{"p": layer.p, "heads": [[hd.k, hd.v] for hd in layer.heads]} for layer in model.layers],
    }


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
        parts.append(f"p={layer.p} E={layer.E} k/v={kv}")
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


def validate(model: Model) -> None:
    """Check every tensor's shape and dtype against the model's dimensions.

    Raises ``ValueError``/``TypeError`` naming the offending tensor and the shapes.
    """
    if not hasattr(model.pos, "shape") or len(model.pos.shape) != 2:
        raise ValueError(f"pos: expected shape [s_max, h], got {getattr(model.pos, 'shape', None)}")
    xp = array_namespace(model.pos)
    dtype = model.pos.dtype
    if dtype not in (xp.float32, xp.float64):
        raise TypeError(f"pos: dtype must be float32 or float64, got {dtype}")
    h = int(model.pos.shape[1])
    _expect("pos", model.pos, (None, h), dtype, xp)
    if model.embed is not None:
        _expect("embed", model.embed, (None, h), dtype, xp)
    _expect("w_out", model.w_out, (h, None), dtype, xp)
    try:  # one representation (e.g. from np.float32)
        object.__setattr__(model, "norm_eps", check_float("norm_eps", model.norm_eps, minimum=0.0))
    except ValueError:
        raise ValueError(f"norm_eps: must be a finite float >= 0, got {model.norm_eps!r}") from None
    if not isinstance(model.causal, bool):
        raise TypeError(f"causal: must be a bool, got {model.causal!r}")
    for n, layer in enumerate(model.layers):
        pre = layer_prefix(n)
        if not isinstance(layer, Layer):
            raise TypeError(f"{pre}: expected a Layer, got {type(layer).__name__}")
        if len(layer.heads) < 1:
            raise ValueError(f"{pre}.heads: a layer needs at least one head")
        _expect(tensor_name("norm_mha", n), layer.norm_mha, (h,), dtype, xp)
        _expect(tensor_name("norm_mlp", n), layer.norm_mlp, (h,), dtype, xp)
        _expect(tensor_name("w_l1", n), layer.w_l1, (h, None), dtype, xp)
        p = int(layer.w_l1.shape[1])
        _expect(tensor_name("b_l1", n), layer.b_l1, (p,), dtype, xp)
        _expect(tensor_name("w_l2", n), layer.w_l2, (p, h), dtype, xp)
        _expect(tensor_name("b_l2", n), layer.b_l2, (h,), dtype, xp)
        for e, head in enumerate(layer.heads):
            hp = head_prefix(n, e)
            if not isinstance(head, Head):
                raise TypeError(f"{hp}: expected a Head, got {type(head).__name__}")
            _expect(tensor_name("w_q", n, e), head.w_q, (h, None), dtype, xp)
            k = int(head.w_q.shape[1])
            _expect(tensor_name("w_k", n, e), head.w_k, (h, k), dtype, xp)
            _expect(tensor_name("w_v", n, e), head.w_v, (h, None), dtype, xp)
            _expect(tensor_name("w_o", n, e), head.w_o, (int(head.w_v.shape[1]), h), dtype, xp)


def convert(model: Model, xp=None, dtype=None) -> Model:
    """The same model in another array library (``xp``: numpy or cupy) and/or dtype.

    Values are converted exactly when the dtype is unchanged or widened; float64 -> float32
    rounds each parameter once.
    """
    xp = model.xp if xp is None else xp
    dtype = model.dtype if dtype is None else dtype

    def conv(a):
        return xp.asarray(
            a.get() if type(a).__module__.startswith("cupy") and xp.__name__ == "numpy" else a, dtype=dtype
        )

    layers = tuple(
        replace(
            L,
            norm_mha=conv(L.norm_mha),
            norm_mlp=conv(L.norm_mlp),
            w_l1=conv(L.w_l1),
            b_l1=conv(L.b_l1),
            w_l2=conv(L.w_l2),
            b_l2=conv(L.b_l2),
            heads=tuple(Head(conv(H.w_q), conv(H.w_k), conv(H.w_v), conv(H.w_o)) for H in L.heads),
        )
        for L in model.layers
    )
    return replace(
        model,
        embed=None if model.embed is None else conv(model.embed),
        pos=conv(model.pos),
        w_out=conv(model.w_out),
        layers=layers,
    )
