"""Block checks of :mod:`fpt_ref.certify`: one base layer inside one grown layer, an inserted
identity layer, and the model-wide tensors, under the composed rules of docs/certify.md.

Every check compares stored values exactly: a copied block bit for bit, a zero block entry by
entry (``-0.0`` is zero), a scaled block against ``old x factor`` (bit-equal to the product in
the model's dtype, or at most :data:`SCALED_ULPS` ulps from the exact product), a mean block
against the row mean within :func:`fpt_ref.audit` 's bound, a free block for finiteness.

Where several constraint sets make one expansion exact (:func:`fpt_ref.blocks.constraint_sets`),
each is tried at its place (a layer for the MLP, a key/value group for keys and values, a new
head or group for added heads, an inserted layer) and the first that holds is recorded; when
none holds, the findings of the set that came closest (the fewest offending entries) are
reported, with every set listed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..audit import AuditReport, Finding, _check_mean
from ..blocks import Arch, constraint_sets
from ..model import Layer
from ..names import KV_KINDS, LAYER_KINDS, tensor_name
from ..paper import expansion
from ..tolerance import scaling_rounding
from ..xp import to_numpy

#: a scaled block that is not the product in the model's dtype may lie this many ulps (of that
#: dtype, per entry) from the exact product ``old x factor``: room for another tool's order of
#: operations (a factor rounded first, or computed in another precision)
SCALED_ULPS = 1.0
#: each further growth step of the same size (``steps`` > 1) multiplies the stored block by
#: another rounded factor (relative error <= u) and rounds the product (<= u): at most 2u more
#: relative deviation from the exact product, which is less than 2 ulps of the result
STEP_ULPS = 2.0


def scaled_allowance(steps: int) -> float:
    """Ulps a scaled block may lie from the exact product after ``steps`` growth steps of its size."""
    return SCALED_ULPS + STEP_ULPS * (int(steps) - 1)


@dataclass(frozen=True)
class Context:
    """What every check of one certification shares.

    ``writer`` is how the residual stream's writers fill their new columns (``"zero"`` for
    RMSNorm, ``"mean"`` for LayerNorm: :func:`fpt_ref.blocks.constraint_sets` of ``hidden``);
    ``beta_zero`` / ``out_zero``: whether new LayerNorm-bias entries / new ``W_out`` rows must
    be zero; ``steps``: the most growth steps one size took (:func:`scaled_allowance`); ``rope_half``: RoPE's rotate-half layout (old key dims split around the new ones).
    """

    dtype: np.dtype
    arch: Arch
    h: int
    hn: int
    writer: str = "zero"
    beta_zero: bool = False
    out_zero: bool = False
    steps: int = 1

    @property
    def rope_half(self) -> bool:
        return self.arch.positions == "rope" and self.arch.rope_layout == "half"


def host(a):
    """``a`` as a NumPy array (a CuPy array is copied to the host); ``None`` stays ``None``."""
    return None if a is None else np.asarray(to_numpy(a))


def _fmt_axis(spec, size: int) -> str:
    if isinstance(spec, slice):
        a, b, _ = spec.indices(size)
        return f"{a}:{b}"
    idx = [int(i) for i in spec]
    if not idx:
        return "0:0"
    runs, start, prev = [], idx[0], idx[0]
    for i in idx[1:]:
        if i != prev + 1:
            runs.append(f"{start}:{prev + 1}")
            start = i
        prev = i
    runs.append(f"{start}:{prev + 1}")
    return "+".join(runs)


def where(arr, idx, block: str = "") -> str:
    """``[0:8, 2:4+6:8] (M_K)``: a region of ``arr`` and its block name."""
    text = "[" + ", ".join(_fmt_axis(s, d) for s, d in zip(idx, arr.shape)) + "]"
    return f"{text} ({block})" if block else text


def _as_slice(spec, size: int):
    """An index array of consecutive increasing indices within an axis of ``size`` as the equal
    slice (a view, not a copy); anything else as it is (out-of-range indices still raise)."""
    if isinstance(spec, slice):
        return spec
    a = np.asarray(spec)
    run = a.ndim == 1 and a.size > 0 and a.dtype.kind in "iu" and 0 <= int(a[0]) and int(a[-1]) < size
    if run and bool(np.all(np.diff(a.astype(np.int64)) == 1)):
        return slice(int(a[0]), int(a[-1]) + 1)
    return spec


def take(arr, idx):
    """The region ``idx`` (one slice or index array per axis) of ``arr``: a view when every axis
    is a slice or a run of consecutive indices, else a copy."""
    idx = tuple(_as_slice(s, d) for s, d in zip(idx, arr.shape))
    if all(isinstance(s, slice) for s in idx):
        return arr[tuple(idx)]
    axes = [np.arange(d)[s] if isinstance(s, slice) else np.asarray(s, dtype=np.intp) for s, d in zip(idx, arr.shape)]
    return arr[np.ix_(*axes)]


def _size(arr, idx) -> int:
    n = 1
    for s, d in zip(idx, arr.shape):
        n *= len(range(*s.indices(d))) if isinstance(s, slice) else len(s)
    return n


def same_bits(a, b) -> bool:
    """Bit-equal arrays (same shape and dtype)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.strides == b.strides and a.__array_interface__["data"][0] == b.__array_interface__["data"][0]:
        return True  # the same bytes
    from ..hf.files import same_uint_bits

    bits = np.dtype(f"u{a.dtype.itemsize}")  # a view of any strides: no copy of either array
    return same_uint_bits(a.view(bits), b.view(bits))


