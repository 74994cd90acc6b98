"""The report of :func:`fpt_ref.certify.certify`: :class:`Certificate` (``--json`` prints its
:meth:`Certificate.to_dict`) and its text form (:func:`format_certificate`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..audit import Finding


@dataclass
class Certificate:
    """The outcome of :func:`certify`.

    ``ok``: every block holds and the forward check passed, or was not run (``forward`` is
    ``None``: the text and ``to_dict`` then say "blocks certified, forward not run", never
    "preserved"); ``findings`` in file order of the
    grown model's tensors (options, configs and the forward check after them; ``first`` names
    the offending tensor or option); ``layers``: one entry per grown layer, the base layer it
    holds (with its sizes and head map) or ``None`` for an inserted identity layer; ``sets``:
    the constraint set found at each place; ``forward``: :func:`fpt_ref.verify`'s figures.
    """

    ok: bool = False
    findings: list = field(default_factory=list)
    hidden: list = field(default_factory=list)
    layers: list = field(default_factory=list)
    sets: list = field(default_factory=list)
    blocks: int = 0
    tensors: int = 0
    scaled_rounding: float = 0.0
    notes: list = field(default_factory=list)
    forward: dict | None = None
    base: str = ""
    grown: str = ""
    covered: list = field(default_factory=list, repr=False)  # (tensor, shape, index) of every block checked
    reads: int = 0  # bytes of stored values read (the streaming audit, fpt_ref.certify.stream)

    @property
    def first(self) -> Finding | None:
        return self.findings[0] if self.findings else None

    def to_dict(self) -> dict:
        return {
            "preserved": self.ok and self.forward is not None,
            "blocks_certified": self.ok,
            "forward_run": self.forward is not None,
            "base": self.base,
            "grown": self.grown,
            "hidden": self.hidden,
            "layers": self.layers,
            "constraint_sets": self.sets,
            "blocks": self.blocks,
            "tensors": self.tensors,
            "scaled_rounding_ulps": self.scaled_rounding,
            "findings": [{"tensor": f.tensor, "block": f.block, "reason": f.reason} for f in self.findings],
            "notes": list(self.notes),
            "forward": self.forward,
        }


def format_certificate(cert, base: str, grown: str) -> str:
    """The text report: the verdict, the inferred growth, the figures."""
    lines = []
    if cert.ok and cert.forward is None:
        lines.append(
            f"blocks certified, forward not run: every block of {grown} holds {base} under the rules "
            "(the forward check was not run)"
        )
    elif cert.ok:
        lines.append(f"preserved: {grown} contains {base} and computes its function")
    else:
        first = cert.first
        lines.append(f"not preserved: {first.tensor}{(' ' + first.block) if first.block else ''}: {first.reason}")
        if len(cert.findings) > 1:
            lines.append(f"  ({len(cert.findings) - 1} more finding(s); --json lists them all)")
    lines.append(f"  base:  {cert.base}")
    lines.append(f"  grown: {cert.grown}")
    if cert.layers:
        parts = []
        for L in cert.layers:
            parts.append(f"{L['grown']}<-{L['base']}" if L["base"] is not None else f"{L['grown']}=identity")
        lines.append(f"  layers (grown<-base): {' '.join(parts)}")
    if cert.hidden and cert.hidden[0] != cert.hidden[1]:
        lines.append(f"  hidden: {cert.hidden[0]} -> {cert.hidden[1]} (old stream entries first)")
    lines.append(f"  audited {cert.blocks} blocks in {cert.tensors} tensors; {len(cert.sets)} constraint sets found")
    for note in cert.notes:
        lines.append(f"  note: {note}")
    fw = cert.forward
    if fw and "max_abs" in fw:
        lines.append(
            f"  forward ({fw['dtype']}): max error {fw['max_abs']:.3g} (rel {fw['max_rel']:.3g}, {fw['max_ulp']:.3g} ulp) "
            f"vs derived tolerance {fw['tol_abs']:.3g} ({fw['tol_ulp']:.3g} ulp)"
        )
    return "\n".join(lines)
