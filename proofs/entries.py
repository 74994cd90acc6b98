"""Entry-level proof and numeric refutation of one preservation claim.

``prove_equal(base, expanded, activation)`` runs both symbolic models through one
:class:`~proofs.symbolic.Kernel` and expands every entry of ``expanded - base`` output:
all exactly 0 is a proof (for every real value of every symbol, including every free new
block); anything else is "not proved". ``counterexample`` evaluates both models at random
numbers (``PREC`` digits) and reports where and by how much their outputs differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from .core import KernelError, check_fresh, outputs_equal
from .symbolic import ACTIVATIONS, PREC, THETA_NAME, Kernel, SModel, forward, map_model, model_symbols, tensors

# a numeric difference counts as real when it exceeds this (evaluation error is ~10^-PREC)
DIFF_THRESHOLD = sp.Float("1e-20", PREC)


@dataclass
class Counterexample:
    """Numbers at which the two models' outputs differ."""

    values: dict  # symbol name -> value (float64 numbers, evaluated exactly to PREC digits)
    entry: tuple  # (i, j) of the output with the largest difference
    original: sp.Float
    expanded: sp.Float
    max_abs_diff: sp.Float
    seed: int
    activation_instance: str = ""

    def line(self) -> str:
        i, j = self.entry
        return (
            f"counterexample (seed {self.seed}, {len(self.values)} random values): output[{i},{j}] "
            f"original {sp.N(self.original, 12)} vs expanded {sp.N(self.expanded, 12)}, "
            f"|difference| = {sp.N(self.max_abs_diff, 6)}{self.activation_instance}"
        )


@dataclass
class EntryResult:
    status: str  # "proved" | "refuted" | "not proved"
    residual_terms: int = 0  # number of nonzero output entries left after reduction
    atoms: int = 0
    counterexample: Counterexample | None = None
    free_blocks: list = field(default_factory=list)  # new blocks whose symbols stayed free
    reason: str = ""  # why a claim is "not proved" or refuted without a numeric point


class NumKernel(Kernel):
    """The same operations evaluated at numbers (``PREC`` digits), no canonical forms or atoms."""

    def __init__(self, activation: str = "relu", prec: int = PREC):
        super().__init__(activation, let_streams=False)
        self.prec = prec

    def canon(self, e):
        return sp.N(e, self.prec)

    def exp(self, arg):
        return sp.N(sp.exp(sp.N(arg, self.prec)), self.prec)

    def rsqrt(self, arg):
        return sp.N(1 / sp.sqrt(sp.N(arg, self.prec)), self.prec)

    def recip(self, arg):
        return sp.N(1 / sp.N(arg, self.prec), self.prec)

    def act(self, arg):
        return sp.N(ACTIVATIONS[self.activation][1](sp.N(arg, self.prec)), self.prec)

    def let(self, e):
        return sp.N(e, self.prec)

    def let_row(self, row):
        return [sp.N(e, self.prec) for e in row]

    def cos(self, arg):
        return sp.N(sp.cos(sp.N(arg, self.prec)), self.prec)

    def sin(self, arg):
        return sp.N(sp.sin(sp.N(arg, self.prec)), self.prec)


def substitute(m: SModel, values: dict) -> SModel:
    """The model with every symbol replaced by its value (a new model)."""
    out = map_model(m, lambda M: M.xreplace(values))
    eps = m.eps.xreplace(values) if isinstance(m.eps, sp.Basic) else m.eps
    rope = None if m.rope is None else (sp.sympify(m.rope[0]).xreplace(values), m.rope[1])
    return out.replace(eps=eps, rope=rope)


def evaluate(m: SModel, values: dict, activation: str = "relu", prec: int = PREC) -> sp.Matrix:
    """Output [s, o] of the model at ``values`` {Symbol: number}, to ``prec`` digits."""
    vals = {s: sp.Float(v, prec) for s, v in values.items()}
    return forward(substitute(m, vals), NumKernel(activation, prec))