def set_text(zero, scalings=(), mean=()) -> str:
    out = "{" + ", ".join(sorted(zero)) + "}"
    if scalings:
        out += " with " + ", ".join(sorted(scalings)) + " scaled"
    if mean:
        out += " and {" + ", ".join(sorted(mean)) + "} the row mean"
    return out


@dataclass
class Checker:
    """Findings of one part of the certification (a layer, the model-wide tensors).

    ``copy_failed`` is set when a copied block differs (the part does not hold the base's
    values at all, as opposed to a violated constraint): the layer alignment weighs it.
    """

    ctx: Context
    findings: list = field(default_factory=list)
    blocks: int = 0
    rounding: float = 0.0
    sets: list = field(default_factory=list)
    copy_failed: bool = False
    bad: int = 0  # offending entries: which constraint set came closest
    covered: list = field(default_factory=list)  # (tensor, shape, index) of every region checked

    def _cover(self, t: str, arr, idx) -> None:
        self.covered.append((t, tuple(arr.shape), idx))

    def fail(self, tensor: str, block: str, reason: str, copy: bool = False, entries: int = 1) -> None:
        self.findings.append(Finding(tensor, reason, block))
        self.copy_failed |= copy
        self.bad += entries

    def merge(self, other: Checker) -> None:
        self.findings += other.findings
        self.blocks += other.blocks
        self.rounding = max(self.rounding, other.rounding)
        self.sets += other.sets
        self.copy_failed |= other.copy_failed
        self.bad += other.bad
        self.covered += other.covered

    # ---- one block ----------------------------------------------------------------------
    def copied(self, t: str, arr, idx, old, src: str, block: str) -> None:
        if _size(arr, idx) == 0:
            return
        self.blocks += 1
        self._cover(t, arr, idx)
        part = take(arr, idx)
        if part.shape != old.shape:
            self.fail(t, where(arr, idx, block), f"holds {list(part.shape)}, base {src} is {list(old.shape)}", True)
        elif not same_bits(part, old):
            n = int(np.sum(part != old)) or int(part.size)  # bit-level only differences (-0.0): count all
            self.fail(
                t,
                where(arr, idx, block),
                f"copied block differs from base {src} in {n} of {part.size} entries",
                True,
                n,
            )

    def scaled(self, t: str, arr, idx, old, factor: float, src: str, block: str) -> None:
        """``old x factor``: the product in the model's dtype, or within :func:`scaled_allowance` ulps of the
        exact product."""
        if _size(arr, idx) == 0:
            return
        if factor == 1.0:
            return self.copied(t, arr, idx, old, src, block)
        self.blocks += 1
        self._cover(t, arr, idx)
        part = take(arr, idx)
        if part.shape != old.shape:
            self.fail(t, where(arr, idx, block), f"holds {list(part.shape)}, base {src} is {list(old.shape)}", True)
            return
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # far off: inf ulps
            ulps = scaling_rounding(old, part, factor)
        allowed = scaled_allowance(self.ctx.steps)
        if same_bits(part, old * self.ctx.dtype.type(factor)) or ulps <= allowed:
            self.rounding = max(self.rounding, ulps)
            return
        copied = same_bits(part, old)
        why = "is base " + src + " unscaled" if copied else f"lies up to {ulps:.3g} ulp from the exact product"
        if not copied and ulps < 64:  # rounding-sized: perhaps more steps than allowed
            why += " (a size grown in several steps rounds once per step: give their number, steps)"
        self.fail(
            t,
            where(arr, idx, block),
            f"scaled block must be base {src} x {factor!r} (within {allowed:g} ulp for {self.ctx.steps} growth "
            f"step(s) of this size); it {why}",
            entries=int(np.sum(part != old * self.ctx.dtype.type(factor))),
        )

    def zero(self, t: str, arr, idx, block: str, why: str = "") -> bool:
        if _size(arr, idx) == 0:
            return True
        self.blocks += 1
        self._cover(t, arr, idx)
        part = take(arr, idx)
        nz = int(np.count_nonzero(part))
        if nz:
            big = float(np.max(np.abs(part)))
            self.fail(
                t,
                where(arr, idx, block),
                f"zero block holds {nz} non-zero entries (largest {big:.3g}){why}",
                entries=nz,
            )
            return False
        return True

    def free(self, t: str, arr, idx, block: str) -> None:
        if _size(arr, idx) == 0:
            return
        self.blocks += 1
        self._cover(t, arr, idx)
        part = take(arr, idx)
        if not np.all(np.isfinite(part)):
            self.fail(t, where(arr, idx, block), "free block holds non-finite values (inf x 0 is NaN, not 0)")

    def free_unchosen(self, regions: dict, chosen) -> None:
        """The new blocks of ``regions`` that the chosen set (``(zero, scalings)`` or ``None``) leaves free."""
        for blk, regs in regions.items():
            if chosen is None or blk not in chosen[0]:
                for t, arr, idx in regs:
                    self.free(t, arr, idx, blk)

    def mean(self, t: str, arr, idx, old, block: str) -> None:
        """Every entry of the region the row mean of ``old`` (same rows), audit's bound."""
        if _size(arr, idx) == 0:
            return
        self.blocks += 1
        self._cover(t, arr, idx)
        rep = AuditReport()
        _check_mean(rep, t, take(arr, idx), old, where(arr, idx, block), self.ctx.dtype)
        for f in rep.findings:
            zero = "" if np.count_nonzero(take(arr, idx)) else " (it is zero: zero padding, not mean padding)"
            self.fail(
                t,
                f.block,
                f.reason + zero + "; LayerNorm hidden growth needs the row mean (mean padding)",
                entries=int(take(arr, idx).size),
            )

    # ---- composed rules -------------------------------------------------------------------
    def writer(self, t: str, arr, rows, block: str) -> None:
        """The new hidden columns of a stream writer ``arr`` [R, h^] (or a vector [h^]) on ``rows``."""
        h, hn = self.ctx.h, self.ctx.hn
        if hn == h:
            return
        idx: tuple
        if arr.ndim == 1:
            idx, old = (slice(h, hn),), arr[:h]
        else:
            idx, old = (rows, slice(h, hn)), take(arr, (rows, slice(0, h)))
        if self.ctx.writer == "mean":
            self.mean(t, arr, idx, old, block)
        else:
            self.zero(t, arr, idx, block, "; hidden growth needs the new columns of every stream writer zero")

    def gain(self, t: str, arr, old, src: str) -> None:
        """A norm gain: old entries x sqrt(h/h^), new entries free."""
        h, hn = self.ctx.h, self.ctx.hn
        self.scaled(t, arr, (slice(0, h),), old, float(np.sqrt(h / hn)) if hn != h else 1.0, src, "g")
        self.free(t, arr, (slice(h, hn),), "m_g")

    def beta(self, t: str, arr, old, src: str) -> None:
        """A LayerNorm bias: old entries copied, new entries zero (hidden growth)."""
        if arr is None:
            return
        h, hn = self.ctx.h, self.ctx.hn
        self.copied(t, arr, (slice(0, h),), old, src, "beta")
        if self.ctx.beta_zero:
            self.zero(t, arr, (slice(h, hn),), "m_beta", "; new LayerNorm bias entries must be zero")
        else:
            self.free(t, arr, (slice(h, hn),), "m_beta")

    def choose(
        self, op: str, place: str, regions: dict, extra=None, note: str = ""
    ) -> tuple[frozenset, frozenset] | None:
        """The first constraint set of ``op`` (:func:`fpt_ref.blocks.constraint_sets`) that holds.

        ``regions``: block name -> ``[(tensor, array, index), ...]`` of the new blocks at this
        place; a set applies when at least one block it names is here, and holds when all of
        them are zero and ``extra(checker, zero, scalings)`` (the scalings and copies the set
        implies) finds nothing. Returns ``(zero, scalings)`` of the set, or ``None`` (the
        closest set's findings recorded).
        """
        sets = constraint_sets(op, self.ctx.arch)
        tried = []
        for zero, scalings, _mean in sets:
            named = sorted(b for b in zero if regions.get(b))
            if not named:
                continue
            sub = Checker(self.ctx)
            for b in named:
                for t, arr, idx in regions[b]:
                    sub.zero(t, arr, idx, b)
            if extra is not None:
                extra(sub, zero, scalings)
            if not sub.findings:
                self.merge(sub)
                self.sets.append(f"{place}: {op} {set_text(zero, scalings)}")
                return zero, scalings
            tried.append(sub)
        listing = "; ".join(set_text(z, s) for z, s, _ in sets)
        row = expansion(op)
        if not tried:
            self.fail(place, "", f"no constraint set of {row.theorem} ({op}) applies here{note}")
            return None
        best = min(tried, key=lambda s: (s.bad, len(s.findings)))  # the fewest offending entries
        for f in best.findings:
            f.reason += f"; {row.theorem} ({op}) at {place}{note} needs one of: {listing}"
        self.merge(best)
        return None


