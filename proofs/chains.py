"""Symbolic-size proofs: Appendix-A style chains of block-matrix identities.

A proof is a list of :class:`Chain` (lemmas). A chain is ``e_0 = e_1 = ... = e_n``; each
step ``e_i = e_{i+1}`` carries its justification and the assumptions it uses (blocks set to
zero), and is checked on its own, twice:

1. **symbolically**, with symbolic sizes (``h``, ``p``, ``p^ - p`` ...): both sides are
   ``block_collapse``-d and brought to a normal form (a sum of coefficient x product of
   matrix symbols, blockwise), and compared;
2. **explicitly**, because ``block_collapse`` is known to return wrong results (SymPy
   issues 22034, 17624): at two concrete size assignments both sides are expanded into
   explicit matrices of entries and their difference must expand to exactly 0.

A step is checked only when both agree. Scalar steps (``sqrt(k^/k)/sqrt(k^) = 1/sqrt(k)``)
are checked by expansion with positive symbols and at concrete numbers; ``iff`` steps by
``solve`` (the unique solution is the stated one).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp
from sympy.matrices.expressions import (
    BlockDiagMatrix,
    BlockMatrix,
    MatAdd,
    MatMul,
    MatrixExpr,
    MatrixSymbol,
    Transpose,
    ZeroMatrix,
    block_collapse,
)

# ---- sizes ---------------------------------------------------------------------------------
_pos = dict(integer=True, positive=True)
s, h, hh, p, ph, k, kh, v, vh, vr, E = sp.symbols("s h hhat p phat k khat v vhat v_r E", **_pos)
o = sp.Symbol("o", **_pos)
SIZES = [  # concrete assignments for the explicit check (every block size >= 1)
    {s: 2, h: 2, hh: 3, p: 1, ph: 2, k: 1, kh: 2, v: 1, vh: 2, vr: 1, E: 1, o: 1},
    {s: 1, h: 1, hh: 3, p: 2, ph: 3, k: 2, kh: 3, v: 2, vh: 3, vr: 2, E: 2, o: 2},
]


def Z(r, c):
    return ZeroMatrix(r, c)


@dataclass
class Step:
    expr: object
    why: str
    assume: dict = field(default_factory=dict)  # {MatrixSymbol or Symbol: value} used by this step
    kind: str = "eq"  # "eq" or "iff" (expr is then (equation, unknown, solution))
    ok: bool | None = None
    detail: str = ""


@dataclass
class Chain:
    title: str
    start: object
    steps: list[Step]
    note: str = ""

    @property
    def ok(self) -> bool:
        return all(st.ok for st in self.steps)


# ---- normal forms ---------------------------------------------------------------------------
def _terms(e) -> dict:
    """``{(matrix factors...): coefficient}`` of a (collapsed, non-block) matrix expression."""
    e = e.doit() if isinstance(e, MatrixExpr) else e
    out: dict = {}
    if isinstance(e, ZeroMatrix):
        return out
    if isinstance(e, MatAdd):
        for a in e.args:
            for key, c in _terms(a).items():
                out[key] = out.get(key, 0) + c
        return out
    if isinstance(e, MatMul):
        c, mats = e.as_coeff_matrices()
        if any(isinstance(m, ZeroMatrix) for m in mats):
            return out
        # expand products of sums: (A + B) C
        for i, m in enumerate(mats):
            if isinstance(m, MatAdd):
                for a in m.args:
                    for key, cc in _terms(MatMul(*mats[:i], a, *mats[i + 1 :]).doit()).items():
                        out[key] = out.get(key, 0) + c * cc
                return out
        return {tuple(mats): c}
    if isinstance(e, MatrixExpr):
        return {(e,): sp.Integer(1)}
    raise TypeError(f"not a matrix expression: {e!r}")


def _same_terms(a, b) -> bool:
    ta, tb = _terms(a), _terms(b)
    for key in set(ta) | set(tb):
        d = sp.expand(sp.powsimp(sp.expand(ta.get(key, 0) - tb.get(key, 0)), force=False))
        if d != 0:
            return False
    return True


def _blocks(e):
    """``(row sizes, col sizes, blocks)`` of a collapsed expression (one block if not a BlockMatrix)."""
    if isinstance(e, BlockMatrix):
        return (
            tuple(e.rowblocksizes),
            tuple(e.colblocksizes),
            [[e.blocks[i, j] for j in range(e.blockshape[1])] for i in range(e.blockshape[0])],
        )
    return ((e.shape[0],), (e.shape[1],), [[e]])


def symbolic_equal(a, b) -> bool:
    """Both sides collapsed and compared block by block in normal form (symbolic sizes)."""
    ca, cb = block_collapse(a), block_collapse(b)
    ra, ka, ba = _blocks(ca)
    rb, kb, bb = _blocks(cb)
    if len(ra) == 1 and len(ka) == 1 and (len(rb) > 1 or len(kb) > 1):
        ca, cb = cb, ca  # compare a block matrix with a plain one only if the plain one is all zero
        ra, ka, ba, rb, kb, bb = rb, kb, bb, ra, ka, ba
    if (ra, ka) == (rb, kb):
        return all(_same_terms(x, y) for rx, ry in zip(ba, bb) for x, y in zip(rx, ry))
    return False


def explicit(e, sizes) -> sp.Matrix:
    """An explicit matrix of entries for a matrix expression at concrete sizes.

    Written here, not taken from SymPy's ``as_explicit``, so that block matrices are
    assembled and multiplied entry by entry independently of ``block_collapse``.
    """
    if isinstance(e, MatrixSymbol):
        r, c = int(e.rows.subs(sizes)), int(e.cols.subs(sizes))
        return sp.Matrix(r, c, lambda i, j: sp.Symbol(f"{e.name}[{i},{j}]"))
    if isinstance(e, ZeroMatrix):
        return sp.zeros(int(e.rows.subs(sizes)), int(e.cols.subs(sizes)))
    if isinstance(e, Transpose):
        return explicit(e.arg, sizes).T
    if isinstance(e, BlockDiagMatrix):
        return sp.diag(*[explicit(b, sizes) for b in e.diag])
    if isinstance(e, BlockMatrix):
        bl = e.blocks
        return sp.Matrix.vstack(
            *[sp.Matrix.hstack(*[explicit(bl[i, j], sizes) for j in range(bl.cols)]) for i in range(bl.rows)]
        )
    if isinstance(e, MatAdd):
        parts = [explicit(a, sizes) for a in e.args]
        out = parts[0]
        for q in parts[1:]:
            out = out + q
        return out
    if isinstance(e, MatMul):
        c, mats = e.as_coeff_matrices()
        out = explicit(mats[0], sizes)
        for m in mats[1:]:
            out = out * explicit(m, sizes)
        return sp.sympify(c).subs(sizes) * out
    raise TypeError(f"explicit: unsupported matrix expression {type(e).__name__}")


def explicit_equal(a, b, sizes) -> bool:
    """Both sides as explicit matrices of entries at concrete sizes; difference expands to 0."""
    A, B = explicit(a, sizes), explicit(b, sizes)
    if A.shape != B.shape:
        return False
    return all(sp.expand(x - y) == 0 for x, y in zip(A, B))


def _together_bases(e):
    """Rewrite every power's base over a common denominator (so equal radicands look equal)."""
    return e.replace(lambda x: x.is_Pow and not x.base.is_Atom, lambda x: sp.Pow(sp.together(x.base), x.exp))


