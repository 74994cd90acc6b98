"""Entry-level symbolic model: every parameter and input entry a SymPy ``Symbol``.

The forward pass is docs/spec.md section 1 written out entry by entry (RMSNorm with optional
epsilon, softmax with ``exp``, an elementwise activation applied as an uninterpreted
function, an optional causal mask). It runs against a :class:`~proofs.core.Kernel` (the
trusted core), which

- keeps every value in a canonical form (``sympy.expand``: a Laurent polynomial in the
  symbols and the kernel's *atoms*, with exact numeric coefficients), and
- names every nonlinear value by an *atom*: a fresh symbol standing for ``exp(l)``,
  ``1/sqrt(m)``, ``1/z``, ``f(a)`` or a residual-stream entry, keyed by the canonical
  form of its argument.

Atoms are shared between the original and the expanded model of one proof, so two
computations whose arguments reduce to the same canonical expression get the same atom
(congruence: equal arguments give equal values). A difference of outputs that expands to
exactly 0 is then a proof for all real values of every symbol; a difference that does not
is "not proved" (never "proved"), and :meth:`Kernel.numeric` evaluates it at numbers.

Two targeted rewrites are applied while building atoms, both exact identities:

- ``sqrt(c * m) = sqrt(c) * sqrt(m)`` for a positive rational ``c`` (the content of ``m``),
  which is what makes ``sqrt(h/h^)`` cancel in the hidden-dimension expansion;
- ``f(0) = 0`` for activations that satisfy it (ReLU, GELU, SiLU), never for the generic
  activation ``f``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import sympy as sp

from fpt_ref.names import tensor_name

from .core import ACTIVATIONS, PREC, Kernel, KernelError, StandIn  # noqa: F401  (re-exported)

#: the name of the RoPE base symbol (a positive real; evaluated at 10000 for counterexamples)
THETA_NAME = "theta"


# ---- the symbolic model ---------------------------------------------------------------
# The optional fields are the blocks of docs/spec.md section 4.1; ``None`` (the default) is the
# paper's model, whose forward pass is exactly docs/spec.md section 1.
@dataclass(frozen=True)
class SHead:
    w_q: sp.Matrix  # [h, k]
    w_k: sp.Matrix | None  # [h, k]; None in a grouped layer (the group's SKV holds it)
    w_v: sp.Matrix | None  # [h, v]; None in a grouped layer
    w_o: sp.Matrix  # [v, h]
    b_q: sp.Matrix | None = None  # [1, k]
    b_k: sp.Matrix | None = None  # [1, k]
    b_v: sp.Matrix | None = None  # [1, v]


@dataclass(frozen=True)
class SKV:
    """The keys and values of one group of a grouped-query layer (shared by its query heads)."""

    w_k: sp.Matrix  # [h, k]
    w_v: sp.Matrix  # [h, v]
    b_k: sp.Matrix | None = None  # [1, k]
    b_v: sp.Matrix | None = None  # [1, v]


@dataclass(frozen=True)
class SLayer:
    norm_mha: sp.Matrix  # [1, h]
    heads: tuple[SHead, ...]
    norm_mlp: sp.Matrix  # [1, h]
    w_l1: sp.Matrix  # [h, p]  (gated: the "up" projection)
    b_l1: sp.Matrix | None  # [1, p]  (None: no MLP biases)
    w_l2: sp.Matrix  # [p, h]  (gated: the "down" projection)
    b_l2: sp.Matrix | None  # [1, h]
    w_gate: sp.Matrix | None = None  # [h, p]: gated MLP
    b_gate: sp.Matrix | None = None  # [1, p]
    norm_mha_b: sp.Matrix | None = None  # [1, h]: LayerNorm bias
    norm_mlp_b: sp.Matrix | None = None  # [1, h]
    b_o: sp.Matrix | None = None  # [1, h]
    kv: tuple[SKV, ...] | None = None  # grouped-query: query head j reads kv[j // (E / len(kv))]

    def head_kv(self, j: int) -> tuple:
        """``(w_k, b_k, w_v, b_v)`` read by query head ``j``."""
        if self.kv is None:
            H = self.heads[j]
            return H.w_k, H.b_k, H.w_v, H.b_v
        G = self.kv[j // (len(self.heads) // len(self.kv))]
        return G.w_k, G.b_k, G.w_v, G.b_v


@dataclass(frozen=True)
class SModel:
    """Model of docs/spec.md section 1 with symbolic entries and real-valued inputs.

    ``inp`` is the input representation ``I`` [s, h] (symbols), ``pos`` the positional
    parameters ``P`` [s, h] (zeros without learned positions); ``eps`` the norm epsilon (0 or
    a symbol). The blocks of docs/spec.md section 4.1: ``norm`` (``"rms"`` or ``"layer"``),
    ``rope`` (``(theta, layout)``: rotary positions with base ``theta``, a positive symbol or
    an expression in one, layout ``"half"`` or ``"interleaved"``), ``final_norm`` /
    ``final_norm_b`` (gain and LayerNorm bias of a norm before ``W_out``) and ``tied``
    (``w_out`` is the transposed embedding table, ``embed^T``: the expansions grow it as the
    embedding; the input rows ``I`` are kept independent symbols, so a proof covers every
    token sequence, the rows of ``embed`` included).
    """

    inp: sp.Matrix  # [s, h]
    pos: sp.Matrix  # [s, h]
    w_out: sp.Matrix  # [h, o]
    layers: tuple[SLayer, ...]
    eps: object = 0
    causal: bool = False
    norm: str = "rms"
    rope: tuple | None = None
    final_norm: sp.Matrix | None = None  # [1, h]
    final_norm_b: sp.Matrix | None = None  # [1, h]
    tied: bool = False

    @property
    def h(self) -> int:
        return self.pos.cols

    @property
    def s(self) -> int:
        return self.pos.rows

    @property
    def is_paper(self) -> bool:
        """Whether the model uses only the paper's blocks (docs/spec.md section 1)."""
        if self.norm != "rms" or self.rope is not None or self.final_norm is not None or self.tied:
            return False
        return (
            all(getattr(L, f) is None for L in self.layers for f in _LAYER_OPTIONAL)
            and all(L.b_l1 is not None and L.b_l2 is not None for L in self.layers)
            and all(getattr(H, f) is None for L in self.layers for H in L.heads for f in ("b_q", "b_k", "b_v"))
        )

    def replace(self, **kw) -> SModel:
        return replace(self, **kw)


