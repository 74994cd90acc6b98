"""Running a set of claims and printing them: plain text, LaTeX, Markdown.

Text and LaTeX printers for the chains use their own block-matrix notation: a block row
``[A, B]``, a block column ``[A; B]``; in LaTeX block columns are ``\\genfrac`` stacks in
brackets, which both LaTeX (amsmath) and matplotlib's mathtext render.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sympy.printing.latex import LatexPrinter
from sympy.printing.str import StrPrinter

from .chains import Chain
from .minimal import Search, drop_each, searches
from .theorems import SIX, THEOREMS, Level, run_compose, run_theorem

_HATS = {"khat": "k^", "phat": "p^", "hhat": "h^", "vhat": "v^", "epsilonhat": "eps^", "epsilon": "eps"}
_TEX_NAMES = {
    "m_b_l1": "m_{b,l1}",
    "m_b_l2": "m_{b,l2}",
    "W_out": "W_{out}",
    "M_out": "M_{out}",
    "H_r": "H_{r}",
    "W_r": "W_{r}",
    "R'": "R'",
    "H'": "H'",
    "G'": "G'",
}


class _Text(StrPrinter):
    def _print_BlockMatrix(self, e):
        rows = [", ".join(self._print(e.blocks[i, j]) for j in range(e.blockshape[1])) for i in range(e.blockshape[0])]
        return "[" + "; ".join(rows) + "]"

    def _print_BlockDiagMatrix(self, e):
        return "diag(" + ", ".join(self._print(b) for b in e.diag) + ")"

    def _print_ZeroMatrix(self, e):
        return "0"

    def _print_Symbol(self, e):
        return _HATS.get(e.name, e.name)


class _Tex(LatexPrinter):
    def _stack(self, rows):
        if len(rows) == 1:
            return rows[0]
        return rf"\genfrac{{}}{{}}{{0}}{{}}{{{rows[0]}}}{{{self._stack(rows[1:])}}}"

    def _rows(self, e):
        return [
            r" \; ".join(self._print(e.blocks[i, j]) for j in range(e.blockshape[1])) for i in range(e.blockshape[0])
        ]

    def _print_BlockMatrix(self, e):
        rows = self._rows(e)
        if len(rows) == 1:
            return rf"\left[ {rows[0]} \right]"
        return rf"\genfrac{{[}}{{]}}{{0}}{{}}{{{rows[0]}}}{{{self._stack(rows[1:])}}}"

    def _print_BlockDiagMatrix(self, e):
        return r"\mathrm{{diag}}\left( {} \right)".format(r", \; ".join(self._print(b) for b in e.diag))

    def _print_ZeroMatrix(self, e):
        return "0"

    def _print_MatrixSymbol(self, e):
        if e.name in _TEX_NAMES:
            return _TEX_NAMES[e.name]
        base, _, sub = e.name.partition("_")
        return f"{base}_{{{sub.replace('_', ',')}}}" if sub else base


def text(e) -> str:
    return _Text().doprint(e)


def tex(e) -> str:
    return _Tex().doprint(e)


def _step_expr(st):
    return st.expr[0] if st.kind == "iff" else st.expr


def chain_text(c: Chain) -> list[str]:
    """Plain-text lines of one chain: ``e_0`` then ``= e_{i+1}   [why; check]``."""
    out = [f"  {c.title}:", f"      {text(c.start)}"]
    for st in c.steps:
        mark = "ok" if st.ok else ("FAILED" if st.ok is False else "unchecked")
        if st.kind == "iff":
            eq, unknown, sol = st.expr
            out.append(f"  <=> {text(unknown)} = {text(sol)}   [{st.why}; {mark}]")
        else:
            out.append(f"    = {text(st.expr)}   [{st.why}; {mark}]")
    if c.note:
        out.append(f"    ({c.note})")
    return out


def chain_latex(c: Chain) -> list[str]:
    """One display-math string per step: ``lhs = rhs`` (``iff`` steps: equation ``\\iff`` solution)."""
    out = []
    prev = c.start
    for st in c.steps:
        if st.kind == "iff":
            eq, unknown, sol = st.expr
            out.append(f"{tex(eq.lhs)} = {tex(eq.rhs)} \\quad \\Leftrightarrow \\quad {tex(unknown)} = {tex(sol)}")
        else:
            out.append(f"{tex(prev)} = {tex(st.expr)}")
        prev = _step_expr(st)
    return out


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


def run(theorems: list[str], zero=None, scale=None, minimal: bool = False) -> Run:
    """Run the requested claims. ``zero``/``scale`` (sets) apply to a single theorem."""
    T = time.perf_counter()
    out = Run()
    six_levels: list[Level] = []
    for name in theorems:
        t = time.perf_counter()
        if name == "compose":
            need = [n for n in SIX if not any(lv.theorem == n and lv.level == "symbolic sizes" for lv in six_levels)]
            from .theorems import run_blocks

            extra = [run_blocks(n, *THEOREMS[n].paper) for n in need]
            out.levels += run_compose(six_levels + extra)
        else:
            lv = run_theorem(name, zero, scale)
            out.levels += lv
            if zero is None and scale is None and name in SIX:
                six_levels += lv
            if minimal:
                out.drops += drop_each(name)
                out.searches += searches(name)
        out.seconds[name] = time.perf_counter() - t
    out.total = time.perf_counter() - T
    return out


def _line(theorem, level, status, secs, detail) -> str:
    return f"{theorem:<10} {level:<32} {status:<10} {secs:6.2f} s  {detail}"


def text_report(r: Run, show_chains: bool = False) -> str:
    lines = []
    names = list(r.seconds)
    for name in names:
        for lv in [x for x in r.levels if x.theorem == name]:
            lines.append(_line(name, lv.level, lv.status, lv.seconds, lv.detail))
        for d in [x for x in r.drops if x.theorem == name]:
            lines.append(_line(name, d.level, d.status, d.seconds, d.detail))
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
                for c in lv.chains:
                    lines += chain_text(c)
    n_claims = len(r.levels) + len(r.drops) + len(r.searches)
    lines.append(
        f"{'all' if r.ok else 'NOT all'} {n_claims} claims hold "
        f"(levels proved, dropped constraints refuted, minimal-set searches complete) in {r.total:.2f} s"
    )
    return "\n".join(lines)


def latex_document(r: Run) -> str:
    """A LaTeX document with every checked chain (needs amsmath)."""
    out = [
        r"\documentclass{article}",
        r"\usepackage{amsmath}",
        r"\begin{document}",
        r"\section*{Machine-checked proof chains (fpt-ref prove)}",
    ]
    for lv in r.levels:
        if not lv.chains:
            continue
        th = THEOREMS[lv.theorem]
        z = ", ".join(sorted(lv.zero)) or "none"
        sc = ", ".join(sorted(lv.scale)) or "none"
        out.append(rf"\subsection*{{{th.title} ({lv.status})}}")
        out.append(rf"Zero blocks: \verb|{z}|; scalings: \verb|{sc}|.")
        for c in lv.chains:
            out.append(r"\paragraph{{{}}}".format(c.title.replace("^", r"\^{}").replace("_", r"\_")))
            for st, math in zip(c.steps, chain_latex(c)):
                why = st.why.replace("^", r"\^{}").replace("_", r"\_")
                out.append(r"\[ {} \] \hfill ({}; {})\\".format(math, why, "checked" if st.ok else "NOT checked"))
    out.append(r"\end{document}")
    return "\n".join(out) + "\n"


def latex_lines(r: Run) -> list[str]:
    """Every display-math string of the LaTeX document (for render tests)."""
    return [m for lv in r.levels for c in lv.chains for m in chain_latex(c)]


def markdown_report(r: Run) -> str:
    out = ["# fpt-ref prove", "", "| theorem | level | result | seconds | detail |", "|---|---|---|---|---|"]
    for lv in r.levels + r.drops:
        out.append(f"| {lv.theorem} | {lv.level} | {lv.status} | {lv.seconds:.2f} | {lv.detail.replace('|', '/')} |")
    for s in r.searches:
        label = "minimal sets" + (f" ({s.label})" if s.label else "")
        out.append(
            f"| {s.theorem} | {label} | {'proved' if not s.undecided else 'not proved'} | {s.seconds:.2f} | "
            f"{s.sets_text()} |"
        )
    out += ["", f"Total: {r.total:.2f} s; {'all claims hold' if r.ok else 'NOT all claims hold'}.", ""]
    for lv in r.levels:
        if lv.chains:
            out += [f"## {THEOREMS[lv.theorem].title}: proof chains ({lv.status})", "", "```"]
            for c in lv.chains:
                out += chain_text(c)
            out += ["```", ""]
    cx = [d for d in r.drops if d.result is not None and d.result.counterexample is not None]
    if cx:
        out += ["## Counterexamples", ""]
        for d in cx:
            c = d.result.counterexample
            vals = ", ".join(f"{k}={v:.6g}" for k, v in sorted(c.values.items()))
            out += [f"- {d.theorem}, {d.level}: {c.line()}", f"  - values: {vals}"]
    return "\n".join(out) + "\n"


def summary(theorems: list[str] | None = None) -> str:
    """One line: entry-level proofs (ReLU) of the six theorems under the paper's constraints."""
    from .theorems import SETTINGS, run_entries

    t = time.perf_counter()
    label, act, causal = SETTINGS[0]
    names = theorems or SIX
    res = [run_entries(n, *THEOREMS[n].paper, label, act, causal) for n in names]
    ok = sum(lv.status == "proved" for lv in res)
    bad = [lv.theorem for lv in res if lv.status != "proved"]
    return (
        f"proofs: {ok}/{len(names)} theorems proved exactly with SymPy at entry level "
        f"(ReLU, sizes 2-3) in {time.perf_counter() - t:.1f} s"
        + (f"; NOT proved: {', '.join(bad)}" if bad else "")
        + "; `fpt-ref prove --all` for the full set"
    )