def _scalar_equal(a, b) -> bool:
    d = a - b
    if not any(sp.expand(sp.powsimp(sp.expand(f(d)))) == 0 for f in (lambda e: e, _together_bases)):
        return False
    # and at concrete positive numbers, as an independent check
    syms = sorted((a - b).free_symbols, key=lambda x: x.name)
    for vals in ([2, 3, 5, 7, 11, 13, 17, 19][: len(syms)], [3, 7, 2, 9, 4, 5, 6, 8][: len(syms)]):
        val = sp.N((a - b).subs(dict(zip(syms, vals))), 30)
        if abs(val) > 1e-25:
            return False
    return True


def check_step(a, st: Step) -> None:
    """Check one step ``a = st.expr`` under ``st.assume``; sets ``st.ok`` and ``st.detail``."""
    if st.kind == "iff":
        eq, unknown, solution = st.expr
        sols = sp.solve(eq, unknown, dict=False)
        st.ok = len(sols) == 1 and sp.expand(sols[0] - solution) == 0
        st.detail = f"solve gives {sols}"
        return
    lhs = a.xreplace(st.assume) if st.assume else a
    b = st.expr
    if isinstance(lhs, MatrixExpr) or isinstance(b, MatrixExpr):
        sym = symbolic_equal(lhs, b)
        exp = all(explicit_equal(lhs, b, sz) for sz in SIZES)
        st.ok = bool(sym and exp)
        st.detail = (
            f"block_collapse normal form: {'equal' if sym else 'NOT equal'}; explicit entries at "
            f"{len(SIZES)} size assignments: {'equal' if exp else 'NOT equal'}"
        )
    else:
        st.ok = _scalar_equal(lhs, b)
        st.detail = "scalar: expand/powsimp with positive symbols and at numbers"