_LAYER_OPTIONAL = ("w_gate", "b_gate", "norm_mha_b", "norm_mlp_b", "b_o", "kv")


def sym_matrix(name: str, rows: int, cols: int) -> sp.Matrix:
    """A ``rows x cols`` matrix of distinct real symbols ``name[i,j]``."""
    return sp.Matrix(rows, cols, lambda i, j: sp.Symbol(f"{name}[{i},{j}]", real=True))


def sym_row(name: str, n: int) -> sp.Matrix:
    """A ``1 x n`` row of distinct real symbols ``name[j]`` (biases, gains)."""
    return sp.Matrix(1, n, lambda i, j: sp.Symbol(f"{name}[{j}]", real=True))


def base_model(s=2, h=2, p=2, E=1, k=2, v=2, o=2, N=1, eps=0, causal=False) -> SModel:
    """A symbolic model; parameter names follow fpt_ref's file format (``layers.0.w_l1[i,j]``)."""
    layers = []
    for n in range(N):
        heads = tuple(
            SHead(
                sym_matrix(tensor_name("w_q", n, e), h, k),
                sym_matrix(tensor_name("w_k", n, e), h, k),
                sym_matrix(tensor_name("w_v", n, e), h, v),
                sym_matrix(tensor_name("w_o", n, e), v, h),
            )
            for e in range(E)
        )
        layers.append(
            SLayer(
                sym_row(tensor_name("norm_mha", n), h),
                heads,
                sym_row(tensor_name("norm_mlp", n), h),
                sym_matrix(tensor_name("w_l1", n), h, p),
                sym_row(tensor_name("b_l1", n), p),
                sym_matrix(tensor_name("w_l2", n), p, h),
                sym_row(tensor_name("b_l2", n), h),
            )
        )
    return SModel(
        sym_matrix("I", s, h), sym_matrix("pos", s, h), sym_matrix("w_out", h, o), tuple(layers), eps=eps, causal=causal
    )


def model_symbols(m: SModel) -> set:
    """Every free symbol of the model's parameters and input."""
    out = set()
    for M in _tensors(m).values():
        out |= M.free_symbols
    if isinstance(m.eps, sp.Basic):
        out |= m.eps.free_symbols
    return out