# ---- one grown layer ----------------------------------------------------------------------


def _key_layout(kb: int, kg: int, half: bool):
    """Grown key dims of the old ones (in order) and of the new ones (docs/spec.md 4.2, RoPE)."""
    if half:
        old = np.concatenate([np.arange(kb // 2), kg // 2 + np.arange(kb // 2)])
    else:
        old = np.arange(kb)
    new = np.setdiff1d(np.arange(kg), old)
    return old, new


def check_layer(ctx: Context, B: Layer, G: Layer, nb: int, ng: int) -> tuple:
    """Audit base layer ``nb`` (``B``) inside grown layer ``ng`` (``G``).

    Returns ``(checker, info)``: the findings and the layer's inferred layout (``info``:
    sizes and the grown head of every base head, for the report).
    """
    c = Checker(ctx)
    h, hn = ctx.h, ctx.hn
    OH, NH, ALL = slice(0, h), slice(h, hn), slice(None)

    def t(kind, e=None):
        return tensor_name(kind, ng, e)

    def s(kind, e=None):
        return tensor_name(kind, nb, e)

    rb, rg, Gb, Gg = B.group_size, G.group_size, B.G, G.G
    info = {
        "base": nb,
        "grown": ng,
        "p": [B.p, G.p],
        "heads": [B.E, G.E],
        "kv_heads": [Gb, Gg],
        "head_map": {},
        "k": [],
        "v": [],
    }
    if G.p < B.p:
        c.fail(t("w_l1"), "", f"MLP width {G.p} is smaller than base layer {nb}'s {B.p}: it cannot contain it", True)
        return c, info
    if Gg < Gb or rg < rb:
        c.fail(
            t("w_q", 0),
            "",
            f"{G.E} heads in {Gg} key/value groups cannot contain base layer {nb}'s {B.E} heads in {Gb} groups",
            True,
        )
        return c, info
    old_heads = {g * rg + i: g * rb + i for g in range(Gb) for i in range(rb)}
    info["head_map"] = {int(e): int(b) for e, b in old_heads.items()}
    for e, eb in old_heads.items():
        hg, hb = G.heads[e], B.heads[eb]
        if hg.k < hb.k or hg.v < hb.v or (ctx.rope_half and (hg.k - hb.k) % 2):
            c.fail(
                t("w_q", e), "", f"key/value sizes {hg.k}/{hg.v} cannot contain base head {eb}'s {hb.k}/{hb.v}", True
            )
            return c, info

    # ---- attention: norm, heads, output bias ----
    c.gain(t("norm_mha"), host(G.norm_mha), host(B.norm_mha), s("norm_mha"))
    c.beta(t("norm_mha_b"), host(G.norm_mha_b), host(B.norm_mha_b), s("norm_mha_b"))
    for g in range(Gg):
        lead = g * rg
        if g >= Gb:
            _new_group(c, G, ng, lead, rg, t)
            continue
        _old_group(c, B, G, nb, ng, g, info, t, s)
    if G.b_o is not None:
        c.copied(t("b_o"), host(G.b_o), (OH,), host(B.b_o), s("b_o"), "b_O")
        c.writer(t("b_o"), host(G.b_o), None, "m_b_O")

    # ---- MLP ----
    c.gain(t("norm_mlp"), host(G.norm_mlp), host(B.norm_mlp), s("norm_mlp"))
    c.beta(t("norm_mlp_b"), host(G.norm_mlp_b), host(B.norm_mlp_b), s("norm_mlp_b"))
    p, pn = B.p, G.p
    OU, NU = slice(0, p), slice(p, pn)
    # [h^, p^], [p^], [h^, p^], [p^], [p^, h^], [h^] (absent ones None)
    w_gate, b_gate, w_l1, b_l1, w_l2, b_l2 = (
        host(getattr(G, k)) for k in ("w_gate", "b_gate", "w_l1", "b_l1", "w_l2", "b_l2")
    )
    if w_gate is not None:
        c.copied(t("w_gate"), w_gate, (OH, OU), host(B.w_gate), s("w_gate"), "W_gate")
        c.free(t("w_gate"), w_gate, (NH, ALL), "M_gate")
    if b_gate is not None:
        c.copied(t("b_gate"), b_gate, (OU,), host(B.b_gate), s("b_gate"), "b_gate")
    c.copied(t("w_l1"), w_l1, (OH, OU), host(B.w_l1), s("w_l1"), "W_l1")
    c.free(t("w_l1"), w_l1, (NH, ALL), "M_l1")
    if b_l1 is not None:
        c.copied(t("b_l1"), b_l1, (OU,), host(B.b_l1), s("b_l1"), "b_l1")
    c.copied(t("w_l2"), w_l2, (OU, OH), host(B.w_l2), s("w_l2"), "W_l2")
    dead = False
    if pn > p:
        regions = {
            "M_l1": [(t("w_l1"), w_l1, (OH, NU))],
            "m_b_l1": [] if b_l1 is None else [(t("b_l1"), b_l1, (NU,))],
            "M_l2": [(t("w_l2"), w_l2, (NU, OH))],
            "M_gate": [] if w_gate is None else [(t("w_gate"), w_gate, (OH, NU))],
            "m_b_gate": [] if b_gate is None else [(t("b_gate"), b_gate, (NU,))],
        }
        chosen = c.choose("mlp", f"layer {ng}", regions)
        c.free_unchosen(regions, chosen)
        dead = chosen is not None and "M_l2" not in chosen[0]
    if dead:  # the new units output zero: their rows of W_l2 are free, new hidden columns included
        c.writer(t("w_l2"), w_l2, np.arange(p), "M_l2")
        c.free(t("w_l2"), w_l2, (NU, NH), "M_l2")
    else:
        c.writer(t("w_l2"), w_l2, np.arange(pn), "M_l2")
    if b_l2 is not None:
        c.copied(t("b_l2"), b_l2, (OH,), host(B.b_l2), s("b_l2"), "b_l2")
        c.writer(t("b_l2"), b_l2, None, "m_b_l2")
    return c, info


def _old_group(c: Checker, B: Layer, G: Layer, nb: int, ng: int, g: int, info: dict, t, s) -> None:
    """Key/value group ``g`` of the base layer inside the grown one: keys, values, old and new query heads."""
    ctx = c.ctx
    h, hn = ctx.h, ctx.hn
    OH, NH, ALL = slice(0, h), slice(h, hn), slice(None)
    rb, rg = B.group_size, G.group_size
    lb, lg = g * rb, g * rg
    HB, HG = B.heads[lb], G.heads[lg]
    kb, kg, vb, vg = HB.k, HG.k, HB.v, HG.v
    info["k"].append([kb, kg])
    info["v"].append([vb, vg])
    queries = [(lg + i, lb + i) for i in range(rb)]
    kold, knew = _key_layout(kb, kg, ctx.rope_half and kg != kb)  # [k], [k^ - k] grown key dims
    w_k, b_k, w_v, b_v = host(HG.w_k), host(HG.b_k), host(HG.w_v), host(HG.b_v)  # [h^, k^], [k^], [h^, v^], [v^]
    factor = float(np.sqrt(kg / kb))

    # ---- keys and queries (attention expansion, per group) ----
    def keys(sub: Checker, scale: str) -> None:
        """The old key/query dims: the scaled side x sqrt(k^/k), the other copied."""
        f_k, f_q = (factor, 1.0) if scale == "W_K" else (1.0, factor)
        sub.scaled(t("w_k", lg), w_k, (OH, kold), host(HB.w_k), f_k, s("w_k", lb), "W_K,e")
        if b_k is not None:
            sub.scaled(t("b_k", lg), b_k, (kold,), host(HB.b_k), f_k, s("b_k", lb), "b_K,e")
        for e, eb in queries:
            Hg, Hb = G.heads[e], B.heads[eb]
            sub.scaled(t("w_q", e), host(Hg.w_q), (OH, kold), host(Hb.w_q), f_q, s("w_q", eb), "W_Q,e")
            if Hg.b_q is not None:
                sub.scaled(t("b_q", e), host(Hg.b_q), (kold,), host(Hb.b_q), f_q, s("b_q", eb), "b_Q,e")

    k_regions = {
        "M_K": [(t("w_k", lg), w_k, (OH, knew))],
        "m_b_K": [] if b_k is None else [(t("b_k", lg), b_k, (knew,))],
        "M_Q": [(t("w_q", e), host(G.heads[e].w_q), (OH, knew)) for e, _ in queries],
        "m_b_Q": [(t("b_q", e), host(G.heads[e].b_q), (knew,)) for e, _ in queries if G.heads[e].b_q is not None],
    }
    place = f"layer {ng}, " + (f"head {lg}" if rg == 1 else f"group {g} (heads {lg}..{lg + rg - 1})")
    if kg == kb:
        keys(c, "W_K")
    else:
        chosen = c.choose("attention", place, k_regions, extra=lambda sub, z, sc: keys(sub, next(iter(sc))))
        c.free_unchosen(k_regions, chosen)
    c.free(t("w_k", lg), w_k, (NH, ALL), "M_K")
    for e, _ in queries:
        c.free(t("w_q", e), host(G.heads[e].w_q), (NH, ALL), "M_Q")

    # ---- values and outputs (heads expansion, per group) ----
    OV, NV = slice(0, vb), slice(vb, vg)
    c.copied(t("w_v", lg), w_v, (OH, OV), host(HB.w_v), s("w_v", lb), "W_V,e")
    if b_v is not None:
        c.copied(t("b_v", lg), b_v, (OV,), host(HB.b_v), s("b_v", lb), "b_V,e")
    c.free(t("w_v", lg), w_v, (NH, ALL), "M_V")
    for e, eb in queries:
        c.copied(t("w_o", e), host(G.heads[e].w_o), (OV, OH), host(B.heads[eb].w_o), s("w_o", eb), "W_O,e")
    dead = False
    if vg > vb:
        v_regions = {
            "M_O": [(t("w_o", e), host(G.heads[e].w_o), (NV, OH)) for e, _ in queries],
            "M_V": [(t("w_v", lg), w_v, (OH, NV))],
            "m_b_V": [] if b_v is None else [(t("b_v", lg), b_v, (NV,))],
        }
        chosen = c.choose("heads", place, v_regions)
        c.free_unchosen(v_regions, chosen)
        dead = chosen is not None and "M_O" not in chosen[0]
    for e, _ in queries:
        w_o = host(G.heads[e].w_o)  # [v^, h^]
        if dead:  # the new value columns are zero: their rows of W_O are free
            c.writer(t("w_o", e), w_o, np.arange(vb), "M_O")
            c.free(t("w_o", e), w_o, (NV, NH), "M_O")
        else:
            c.writer(t("w_o", e), w_o, np.arange(vg), "M_O")

    # ---- new query heads within the group (head addition, grouped layers) ----
    for e in range(lg + rb, lg + rg):
        _new_heads(c, G, ng, [e], lead_is_new=False, t=t)


def _new_group(c: Checker, G: Layer, ng: int, lead: int, r: int, t) -> None:
    """A whole new key/value group (or one new head of an ungrouped layer)."""
    _new_heads(c, G, ng, list(range(lead, lead + r)), lead_is_new=True, t=t)


def _new_heads(c: Checker, G: Layer, ng: int, heads: list, lead_is_new: bool, t) -> None:
    """New query heads (all of one new group, or one inside an old group): head addition's sets."""
    ALL = slice(None)
    h = c.ctx.h
    lead = heads[0]
    HL = G.heads[lead]
    regions: dict[str, list] = {"M_O": [(t("w_o", e), host(G.heads[e].w_o), (ALL, ALL)) for e in heads]}
    if lead_is_new:
        regions["W_V_new"] = [(t("w_v", lead), host(HL.w_v), (slice(0, h), ALL))]
        regions["b_V_new"] = [] if HL.b_v is None else [(t("b_v", lead), host(HL.b_v), (ALL,))]
    place = (
        f"layer {ng}, new head {lead}" if len(heads) == 1 else f"layer {ng}, new group of heads {heads[0]}..{heads[-1]}"
    )
    chosen = c.choose("add_heads", place, regions)
    c.free_unchosen(regions, chosen)
    for e in heads:
        H = G.heads[e]
        c.free(t("w_q", e), host(H.w_q), (ALL, ALL), "W_Q_new")
        if H.b_q is not None:
            c.free(t("b_q", e), host(H.b_q), (ALL,), "b_Q_new")
    if lead_is_new:
        c.free(t("w_k", lead), host(HL.w_k), (ALL, ALL), "W_K_new")
        c.free(t("w_v", lead), host(HL.w_v), (slice(h, None), ALL), "M_V")
        if HL.b_k is not None:
            c.free(t("b_k", lead), host(HL.b_k), (ALL,), "b_K_new")


# ---- an inserted layer --------------------------------------------------------------------


def layer_tensors(G: Layer, n: int) -> dict:
    """``{kind: [(name, array), ...]}`` of one layer (grouped keys and values once per group)."""
    out: dict = {}
    for kind in LAYER_KINDS:
        if getattr(G, kind) is not None:
            out.setdefault(kind, []).append((tensor_name(kind, n), host(getattr(G, kind))))
    for e, H in enumerate(G.heads):
        for kind in ("w_q", "w_k", "w_v", "w_o", "b_q", "b_k", "b_v"):
            if getattr(H, kind) is None or (kind in KV_KINDS and G.leader(e) != e):
                continue
            out.setdefault(kind, []).append((tensor_name(kind, n, e), host(getattr(H, kind))))
    return out


def check_identity(ctx: Context, G: Layer, ng: int) -> Checker:
    """Grown layer ``ng`` matches no base layer: it must be the identity.

    Either one of layer addition's sets holds on whole tensors (:func:`fpt_ref.blocks.constraint_sets`),
    or both branches are zero unit by unit (:func:`_zero_unit_by_unit`: layer addition followed
    by MLP and heads expansions of that layer under their other sets). When neither holds, the
    closest whole-tensor set is reported.
    """
    c = Checker(ctx)
    row = expansion("add_layer")
    by_kind = layer_tensors(G, ng)
    regions = {
        blk: [
            (name, arr, tuple(slice(None) for _ in arr.shape)) for kind in kinds for name, arr in by_kind.get(kind, [])
        ]
        for blk, kinds in row.tensors.items()
    }
    note = " (it matches no base layer, so it must be an identity layer)"
    probe = Checker(ctx)
    chosen = probe.choose("add_layer", f"layer {ng}", regions, note=note)
    if chosen is None and _zero_unit_by_unit(G):
        c.blocks += sum(len(items) for items in by_kind.values())
        c.sets.append(f"layer {ng}: add_layer with mlp/heads sets, unit by unit (every branch output zero)")
    else:
        c.merge(probe)
    zeroed = set() if chosen is None else {name for blk in chosen[0] for name, _, _ in regions.get(blk, [])}
    for kind, items in by_kind.items():
        for name, arr in items:
            if name not in zeroed:
                c.free(name, arr, tuple(slice(None) for _ in arr.shape), kind)
    return c


def _zero(a, axis=None):
    """Where ``a`` is zero along ``axis`` (all of it for ``None``); an absent tensor is zero."""
    if a is None:
        return True
    return ~np.any(host(a) != 0, axis=axis)


def _zero_unit_by_unit(G: Layer) -> bool:
    """Both branches of layer ``G`` output zero for every input, unit by unit.

    Attention: ``b_o`` zero, and every value column ``j`` of every head has its row of ``W_O``
    zero, or its column of ``W_V`` and entry of ``b_v`` zero (then the head's output column is
    zero: heads expansion's set ``{M_V, m_b_V}``). MLP: ``b_l2`` zero, and every unit ``u`` has
    its row of ``W_l2`` zero, or its column of ``W_l1`` and entry of ``b_l1`` zero, or (gated)
    its column of ``W_gate`` and entry of ``b_gate`` zero (``act(0) = 0``: MLP expansion's sets).
    """
    if not (np.all(_zero(G.b_o)) and np.all(_zero(G.b_l2))):
        return False
    for e, H in enumerate(G.heads):
        lead = G.heads[G.leader(e)]
        cols = _zero(lead.w_v, axis=0) & (_zero(lead.b_v, axis=None) if lead.b_v is None else host(lead.b_v) == 0)
        if not np.all(_zero(H.w_o, axis=1) | cols):
            return False
    units = _zero(G.w_l1, axis=0) & (True if G.b_l1 is None else host(G.b_l1) == 0)
    if G.w_gate is not None:
        units = units | (_zero(G.w_gate, axis=0) & (True if G.b_gate is None else host(G.b_gate) == 0))
    return bool(np.all(_zero(G.w_l2, axis=1) | units))


# ---- the model-wide tensors ---------------------------------------------------------------


def check_model_tensors(ctx: Context, base, grown) -> Checker:
    """``embed``, ``pos``, ``w_out`` and the final norm (docs/spec.md 2.5, 4.2)."""
    c = Checker(ctx)
    h, hn = ctx.h, ctx.hn
    OH, NH, ALL = slice(0, h), slice(h, hn), slice(None)
    for kind, block in (("embed", "M_I"), ("pos", "M_P")):
        arr = host(getattr(grown, kind))
        if arr is None:
            continue
        old = host(getattr(base, kind))
        c.copied(kind, arr, (ALL, OH), old, kind, "I" if kind == "embed" else "P")
        c.writer(kind, arr, np.arange(arr.shape[0]), block)
    if grown.w_out is not None:
        w_out = host(grown.w_out)
        c.copied("w_out", w_out, (OH, ALL), host(base.w_out), "w_out", "W_out")
        if ctx.out_zero:
            c.zero(
                "w_out", w_out, (NH, ALL), "M_out", "; LayerNorm without a final norm needs the new rows of W_out zero"
            )
        else:
            c.free("w_out", w_out, (NH, ALL), "M_out")
    if grown.final_norm is not None:
        c.gain("final_norm", host(grown.final_norm), host(base.final_norm), "final_norm")
        c.beta("final_norm_b", host(grown.final_norm_b), host(base.final_norm_b), "final_norm_b")
    return c
