"""The catalogue of reference-vector cases.

A *config* gives the base dimensions (``tiny``, ``small`` or a JSON file). Four *families*
vary what the paper leaves open, so that every pair of options occurs at least once:

============== ======== ====== ======== ==========================
family         inputs   causal norm eps layers
============== ======== ====== ======== ==========================
tok-causal-eps tokens   yes    > 0      equal
tok-full-eps0  tokens   no     0        heterogeneous (p, E, k, v)
real-causal    real     yes    0        equal
real-full-eps  real     no     > 0      heterogeneous (p, E, k, v)
============== ======== ====== ======== ==========================

Each family has the base model, each of the six expansions applied alone to the base
(``mlp``, ``add_heads``, ``heads``, ``attention``, ``hidden``, ``add_layer``), and every
step of one composed plan of all six (``plan.1-mlp`` ... ``plan.6-add_layer``, each the
child of the one before). Single expansions act on one layer or head where they can, so
heads and layers become heterogeneous.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields

from ..checks import is_int
from ..model import Model
from ..paper import NAMES

#: the six expansions, in the paper's order (:data:`fpt_ref.paper.NAMES`)
EXPANSIONS = NAMES


@dataclass(frozen=True)
class Config:
    """Base dimensions of the vectors (paper symbols) and the inputs' ``batch`` x ``seq``.

    ``eps`` is the norm epsilon of the families with ``eps > 0``. ``plan`` optionally
    replaces the default composed plan (text form of :func:`fpt_ref.parse_plan`).
    """

    name: str = "tiny"
    h: int = 8
    p: int = 16
    heads: int = 2
    k: int = 4
    v: int = 4
    layers: int = 2
    out_dim: int = 6
    max_seq: int = 8
    vocab: int = 24
    batch: int = 2
    seq: int = 6
    eps: float = 1e-3
    plan: str | None = None

    def __post_init__(self):
        for f in fields(self):
            val = getattr(self, f.name)
            if f.name in ("name", "plan", "eps"):
                continue
            if not is_int(val) or val < 1:
                raise ValueError(f"config: {f.name} must be an integer >= 1, got {val!r}")
            object.__setattr__(self, f.name, int(val))  # a NumPy integer becomes a Python int (JSON)
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or not self.eps > 0:
            raise ValueError(f"config: eps must be a number > 0 (the eps of the eps > 0 families), got {self.eps!r}")
        if self.out_dim < 2:
            raise ValueError(
                f"config: out_dim must be at least 2 (the argmax check needs two outputs), got {self.out_dim}"
            )
        if not math.isfinite(self.eps):
            raise ValueError(f"config: eps must be finite, got {self.eps!r}")
        if self.seq > self.max_seq:
            raise ValueError(f"config: seq={self.seq} exceeds max_seq={self.max_seq}")
        if self.plan is not None and not isinstance(self.plan, str):
            raise ValueError(f"config: plan must be plan text such as 'mlp p=48; hidden h=24', got {self.plan!r}")

    def to_dict(self) -> dict:
        return asdict(self)


CONFIGS = {
    "tiny": Config(),
    "small": Config(
        name="small",
        h=32,
        p=64,
        heads=4,
        k=8,
        v=8,
        layers=3,
        out_dim=16,
        max_seq=16,
        vocab=64,
        batch=3,
        seq=12,
        eps=1e-3,
    ),
}


def load_config(spec: str) -> Config:
    """``tiny``, ``small``, or a JSON file whose keys override ``tiny``'s (keys: :class:`Config`)."""
    if spec in CONFIGS:
        return CONFIGS[spec]
    if not os.path.isfile(spec):
        raise FileNotFoundError(f"spec: {spec!r} is neither tiny, small nor an existing JSON file")
    try:
        with open(spec) as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"spec: {spec}: invalid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"spec: {spec}: expected a JSON object, got {type(data).__name__}")
    known = {f.name for f in fields(Config)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"spec: {spec}: unknown keys {unknown} (known: {sorted(known)})")
    data.setdefault("name", os.path.splitext(os.path.basename(spec))[0])
    return Config(**{**CONFIGS["tiny"].to_dict(), **data})


