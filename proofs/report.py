r"""Running a set of claims and printing them: plain text, JSON, LaTeX, Markdown.

Chains are printed with the core's plain-text notation (:func:`proofs.core.text`: a block
row ``[A, B]``, a block column ``[A; B]``, a transpose ``A'``); in LaTeX block columns are
``\genfrac`` stacks in brackets, which both LaTeX (amsmath) and matplotlib's mathtext render.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field

import sympy as sp

from . import core as C
from .crosscheck import crosscheck_theorem
from .minimal import Search, drop_each, searches, sufficient_proofs
from .theorems import SIX, THEOREMS, Level, default_sizes, run_compose, run_theorem

_SIZE_TEX = {"hhat": r"\hat{h}", "phat": r"\hat{p}", "khat": r"\hat{k}", "vhat": r"\hat{v}", "eps": r"\epsilon"}


def _name_tex(name: str) -> str:
    m = re.fullmatch(r"layers\.(\d+)\.heads\.(\d+)\.w_([qkvo])", name)
    if m:
        return f"W^{{{m.group(3).upper()}}}_{{{m.group(1)},{m.group(2)}}}"
    m = re.fullmatch(r"layers\.(\d+)\.(norm_mha|norm_mlp|w_l1|b_l1|w_l2|b_l2)", name)
    if m:
        sym = {
            "norm_mha": "g^{MHA}",
            "norm_mlp": "g^{MLP}",
            "w_l1": "W^{l1}",
            "b_l1": "b^{l1}",
            "w_l2": "W^{l2}",
            "b_l2": "b^{l2}",
        }[m.group(2)]
        return f"{sym}_{{{m.group(1)}}}"
    if name in ("I", "pos", "w_out"):
        return {"I": "I", "pos": "P", "w_out": "W^{out}"}[name]
    return r"\mathrm{" + name.replace("_", r"\_").replace("^", "") + "}"


def _coef_tex(c) -> str:
    s = sp.latex(sp.sympify(c))
    for a, b in _SIZE_TEX.items():
        s = s.replace(a, b)
    return s


def tex(t) -> str:
    """LaTeX of a term (mathtext-compatible)."""
    if isinstance(t, C.Sym):
        return _name_tex(t.name)
    if isinstance(t, C.Ones):
        return r"\mathbf{1}"
    if isinstance(t, C.Zero):
        return "0"
    if isinstance(t, C.Cat):
        rows = [r" \; ".join(tex(b) for b in r) for r in t.blocks]

        def stack(rs):
            return rs[0] if len(rs) == 1 else rf"\genfrac{{}}{{}}{{0}}{{}}{{{rs[0]}}}{{{stack(rs[1:])}}}"

        if len(rows) == 1:
            return rf"\left[ {rows[0]} \right]"
        return rf"\genfrac{{[}}{{]}}{{0}}{{}}{{{rows[0]}}}{{{stack(rows[1:])}}}"
    if isinstance(t, C.Add):
        return " + ".join(tex(a) for a in t.args)
    if isinstance(t, C.Mul):
        body = " ".join(rf"\left( {tex(a)} \right)" if isinstance(a, C.Add) else tex(a) for a in t.args)
        return body if t.coef == 1 else f"{_coef_tex(t.coef)} {body}"
    if isinstance(t, C.Tr):
        inner = tex(t.arg)
        return f"{{{inner}}}^T" if isinstance(t.arg, (C.Sym, C.Fn)) else rf"\left( {inner} \right)^T"
    if isinstance(t, C.Fn):
        name = {
            "act": r"\mathrm{f}",
            "norm": r"\mathrm{Norm}",
            "softmax": r"\mathrm{softmax}",
            "had": r"\mathrm{had}",
            "lnorm": r"\mathrm{LayerNorm}",
            "rope": r"\mathrm{RoPE}",
        }[t.kind]
        return rf"{name}\left( {', '.join(tex(a) for a in t.args)} \right)"
    raise TypeError(f"tex: not a term: {t!r}")


_SHORT = [
    (re.compile(r"layers\.(\d+)\.heads\.(\d+)\.w_([qkvo])"), lambda m: f"W_{m[3].upper()}[{m[1]},{m[2]}]"),
    (re.compile(r"layers\.(\d+)\.norm_(mha|mlp)"), lambda m: f"g_{m[2].upper()}[{m[1]}]"),
    (re.compile(r"layers\.(\d+)\.([wb])_(l[12])"), lambda m: f"{m[2].upper() if m[2] == 'w' else 'b'}_{m[3]}[{m[1]}]"),
    (re.compile(r"\bpos\b"), lambda m: "P"),
    (re.compile(r"\bw_out\b"), lambda m: "W_out"),
]


def text(t) -> str:
    """Plain text of a term (parameters by their paper names: ``W_Q[layer,head]``) or a scalar."""
    out = C.text(t) if isinstance(t, C.Term) else sp.sstr(t)
    for pattern, repl in _SHORT:
        out = pattern.sub(repl, out)
    return out


def chain_text(c) -> list[str]:
    """Plain-text lines of one lemma: ``e_0`` then ``= e_{i+1}   [why; check]``."""
    mark = "ok" if c.ok else "FAILED"
    out = [f"  {c.title} [{mark}{': ' + c.detail if c.detail else ''}]:", f"      {text(c.start)}"]
    for st in c.steps:
        m = "ok" if st.ok else ("FAILED" if st.ok is False else "unchecked")
        out.append(f"    = {text(st.rhs)}   [{st.why}; {m}]")
    if not c.steps:
        out.append(f"    = {text(c.end)}   [same term]")
    return out


def chain_latex(c) -> list[str]:
    """One display-math string per lemma: its statement ``start = end``."""
    return [f"{tex(c.start)} = {tex(c.end)}"]


# ---- running ------------------------------------------------------------------------------------
@dataclass
class Run:
    levels: list[Level] = field(default_factory=list)
    drops: list[Level] = field(default_factory=list)
    searches: list[Search] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)
    total: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            all(lv.status == "proved" for lv in self.levels)
            and all(d.status == "refuted" for d in self.drops)
            and all(not s.undecided for s in self.searches)
        )


def run(theorems: list[str], zero=None, scale=None, minimal: bool = False, sizes: dict | None = None) -> Run:
    """Run the requested claims. ``zero``/``scale`` (sets) apply to a single theorem; ``sizes``
    (old sizes and ``NAME_new``) replaces the two default size assignments by one."""
    from . import variants as V
    from .theorems import check_sizes

    T = time.perf_counter()
    out = Run()
    for name in theorems:
        t = time.perf_counter()
        if name in V.BY_NAME or name in V.groups():
            levels, drops, found, _ = V.run([name], minimal=minimal)
            out.levels += levels
            out.drops += drops
            out.searches += found
        elif name == "compose":
            out.levels += run_compose()
        else:
            assignments = [check_sizes(name, sizes)] if sizes else default_sizes(name)
            out.levels += run_theorem(name, zero, scale, assignments)
            out.levels.append(crosscheck_theorem(name, assignments[0]))
            if minimal:
                out.drops += drop_each(name)
                found = searches(name)
                out.searches += found
                out.levels += sufficient_proofs(found, out.levels)
        out.seconds[name] = time.perf_counter() - t
    out.total = time.perf_counter() - T
    return out


def _line(theorem, level, status, secs, detail) -> str:
    return f"{theorem:<10} {level:<32} {status:<10} {secs:6.2f} s  {detail}"


def records(r: Run) -> list[dict]:
    """One JSON record per claim: levels, dropped constraints, minimal-set searches (with ``minimal``)."""
    out = []
    for lv in r.levels + r.drops:
        out.append(
            {
                "theorem": lv.theorem,
                "zero": sorted(lv.zero),
                "scale": sorted(lv.scale),
                "level": lv.level,
                "variant": lv.variant,
                "verdict": lv.status,
                "sizes": {k: (v if isinstance(v, int) else str(v)) for k, v in lv.sizes.items()},
                "seconds": round(lv.seconds, 4),
                "label": lv.name,
                "detail": lv.detail,
            }
        )
    for s in r.searches:
        label = "minimal sets" + (f" ({s.label})" if s.label else "")
        out.append(
            {
                "theorem": s.theorem,
                "zero": [],
                "scale": sorted(s.scale),
                "level": "entries",
                "variant": f"{label}, {s.activation}",
                "verdict": "proved" if not s.undecided else "not proved",
                "sizes": dict(s.sizes) if hasattr(s, "sizes") else dict(default_sizes(s.theorem)[0]),
                "seconds": round(s.seconds, 4),
                "label": label,
                "detail": s.sets_text(),
                "minimal": [sorted(m) for m in s.minimal],
            }
        )
    return out


def json_report(r: Run) -> str:
    return json.dumps(records(r), indent=1)


def _of(name: str, theorem: str) -> bool:
    """Whether a claim named ``theorem`` belongs to the group ``name`` (``mlp/glu`` holds ``mlp/glu:up``)."""
    return theorem == name or ("/" in name and ":" not in name and theorem.startswith(name + ":"))


def text_report(r: Run, show_chains: bool = False) -> str:
    lines = []
    for name in r.seconds:
        for lv in [x for x in r.levels if _of(name, x.theorem)]:
            lines.append(_line(lv.theorem, lv.name, lv.status, lv.seconds, lv.detail))
        for d in [x for x in r.drops if _of(name, x.theorem)]:
            lines.append(_line(d.theorem, d.name, d.status, d.seconds, d.detail))
        for s in [x for x in r.searches if x.theorem == name]:
            label = "minimal sets" + (f" ({s.label})" if s.label else "")
            status = "proved" if not s.undecided else "not proved"
            extra = f"; undecided: {len(s.undecided)} sets" if s.undecided else ""
            lines.append(
                _line(name, label, status, s.seconds, f"{s.sets_text()}  [{s.checks} candidate sets decided{extra}]")
            )
        lines.append(_line(name, "total", "", r.seconds[name], ""))
        if show_chains:
            for lv in [x for x in r.levels if x.theorem == name and x.chains]:
                lines.append(f"  -- {lv.name}: {_describe(lv)}")
                for c in lv.chains:
                    lines += chain_text(c)
    n_claims = len(r.levels) + len(r.drops) + len(r.searches)
    lines.append(
        f"{'all' if r.ok else 'NOT all'} {n_claims} claims hold "
        f"(levels proved, dropped constraints refuted, minimal-set searches complete) in {r.total:.2f} s"
    )
    return "\n".join(lines)


def _describe(lv: Level) -> str:
    return f"zero {{{','.join(sorted(lv.zero)) or 'none'}}} scale {{{','.join(sorted(lv.scale)) or 'none'}}}"


def _title(name: str) -> str:
    return THEOREMS[name].title if name in THEOREMS else "Composition of the six expansions"


def latex_document(r: Run) -> str:
    """A LaTeX document with every checked lemma (needs amsmath): statement, then its steps' rules."""
    out = [
        r"\documentclass{article}",
        r"\usepackage{amsmath}",
        r"\begin{document}",
        r"\section*{Machine-checked proof chains (fpt-ref prove)}",
    ]
    for lv in r.levels:
        if not lv.chains:
            continue
        z = ", ".join(sorted(lv.zero)) or "none"
        sc = ", ".join(sorted(lv.scale)) or "none"
        out.append(rf"\subsection*{{{_title(lv.theorem)} ({lv.status})}}")
        out.append(rf"Zero blocks: \verb|{z}|; scalings: \verb|{sc}|.")
        for c in lv.chains:
            out.append(r"\paragraph{{{}}}".format(c.title.replace("^", r"\^{}").replace("_", r"\_")))
            for math in chain_latex(c):
                out.append(rf"\[ {math} \]")
            rules = "; ".join(dict.fromkeys(st.why for st in c.steps)) or "same term"
            rules = rules.replace("^", r"\^{}").replace("_", r"\_")
            out.append(r"{} steps ({}), {}.\\".format(len(c.steps), rules, "each checked" if c.ok else "NOT checked"))
    out.append(r"\end{document}")
    return "\n".join(out) + "\n"


