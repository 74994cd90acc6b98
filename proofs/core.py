"""The trusted core of the proof checker: every rewrite it uses and its equality tests.

Everything a "proved" verdict rests on is in this module; the rest of :mod:`proofs` builds
models, expansions and claims, and can only make a verdict *weaker* (a wrong model or a
wrong expansion is refuted by numbers or fails a check here, it is never turned into a
proof). What is trusted:

Entry level (explicit matrices of SymPy symbols, :class:`Kernel`):

1. ``sympy.expand`` as the canonical form of a Laurent polynomial with exact rational (and
   square-root-of-rational) coefficients: a difference that expands to the integer 0 is 0
   for every real value of every symbol.
2. Stand-ins (:class:`StandIn`, a ``sympy.Dummy``) name nonlinear values: ``exp(l)``,
   ``1/sqrt(m)``, ``1/z``, ``f(a)`` and residual-stream entries. A stand-in is a fresh
   object, equal only to itself, so it cannot collide with a model symbol or another
   stand-in; it is keyed by the *exact* canonical argument (:func:`stand_in_key`), and the
   kernel re-checks on every use that the stand-in's recorded argument is the argument asked
   for (congruence: equal arguments give equal values; nothing else is identified).
3. Four rewrites: ``1/sqrt(c m) = (1/sqrt(c)) (1/sqrt(m))`` for a positive rational content
   ``c`` of ``m``; ``f(0) = 0`` for activations where it holds (ReLU, GELU, tanh-GELU, SiLU;
   never for the generic ``f``); ``cos(0) = 1`` and ``sin(0) = 0`` (RoPE at position 0; every
   other ``cos(a)``, ``sin(a)`` is a stand-in keyed by the canonical angle ``a``, so no
   trigonometric identity is used); and, in a residual-stream row, an entry whose canonical
   form *is* the mean of the row's preceding entries is written as the mean of their
   stand-ins (:meth:`Kernel.let_row`; exact, since each stand-in equals its definition; it
   keeps the mean-padded columns of LayerNorm's hidden growth visible as means).
4. :func:`outputs_equal`: equality of two outputs is equality of shapes (non-empty) and of
   every entry in canonical form. :func:`check_fresh`: every free new block entry is its own
   symbol, used at exactly one position, and no model symbol is a stand-in.

Symbolic sizes (block terms, :class:`Term`):

5. The term language: matrix symbols and named zero blocks with symbolic sizes, block
   matrices, sums, products with a scalar coefficient, transposes, and the model's
   nonlinear maps as opaque functions (``act``, ``norm``, ``softmax``); every constructor
   checks shapes.
6. The rewrite rules of :func:`rewrite_once`, each a block-matrix identity valid for all
   sizes: block product and block sum (equal partitions; zero blocks may be cut to a
   partition), transpose of a block / product / sum, flattening, distributing products over
   sums, collecting equal terms, products and sums with zero blocks, an elementwise function
   of a block matrix, the entrywise product of two block matrices of one partition (block by
   block) and with a zero factor (zero), ``f(0) = 0`` (as in 3), ``Norm(X, 0) = 0`` (every entry is
   ``x g / rms`` with ``g = 0``), and the norm lemma
   ``Norm([X, 0], [c g, m], eps h/h^) = [Norm(X, g, eps), 0]`` for ``c = sqrt(h/h^)``
   (:func:`gains_scaled`), whose scalar identity is itself checked (:func:`norm_lemma_holds`).
7. :func:`check_chain`: a chain is a list of whole expressions; it must start at the given
   expression and end at the given one (structural equality, ``==`` of frozen dataclasses
   whose sizes and coefficients are SymPy expressions); step ``i``'s right side *is* step
   ``i + 1``'s left side; every step's two sides are also expanded to explicit entries at
   size assignments (one with every width >= 2) and evaluated by the entry-level kernel,
   where their difference must be exactly 0 (:func:`equal_at` compares the subterms where the
   two sides differ; identical parts are equal by congruence, a sum's terms in another order
   by commutativity).
8. :func:`subst` (substitution of terms for matrix symbols) for instances of lemmas: a lemma
   proved with a fresh stream symbol ``X`` holds for every term put in its place, because
   ``X`` is free. The induction over layers and the glue of composed expansions
   (``proofs.chains.check_induction``, ``proofs.chains.check_stages``) use only ``==`` and
   :func:`subst` on terms built by the model's forward pass.

Not trusted: :func:`derive` and :func:`normalize` (they only propose chains), :func:`text`
(display and a sort key), :meth:`Kernel.numeric` (counterexamples).

A verdict "proved" additionally needs no numeric disagreement (the callers evaluate both
models at random numbers; a proof contradicted by numbers is reported as refuted).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import sympy as sp

# activation name -> (has f(0) = 0, numeric definition used to evaluate it)
ACTIVATIONS = {
    "relu": (True, lambda x: sp.Max(x, 0)),
    "gelu": (True, lambda x: x * (1 + sp.erf(x / sp.sqrt(2))) / 2),
    "silu": (True, lambda x: x / (1 + sp.exp(-x))),
    "gelu_tanh": (True, lambda x: x * (1 + sp.tanh(sp.sqrt(2 / sp.pi) * (x + sp.Rational(44715, 1000000) * x**3))) / 2),
    # an arbitrary activation: no law is used in proofs; softplus (f(0) = log 2) is the
    # concrete instance used to evaluate it, so a counterexample for it is a real one
    "f": (False, lambda x: sp.log(1 + sp.exp(x))),
}

PREC = 40  # decimal digits of numeric evaluation


class KernelError(Exception):
    """A violated invariant of the trusted core (the claim is then "not proved")."""


class StandIn(sp.Dummy):
    """A fresh real symbol naming one nonlinear value; equal only to itself."""

    def __new__(cls, label: str):
        return super().__new__(cls, label, real=True)


def stand_in_key(kind: str, arg) -> tuple:
    """The key of a stand-in: its kind and its exact canonical argument."""
    return (kind, arg)


class Kernel:
    """Canonical forms and stand-ins for one entry-level proof (module docstring, items 1-3).

    Parameters
    ----------
    activation : str
        One of ``ACTIVATIONS``.
    let_streams : bool
        Name every residual-stream entry by a stand-in (keeps expressions small).
    """

    def __init__(self, activation: str = "relu", let_streams: bool = True):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        self.let_streams = let_streams
        self._keys: dict[tuple, StandIn] = {}
        self.defs: dict[sp.Symbol, tuple] = {}  # stand-in -> (kind, canonical argument)

    @staticmethod
    def canon(e):
        """Canonical form: full expansion (exact coefficients, combined monomials)."""
        return sp.expand(e)

    def _atom(self, kind: str, arg, label: str) -> sp.Symbol:
        key = stand_in_key(kind, arg)
        a = self._keys.get(key)
        if a is None:
            a = StandIn(f"{label}{len(self.defs)}")
            self._keys[key] = a
            self.defs[a] = (kind, arg)
        elif self.defs[a] != (kind, arg):  # congruence only: never identify different arguments
            raise KernelError(f"stand-in {a} for {self.defs[a][0]}({self.defs[a][1]}) reused for {kind}({arg})")
        return a

    def exp(self, arg):
        """``exp(arg)``."""
        return self._atom("exp", self.canon(arg), "exp")

    def rsqrt(self, arg):
        """``1/sqrt(arg)``, pulling a positive rational content out of the root (rewrite 3)."""
        arg = self.canon(arg)
        c, prim = arg.as_content_primitive()
        if not (c.is_Rational and c > 0):
            c, prim = sp.Integer(1), arg
        return self._atom("rsqrt", self.canon(prim), "rsqrt") / sp.sqrt(c)

    def recip(self, arg):
        """``1/arg``."""
        return self._atom("recip", self.canon(arg), "recip")

    def act(self, arg):
        """The activation applied to one entry; ``f(0) = 0`` only where it holds (rewrite 3)."""
        arg = self.canon(arg)
        if arg == 0 and ACTIVATIONS[self.activation][0]:
            return sp.Integer(0)
        return self._atom("act:" + self.activation, arg, "act")

    def cos(self, arg):
        """``cos(arg)`` (``cos(0) = 1``)."""
        arg = self.canon(arg)
        return sp.Integer(1) if arg == 0 else self._atom("cos", arg, "cos")

    def sin(self, arg):
        """``sin(arg)`` (``sin(0) = 0``)."""
        arg = self.canon(arg)
        return sp.Integer(0) if arg == 0 else self._atom("sin", arg, "sin")

    def let_row(self, row: list) -> list:
        """Name the entries of one residual-stream row (rewrite 3: a mean of the preceding entries stays one).

        Entry ``j`` whose canonical form equals ``(e_0 + ... + e_{j-1}) / j`` (checked exactly)
        becomes the same mean of the preceding entries' names; any other entry is :meth:`let`.
        """
        exprs, out = [], []
        for j, e in enumerate(row):
            e = self.canon(e)
            if j >= 2 and not e.is_number and self.canon(e - sum(exprs, sp.Integer(0)) / j) == 0:
                out.append(self.canon(sum(out, sp.Integer(0)) / j))
            else:
                out.append(self.let(e))
            exprs.append(e)
        return out

    def let(self, e):
        """Name a residual-stream entry (numbers stay numbers)."""
        e = self.canon(e)
        if not self.let_streams or e.is_number or e.is_Symbol:
            return e
        return self._atom("let", e, "x")

    def numeric(self, expr, values: dict, prec: int = PREC):
        """Value of ``expr`` (a stand-in expression) at ``values`` {Symbol: number}, to ``prec`` digits.

        Stand-ins are evaluated from their definitions (``exp``, ``sqrt``, the activation's
        numeric definition), recursively, with a memo kept in a copy of ``values``.
        """
        env = {s: sp.Float(v, prec) if not isinstance(v, sp.Basic) else v for s, v in values.items()}
        return self._num(sp.sympify(expr), env, prec)

    def numeric_matrix(self, M, values: dict, prec: int = PREC):
        """:meth:`numeric` of every entry of ``M`` [r, c] -> [r, c]."""
        env = {s: sp.Float(v, prec) if not isinstance(v, sp.Basic) else v for s, v in values.items()}
        return sp.Matrix(M.rows, M.cols, [self._num(e, env, prec) for e in M])

    def _num(self, expr, env, prec):
        for a in sorted(expr.free_symbols, key=sp.default_sort_key):
            if a in env:
                continue
            if a not in self.defs:
                raise ValueError(f"values: no value given for symbol {a}")
            kind, arg = self.defs[a]
            x = self._num(arg, env, prec)
            if kind == "exp":
                val = sp.exp(x)
            elif kind == "rsqrt":
                val = 1 / sp.sqrt(x)
            elif kind == "recip":
                val = 1 / x
            elif kind == "let":
                val = x
            elif kind == "cos":
                val = sp.cos(x)
            elif kind == "sin":
                val = sp.sin(x)
            else:
                val = ACTIVATIONS[kind.split(":", 1)[1]][1](x)
            env[a] = sp.N(val, prec)
        return sp.N(expr.xreplace(env), prec)


def outputs_equal(y0: sp.Matrix, y1: sp.Matrix, K: Kernel) -> tuple[str, int]:
    """Shape-checked equality of two outputs (item 4).

    Returns ``("equal", 0)``, ``("shape", 0)`` when the shapes differ, ``("empty", 0)`` when
    there is no output entry at all (nothing would be compared), or ``("differ", n)`` with the
    number of entries whose difference is not 0.
    """
    if y0.shape != y1.shape:
        return "shape", 0
    if 0 in y0.shape:
        return "empty", 0
    left = sum(1 for a, b in zip(y1, y0) if K.canon(a - b) != 0)
    return ("equal", 0) if left == 0 else ("differ", left)


def check_fresh(base_symbols: set, expanded_entries: list, new_blocks: dict) -> str:
    """``""`` when every free new-block entry is fresh, else the reason (item 4).

    ``expanded_entries`` lists every entry of every tensor of the expanded model;
    ``new_blocks`` maps block names to their matrices. A new-block entry that is not 0 must
    be a bare symbol that is no base-model symbol, occurs at exactly one position of the
    expanded model and in one block only; no model symbol may be a stand-in.
    """
    counts: dict = {}
    for e in expanded_entries:
        for s in e.free_symbols:
            if isinstance(s, StandIn):
                return f"model symbol {s} is a stand-in"
            counts[s] = counts.get(s, 0) + 1
    owner: dict = {}
    for name, Ms in new_blocks.items():
        for M in Ms:
            for e in M:
                if e == 0:
                    continue
                if not e.is_Symbol:
                    return f"block {name}: entry {e} is not a bare symbol"
                if e in base_symbols:
                    return f"block {name}: entry {e} is a symbol of the original model"
                if counts.get(e, 0) != 1:
                    return f"block {name}: symbol {e} occurs {counts.get(e, 0)} times in the expanded model"
                if owner.setdefault(e, (name, id(M))) != (name, id(M)):
                    return f"block {name}: symbol {e} is shared with block {owner[e][0]}"
    return ""


# ==== symbolic sizes: block terms ==========================================================
def same_size(a, b) -> bool:
    """Two sizes (integers or expressions in size symbols) are equal for every size."""
    return _same_size(sp.sympify(a), sp.sympify(b))


@functools.lru_cache(maxsize=1 << 16)
def _same_size(a, b) -> bool:
    return a == b or sp.expand(a - b) == 0


@functools.lru_cache(maxsize=1 << 16)
def _size(a):
    return sp.expand(sp.sympify(a))


class Term:
    """A matrix term with symbolic sizes (module docstring, item 5); immutable, hashable."""

    __slots__ = ()

    @property
    def rows(self):
        return self.shape[0]

    @property
    def cols(self):
        return self.shape[1]

    def row_join(self, other: Term) -> Term:
        """``[self, other]``; a block row is extended, not nested."""
        left = self.blocks[0] if isinstance(self, Cat) and len(self.blocks) == 1 else (self,)
        return Cat((tuple(left) + (other,),))

    def col_join(self, other: Term) -> Term:
        """``[self; other]``; a block column is extended, not nested."""
        top = self.blocks if isinstance(self, Cat) and len(self.blocks[0]) == 1 else ((self,),)
        return Cat(tuple(top) + ((other,),))

    def __mul__(self, other):
        if isinstance(other, Term):
            return Mul(sp.Integer(1), (self, other))
        return Mul(sp.sympify(other), (self,))

    def __rmul__(self, other):
        return Mul(sp.sympify(other), (self,))

    def __add__(self, other):
        return Add((self, other))

    @property
    def T(self):
        return Tr(self)

    def __str__(self):
        return text(self)


def _frozen(cls):
    """A frozen dataclass whose hash is computed once (terms are compared and hashed often)."""
    post = cls.__dict__.get("_check")

    def __post_init__(self):
        if post is not None:
            post(self)
        vals = tuple(getattr(self, f.name) for f in self.__dataclass_fields__.values() if f.compare)
        object.__setattr__(self, "_hash", hash((type(self).__name__,) + vals))

    cls.__post_init__ = __post_init__
    computed = cls.__dict__["shape"].fget

    def shape(self):
        s = self.__dict__.get("_shape")
        if s is None:
            s = computed(self)
            object.__setattr__(self, "_shape", s)
        return s

    cls.shape = property(shape, doc="``(rows, cols)``, computed once")
    cls = dataclass(frozen=True, eq=True)(cls)
    cls.__hash__ = lambda self: self._hash
    return cls


@_frozen
class Sym(Term):
    """A matrix symbol ``name`` [r, c] (a parameter, an input, a stream)."""

    name: str
    r: object
    c: object

    @property
    def shape(self):
        return (self.r, self.c)


@_frozen
class Ones(Term):
    """The matrix of ones [r, c] (a column of ones broadcasts a bias row)."""

    r: object
    c: object

    @property
    def shape(self):
        return (self.r, self.c)


@_frozen
class Zero(Term):
    """A zero block [r, c]; ``label`` (the constrained block's name) is shown, not compared."""

    r: object
    c: object
    label: str = field(default="", compare=False)

    @property
    def shape(self):
        return (self.r, self.c)


@_frozen
class Cat(Term):
    """A block matrix: a tuple of block rows, each a tuple of terms; partitions must line up."""

    blocks: tuple

    def _check(self):
        if not self.blocks or not all(self.blocks) or len({len(r) for r in self.blocks}) != 1:
            raise KernelError("Cat: blocks must form a non-empty rectangle")
        for row in self.blocks:
            for b in row[1:]:
                if not same_size(b.rows, row[0].rows):
                    raise KernelError(f"Cat: block heights differ in a row: {text(row[0])}, {text(b)}")
        for j in range(len(self.blocks[0])):
            for row in self.blocks[1:]:
                if not same_size(row[j].cols, self.blocks[0][j].cols):
                    raise KernelError(f"Cat: block widths differ in column {j}")

    @property
    def shape(self):
        return (
            _size(sum((r[0].rows for r in self.blocks), sp.Integer(0))),
            _size(sum((b.cols for b in self.blocks[0]), sp.Integer(0))),
        )

    @property
    def row_sizes(self):
        return tuple(r[0].rows for r in self.blocks)

    @property
    def col_sizes(self):
        return tuple(b.cols for b in self.blocks[0])


@_frozen
class Add(Term):
    """A sum of terms of one shape."""

    args: tuple

    def _check(self):
        if not self.args:
            raise KernelError("Add: no terms")
        for a in self.args[1:]:
            if not (same_size(a.rows, self.args[0].rows) and same_size(a.cols, self.args[0].cols)):
                raise KernelError(f"Add: shapes differ: {text(self.args[0])} and {text(a)}")

    @property
    def shape(self):
        return self.args[0].shape


@_frozen
class Mul(Term):
    """``coef * A_1 A_2 ... A_n`` (matrix product with a scalar coefficient)."""

    coef: object
    args: tuple

    def _check(self):
        if not self.args:
            raise KernelError("Mul: no factors")
        for a, b in zip(self.args, self.args[1:]):
            if not same_size(a.cols, b.rows):
                raise KernelError(f"Mul: inner sizes differ: {text(a)} [{a.cols}] and {text(b)} [{b.rows}]")

    @property
    def shape(self):
        return (self.args[0].rows, self.args[-1].cols)


@_frozen
class Tr(Term):
    """Transpose."""

    arg: Term

    @property
    def shape(self):
        return (self.arg.cols, self.arg.rows)


@_frozen
class Fn(Term):
    """An opaque nonlinear map of the model.

    ``act(A)`` (elementwise; ``info`` the activation name), ``norm(X, g)`` (row-wise RMSNorm
    of X [s, w] with gain row g [1, w]; ``info`` epsilon), ``softmax(L)`` (row-wise, L [s, s];
    ``info`` True for the causal mask); the blocks of docs/spec.md section 4: ``had(A, B)``
    (entrywise product of two matrices of one shape: the gated MLP), ``lnorm(X, g, b)``
    (row-wise LayerNorm with bias row b; ``info`` epsilon), ``rope(Q)`` (RoPE of the rows of
    Q [s, k], row ``m`` at position ``m``; ``info`` ``(theta, layout)``).
    """

    kind: str
    args: tuple
    info: object = None

    def _check(self):
        if self.kind == "norm":
            X, g = self.args
            if not (same_size(g.rows, 1) and same_size(g.cols, X.cols)):
                raise KernelError("norm: the gain must be a row as wide as X")
        elif self.kind == "softmax":
            if not same_size(self.args[0].rows, self.args[0].cols):
                raise KernelError("softmax: logits must be square")
        elif self.kind == "had":
            A, B = self.args
            if not (same_size(A.rows, B.rows) and same_size(A.cols, B.cols)):
                raise KernelError("had: the factors must have one shape")
        elif self.kind == "lnorm":
            X, g, b = self.args
            for v in (g, b):
                if not (same_size(v.rows, 1) and same_size(v.cols, X.cols)):
                    raise KernelError("lnorm: the gain and bias must be rows as wide as X")
        elif self.kind not in ("act", "rope"):
            raise KernelError(f"Fn: unknown kind {self.kind!r}")

    @property
    def shape(self):
        return self.args[0].shape


def text(t) -> str:
    """Plain-text form of a term: ``[A, B]`` block rows, ``[A; B]`` block columns, ``A'`` transposes."""
    cached = getattr(t, "_text", None)
    if cached is None:
        cached = _text(t)
        object.__setattr__(t, "_text", cached)
    return cached


def _text(t) -> str:
    if isinstance(t, Sym):
        return t.name
    if isinstance(t, Ones):
        return "1"
    if isinstance(t, Zero):
        return "0"
    if isinstance(t, Cat):
        return "[" + "; ".join(", ".join(text(b) for b in r) for r in t.blocks) + "]"
    if isinstance(t, Add):
        return " + ".join(text(a) for a in t.args)
    if isinstance(t, Mul):
        body = " ".join(f"({text(a)})" if isinstance(a, Add) else text(a) for a in t.args)
        return body if t.coef == 1 else f"{sp.sstr(t.coef)} {body}"
    if isinstance(t, Tr):
        inner = text(t.arg)
        return f"{inner}'" if isinstance(t.arg, (Sym, Fn)) else f"({inner})'"
    if isinstance(t, Fn):
        extra = ""
        if t.kind == "norm" and t.info != 0:
            extra = f"; eps={sp.sstr(t.info)}"
        if t.kind == "softmax" and t.info:
            extra = "; causal"
        return f"{t.kind}({', '.join(text(a) for a in t.args)}{extra})"
    raise KernelError(f"text: not a term: {t!r}")


# ---- rewrite rules (item 6) -------------------------------------------------------------------
_NORM_LEMMA: list = []


def norm_lemma_holds() -> bool:
    """The scalar identity behind the norm lemma, checked once with SymPy (positive symbols).

    For a row x with sum of squares q over its first w0 entries and zeros in the other
    w - w0, gains scaled by ``c = sqrt(w0/w)`` and epsilon ``e w0/w``:
    ``c / sqrt(q/w + e w0/w) = 1 / sqrt(q/w0 + e)``; and with the ``w - w0`` zero entries,
    ``x_j * anything = 0`` there, so the new columns of the norm are 0.
    """
    if not _NORM_LEMMA:
        q, e, w0, w = sp.symbols("q e w0 w", positive=True)
        c = sp.sqrt(w0 / w)
        lhs = c / sp.sqrt(q / w + e * w0 / w)
        rhs = 1 / sp.sqrt(q / w0 + e)
        _NORM_LEMMA.append(sp.simplify(lhs / rhs) == 1)
    return _NORM_LEMMA[0]


def gains_scaled(c, w0, w) -> bool:
    """The norm lemma's hypothesis on the gains: ``c = sqrt(w0/w)`` (a positive root)."""
    return sp.expand(c**2 - w0 / w) == 0 and sp.sympify(c).is_positive is True


def _zero_like(t, label="") -> Zero:
    return Zero(t.rows, t.cols, label)


def _is_zero(t) -> bool:
    return isinstance(t, Zero)


def _unit(c, args) -> Term:
    """``c * args`` as a term; a single factor with coefficient 1 is the factor itself."""
    c = sp.expand(c)
    if len(args) == 1 and c == 1:
        return args[0]
    return Mul(c, tuple(args))


def _split_zeros(target: tuple, blocks: list):
    """``blocks`` (sizes along one axis, with the terms) cut to the partition ``target``, or None.

    Only zero blocks are cut (a zero block of size ``a + b`` is a zero block of size ``a``
    next to one of size ``b``); ``blocks`` is a list of ``(size, term, make)`` where
    ``make(size)`` builds a zero block of that size along the axis.
    """
    out, i, rest = [], 0, None
    for t in target:
        if i >= len(blocks):
            return None
        size, term, make = blocks[i]
        r = size if rest is None else rest
        if same_size(t, r):
            out.append(term if rest is None else make(t))
            i, rest = i + 1, None
        elif isinstance(term, Zero):
            out.append(make(t))
            rest = _size(r - t)
        else:
            return None
    return out if i == len(blocks) and rest is None else None


def _regrid(t: Cat):
    """A block matrix with block-matrix cells as one finer grid, or None.

    A block column of block rows with one column partition becomes a grid (and the mirror
    case); a grid row whose cells are block columns of one row partition (zero cells cut to
    it) is split into several grid rows (and the mirror case for grid columns).
    """
    B = t.blocks
    if len(B[0]) == 1 and len(B) > 1 and all(isinstance(r[0], Cat) for r in B):
        if all(_same_partition(r[0].col_sizes, B[0][0].col_sizes) for r in B):
            return Cat(tuple(row for r in B for row in r[0].blocks))
    if len(B) == 1 and len(B[0]) > 1 and all(isinstance(b, Cat) for b in B[0]):
        if all(_same_partition(b.row_sizes, B[0][0].row_sizes) for b in B[0]):
            return Cat(tuple(sum((b.blocks[i] for b in B[0]), ()) for i in range(len(B[0][0].blocks))))
    for i, row in enumerate(B):
        for cell in row:
            if isinstance(cell, Cat) and len(cell.blocks[0]) == 1 and len(cell.blocks) > 1:
                parts = []
                for b in row:
                    if isinstance(b, Cat) and len(b.blocks[0]) == 1:
                        cut = _split_zeros(
                            cell.row_sizes, [(r[0].rows, r[0], lambda n, c=r[0].cols: Zero(n, c)) for r in b.blocks]
                        )
                    elif isinstance(b, Zero):
                        cut = _split_zeros(cell.row_sizes, [(b.rows, b, lambda n, c=b.cols: Zero(n, c))])
                    else:
                        cut = None
                    if cut is None:
                        break
                    parts.append(cut)
                else:
                    new_rows = tuple(tuple(p[q] for p in parts) for q in range(len(cell.row_sizes)))
                    return Cat(B[:i] + new_rows + B[i + 1 :])
    for j in range(len(B[0])):
        col = [r[j] for r in B]
        for cell in col:
            if isinstance(cell, Cat) and len(cell.blocks) == 1 and len(cell.blocks[0]) > 1:
                parts = []
                for b in col:
                    if isinstance(b, Cat) and len(b.blocks) == 1:
                        cut = _split_zeros(
                            cell.col_sizes, [(x.cols, x, lambda n, r=x.rows: Zero(r, n)) for x in b.blocks[0]]
                        )
                    elif isinstance(b, Zero):
                        cut = _split_zeros(cell.col_sizes, [(b.cols, b, lambda n, r=b.rows: Zero(r, n))])
                    else:
                        cut = None
                    if cut is None:
                        break
                    parts.append(cut)
                else:
                    return Cat(tuple(r[:j] + tuple(parts[i]) + r[j + 1 :] for i, r in enumerate(B)))
    return None


def _same_partition(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(same_size(x, y) for x, y in zip(a, b))


def _align(A: Cat, B: Cat):
    """``(A, B)`` with zero blocks cut so that A's column partition is B's row partition, or None."""
    if _same_partition(A.col_sizes, B.row_sizes):
        return A, B
    if len(B.blocks[0]) == 1:
        cut = _split_zeros(A.col_sizes, [(r[0].rows, r[0], lambda n, c=r[0].cols: Zero(n, c)) for r in B.blocks])
        if cut is not None:
            return A, Cat(tuple((b,) for b in cut))
    if len(A.blocks) == 1:
        cut = _split_zeros(B.row_sizes, [(b.cols, b, lambda n, r=b.rows: Zero(r, n)) for b in A.blocks[0]])
        if cut is not None:
            return Cat((tuple(cut),)), B
    return None


def _block_product(A: Cat, B: Cat):
    """``A B`` for block matrices whose inner partitions agree (after cutting zero blocks), else None."""
    aligned = _align(A, B)
    if aligned is None:
        return None
    A, B = aligned
    rows = []
    for i in range(len(A.blocks)):
        row = []
        for j in range(len(B.blocks[0])):
            parts = tuple(Mul(sp.Integer(1), (A.blocks[i][t], B.blocks[t][j])) for t in range(len(B.blocks)))
            row.append(parts[0] if len(parts) == 1 else Add(parts))
        rows.append(tuple(row))
    return Cat(tuple(rows))


def _zero_rule(zeros: list) -> str:
    """The rule name for products and sums with zero blocks, naming the constrained blocks."""
    labels = sorted({z.label for z in zeros if z.label})
    return "zero blocks" + (f" ({', '.join(f'{x} = 0' for x in labels)})" if labels else "")


def _rule_node(t: Term, activation_zero: bool):
    """One rewrite at the root of ``t`` (children already rewritten): ``(rule name, new term)`` or None."""
    if isinstance(t, Cat):
        if len(t.blocks) == 1 and len(t.blocks[0]) == 1:
            return "block of one", t.blocks[0][0]
        if len(t.blocks) == 1 and any(isinstance(b, Cat) and len(b.blocks) == 1 for b in t.blocks[0]):
            row = []
            for b in t.blocks[0]:
                row += list(b.blocks[0]) if isinstance(b, Cat) and len(b.blocks) == 1 else [b]
            return "flatten blocks", Cat((tuple(row),))
        if len(t.blocks[0]) == 1 and any(isinstance(r[0], Cat) and len(r[0].blocks[0]) == 1 for r in t.blocks):
            col = []
            for r in t.blocks:
                col += list(r[0].blocks) if isinstance(r[0], Cat) and len(r[0].blocks[0]) == 1 else [r]
            return "flatten blocks", Cat(tuple(tuple(x) for x in col))
        grid = _regrid(t)
        if grid is not None:
            return "flatten blocks", grid
        return None
    if isinstance(t, Tr):
        a = t.arg
        if isinstance(a, Zero):
            return "transpose", Zero(a.cols, a.rows)
        if isinstance(a, Tr):
            return "transpose", a.arg
        if isinstance(a, Cat):
            return "transpose", Cat(
                tuple(tuple(Tr(a.blocks[i][j]) for i in range(len(a.blocks))) for j in range(len(a.blocks[0])))
            )
        if isinstance(a, Add):
            return "transpose", Add(tuple(Tr(x) for x in a.args))
        if isinstance(a, Mul):
            return "transpose", Mul(a.coef, tuple(Tr(x) for x in reversed(a.args)))
        return None
    if isinstance(t, Mul):
        if t.coef == 0 or any(_is_zero(a) for a in t.args):
            return _zero_rule([a for a in t.args if _is_zero(a)]), _zero_like(t)
        if any(isinstance(a, Mul) for a in t.args):
            c, args = t.coef, []
            for a in t.args:
                if isinstance(a, Mul):
                    c, args = c * a.coef, args + list(a.args)
                else:
                    args.append(a)
            return "associativity", _unit(c, args)
        for i, a in enumerate(t.args):
            if isinstance(a, Add):
                return "distributivity", Add(tuple(_unit(t.coef, t.args[:i] + (x,) + t.args[i + 1 :]) for x in a.args))
        for i in range(len(t.args) - 1):
            a, b = t.args[i], t.args[i + 1]
            new = None
            if isinstance(a, Cat) and isinstance(b, Cat):
                new = _block_product(a, b)
            elif isinstance(b, Cat) and len(b.blocks) == 1:
                new = Cat((tuple(Mul(sp.Integer(1), (a, x)) for x in b.blocks[0]),))
            elif isinstance(a, Cat) and len(a.blocks[0]) == 1:
                new = Cat(tuple((Mul(sp.Integer(1), (r[0], b)),) for r in a.blocks))
            if new is not None:
                return "block product", _unit(t.coef, t.args[:i] + (new,) + t.args[i + 2 :])
        if len(t.args) == 1 and isinstance(t.args[0], Cat):
            C = t.args[0]
            return "block product", Cat(tuple(tuple(_unit(t.coef, (b,)) for b in r) for r in C.blocks))
        if len(t.args) == 1 and t.coef == 1:
            return "associativity", t.args[0]
        c = sp.expand(t.coef)
        if c != t.coef:
            return "coefficients", Mul(c, t.args)
        return None
    if isinstance(t, Add):
        if any(isinstance(a, Add) for a in t.args):
            args = []
            for a in t.args:
                args += list(a.args) if isinstance(a, Add) else [a]
            return "associativity", Add(tuple(args))
        if any(_is_zero(a) for a in t.args):
            rest = tuple(a for a in t.args if not _is_zero(a))
            return _zero_rule([a for a in t.args if _is_zero(a)]), (
                _zero_like(t) if not rest else rest[0] if len(rest) == 1 else Add(rest)
            )
        if len(t.args) == 1:
            return "associativity", t.args[0]
        cats = [a for a in t.args if isinstance(a, Cat)]
        if cats and len(cats) == len(t.args):
            r0, c0 = cats[0].row_sizes, cats[0].col_sizes
            if all(
                len(c.row_sizes) == len(r0)
                and len(c.col_sizes) == len(c0)
                and all(same_size(x, y) for x, y in zip(c.row_sizes, r0))
                and all(same_size(x, y) for x, y in zip(c.col_sizes, c0))
                for c in cats
            ):
                return "block sum", Cat(
                    tuple(
                        tuple(Add(tuple(c.blocks[i][j] for c in cats)) for j in range(len(c0))) for i in range(len(r0))
                    )
                )
            return None
        # collect equal monomials and order them
        coefs: dict = {}
        order = []
        for a in t.args:
            c, key = (a.coef, a.args) if isinstance(a, Mul) else (sp.Integer(1), (a,))
            if key not in coefs:
                order.append(key)
                coefs[key] = sp.Integer(0)
            coefs[key] += c
        terms = [_unit(coefs[k], k) for k in order if sp.expand(coefs[k]) != 0]
        terms.sort(key=text)
        if not terms:
            return "collect terms", _zero_like(t)
        new = terms[0] if len(terms) == 1 else Add(tuple(terms))
        return ("collect terms", new) if new != t else None
    if isinstance(t, Fn):
        if t.kind == "act":
            a = t.args[0]
            if isinstance(a, Cat):
                return "elementwise function of blocks", Cat(
                    tuple(tuple(Fn("act", (b,), t.info) for b in r) for r in a.blocks)
                )
            if isinstance(a, Zero) and activation_zero and ACTIVATIONS[t.info][0]:
                return f"{t.info}(0) = 0", _zero_like(a)
            return None
        if t.kind == "had":
            A, B = t.args
            if _is_zero(A) or _is_zero(B):
                return _zero_rule([a for a in (A, B) if _is_zero(a)]), _zero_like(A)
            if (
                isinstance(A, Cat)
                and isinstance(B, Cat)
                and _same_partition(A.row_sizes, B.row_sizes)
                and _same_partition(A.col_sizes, B.col_sizes)
            ):
                return "entrywise product of blocks", Cat(
                    tuple(tuple(Fn("had", (a, b)) for a, b in zip(ra, rb)) for ra, rb in zip(A.blocks, B.blocks))
                )
            return None
        if t.kind == "norm":
            X, g = t.args
            if _is_zero(g):
                return "norm with zero gains is 0", _zero_like(X)
            if (
                isinstance(X, Cat)
                and isinstance(g, Cat)
                and len(X.blocks) == 1
                and len(X.blocks[0]) == 2
                and len(g.blocks[0]) == 2
                and _is_zero(X.blocks[0][1])
                and same_size(X.blocks[0][0].cols, g.blocks[0][0].cols)
                and norm_lemma_holds()
            ):
                w0, w = X.blocks[0][0].cols, X.cols
                g0 = g.blocks[0][0]
                c, g1 = (g0.coef, g0.args) if isinstance(g0, Mul) else (sp.Integer(1), (g0,))
                g1 = _unit(sp.Integer(1), g1)
                if gains_scaled(c, w0, w):
                    eps0 = sp.expand(sp.sympify(t.info) * w / w0)
                    return "norm lemma (zero columns, gains x sqrt(h/h^), eps x h/h^)", Cat(
                        ((Fn("norm", (X.blocks[0][0], g1), eps0), Zero(X.rows, w - w0)),)
                    )
        return None
    return None


def rewrite_once(t: Term, activation_zero: bool = True):
    """One bottom-up pass: every node rewritten by the first rule that applies to it.

    Returns ``(new term, sorted rule names)``; the names are empty when nothing applied.
    """
    names: set = set()
    memo: dict = {}

    def go(x):
        if x in memo:
            return memo[x]
        y = x
        if isinstance(x, Cat):
            y = Cat(tuple(tuple(go(b) for b in r) for r in x.blocks))
        elif isinstance(x, Add):
            y = Add(tuple(go(a) for a in x.args))
        elif isinstance(x, Mul):
            y = Mul(x.coef, tuple(go(a) for a in x.args))
        elif isinstance(x, Tr):
            y = Tr(go(x.arg))
        elif isinstance(x, Fn):
            y = Fn(x.kind, tuple(go(a) for a in x.args), x.info)
        if y == x:  # children unchanged: rewrite this node
            r = _rule_node(x, activation_zero)
            if r is not None:
                names.add(r[0])
                y = r[1]
        memo[x] = y
        return y

    return go(t), sorted(names)


def normalize(t: Term, activation_zero: bool = True, limit: int = 200) -> list:
    """Rewrite to a normal form; returns the steps ``[(rule names, term after), ...]``."""
    steps = []
    for _ in range(limit):
        new, names = rewrite_once(t, activation_zero)
        if not names or new == t:
            return steps
        steps.append((names, new))
        t = new
    raise KernelError("normalize: no normal form within the step limit")


# ---- explicit entries (item 7) ----------------------------------------------------------------
class Explicit:
    """Terms evaluated to explicit matrices of entries at one size assignment, by a :class:`Kernel`.

    Matrix symbols become matrices of real symbols ``name[i,j]``; the nonlinear maps are the
    entry-level definitions (RMSNorm, masked softmax with ``exp``, the activation), whose
    values are the kernel's stand-ins, and the entries a norm reads are named by stand-ins
    first (as the entry level names residual streams). Results are memoised per term.
    """

    def __init__(self, sizes: dict, activation: str = "relu"):
        self.sizes = sizes
        self.K = Kernel(activation, let_streams=True)
        self.memo: dict = {}

    def n(self, size) -> int:
        v = sp.sympify(sp.sympify(size).xreplace(self.sizes))
        if not v.is_Integer or v < 0:
            raise KernelError(f"explicit: size {size} is {v} at {self.sizes}")
        return int(v)

    def __call__(self, t: Term) -> sp.Matrix:
        if t in self.memo:
            return self.memo[t]
        K = self.K
        if isinstance(t, Sym):
            out = sp.Matrix(self.n(t.r), self.n(t.c), lambda i, j: sp.Symbol(f"{t.name}[{i},{j}]", real=True))
        elif isinstance(t, Ones):
            out = sp.ones(self.n(t.r), self.n(t.c))
        elif isinstance(t, Zero):
            out = sp.zeros(self.n(t.r), self.n(t.c))
        elif isinstance(t, Cat):
            out = sp.Matrix.vstack(*[sp.Matrix.hstack(*[self(b) for b in r]) for r in t.blocks])
        elif isinstance(t, Add):
            out = self(t.args[0])
            for a in t.args[1:]:
                out = out + self(a)
        elif isinstance(t, Mul):
            out = self(t.args[0])
            for a in t.args[1:]:
                out = out * self(a)
            out = out * sp.sympify(t.coef).xreplace(self.sizes)
        elif isinstance(t, Tr):
            out = self(t.arg).T
        elif isinstance(t, Fn) and t.kind == "act":
            A = self(t.args[0])
            K.activation = t.info
            out = A.applyfunc(K.act)
        elif isinstance(t, Fn) and t.kind == "norm":
            X, g = self(t.args[0]).applyfunc(K.let), self(t.args[1])  # entries named: small squares
            eps = sp.sympify(t.info).xreplace(self.sizes)
            out = sp.zeros(*X.shape)
            for i in range(X.rows):
                r = K.rsqrt(sum((X[i, c] ** 2 for c in range(X.cols)), sp.Integer(0)) / X.cols + eps)
                for j in range(X.cols):
                    out[i, j] = X[i, j] * g[0, j] * r
        elif isinstance(t, Fn) and t.kind == "had":
            out = self(t.args[0]).multiply_elementwise(self(t.args[1]))
        elif isinstance(t, Fn) and t.kind == "lnorm":
            X, g, b = self(t.args[0]).applyfunc(K.let), self(t.args[1]), self(t.args[2])
            eps = sp.sympify(t.info).xreplace(self.sizes)
            out = sp.zeros(*X.shape)
            for i in range(X.rows):
                mu = K.canon(sum((X[i, c] for c in range(X.cols)), sp.Integer(0)) / X.cols)
                xc = [K.canon(X[i, c] - mu) for c in range(X.cols)]
                r = K.rsqrt(sum((x**2 for x in xc), sp.Integer(0)) / X.cols + eps)
                for j in range(X.cols):
                    out[i, j] = xc[j] * g[0, j] * r + b[0, j]
        elif isinstance(t, Fn) and t.kind == "rope":
            Q = self(t.args[0])
            theta, layout = t.info
            if Q.cols % 2:
                raise KernelError(f"explicit: rope of an odd width {Q.cols} at {self.sizes}")
            half = Q.cols // 2
            pairs = (
                [(i, i + half) for i in range(half)] if layout == "half" else [(2 * i, 2 * i + 1) for i in range(half)]
            )
            out = sp.zeros(*Q.shape)
            for i, (a, b) in enumerate(pairs):
                freq = theta ** sp.Rational(-2 * i, Q.cols)
                for m in range(Q.rows):
                    c, sn = K.cos(m * freq), K.sin(m * freq)
                    out[m, a] = Q[m, a] * c - Q[m, b] * sn
                    out[m, b] = Q[m, b] * c + Q[m, a] * sn
        elif isinstance(t, Fn) and t.kind == "softmax":
            L = self(t.args[0])
            out = sp.zeros(*L.shape)
            for i in range(L.rows):
                cols = range(i + 1) if t.info else range(L.cols)
                e = {j: K.exp(L[i, j]) for j in cols}
                z = K.recip(sum(e.values()))
                for j in cols:
                    out[i, j] = e[j] * z
        else:
            raise KernelError(f"explicit: not a term: {t!r}")
        if not isinstance(t, (Sym, Ones, Zero, Cat, Tr)):  # assembled from canonical entries otherwise
            out = out.applyfunc(K.canon)
        self.memo[t] = out
        return out

    def equal(self, a: Term, b: Term) -> bool:
        """Same shape and every entry's difference expands to 0 (identical canonical forms first)."""
        A, B = self(a), self(b)
        return A.shape == B.shape and all(x == y or self.K.canon(x - y) == 0 for x, y in zip(A, B))


# ---- chains and glue (items 7, 8) ---------------------------------------------------------
@dataclass
class Step:
    """``lhs = rhs`` by ``why``; ``ok`` once checked."""

    lhs: Term
    rhs: Term
    why: str
    ok: bool | None = None
    detail: str = ""


@dataclass
class Chain:
    """A lemma ``start = ... = end`` proved by its steps."""

    title: str
    start: Term
    end: Term
    steps: list
    ok: bool | None = None
    detail: str = ""


def _children(a: Term, b: Term):
    """Pairs of corresponding arguments when ``a`` and ``b`` are the same operation, else None."""
    if type(a) is not type(b):
        return None
    if isinstance(a, Cat) and len(a.blocks) == len(b.blocks) and len(a.blocks[0]) == len(b.blocks[0]):
        return [(x, y) for ra, rb in zip(a.blocks, b.blocks) for x, y in zip(ra, rb)]
    if isinstance(a, Add) and len(a.args) == len(b.args):
        return list(zip(a.args, b.args))
    if isinstance(a, Mul) and len(a.args) == len(b.args) and a.coef == b.coef:
        return list(zip(a.args, b.args))
    if isinstance(a, Tr):
        return [(a.arg, b.arg)]
    if isinstance(a, Fn) and a.kind == b.kind and a.info == b.info and len(a.args) == len(b.args):
        return list(zip(a.args, b.args))
    return None


def equal_at(ev: Explicit, a: Term, b: Term) -> bool:
    """``a`` and ``b`` have equal explicit entries under ``ev``, compared where they differ.

    Identical terms are equal; the same operation applied to arguments that are pairwise
    equal gives equal values (congruence), so only where that fails are the two terms
    themselves evaluated and compared entry by entry.
    """
    if a == b:
        return True
    if not (same_size(a.rows, b.rows) and same_size(a.cols, b.cols)):
        return False
    if isinstance(a, Add) and isinstance(b, Add) and sorted(a.args, key=text) == sorted(b.args, key=text):
        return True  # the same terms in another order
    kids = _children(a, b)
    if kids is not None and all(
        same_size(x.rows, y.rows) and same_size(x.cols, y.cols) and equal_at(ev, x, y) for x, y in kids
    ):
        return True
    return ev.equal(a, b)


def check_chain(c: Chain, size_sets: list, activation: str = "relu", evals: list | None = None) -> Chain:
    """Check glue and every step (item 7); sets ``c.ok``, ``c.detail`` and each step's ``ok``.

    The glue: the first step's left side is ``c.start``, the last right side is ``c.end``
    (an empty chain needs ``start == end``), and step ``i``'s right side is step ``i + 1``'s
    left side, all by structural equality. Each step: both sides have equal shapes and
    equal explicit entries (:func:`equal_at`) at every size assignment of ``size_sets`` (``evals``: evaluators
    for them to share between chains, one per assignment).
    """
    if evals is None:
        evals = [Explicit(sz, activation) for sz in size_sets]
    problems = []
    prev = c.start
    for i, st in enumerate(c.steps):
        glue = st.lhs == prev
        shape = same_size(st.lhs.rows, st.rhs.rows) and same_size(st.lhs.cols, st.rhs.cols)
        try:
            entries = shape and all(equal_at(ev, st.lhs, st.rhs) for ev in evals)
        except KernelError as e:
            entries, st.detail = False, str(e)
        st.ok = bool(glue and shape and entries)
        if not glue:
            problems.append(f"step {i + 1}: its left side is not the previous right side")
        elif not st.ok:
            problems.append(f"step {i + 1} ({st.why}): sides differ" + (f" ({st.detail})" if st.detail else ""))
        prev = st.rhs
    if prev != c.end:
        problems.append("the last right side is not the claimed end")
    c.ok = not problems
    c.detail = "; ".join(problems)
    return c


def derive(title: str, start: Term, end: Term, activation: str = "relu") -> Chain:
    """A chain from ``start`` to ``end`` generated by the rewrite rules (unchecked).

    Both sides are normalised; when the normal forms are the same term the chain is
    ``start``'s steps followed by ``end``'s steps read backwards. Otherwise the chain stops at
    ``start``'s normal form and does not reach ``end`` (:func:`check_chain` then fails it).
    """
    fz = ACTIVATIONS[activation][0]
    fwd = normalize(start, fz)
    back = normalize(end, fz)
    steps, prev = [], start
    for names, t in fwd:
        steps.append(Step(prev, t, "; ".join(names)))
        prev = t
    nf_end = back[-1][1] if back else end
    if prev == nf_end:
        terms = [end] + [t for _, t in back]
        for j in range(len(back) - 1, -1, -1):
            steps.append(Step(terms[j + 1], terms[j], "; ".join(back[j][0]) + " (read backwards)"))
    return Chain(title, start, end, steps)


def subst(t: Term, mapping: dict) -> Term:
    """``t`` with every matrix symbol in ``mapping`` (by name) replaced by its term (item 8)."""
    if isinstance(t, Sym):
        return mapping.get(t.name, t)
    if isinstance(t, (Ones, Zero)):
        return t
    if isinstance(t, Cat):
        return Cat(tuple(tuple(subst(b, mapping) for b in r) for r in t.blocks))
    if isinstance(t, Add):
        return Add(tuple(subst(a, mapping) for a in t.args))
    if isinstance(t, Mul):
        return Mul(t.coef, tuple(subst(a, mapping) for a in t.args))
    if isinstance(t, Tr):
        return Tr(subst(t.arg, mapping))
    if isinstance(t, Fn):
        return Fn(t.kind, tuple(subst(a, mapping) for a in t.args), t.info)
    raise KernelError(f"subst: not a term: {t!r}")


def symbols_of(t: Term) -> set:
    """Names of the matrix symbols in ``t``."""
    if isinstance(t, Sym):
        return {t.name}
    if isinstance(t, (Ones, Zero)):
        return set()
    if isinstance(t, Cat):
        return set().union(*(symbols_of(b) for r in t.blocks for b in r))
    if isinstance(t, (Add, Mul, Fn)):
        return set().union(*(symbols_of(a) for a in t.args))
    if isinstance(t, Tr):
        return symbols_of(t.arg)
    raise KernelError(f"symbols_of: not a term: {t!r}")