def random_values(symbols, seed: int, fixed: dict | None = None) -> dict:
    """Seeded N(0, 1) float64 values for ``symbols`` (sorted by name); ``fixed`` overrides some."""
    syms = sorted(symbols, key=lambda s: s.name)
    rng = np.random.default_rng(seed)
    vals = {s: float(x) for s, x in zip(syms, rng.normal(0.0, 1.0, size=len(syms)))}
    for s, v in (fixed or {}).items():
        vals[s] = v
    return vals


def positive_fix(symbols) -> dict:
    """Symbols declared positive get a positive value: the RoPE base ``theta`` 10000 (Llama's),
    epsilon 1e-6 as in the authors' notebook."""
    return {s: (1e4 if s.name == THETA_NAME else 1e-6) for s in symbols if s.is_positive}


def rope_symbols(m: SModel) -> set:
    """The symbols of the RoPE base (``theta``), which :func:`model_symbols` does not hold."""
    return set() if m.rope is None else sp.sympify(m.rope[0]).free_symbols


def _float_forward(m: SModel, values: dict, activation: str) -> np.ndarray:
    """float64 output [s, o]: fpt_ref's forward for the paper's blocks, else the symbolic model at 17 digits."""
    if m.is_paper:
        return numpy_forward(m, values, activation)
    return np.array(evaluate(m, values, activation, prec=17).tolist(), dtype=float)  # [s, o]


def counterexample(
    base: SModel, expanded: SModel, activation: str = "relu", seeds=range(16), fixed: dict | None = None
) -> Counterexample | None:
    """The first seeded random point where the outputs differ by more than ``DIFF_THRESHOLD``.

    Points are tried with a float64 screen first; a point is reported only after both models
    are evaluated there to ``PREC`` digits. The first two seeds are always evaluated to
    ``PREC`` digits, in case a difference is too small for float64.
    """
    syms = model_symbols(base) | model_symbols(expanded) | rope_symbols(base) | rope_symbols(expanded)
    fix = positive_fix(syms)
    fix.update(fixed or {})
    for seed in seeds:
        vals = random_values(syms, seed, fix)
        if seed >= 2:
            y0 = _float_forward(base, vals, activation)
            y1 = _float_forward(expanded, vals, activation)
            if not np.max(np.abs(y1 - y0)) > SCREEN_THRESHOLD * max(1.0, float(np.max(np.abs(y0)))):
                continue
        y0 = evaluate(base, vals, activation)
        y1 = evaluate(expanded, vals, activation)
        diffs = [abs(a - b) for a, b in zip(y1, y0)]
        best = max(range(len(diffs)), key=lambda t: diffs[t])
        if diffs[best] > DIFF_THRESHOLD:
            entry = divmod(best, y0.cols)
            inst = "" if ACTIVATIONS[activation][0] else " (activation f evaluated as softplus, f(0) = log 2)"
            return Counterexample(
                {s.name: v for s, v in vals.items()}, entry, y0[best], y1[best], diffs[best], int(seed), inst
            )
    return None


def prove_equal(
    base: SModel, expanded: SModel, activation: str = "relu", blocks: dict | None = None, refute: bool = True
) -> EntryResult:
    """Prove ``forward(expanded) == forward(base)`` entrywise, or refute it with numbers.

    Returns "proved" when the outputs have the same (non-empty) shape, every entry of the
    difference reduces to exactly 0, every free new block is made of fresh symbols
    (:func:`proofs.core.check_fresh`) and a float64 evaluation at random numbers does not
    contradict it; "refuted" when the shapes differ or a numeric counterexample exists;
    otherwise "not proved" (``reason`` says why).
    """
    syms = model_symbols(expanded)
    free = [name for name, Ms in (blocks or {}).items() if any(M.free_symbols & syms for M in Ms)]
    if blocks is not None:
        entries = [e for M in tensors(expanded).values() for e in M]
        why = check_fresh(model_symbols(base), entries, blocks)
        if why:
            return EntryResult("not proved", 0, 0, None, free, reason=f"new blocks not fresh: {why}")
    K = Kernel(activation)
    try:
        y0 = forward(base, K)
        y1 = forward(expanded, K)
        verdict, left = outputs_equal(y0, y1, K)
    except KernelError as e:
        return EntryResult("not proved", 0, len(K.defs), None, free, reason=f"kernel check failed: {e}")
    if verdict == "shape":
        return EntryResult(
            "refuted", 0, len(K.defs), None, free, reason=f"output shapes differ: {y0.shape} vs {y1.shape}"
        )
    if verdict == "empty":
        return EntryResult("not proved", 0, len(K.defs), None, free, reason="the models have no output entries")
    if verdict == "equal":
        worst = float_screen(base, expanded, activation, seeds=range(2))
        if worst > SCREEN_THRESHOLD:  # a proof contradicted by numbers: the kernel is wrong, never "proved"
            cx = counterexample(base, expanded, activation) if refute else None
            return EntryResult(
                "refuted", 0, len(K.defs), cx, free, reason=f"reduced to 0 but numbers differ by {worst:.3g}"
            )
        return EntryResult("proved", 0, len(K.defs), None, free)
    cx = counterexample(base, expanded, activation) if refute else None
    return EntryResult("refuted" if cx else "not proved", left, len(K.defs), cx, free)