@dataclass(frozen=True)
class Family:
    """Options shared by a family of cases (module doc)."""

    name: str
    tokens: bool
    causal: bool
    eps: bool
    hetero: bool


FAMILIES = (
    Family("tok-causal-eps", tokens=True, causal=True, eps=True, hetero=False),
    Family("tok-full-eps0", tokens=True, causal=False, eps=False, hetero=True),
    Family("real-causal", tokens=False, causal=True, eps=False, hetero=False),
    Family("real-full-eps", tokens=False, causal=False, eps=True, hetero=True),
)


def base_kwargs(cfg: Config, fam: Family, seed: int) -> dict:
    """Arguments of :func:`fpt_ref.init_model` for the family's base model (float64).

    Heterogeneous families alternate per layer: ``p_n = p + (n mod 2) p/2``,
    ``E_n = heads + (n mod 2)``, ``k_n = k + 2 (n mod 2)``, ``v_n = v + 2 ((n+1) mod 2)``.
    """
    N = cfg.layers
    p: int | list[int]
    heads: int | list[int]
    k: int | list[int]
    v: int | list[int]
    if fam.hetero:
        p = [cfg.p + (n % 2) * max(1, cfg.p // 2) for n in range(N)]
        heads = [cfg.heads + n % 2 for n in range(N)]
        k = [cfg.k + 2 * (n % 2) for n in range(N)]
        v = [cfg.v + 2 * ((n + 1) % 2) for n in range(N)]
    else:
        p, heads, k, v = cfg.p, cfg.heads, cfg.k, cfg.v
    return dict(
        h=cfg.h,
        p=p,
        n_heads=heads,
        k=k,
        v=v,
        n_layers=N,
        out_dim=cfg.out_dim,
        max_seq=cfg.max_seq,
        vocab=cfg.vocab if fam.tokens else None,
        eps=cfg.eps if fam.eps else 0.0,
        causal=fam.causal,
        dtype="float64",
        seed=seed,
    )


def _maxes(model: Model) -> tuple[int, int, int]:
    heads = [hd for layer in model.layers for hd in layer.heads]
    return (max(layer.p for layer in model.layers), max(hd.k for hd in heads), max(hd.v for hd in heads))


def single_steps(model: Model) -> dict:
    """Plan text of each expansion applied alone to ``model`` (the family's base).

    ``attention`` grows head 0 of the *last* layer, so an implementation that keeps the base
    model's ``1/sqrt(k)`` diverges first at ``residual.N``; ``add_heads`` and ``add_layer``
    use key/value sizes new to the model (heterogeneous heads).
    """
    N, h = model.N, model.h
    p, k, v = _maxes(model)
    return {
        "mlp": f"mlp p={p + max(2, p // 2)} layers=0",
        "add_heads": f"add_heads count=1 layers={N - 1} k={k + 2} v={v + 2}",
        "heads": f"heads v={v + 2} layers=0 heads=0",
        "attention": f"attention k={k + 2} layers={N - 1} heads=0",
        "hidden": f"hidden h={h + max(2, h // 2)}",
        "add_layer": f"add_layer at={N // 2} p={p + 2} n_heads=2 k={k + 2} v={v}",
    }


def plan_steps(model: Model, cfg: Config) -> str:
    """The composed plan: all six expansions in sequence (or ``cfg.plan``)."""
    if cfg.plan is not None:
        return cfg.plan
    N, h = model.N, model.h
    p, k, v = _maxes(model)
    return "; ".join(
        [
            f"mlp p={p + max(2, p // 2)}",
            f"add_heads count=1 layers={N - 1}",
            f"heads v={v + 2} layers={N - 1} heads=0",
            f"attention k={k + 2} layers=0",
            f"hidden h={h + max(2, h // 2)}",
            f"add_layer at={(N + 1) // 2}",
        ]
    )