def check_chain(c: Chain) -> Chain:
    prev = c.start
    for st in c.steps:
        check_step(prev, st)
        prev = st.expr[0].rhs if st.kind == "iff" else st.expr
    return c


# ---- matrix symbols -----------------------------------------------------------------------------
def M(name, r, c):
    return MatrixSymbol(name, r, c)


X = M("X", s, h)
u = M("u", s, 1)  # the column of ones that broadcasts a bias row


def _mlp_chains(alt: bool) -> list[Chain]:
    W1, M1, b1, mb1 = M("W_l1", h, p), M("M_l1", h, ph - p), M("b_l1", 1, p), M("m_b_l1", 1, ph - p)
    W2, M2, b2 = M("W_l2", p, h), M("M_l2", ph - p, h), M("b_l2", 1, h)
    R, R2 = M("R", s, p), M("R'", s, ph - p)
    pre = Chain(
        "pre-activations",
        X * BlockMatrix([[W1, M1]]) + u * BlockMatrix([[b1, mb1]]),
        [
            Step(BlockMatrix([[X * W1 + u * b1, X * M1 + u * mb1]]), "block product"),
        ],
        "f acts elementwise, so f([A, A']) = [f(A), f(A')] =: [R, R'], R = f(X W_l1 + u b_l1)",
    )
    if not alt:
        out = Chain(
            "MLP output",
            BlockMatrix([[R, R2]]) * BlockMatrix([[W2], [M2]]) + u * b2,
            [
                Step(R * W2 + R2 * M2 + u * b2, "block product"),
                Step(R * W2 + u * b2, "M_l2 = 0", {M2: Z(ph - p, h)}),
            ],
            "= MLP(X): any activation f",
        )
        return [pre, out]
    pre.steps.append(
        Step(
            BlockMatrix([[X * W1 + u * b1, Z(s, ph - p)]]),
            "M_l1 = 0, m_b_l1 = 0",
            {M1: Z(h, ph - p), mb1: Z(1, ph - p)},
        )
    )
    pre.note = "f acts elementwise and f(0) = 0, so f([A, 0]) = [R, 0], R = f(X W_l1 + u b_l1)"
    x = sp.Symbol("x", real=True)
    zero_lemmas = [
        Chain("ReLU(0) = 0", sp.Max(x, 0).subs(x, 0), [Step(sp.Integer(0), "max(0, 0)")]),
        Chain(
            "GELU(0) = 0", (x * (1 + sp.erf(x / sp.sqrt(2))) / 2).subs(x, 0), [Step(sp.Integer(0), "0 (1 + erf 0) / 2")]
        ),
        Chain("SiLU(0) = 0", (x / (1 + sp.exp(-x))).subs(x, 0), [Step(sp.Integer(0), "0 / (1 + e^0)")]),
    ]
    out = Chain(
        "MLP output",
        BlockMatrix([[R, Z(s, ph - p)]]) * BlockMatrix([[W2], [M2]]) + u * b2,
        [
            Step(R * W2 + u * b2, "block product with a zero block"),
        ],
        "= MLP(X): any activation with f(0) = 0, any M_l2",
    )
    return [pre] + zero_lemmas + [out]