# ---- fast float64 screen (used to rule out candidate constraint sets in searches) --------
ACT_NP = {
    "relu": lambda a: np.maximum(a, 0.0),
    "gelu": lambda a: 0.5 * a * (1.0 + np.vectorize(__import__("math").erf)(a / np.sqrt(2.0))),
    "silu": lambda a: a / (1.0 + np.exp(-a)),
    "gelu_tanh": lambda a: 0.5 * a * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (a + 0.044715 * a**3))),
    "f": lambda a: np.log1p(np.exp(a)),  # softplus, the numeric instance of the generic f
}


def _np(M, values) -> np.ndarray:
    return np.array([[float(M[i, j].xreplace(values)) for j in range(M.cols)] for i in range(M.rows)])  # [r, c]


def numpy_forward(m: SModel, values: dict, activation: str = "relu") -> np.ndarray:
    """float64 output [s, o] of the symbolic model at ``values``: fpt_ref's forward pass
    (:func:`fpt_ref.forward.trace`) on the same numbers, with the claim's activation.

    A fold over fpt_ref's one walk of the model; the symbolic model (:func:`proofs.symbolic.forward`)
    stays the independent evaluation that the cross-check compares with it.
    """
    from fpt_ref.forward import trace
    from fpt_ref.model import Head, Layer, Model

    def row(M):  # [1, n] -> [n]
        return _np(M, values)[0]

    layers = tuple(
        Layer(
            row(L.norm_mha),
            tuple(Head(*(_np(W, values) for W in (H.w_q, H.w_k, H.w_v, H.w_o))) for H in L.heads),
            row(L.norm_mlp),
            _np(L.w_l1, values),
            row(L.b_l1),
            _np(L.w_l2, values),
            row(L.b_l2),
        )
        for L in m.layers
    )
    model = Model(
        None,
        _np(m.pos, values),  # [s, h]
        _np(m.w_out, values),  # [h, o]
        layers,
        norm_eps=float(sp.sympify(m.eps).xreplace(values)),
        causal=m.causal,
    )
    act = None if activation == "relu" else ACT_NP[activation]
    out = trace(model, _np(m.inp, values)[None], activation=act).output  # [1, s, o]
    return out[0]  # [s, o]


def float_screen(base: SModel, expanded: SModel, activation: str = "relu", seeds=range(8)) -> float:
    """Largest relative float64 output difference over seeded random points.

    float64 rounding of these tiny models is below 1e-13 relative, so a value above
    ``SCREEN_THRESHOLD`` means the functions differ.
    """
    syms = model_symbols(base) | model_symbols(expanded) | rope_symbols(base) | rope_symbols(expanded)
    fix = positive_fix(syms)
    worst = 0.0
    for seed in seeds:
        vals = random_values(syms, seed, fix)
        y0 = _float_forward(base, vals, activation)
        y1 = _float_forward(expanded, vals, activation)
        worst = max(worst, float(np.max(np.abs(y1 - y0)) / max(1.0, float(np.max(np.abs(y0))))))
        if worst > SCREEN_THRESHOLD:
            break
    return worst


SCREEN_THRESHOLD = 1e-8