def _tensors(m: SModel) -> dict:
    """Tensors under fpt_ref's file-format names (plus ``I`` for the input); absent blocks are left out.

    A grouped layer's shared keys and values are ``layers.{n}.kv.{g}.w_k`` (``w_v``, ``b_k``, ``b_v``).
    """
    out = {"I": m.inp, "pos": m.pos, "w_out": m.w_out}
    if m.final_norm is not None:
        out["final_norm"] = m.final_norm
    if m.final_norm_b is not None:
        out["final_norm_b"] = m.final_norm_b
    for n, L in enumerate(m.layers):
        out[tensor_name("norm_mha", n)] = L.norm_mha
        for e, H in enumerate(L.heads):
            for f in ("w_q", "w_k", "w_v", "w_o", "b_q", "b_k", "b_v"):
                if getattr(H, f) is not None:
                    out[f"layers.{n}.heads.{e}.{f}"] = getattr(H, f)
        for g, G in enumerate(L.kv or ()):
            for f in ("w_k", "w_v", "b_k", "b_v"):
                if getattr(G, f) is not None:
                    out[f"layers.{n}.kv.{g}.{f}"] = getattr(G, f)
        for f in ("norm_mlp", "w_l1", "b_l1", "w_l2", "b_l2", "w_gate", "b_gate", "norm_mha_b", "norm_mlp_b", "b_o"):
            if getattr(L, f) is not None:
                out[f"layers.{n}.{f}"] = getattr(L, f)
    return out


def map_model(m: SModel, f) -> SModel:
    """The model with ``f`` applied to every tensor (``None`` stays ``None``); a new model."""
    g = lambda M: None if M is None else f(M)  # noqa: E731
    layers = []
    for L in m.layers:
        heads = tuple(SHead(g(H.w_q), g(H.w_k), g(H.w_v), g(H.w_o), g(H.b_q), g(H.b_k), g(H.b_v)) for H in L.heads)
        kv = None if L.kv is None else tuple(SKV(g(G.w_k), g(G.w_v), g(G.b_k), g(G.b_v)) for G in L.kv)
        layers.append(
            SLayer(
                g(L.norm_mha),
                heads,
                g(L.norm_mlp),
                g(L.w_l1),
                g(L.b_l1),
                g(L.w_l2),
                g(L.b_l2),
                g(L.w_gate),
                g(L.b_gate),
                g(L.norm_mha_b),
                g(L.norm_mlp_b),
                g(L.b_o),
                kv,
            )
        )
    return m.replace(
        inp=g(m.inp),
        pos=g(m.pos),
        w_out=g(m.w_out),
        layers=tuple(layers),
        final_norm=g(m.final_norm),
        final_norm_b=g(m.final_norm_b),
    )


tensors = _tensors


# ---- forward pass -----------------------------------------------------------------------
def rms_norm(X: sp.Matrix, g: sp.Matrix, eps, K: Kernel) -> sp.Matrix:
    """``Norm(X)_ij = x_ij g_j / sqrt((1/h) sum_c x_ic^2 + eps)``; X [s, h], g [1, h] -> [s, h]."""
    s, h = X.shape
    out = sp.zeros(s, h)
    for i in range(s):
        r = K.rsqrt(sum((X[i, c] ** 2 for c in range(h)), sp.Integer(0)) / h + eps)  # 1/RMS of row i
        for j in range(h):
            out[i, j] = K.canon(X[i, j] * g[0, j] * r)
    return out


def layer_norm(X: sp.Matrix, g: sp.Matrix, b: sp.Matrix, eps, K: Kernel) -> sp.Matrix:
    """``g_j (x_ij - mu_i) / sqrt((1/h) sum_c (x_ic - mu_i)^2 + eps) + b_j``, ``mu_i`` the row mean; [s, h] -> [s, h]."""
    s, h = X.shape
    out = sp.zeros(s, h)
    for i in range(s):
        mu = K.canon(sum((X[i, c] for c in range(h)), sp.Integer(0)) / h)
        xc = [K.canon(X[i, c] - mu) for c in range(h)]  # centred row
        r = K.rsqrt(sum((x**2 for x in xc), sp.Integer(0)) / h + eps)  # 1/std of row i
        for j in range(h):
            out[i, j] = K.canon(xc[j] * g[0, j] * r + b[0, j])
    return out


def norm(m: SModel, X: sp.Matrix, g: sp.Matrix, b, K: Kernel) -> sp.Matrix:
    """The model's norm (RMSNorm, or LayerNorm with bias ``b``) of X [s, h] -> [s, h]."""
    if m.norm == "layer":
        return layer_norm(X, g, b, m.eps, K)
    return rms_norm(X, g, m.eps, K)