def _add_heads_chains() -> list[Chain]:
    H, H2, WO, MO = M("H", s, E * v), M("H'", s, v), M("W_O", E * v, h), M("M_O", v, h)
    return [
        Chain(
            "MHA output",
            BlockMatrix([[H, H2]]) * BlockMatrix([[WO], [MO]]),
            [
                Step(H * WO + H2 * MO, "block product"),
                Step(H * WO, "M_O = 0", {MO: Z(v, h)}),
            ],
            "H = [H_1 ... H_E] is unchanged (its parameters are); so MHA^(X) = MHA(X) for any new W_Q, W_K, W_V",
        )
    ]


def _heads_chains() -> list[Chain]:
    A, WV, MV = M("A", s, s), M("W_V", h, v), M("M_V", h, vh - v)
    Hr, Wr, WO, MO = M("H_r", s, vr), M("W_r", vr, h), M("W_O", v, h), M("M_O", vh - v, h)
    return [
        Chain(
            "head output",
            A * (X * BlockMatrix([[WV, MV]])),
            [
                Step(BlockMatrix([[A * X * WV, A * X * MV]]), "block product"),
            ],
            "A = softmax(X W_Q (X W_K)^T / sqrt(k)) is unchanged (W_Q, W_K are)",
        ),
        Chain(
            "MHA output",
            BlockMatrix([[Hr, A * X * WV, A * X * MV]]) * BlockMatrix([[Wr], [WO], [MO]]),
            [
                Step(Hr * Wr + A * X * WV * WO + A * X * MV * MO, "block product"),
                Step(Hr * Wr + A * X * WV * WO, "M_O = 0", {MO: Z(vh - v, h)}),
                Step(BlockMatrix([[Hr, A * X * WV]]) * BlockMatrix([[Wr], [WO]]), "block product, read backwards"),
            ],
            "H_r, W_r: the other heads' outputs and rows of W_O; = MHA(X) for any M_V",
        ),
    ]


def _attention_chains(scale: str) -> list[Chain]:
    WQ, MQ, WK, MK = M("W_Q", h, k), M("M_Q", h, kh - k), M("W_K", h, k), M("M_K", h, kh - k)
    c = sp.Symbol("c", positive=True)  # the scaling factor, c = sqrt(k^/k)
    if scale == "W_K":
        Q, K = X * BlockMatrix([[WQ, MQ]]), X * BlockMatrix([[c * WK, MK]])
        zero, name = {MK: Z(h, kh - k)}, "M_K = 0"
    else:
        Q, K = X * BlockMatrix([[c * WQ, MQ]]), X * BlockMatrix([[WK, MK]])
        zero, name = {MQ: Z(h, kh - k)}, "M_Q = 0"
    mixed = X * MQ * MK.T * X.T
    old = X * WQ * WK.T * X.T
    return [
        Chain(
            f"logits (scaling {scale} by c)",
            Q * K.T / sp.sqrt(kh),
            [
                Step(c / sp.sqrt(kh) * old + mixed / sp.sqrt(kh), "block product"),
                Step(c / sp.sqrt(kh) * old, name, zero),
                Step(old / sp.sqrt(k), "c = sqrt(k^/k), so c / sqrt(k^) = 1/sqrt(k)", {c: sp.sqrt(kh / k)}),
            ],
            "= (X W_Q)(X W_K)^T / sqrt(k): equal logits give equal (masked) softmax weights; W_V is unchanged, "
            "so the head output is",
        )
    ]


