"""Certify, without a manifest, that a grown model contains a base model and computes its function.

:func:`certify` infers how ``grown`` was made from ``base`` (hidden growth with the old stream
entries first; inserted layers anywhere, by a monotone alignment of base layers onto grown
layers; added heads and key/value groups; widened MLPs, values and keys, RoPE's layout
included), audits every block of ``grown`` under the composed rules of docs/certify.md, checks
the options (``norm_eps``, RoPE's ``theta``) and, when given, the Hugging Face configs
(:func:`fpt_ref.certify.config.check_configs`), and then compares both models' float64 forward
passes with :func:`fpt_ref.verify` under its derived tolerance.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from ..audit import Finding
from ..blocks import RECIPES, constraint_sets
from ..checks import check_int
from ..model import Model, convert, dims_summary, named_tensors
from .check import Checker, Context, check_identity, check_layer, check_model_tensors, host, same_bits, set_text
from .report import Certificate

#: the weights of the layer alignment (:func:`align_layers`): a base layer matched to a grown
#: layer that holds it with a violated constraint, or that does not hold its values at all;
#: a grown layer left unmatched that is not an identity layer
COST_CONSTRAINT, COST_NOT_HELD, COST_NOT_IDENTITY = 1, 3, 2


def _structure(base: Model, grown: Model) -> list:
    """Findings that stop the certification before any block (nothing to align)."""
    out = []
    a, b = base.arch.to_dict(), grown.arch.to_dict()
    changed = [f"{k} ({a[k]!r} -> {b[k]!r})" for k in a if k != "rope_theta" and a[k] != b[k]]
    if changed:
        out.append(Finding("arch", f"the architecture differs: {', '.join(changed)}"))
    if np.dtype(base.dtype) != np.dtype(grown.dtype):
        out.append(Finding("dtype", f"dtype changed from {np.dtype(base.dtype)} to {np.dtype(grown.dtype)}"))
    if base.causal != grown.causal:
        out.append(Finding("causal", f"causal changed from {base.causal} to {grown.causal}"))
    if grown.h < base.h:
        out.append(Finding("(hidden)", f"hidden size {grown.h} is smaller than the base's {base.h}"))
    if (base.embed is None) != (grown.embed is None):
        out.append(Finding("embed", "one model takes token ids and the other real-valued inputs"))
    elif base.vocab != grown.vocab:
        out.append(Finding("embed", f"vocabulary of {grown.vocab} tokens, the base has {base.vocab}"))
    if base.o != grown.o and not out:
        out.append(Finding("w_out", f"output size {grown.o}, the base has {base.o}"))
    if base.pos is not None and grown.pos is not None and base.pos.shape[0] != grown.pos.shape[0]:
        out.append(Finding("pos", f"{grown.pos.shape[0]} positions, the base has {base.pos.shape[0]}"))
    if base.pos is None and not out and grown.s_max < base.s_max:
        out.append(Finding("max_seq", f"max_seq {grown.s_max} is smaller than the base's {base.s_max}"))
    a_ = grown.arch
    if grown.h > base.h and a_.norm == "layer" and a_.tied and not a_.final_norm:
        (why,) = [r.refused for r in RECIPES if r.expansion == "hidden" and r.refused]
        out.append(Finding("(hidden)", f"no exact hidden growth: {why}"))
    if grown.N < base.N:
        out.append(Finding("(layers)", f"{grown.N} layers, fewer than the base's {base.N}"))
    return out


def _contexts(base: Model, grown: Model, steps: int) -> list:
    """One :class:`Context` per constraint set of hidden growth (:func:`fpt_ref.blocks.constraint_sets`)."""
    arch = grown.arch
    out = []
    for zero, scalings, mean in constraint_sets("hidden", arch):
        out.append(
            (
                Context(
                    dtype=np.dtype(grown.dtype),
                    arch=arch,
                    h=base.h,
                    hn=grown.h,
                    writer="mean" if "M_O" in mean else "zero",
                    beta_zero="m_beta" in zero,
                    out_zero="M_out" in zero,
                    steps=steps,
                ),
                set_text(zero, scalings, mean),
            )
        )
    return out


def align_layers(ctx: Context, base: Model, grown: Model) -> tuple:
    """Match base layers onto grown layers, in order, by dynamic programming.

    ``cost[i][j]`` is the least cost of explaining the first ``j`` grown layers by the first
    ``i`` base layers: a grown layer is either the next base layer (cost 0 when it holds it
    under every rule, :data:`COST_CONSTRAINT` when a constraint fails, :data:`COST_NOT_HELD`
    when it does not hold its values) or an inserted layer (0 when it is an identity layer,
    :data:`COST_NOT_IDENTITY` otherwise). Ties match a base layer to the earlier grown layer (of an
    original and its plain copy, the copy is the inserted layer). Returns ``(steps, checks)``:
    ``steps`` the chosen ``(base index or None, grown index)`` in grown order and ``checks``
    the :class:`Checker` of each.
    """
    return align(
        ctx,
        base.N,
        grown.N,
        lambda i: base.layers[i],
        lambda j: grown.layers[j],
        lambda i, j: holds_sample(ctx, base.layers[i], grown.layers[j]),
    )


def align(ctx: Context, Nb: int, Ng: int, base_layer, grown_layer, sample, pair=None, quick=None) -> tuple:
    """:func:`align_layers` on layers given by functions: ``base_layer(i)``, ``grown_layer(j)``
    (a :class:`~fpt_ref.model.Layer`), ``sample(i, j)`` (a necessary condition for grown layer
    ``j`` to hold base layer ``i``'s copied blocks, such as :func:`holds_sample`).

    Layers are asked for in grown order: every call for grown layer ``j`` comes before any
    for ``j + 1``, so a reader keeping one layer of each model reads each grown layer once
    (:mod:`fpt_ref.certify.stream`). ``pair(i, j)`` (default :func:`check_layer` on the two
    layers) and ``quick(j)`` (default :func:`not_identity` on grown layer ``j``) let a reader
    answer from the files.
    """
    if pair is None:

        def pair(i, j):
            return check_layer(ctx, base_layer(i), grown_layer(j), i, j)

    if quick is None:

        def quick(j):
            return not_identity(ctx, grown_layer(j))

    extra = Ng - Nb
    match: dict = {}
    ident: dict = {}

    def m(i, j):
        if not sample(i, j):
            return COST_NOT_HELD  # the full audit would find a copied block that differs
        if (i, j) not in match:
            match[(i, j)] = pair(i, j)
        c = match[(i, j)][0]
        return 0 if not c.findings else (COST_NOT_HELD if c.copy_failed else COST_CONSTRAINT)

    def s(j):
        if j not in ident:
            ident[j] = None if quick(j) else check_identity(ctx, grown_layer(j), j)
        return 0 if ident[j] is not None and not ident[j].findings else COST_NOT_IDENTITY

    INF = math.inf
    cost = [[INF] * (Ng + 1) for _ in range(Nb + 1)]
    back: dict = {}
    cost[0][0] = 0
    for j in range(1, Ng + 1):
        for i in range(max(0, j - extra), min(j, Nb) + 1):
            best, how = INF, None
            if i > 0 and cost[i - 1][j - 1] < INF:
                best, how = cost[i - 1][j - 1] + m(i - 1, j - 1), "match"
            if j - i >= 1 and cost[i][j - 1] < INF:
                c = cost[i][j - 1] + s(j - 1)
                if c <= best:  # ties: the later grown layer is the inserted one
                    best, how = c, "insert"
            cost[i][j], back[(i, j)] = best, how
    steps: list[tuple[int | None, int]] = []
    i, j = Nb, Ng
    while j > 0:
        if back[(i, j)] == "match":
            steps.append((i - 1, j - 1))
            i -= 1
        else:
            steps.append((None, j - 1))
        j -= 1
    steps.reverse()
    checks = []
    for bi, gj in steps:
        if bi is None:
            if ident.get(gj) is None:  # ruled out by not_identity: audited in full for the report
                ident[gj] = check_identity(ctx, grown_layer(gj), gj)
            checks.append((ident[gj], None))
        else:
            if (bi, gj) not in match:  # rejected by the sample: audit it in full for the report
                match[(bi, gj)] = pair(bi, gj)
            c, info = match[(bi, gj)]
            if c.copy_failed:
                _hint_reordered(Nb, pair, sample, bi, gj, c)
            checks.append((c, info))
    return steps, checks


def not_identity(ctx: Context, G) -> bool:
    """A cheap sufficient condition for grown layer ``G`` not to be an identity layer (then
    :func:`fpt_ref.certify.check.check_identity` has findings): MLP unit 0 writes to the stream.

    Sound where every constraint set of layer addition zeroes ``W_l2`` (llama, GPT-2, the
    paper's blocks): then an identity layer has row 0 of ``W_l2`` zero, or (unit by unit)
    column 0 of ``W_l1`` or of ``W_gate`` zero with its bias entry. Elsewhere it says ``False``.
    """

    def col(a):
        return None if a is None else host(a)[:, 0]

    def first(a):
        return None if a is None else host(a)[0]

    return unit0_writes(ctx, host(G.w_l2)[0], col(G.w_l1), first(G.b_l1), col(G.w_gate), first(G.b_gate))


def unit0_writes(ctx: Context, w_l2_row, w_l1_col, b_l1_0, w_gate_col, b_gate_0) -> bool:
    """:func:`not_identity` from MLP unit 0's entries: row 0 of ``W_l2``, column 0 of ``W_l1``
    and ``W_gate`` and entry 0 of their biases (``None`` where absent)."""
    if not all("W_l2" in zero for zero, _, _ in constraint_sets("add_layer", ctx.arch)):
        return False
    if not np.any(w_l2_row != 0):
        return False
    for w, b in ((w_l1_col, b_l1_0), (w_gate_col, b_gate_0)):
        if w is not None and not np.any(w != 0) and (b is None or b == 0):
            return False
    return True


def holds_sample(ctx: Context, B, G) -> bool:
    """A cheap necessary condition for grown layer ``G`` to hold base layer ``B``: the first row
    of ``W_l1`` and of ``W_l2`` (copied blocks under every expansion) are bit-equal on their old
    entries. When it fails, :func:`fpt_ref.certify.check.check_layer` would report a copied block
    that differs, so the alignment skips the full audit of such pairs."""
    if G.p < B.p:
        return False
    for kind, width in (("w_l1", B.p), ("w_l2", ctx.h)):
        old, new = host(getattr(B, kind))[0], host(getattr(G, kind))[0, :width]  # [width]
        if not same_bits(old, new):
            return False
    return True


def _hint_reordered(Nb: int, pair, sample, bi: int, gj: int, c: Checker) -> None:
    """A grown layer that does not hold its aligned base layer but another one: say so."""
    for other in range(Nb):
        if other == bi or not sample(other, gj):
            continue
        oc, _ = pair(other, gj)
        if not oc.copy_failed:
            f = c.findings[0]
            f.reason += f" (layer {gj} holds base layer {other}, not {bi}: layers reordered?)"
            return


def _order(grown: Model):
    names = {t: i for i, t in enumerate(named_tensors(grown))}
    late = {"norm_eps": 1, "rope_theta": 2, "(forward)": 9}

    def key(f: Finding):
        if f.tensor in names:
            return (1, names[f.tensor])
        if f.tensor.startswith("config"):
            return (3, 0)
        return (2, late[f.tensor]) if f.tensor in late else (0, 0)

    return key


U64 = 2.0**-53  # unit roundoff of float64, where the options live


def option_bounds(base: Model, grown: Model, ratio: Fraction, steps: int) -> tuple:
    """Relative rounding bounds of the rescaled options after ``steps`` growth steps of a size.

    ``norm_eps``: a step computes ``eps h / h^`` with two roundings (``<= 2u`` relative), so
    ``2 u steps``. ``rope_theta``: a step computes ``theta_i = theta_{i-1} ** (k_i / k_{i-1})``:
    the pow rounds (``<= 2u``), the rounded ratio moves the result by ``u ln(theta_i)``, and the
    previous error is raised to the power ``k_i / k_{i-1} >= 1``; unrolled over the steps,
    ``<= u steps R (2 + ln theta)`` with ``R = k^/k`` the whole ratio (docs/certify.md).
    """
    eps = 2 * U64 * steps
    theta = U64 * steps * float(ratio) * (2 + math.log(base.arch.rope_theta))
    return eps, theta


def check_options(base: Model, grown: Model, key_sizes: list, steps: int = 1) -> list:
    """``norm_eps`` (``eps x h/h^``) and RoPE's ``theta`` (``theta^(k^/k)``) within their rounding
    (:func:`option_bounds`), or unchanged (exactly) where their size did not grow.

    ``key_sizes``: ``[k, k^]`` of every base key/value group and the grown group holding it;
    ``steps``: the most growth steps one size took.
    """
    out = []
    ratios = {Fraction(kg, kb) for kb, kg in key_sizes}
    grew = {r for r in ratios if r != 1}
    r = next(iter(grew)) if len(grew) == 1 and len(ratios) == 1 else Fraction(1)
    eps_rel, theta_rel = option_bounds(base, grown, r, steps)
    exact = Fraction(base.norm_eps) * base.h / grown.h
    got = grown.norm_eps
    if grown.h == base.h:
        ok, within = got == base.norm_eps, "unchanged"
    else:
        ok = abs(Fraction(got) - exact) <= Fraction(eps_rel) * exact
        within = f"eps x h/h^ = {base.norm_eps!r} x {base.h}/{grown.h}, within {eps_rel:.2g} relative"
    if not ok:
        out.append(Finding("norm_eps", f"norm_eps is {got!r}, expected {float(exact)!r} ({within})"))
    if base.arch.positions != "rope":
        return out
    theta, got_t = base.arch.rope_theta, grown.arch.rope_theta
    if grew and len(ratios) > 1:
        out.append(
            Finding(
                "rope_theta",
                f"key sizes grew by different ratios ({', '.join(sorted(str(x) for x in ratios))}); RoPE's shared "
                "theta keeps the old frequencies of one ratio k^/k only",
            )
        )
        return out
    if not grew:
        if got_t != theta:
            out.append(Finding("rope_theta", f"rope_theta is {got_t!r}, expected {theta!r} (unchanged: no key grew)"))
        return out
    want = theta ** float(r)
    if not abs(got_t - want) <= theta_rel * want:
        out.append(
            Finding(
                "rope_theta",
                f"rope_theta is {got_t!r}, expected {want!r} (theta^(k^/k) = {theta!r}^{r}, within "
                f"{theta_rel:.2g} relative)",
            )
        )
    return out


def certify(
    base: Model,
    grown: Model,
    *,
    forward: bool = True,
    base_config: dict | None = None,
    grown_config: dict | None = None,
    steps: int = 1,
    batch: int = 4,
    seed: int = 0,
) -> Certificate:
    """Does ``grown`` contain ``base`` by the expansions of docs/spec.md, and compute its function?

    Parameters
    ----------
    base, grown : Model
        The original and the grown model (any array library; compared in NumPy).
    forward : bool
        Also run both models in float64 on inputs covering every token id and position
        (:func:`fpt_ref.verify`); ``False`` audits the blocks only.
    base_config, grown_config : dict, optional
        Hugging Face ``config.json`` contents, checked against the models and each other
        (:func:`fpt_ref.certify.config.check_configs`).
    steps : int
        The most growth steps any one size took (default 1): each step rounds a scaled block,
        ``norm_eps`` and RoPE's ``theta`` once more, and the allowances grow with it
        (:func:`fpt_ref.certify.check.scaled_allowance`, :func:`option_bounds`).
    batch, seed : int
        The random sequences of the forward check besides the covering set.

    Returns
    -------
    Certificate
        ``ok`` when every block, option and config field holds and the forward check passed.

    Examples
    --------
    >>> import fpt_ref
    >>> m = fpt_ref.init_model(h=4, p=8, n_heads=1, k=2, v=2, n_layers=2, out_dim=3, max_seq=4)
    >>> certify(m, fpt_ref.add_layer(fpt_ref.expand_hidden(m, 6), 1)).ok
    True
    """
    for name, m in (("base", base), ("grown", grown)):
        if not isinstance(m, Model):
            raise TypeError(f"{name}: expected an fpt_ref.Model, got {type(m).__name__}")
    steps = check_int("steps", steps, 1)
    cert, findings = audit(
        base,
        grown,
        lambda ctx: check_model_tensors(ctx, base, grown),
        lambda ctx: align_layers(ctx, base, grown),
        base_config=base_config,
        grown_config=grown_config,
        steps=steps,
    )
    if findings is None:
        return cert
    if forward:
        findings += _forward(cert, base, grown, batch, seed)
    cert.findings = sorted(findings, key=_order(grown))
    cert.ok = not cert.findings
    return cert


def audit(base: Model, grown: Model, model_check, layer_align, *, base_config=None, grown_config=None, steps=1):
    """The block audit of :func:`certify`: ``(certificate, findings)``, the findings unsorted and
    the verdict not yet set (``findings`` is ``None`` when the structure already fails: the
    certificate is then final).

    ``base`` and ``grown`` give the dimensions (their arrays are not read here);
    ``model_check(ctx)`` returns the :class:`Checker` of the model-wide tensors and
    ``layer_align(ctx)`` the layer alignment ``(steps, checks)`` (:func:`align_layers`), for
    each context of :func:`_contexts`.
    """
    cert = Certificate(base=dims_summary(base), grown=dims_summary(grown), hidden=[base.h, grown.h])
    cert.tensors = len(named_tensors(grown))
    cert.findings = _structure(base, grown)
    if cert.findings:
        return cert, None
    best = None
    for ctx, hidden_set in _contexts(base, grown, steps):
        top = Checker(ctx)
        top.merge(model_check(ctx))
        pairs, checks = layer_align(ctx)
        for c, _ in checks:
            top.merge(c)
        if best is None or (best[0].findings and not top.findings):
            best = (top, pairs, checks, hidden_set)
    assert best is not None
    top, pairs, checks, hidden_set = best
    cert.blocks, cert.scaled_rounding, cert.sets = top.blocks, top.rounding, list(top.sets)
    cert.covered = top.covered
    if grown.h != base.h:
        cert.sets.insert(0, f"model: hidden {hidden_set}")
    key_sizes = []
    for (bi, gj), (_, info) in zip(pairs, checks):
        if bi is None:
            cert.layers.append({"grown": gj, "base": None, "inserted": "identity"})
        else:
            key_sizes += info["k"]
            cert.layers.append(info)
    findings = top.findings + check_options(base, grown, key_sizes, steps)
    if base_config is not None or grown_config is not None:
        from .config import check_configs

        findings += check_configs(base_config, grown_config, base, grown, pairs)
    if cert.scaled_rounding > 0:
        cert.notes.append(
            f"scaled blocks lie up to {cert.scaled_rounding:.2g} ulp ({np.dtype(grown.dtype)}) from the exact product"
        )
    return cert, findings


def _forward(cert: Certificate, base: Model, grown: Model, batch: int, seed: int) -> list:
    """float64 forward of both models (:func:`fpt_ref.verify`); a finding when not preserved.

    float32 models whose scaled blocks are rounded (a factor that is not a power of two) are
    compared in float32, whose derived tolerance covers that rounding; in float64 it would
    not (the rounding is a change of parameters, not of arithmetic).
    """
    from ..verify import verify

    dt: type = np.float64
    if np.dtype(base.dtype) == np.float32 and cert.scaled_rounding > 0:
        dt = np.float32
        cert.notes.append("forward check in float32: the stored scaled blocks are rounded in float32")
    try:
        res = verify(convert(base, np, dt), convert(grown, np, dt), batch=batch, seed=seed)
    except ValueError as exc:
        return forward_not_run(cert, exc)
    keys = ("ok", "max_abs", "max_rel", "max_ulp", "tol_abs", "tol_ulp", "reason")
    cert.forward = {k: res[k] for k in keys}
    cert.forward["dtype"] = np.dtype(dt).name
    cert.forward["inputs"] = res["inputs"]
    return forward_findings(res)


def forward_not_run(cert: Certificate, exc: Exception) -> list:
    """A forward check that could not run: recorded in ``cert.forward``, and its finding."""
    cert.forward = {"ok": False, "error": str(exc)}
    return [Finding("(forward)", f"the forward check could not run: {exc}")]


def forward_findings(res: dict) -> list:
    """The finding of a forward check's figures (:func:`fpt_ref.verify`'s keys); none when it passed."""
    if res["ok"]:
        return []
    why = res["reason"] or (
        f"max error {res['max_abs']:.3g} ({res['max_ulp']:.3g} ulp) exceeds the derived tolerance "
        f"{res['tol_abs']:.3g} ({res['tol_ulp']:.3g} ulp)"
    )
    return [Finding("(forward)", f"outputs differ: {why}")]