def rope_pairs(k: int, layout: str) -> list:
    """``[(a, b), ...]``: the dims rotated together, pair ``i`` at index ``i`` (docs/spec.md section 4.1)."""
    if k % 2:
        raise ValueError(f"k: RoPE needs an even key size, got {k}")
    if layout == "half":
        return [(i, i + k // 2) for i in range(k // 2)]
    return [(2 * i, 2 * i + 1) for i in range(k // 2)]


def rotate(M: sp.Matrix, theta, layout: str, K: Kernel) -> sp.Matrix:
    """RoPE of the rows of M [s, k]: row ``m``, pair ``i`` turned by ``m theta^(-2i/k)``; -> [s, k]."""
    s, k = M.shape
    out = sp.zeros(s, k)
    for i, (a, b) in enumerate(rope_pairs(k, layout)):
        freq = theta ** sp.Rational(-2 * i, k)
        for m in range(s):
            c, sn = K.cos(m * freq), K.sin(m * freq)
            out[m, a] = K.canon(M[m, a] * c - M[m, b] * sn)
            out[m, b] = K.canon(M[m, b] * c + M[m, a] * sn)
    return out


def attention(Q: sp.Matrix, Km: sp.Matrix, V: sp.Matrix, causal: bool, K: Kernel) -> sp.Matrix:
    """``softmax_rows(Q K^T / sqrt(k)) V`` (masked entries excluded when causal); [s, k] [s, k] [s, v] -> [s, v]."""
    s, k = Q.shape
    out = sp.zeros(s, V.cols)
    for i in range(s):
        cols = range(i + 1) if causal else range(s)
        e = {j: K.exp(sum((Q[i, c] * Km[j, c] for c in range(k)), sp.Integer(0)) / sp.sqrt(k)) for j in cols}
        z = K.recip(sum(e.values()))  # 1 / sum_j exp(l_ij)
        for c in range(V.cols):
            out[i, c] = K.canon(sum(e[j] * V[j, c] for j in cols) * z)
    return out


def _bias(A: sp.Matrix, b) -> sp.Matrix:
    """``A + 1 b`` (``b`` [1, n] broadcast over the rows of A [s, n]); A itself when ``b`` is None."""
    return A if b is None else A + sp.ones(A.rows, 1) * b


def mha(L: SLayer, X: sp.Matrix, causal: bool, K: Kernel, rope=None) -> sp.Matrix:
    """``[H_1 ... H_E] W_O (+ b_o)``, each head with its biases, RoPE and key/value group; X [s, h] -> [s, h]."""
    Hs = []
    for j, H in enumerate(L.heads):
        w_k, b_k, w_v, b_v = L.head_kv(j)
        Q, Km = _bias(X * H.w_q, H.b_q), _bias(X * w_k, b_k)  # [s, k]
        if rope is not None:
            Q, Km = rotate(Q, rope[0], rope[1], K), rotate(Km, rope[0], rope[1], K)
        Hs.append(attention(Q, Km, _bias(X * w_v, b_v), causal, K))  # [s, v_e]
    W_O = sp.Matrix.vstack(*[H.w_o for H in L.heads])  # [sum v, h]
    return _bias(sp.Matrix.hstack(*Hs) * W_O, L.b_o)  # [s, h]


def mlp(L: SLayer, X: sp.Matrix, K: Kernel) -> sp.Matrix:
    """``f(X W_l1 + b_l1) W_l2 + b_l2``, gated ``(f(X W_gate + b_gate) * (X W_l1 + b_l1)) W_l2 + b_l2``; [s, h] -> [s, h]."""
    A = _bias(X * L.w_l1, L.b_l1)  # [s, p]
    if L.w_gate is None:
        A = A.applyfunc(K.act)
    else:
        G = _bias(X * L.w_gate, L.b_gate).applyfunc(K.act)  # [s, p]
        A = G.multiply_elementwise(A)
    return _bias(A * L.w_l2, L.b_l2)  # [s, h]


def _let(m: SModel, X: sp.Matrix, K: Kernel) -> sp.Matrix:
    if m.norm == "layer":  # keep mean-padded columns visible as means (core rewrite 3)
        return sp.Matrix([K.let_row(list(X.row(i))) for i in range(X.rows)])
    return X.applyfunc(K.let)


def residual_streams(m: SModel, K: Kernel) -> list:
    """``[X_1, ..., X_{N+1}]`` with every entry in canonical (atom) form."""
    X = _let(m, m.inp + m.pos, K)  # X_1 [s, h]
    out = [X]
    for L in m.layers:
        X = _let(m, X + mha(L, norm(m, X, L.norm_mha, L.norm_mha_b, K), m.causal, K, m.rope), K)  # X'_n
        X = _let(m, X + mlp(L, norm(m, X, L.norm_mlp, L.norm_mlp_b, K), K), K)  # X_{n+1}
        out.append(X)
    return out


def forward(m: SModel, K: Kernel) -> sp.Matrix:
    """``Output = X_{N+1} W_out`` [s, o] (``Norm_f(X_{N+1}) W_out`` with a final norm), canonical."""
    X = residual_streams(m, K)[-1]  # [s, h]
    if m.final_norm is not None:
        X = norm(m, X, m.final_norm, m.final_norm_b, K)
    return (X * m.w_out).applyfunc(K.canon)
