"""The built-in demo: a small model and a plan that applies all six expansions.

``fpt-ref demo`` runs it, ``fpt-ref draw demo`` draws it. The plan's steps, in order, are
Theorems 3.1 to 3.6 of docs/spec.md; the same plan is exact on every preset of
:data:`fpt_ref.blocks.PRESETS` (``fpt-ref demo --arch llama``).
"""

from __future__ import annotations

from types import MappingProxyType

DEMO_PLAN = (
    "mlp p=48 layers=0,1; add_heads count=2; heads v=12 layers=1 heads=0; attention k=12; hidden h=24; add_layer at=1"
)
DEMO_MODEL = MappingProxyType(
    dict(
        h=16,
        p=32,
        n_heads=2,
        k=8,
        v=8,
        n_layers=2,
        out_dim=10,
        max_seq=12,
        vocab=50,
        eps=1e-6,
        causal=True,
        dtype="float64",
        seed=0,
    )
)


def demo_model(arch=None):
    """A fresh copy of the demo model (``init_model(**DEMO_MODEL, arch=arch)``).

    ``arch``: a preset name of :data:`fpt_ref.blocks.PRESETS` or an :class:`fpt_ref.blocks.Arch`
    (default: the paper's model).
    """
    from .init import init_model

    return init_model(**DEMO_MODEL, arch=arch)
