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


# ---- the symbolic model ---------------------------------------------------------------
@dataclass(frozen=True)
class SHead:
    w_q: sp.Matrix  # [h, k]
    w_k: sp.Matrix  # [h, k]
    w_v: sp.Matrix  # [h, v]
    w_o: sp.Matrix  # [v, h]


@dataclass(frozen=True)
class SLayer:
    norm_mha: sp.Matrix  # [1, h]
    heads: tuple[SHead, ...]
    norm_mlp: sp.Matrix  # [1, h]
    w_l1: sp.Matrix  # [h, p]
    b_l1: sp.Matrix  # [1, p]
    w_l2: sp.Matrix  # [p, h]
    b_l2: sp.Matrix  # [1, h]


@dataclass(frozen=True)
class SModel:
    """Model of docs/spec.md section 1 with symbolic entries and real-valued inputs.

    ``inp`` is the input representation ``I`` [s, h] (symbols), ``pos`` the positional
    parameters ``P`` [s, h]; ``eps`` the norm epsilon (0 or a symbol).
    """

    inp: sp.Matrix  # [s, h]
    pos: sp.Matrix  # [s, h]
    w_out: sp.Matrix  # [h, o]
    layers: tuple[SLayer, ...]
    eps: object = 0
    causal: bool = False

    @property
    def h(self) -> int:
        return self.pos.cols

    @property
    def s(self) -> int:
        return self.pos.rows

    def replace(self, **kw) -> SModel:
        return replace(self, **kw)


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
    """Tensors under fpt_ref's file-format names (plus ``I`` for the input)."""
    out = {"I": m.inp, "pos": m.pos, "w_out": m.w_out}
    for n, L in enumerate(m.layers):
        out[tensor_name("norm_mha", n)] = L.norm_mha
        for e, H in enumerate(L.heads):
            for f in ("w_q", "w_k", "w_v", "w_o"):
                out[tensor_name(f, n, e)] = getattr(H, f)
        for f in ("norm_mlp", "w_l1", "b_l1", "w_l2", "b_l2"):
            out[tensor_name(f, n)] = getattr(L, f)
    return out


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


def mha(L: SLayer, X: sp.Matrix, causal: bool, K: Kernel) -> sp.Matrix:
    """``[H_1 ... H_E] W_O``; X [s, h] -> [s, h]."""
    Hs = [attention(X * H.w_q, X * H.w_k, X * H.w_v, causal, K) for H in L.heads]  # [s, v_e] each
    W_O = sp.Matrix.vstack(*[H.w_o for H in L.heads])  # [sum v, h]
    return sp.Matrix.hstack(*Hs) * W_O  # [s, h]


def mlp(L: SLayer, X: sp.Matrix, K: Kernel) -> sp.Matrix:
    """``f(X W_l1 + b_l1) W_l2 + b_l2``; X [s, h] -> [s, h]."""
    A = X * L.w_l1 + sp.ones(X.rows, 1) * L.b_l1  # [s, p]
    return A.applyfunc(K.act) * L.w_l2 + sp.ones(X.rows, 1) * L.b_l2  # [s, h]


def residual_streams(m: SModel, K: Kernel) -> list:
    """``[X_1, ..., X_{N+1}]`` with every entry in canonical (atom) form."""
    X = (m.inp + m.pos).applyfunc(K.let)  # X_1 [s, h]
    out = [X]
    for L in m.layers:
        X = (X + mha(L, rms_norm(X, L.norm_mha, m.eps, K), m.causal, K)).applyfunc(K.let)  # X'_n
        X = (X + mlp(L, rms_norm(X, L.norm_mlp, m.eps, K), K)).applyfunc(K.let)  # X_{n+1}
        out.append(X)
    return out


def forward(m: SModel, K: Kernel) -> sp.Matrix:
    """``Output = X_{N+1} W_out`` [s, o], canonical."""
    return (residual_streams(m, K)[-1] * m.w_out).applyfunc(K.canon)