def _hidden_chains(with_eps: bool) -> list[Chain]:
    I_, MI, P, MP = M("I", s, h), M("M_I", s, hh - h), M("P", s, h), M("M_P", s, hh - h)
    Zs = Z(s, hh - h)
    R, G, G2 = M("R", s, s), M("G", h, h), M("G'", hh - h, hh - h)
    q, eps = sp.symbols("q epsilon", positive=True)
    epsh = sp.Symbol("epsilonhat", positive=True)
    c = sp.sqrt(h / hh)
    chains = [
        Chain(
            "input",
            BlockMatrix([[I_, MI]]) + BlockMatrix([[P, MP]]),
            [
                Step(BlockMatrix([[I_ + P, MI + MP]]), "block sum"),
                Step(BlockMatrix([[I_ + P, Zs]]), "M_I = 0, M_P = 0", {MI: Zs, MP: Zs}),
            ],
            "X^_1 = [X_1, 0]; induction hypothesis: X^_n = [X_n, 0]",
        ),
        Chain(
            "row sums of squares",
            BlockMatrix([[X, Zs]]) * BlockMatrix([[X, Zs]]).T,
            [
                Step(X * X.T, "block product"),
            ],
            "so the i-th sum of squares q_i = (X X^T)_ii is the same over h^ entries as over h",
        ),
    ]
    if with_eps:
        chains.append(
            Chain(
                "inverse RMS (eps^ = eps h/h^)",
                1 / sp.sqrt(q / hh + eps * h / hh),
                [
                    Step(
                        sp.sqrt(hh / h) / sp.sqrt(q / h + eps),
                        "factor h/h^ out of the root (a, b > 0: sqrt(a b) = sqrt(a) sqrt(b))",
                    ),
                ],
                "R^ = sqrt(h^/h) R with R = diag(1/sqrt(q_i/h + eps))",
            )
        )
        chains.append(
            Chain(
                "only if: the rescaled epsilon is forced",
                sp.Eq(c**2 * (q / h + eps), q / hh + epsh),
                [
                    Step(
                        (sp.Eq(c**2 * (q / h + eps), q / hh + epsh), epsh, eps * h / hh),
                        "Norm^ = Norm for all X iff c^2 (q/h + eps) = q/h^ + eps^ for all q; unique solution",
                        kind="iff",
                    ),
                ],
                "eps^ = eps h / h^; any other eps^ changes the norm of every row (see the entry-level refutation)",
            )
        )
    else:
        chains.append(
            Chain(
                "inverse RMS",
                1 / sp.sqrt(q / hh),
                [
                    Step(1 / (c * sp.sqrt(q / h)), "sqrt(a b) = sqrt(a) sqrt(b) for a, b > 0"),
                ],
                "R^ = sqrt(h^/h) R with R = diag(1/sqrt(q_i/h))",
            )
        )
    chains += [
        Chain(
            "norm",
            (1 / c) * R * BlockMatrix([[X, Zs]]) * BlockDiagMatrix(c * G, G2),
            [
                Step(BlockMatrix([[R * X * G, Z(s, hh - h)]]), "block product, sqrt(h^/h) sqrt(h/h^) = 1"),
            ],
            "Norm^([X, 0]) = [Norm(X), 0] for any new gains G' (G = diag(g), gains scaled by sqrt(h/h^))",
        ),
    ]
    Nm = M("N", s, h)
    for W, new, cols in (("W_Q", "M_Q", k), ("W_K", "M_K", k), ("W_V", "M_V", v), ("W_l1", "M_l1", p)):
        chains.append(
            Chain(
                f"projection {W}",
                BlockMatrix([[Nm, Zs]]) * BlockMatrix([[M(W, h, cols)], [M(new, hh - h, cols)]]),
                [
                    Step(Nm * M(W, h, cols), "block product with a zero block"),
                ],
                f"any {new}",
            )
        )
    H, WO, MO = M("H", s, E * v), M("W_O", E * v, h), M("M_O", E * v, hh - h)
    Rm, W2, M2, b2, mb2 = M("R", s, p), M("W_l2", p, h), M("M_l2", p, hh - h), M("b_l2", 1, h), M("m_b_l2", 1, hh - h)
    Y, Wout, Mout = M("Y", s, h), M("W_out", h, o), M("M_out", hh - h, o)
    chains += [
        Chain(
            "MHA output",
            H * BlockMatrix([[WO, MO]]),
            [
                Step(BlockMatrix([[H * WO, H * MO]]), "block product"),
                Step(BlockMatrix([[H * WO, Zs]]), "M_O = 0", {MO: Z(E * v, hh - h)}),
            ],
            "H = [H_1 ... H_E] is unchanged by the projection lemmas",
        ),
        Chain(
            "MLP output",
            Rm * BlockMatrix([[W2, M2]]) + u * BlockMatrix([[b2, mb2]]),
            [
                Step(BlockMatrix([[Rm * W2 + u * b2, Rm * M2 + u * mb2]]), "block product"),
                Step(
                    BlockMatrix([[Rm * W2 + u * b2, Zs]]), "M_l2 = 0, m_b_l2 = 0", {M2: Z(p, hh - h), mb2: Z(1, hh - h)}
                ),
            ],
            "R = f(Norm(X') W_l1 + u b_l1) is unchanged by the projection lemma",
        ),
        Chain(
            "residual",
            BlockMatrix([[X, Zs]]) + BlockMatrix([[Y, Zs]]),
            [
                Step(BlockMatrix([[X + Y, Zs]]), "block sum"),
            ],
            "X^'_n = [X'_n, 0] and X^_{n+1} = [X_{n+1}, 0]: the induction step",
        ),
        Chain(
            "output",
            BlockMatrix([[X, Zs]]) * BlockMatrix([[Wout], [Mout]]),
            [
                Step(X * Wout, "block product with a zero block"),
            ],
            "Output^ = Output for any new rows M_out",
        ),
    ]
    return chains