def latex_lines(r: Run) -> list[str]:
    """Every display-math string of the LaTeX document (for render tests)."""
    return [m for lv in r.levels for c in lv.chains for m in chain_latex(c)]


def markdown_report(r: Run) -> str:
    out = ["# fpt-ref prove", "", "| theorem | level | result | seconds | detail |", "|---|---|---|---|---|"]
    for lv in r.levels + r.drops:
        out.append(f"| {lv.theorem} | {lv.name} | {lv.status} | {lv.seconds:.2f} | {lv.detail.replace('|', '/')} |")
    for s in r.searches:
        label = "minimal sets" + (f" ({s.label})" if s.label else "")
        out.append(
            f"| {s.theorem} | {label} | {'proved' if not s.undecided else 'not proved'} | {s.seconds:.2f} | "
            f"{s.sets_text()} |"
        )
    out += ["", f"Total: {r.total:.2f} s; {'all claims hold' if r.ok else 'NOT all claims hold'}.", ""]
    for lv in r.levels:
        if lv.chains:
            out += [f"## {_title(lv.theorem)}: proof chains ({lv.status}, {_describe(lv)})", "", "```"]
            for c in lv.chains:
                out += chain_text(c)
            out += ["```", ""]
    cx = [d for d in r.drops if d.result is not None and d.result.counterexample is not None]
    if cx:
        out += ["## Counterexamples", ""]
        for d in cx:
            c = d.result.counterexample
            vals = ", ".join(f"{k}={v:.6g}" for k, v in sorted(c.values.items()))
            out += [f"- {d.theorem}, {d.name}: {c.line()}", f"  - values: {vals}"]
    return "\n".join(out) + "\n"


def summary(theorems: list[str] | None = None) -> str:
    """One line: entry-level proofs (ReLU) of the six theorems under the paper's constraints."""
    from .theorems import SETTINGS, run_entries

    t = time.perf_counter()
    label, act, causal = SETTINGS[0]
    names = theorems or SIX
    res = [run_entries(n, *THEOREMS[n].paper, label, act, causal, default_sizes(n)[0]) for n in names]
    ok = sum(lv.status == "proved" for lv in res)
    bad = [lv.theorem for lv in res if lv.status != "proved"]
    return (
        f"proofs: {ok}/{len(names)} theorems proved exactly with SymPy at entry level "
        f"(ReLU, sizes 2-3) in {time.perf_counter() - t:.1f} s"
        + (f"; NOT proved: {', '.join(bad)}" if bad else "")
        + "; `fpt-ref prove --all` for the full set"
    )