def _add_layer_chains() -> list[Chain]:
    H, WO = M("H", s, E * v), M("W_O", E * v, h)
    Rm, W2, b2 = M("R", s, p), M("W_l2", p, h), M("b_l2", 1, h)
    return [
        Chain(
            "attention branch",
            X + H * WO,
            [Step(X, "W_O = 0", {WO: Z(E * v, h)})],
            "X' = X + MHA(Norm(X)) = X for any W_Q, W_K, W_V, gains",
        ),
        Chain(
            "MLP branch",
            X + Rm * W2 + u * b2,
            [Step(X, "W_l2 = 0, b_l2 = 0", {W2: Z(p, h), b2: Z(1, h)})],
            "X_next = X' + MLP(Norm(X')) = X' for any W_l1, b_l1, gains: the new layer is the identity",
        ),
    ]


def chains_for(theorem: str, variant: str = "paper") -> list[Chain]:
    """The (unchecked) chains of one theorem; ``variant``: "paper", "alt" (mlp: M_l1, m_b_l1;
    attention: M_Q with W_Q scaled)."""
    if theorem == "mlp":
        return _mlp_chains(variant == "alt")
    if theorem == "add_heads":
        return _add_heads_chains()
    if theorem == "heads":
        return _heads_chains()
    if theorem == "attention":
        return _attention_chains("W_Q" if variant == "alt" else "W_K")
    if theorem == "hidden":
        return _hidden_chains(False)
    if theorem == "eps":
        return _hidden_chains(True)
    if theorem == "add_layer":
        return _add_layer_chains()
    raise ValueError(f"theorem: no chains for {theorem!r}")


# the constraint sets each chain variant assumes: theorem -> [(variant, zero, scale)]
CHAIN_SETS = {
    "mlp": [("paper", {"M_l2"}, set()), ("alt", {"M_l1", "m_b_l1"}, set())],
    "add_heads": [("paper", {"M_O"}, set())],
    "heads": [("paper", {"M_O"}, set())],
    "attention": [("paper", {"M_K"}, {"W_K"}), ("alt", {"M_Q"}, {"W_Q"})],
    "hidden": [("paper", {"M_I", "M_P", "M_O", "M_l2", "m_b_l2"}, {"g"})],
    "eps": [("paper", {"M_I", "M_P", "M_O", "M_l2", "m_b_l2"}, {"g", "eps"})],
    "add_layer": [("paper", {"W_O", "W_l2", "b_l2"}, set())],
}


def prove_chains(theorem: str, variant: str = "paper") -> list[Chain]:
    """Build and check every step of a theorem's chains.

    A step may only assume what its variant's constraint set grants (``CHAIN_SETS``): a block
    set to zero must be one of the variant's zero blocks, and a non-zero substitution (the
    ``sqrt(k^/k)`` factor) needs a scaling in the set. A step that assumes more is marked
    not proved, whatever its algebra says.
    """
    zero, scale = next((z, sc) for v, z, sc in CHAIN_SETS[theorem] if v == variant)
    chains = [check_chain(c) for c in chains_for(theorem, variant)]
    for c in chains:
        for st in c.steps:
            for key, value in st.assume.items():
                is_zero = isinstance(value, ZeroMatrix) or value == 0
                if (is_zero and str(key) not in zero) or (not is_zero and not scale):
                    st.ok = False
                    st.detail = (
                        f"assumes {key} = {value}, which the constraint set {sorted(zero)} / scale "
                        f"{sorted(scale)} does not grant; " + st.detail
                    )
    return chains
