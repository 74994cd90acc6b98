"""What the benchmarks measure: the model ladder, the operations, and their work counts.

Nothing here times anything (see :mod:`benchmarks.timing`). Every operation is a
zero-argument callable built once per (size, dtype, backend), so that the timing loop
measures only the operation itself.

Work counts (used by the ratios, docs/benchmarks.md):

- forward FLOPs (matmul FLOPs only, 2 per multiply-add; the norm, softmax, ReLU and bias
  additions are O(b s h + b E s^2) and not counted)::

      F = 2 b s [ sum_n ( h sum_e (2 k_e + v_e)      Q, K, V projections
                        + s sum_e (k_e + v_e)        Q K^T and softmax(.) V
                        + h sum_e v_e                W_O
                        + 2 h p_n )                  W_l1 and W_l2
                  + h o ]                            W_out

  The causal mask does not reduce ``F``: the reference computes every logit.
- model bytes: the sum of ``nbytes`` over every tensor of the model (``named_tensors``).
- matmul FLOPs of the reference product ``[n, n] @ [n, n]``: ``2 n^3``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

import fpt_ref.expansions
from fpt_ref.forward import forward
from fpt_ref.init import init_model, random_inputs
from fpt_ref.model import Model, named_tensors
from fpt_ref.paper import EXPANSIONS as PAPER
from fpt_ref.paper import NAMES
from fpt_ref.plan import run_plan
from fpt_ref.verify import verify

EXPANSIONS = NAMES  # the six expansions, in the paper's order (fpt_ref.paper)
OPS = ("forward",) + EXPANSIONS + ("plan", "verify")


@dataclass(frozen=True)
class Size:
    """One rung of the ladder: model dimensions (paper names) and the input batch.

    Every layer has ``E`` heads of key size ``k`` and value size ``v`` and MLP size ``p``;
    inputs are real-valued ``[b, s, h]`` (no embedding table), ``s_max = s``.
    """

    name: str
    h: int
    N: int
    E: int
    k: int
    v: int
    p: int
    o: int
    s: int
    b: int

    def dims(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "name"}

    def forward_flops(self) -> int:
        """:func:`forward_flops` of :func:`build_model` for this size on its ``[b, s, h]`` inputs (no model needed)."""
        E, h = self.E, self.h
        per_layer = h * E * (2 * self.k + self.v) + self.s * E * (self.k + self.v) + h * E * self.v + 2 * h * self.p
        return 2 * self.b * self.s * (self.N * per_layer + h * self.o)

    def params(self) -> int:
        """Parameter count of :func:`build_model` for this size (no model needed)."""
        h = self.h
        per_layer = 2 * h + self.E * (2 * h * self.k + 2 * h * self.v) + 2 * h * self.p + self.p + h
        return self.s * h + h * self.o + self.N * per_layer


# Ladders. The CPU ladder stops where the full run (both dtypes, every op, PyTorch) still
# fits 15 minutes on 2 cores; memory (24 GiB) would allow larger models. The GPU ladder
# goes on to ~1B parameters (f32: 4 GB of weights).
QUICK = (
    Size("xxs", h=32, N=2, E=2, k=16, v=16, p=64, o=16, s=16, b=2),
    Size("xs", h=64, N=2, E=4, k=16, v=16, p=256, o=64, s=32, b=4),
)
CPU = (
    Size("xs", h=64, N=2, E=4, k=16, v=16, p=256, o=64, s=32, b=4),
    Size("s", h=256, N=4, E=4, k=64, v=64, p=1024, o=256, s=128, b=4),
    Size("m", h=512, N=4, E=8, k=64, v=64, p=2048, o=512, s=256, b=4),
    Size("l", h=1024, N=4, E=16, k=64, v=64, p=4096, o=1024, s=256, b=2),
)
GPU = CPU + (
    Size("xl", h=2048, N=8, E=16, k=128, v=128, p=8192, o=2048, s=512, b=8),
    Size("xxl", h=2048, N=20, E=16, k=128, v=128, p=8192, o=2048, s=512, b=8),
)
LADDERS = {"quick": QUICK, "cpu": CPU, "gpu": GPU}


def ladder(name: str, sizes: list | None = None, max_params: int | None = None) -> list:
    """The sizes of ladder ``name``, optionally only those named in ``sizes`` or with at most ``max_params``."""
    if name not in LADDERS:
        raise ValueError(f"ladder: unknown ladder {name!r} (ladders: {', '.join(LADDERS)})")
    out = list(LADDERS[name])
    if sizes:
        known = {s.name for s in out}
        bad = [s for s in sizes if s not in known]
        if bad:
            raise ValueError(f"sizes: {', '.join(bad)} not in the {name} ladder ({', '.join(s.name for s in out)})")
        out = [s for s in out if s.name in sizes]
    if max_params is not None:
        out = [s for s in out if s.params() <= max_params]
    return out


# ---- work counts -----------------------------------------------------------------------
def forward_flops(model: Model, b: int, s: int) -> int:
    """Matmul FLOPs of ``forward(model, x)`` for ``x`` of shape ``[b, s, h]`` (module doc)."""
    h = model.h
    total = h * model.o
    for layer in model.layers:
        ks = [hd.k for hd in layer.heads]
        vs = [hd.v for hd in layer.heads]
        total += h * (2 * sum(ks) + sum(vs)) + s * (sum(ks) + sum(vs)) + h * sum(vs) + 2 * h * layer.p
    return 2 * b * s * total


def matmul_flops(n: int) -> int:
    """FLOPs of ``[n, n] @ [n, n]``."""
    return 2 * n**3


def model_bytes(model: Model) -> int:
    """Bytes held by the model's tensors."""
    return int(sum(int(a.nbytes) for a in named_tensors(model).values()))


# ---- models and inputs -----------------------------------------------------------------
def build_model(size: Size, dtype: str, xp=np, seed: int = 0) -> Model:
    """A random model of ``size`` in ``dtype``, on NumPy or CuPy (``xp``); the paper's model (no eps, no mask)."""
    return init_model(
        h=size.h,
        p=size.p,
        n_heads=size.E,
        k=size.k,
        v=size.v,
        n_layers=size.N,
        out_dim=size.o,
        max_seq=size.s,
        vocab=None,
        eps=0.0,
        causal=False,
        dtype=dtype,
        seed=seed,
        xp=xp,
    )


def build_inputs(model: Model, size: Size, xp=np, seed: int = 0):
    """Real-valued inputs [b, s, h] in the model's dtype and array library."""
    return xp.asarray(random_inputs(model, batch=size.b, seq=size.s, seed=seed))


def expansion_args(size: Size) -> dict:
    """Arguments of each expansion for ``size``: each grows its dimension by a quarter (at least 1)."""

    def grow(d):
        return d + max(1, d // 4)

    return {
        "mlp": {"p": grow(size.p)},
        "add_heads": {"count": 1},
        "heads": {"v": grow(size.v)},
        "attention": {"k": grow(size.k)},
        "hidden": {"h": grow(size.h)},
        "add_layer": {"at": size.N // 2},
    }


def plan_text(size: Size) -> str:
    """The composed plan: the six expansions in sequence, with :func:`expansion_args`."""
    args = expansion_args(size)
    return "; ".join(f"{op} " + " ".join(f"{k}={v}" for k, v in args[op].items()) for op in EXPANSIONS)


_FUNCS = {op: getattr(fpt_ref.expansions, PAPER[op].function) for op in NAMES}  # op -> expansion function


def expansion_fn(op: str, model: Model, size: Size) -> Callable[[], Model]:
    """``() -> expanded model`` for expansion ``op`` (or ``"plan"``: the six composed, unchecked)."""
    if op == "plan":
        plan = plan_text(size)
        return lambda: run_plan(model, plan, check=False)[-1].model
    fn, args = _FUNCS[op], expansion_args(size)[op]
    return lambda: fn(model, **args)


def copy_fn(model: Model) -> Callable[[], list]:
    """``() -> fresh copies of every tensor of model``: the memory-bandwidth reference of an expansion."""
    xp = model.xp
    tensors = list(named_tensors(model).values())
    return lambda: [xp.array(a, copy=True) for a in tensors]


def forward_fn(model: Model, x) -> Callable:
    return lambda: forward(model, x)


def verify_fn(a: Model, b: Model, size: Size) -> Callable[[], dict]:
    """``() -> verify(a, b)`` on ``size``'s batch and sequence length (inputs drawn on the host)."""
    return lambda: verify(a, b, batch=size.b, seq=size.s, seed=0)


def matmul_fn(n: int, dtype: str, xp=np) -> Callable:
    """``() -> A @ B`` for random ``[n, n]`` operands: the plain-matmul reference."""
    rng = np.random.default_rng(1)
    a = xp.asarray(rng.standard_normal((n, n)), dtype=dtype)  # [n, n]
    b = xp.asarray(rng.standard_normal((n, n)), dtype=dtype)  # [n, n]
    return lambda: a @ b


# ---- PyTorch eager reference -----------------------------------------------------------
def torch_forward_fn(model: Model, x, device: str = "cpu") -> Callable:
    """``() -> output`` of the same forward written in idiomatic eager PyTorch.

    The model is converted once, outside the timing: fused ``[W_Q W_K W_V]`` and stacked
    ``W_O`` per group of heads of equal ``(k, v)`` (as a PyTorch model stores them),
    ``torch.nn.functional.rms_norm`` and ``scaled_dot_product_attention`` (scale
    ``1/sqrt(k)``). Runs under ``torch.inference_mode``. Imports torch (call only when it is
    installed).
    """
    import torch
    import torch.nn.functional as F

    from fpt_ref.forward import head_groups
    from fpt_ref.xp import to_numpy

    def T(a):  # a NumPy or CuPy array -> torch tensor on `device`
        return torch.from_numpy(np.ascontiguousarray(to_numpy(a))).to(device)

    h, eps, causal = model.h, float(model.norm_eps), bool(model.causal)
    layers = []
    for L in model.layers:
        groups = []
        for (k, v), idx in head_groups(L):
            w_qkv = np.concatenate(
                [to_numpy(L.heads[e].w_q) for e in idx]
                + [to_numpy(L.heads[e].w_k) for e in idx]
                + [to_numpy(L.heads[e].w_v) for e in idx],
                axis=1,
            )  # [h, G(2k+v)]
            w_o = np.concatenate([to_numpy(L.heads[e].w_o) for e in idx], axis=0)  # [G v, h]
            groups.append((k, v, len(idx), T(w_qkv), T(w_o)))
        layers.append((T(L.norm_mha), groups, T(L.norm_mlp), T(L.w_l1), T(L.b_l1), T(L.w_l2), T(L.b_l2)))
    pos, w_out = T(model.pos), T(model.w_out)
    xt = T(x)  # [b, s, h]
    b, s = int(xt.shape[0]), int(xt.shape[1])

    def run():
        with torch.inference_mode():
            X = xt + pos[:s]  # [b, s, h]
            for g1, groups, g2, w1, b1, w2, b2 in layers:
                y = F.rms_norm(X, (h,), g1, eps=eps)  # [b, s, h]
                att = None
                for k, v, G, w_qkv, w_o in groups:
                    q, kk, vv = (y @ w_qkv).split([G * k, G * k, G * v], dim=-1)  # [b, s, G k] x2, [b, s, G v]
                    q = q.view(b, s, G, k).transpose(1, 2)  # [b, G, s, k]
                    kk = kk.view(b, s, G, k).transpose(1, 2)  # [b, G, s, k]
                    vv = vv.view(b, s, G, v).transpose(1, 2)  # [b, G, s, v]
                    o = F.scaled_dot_product_attention(q, kk, vv, is_causal=causal)  # [b, G, s, v]
                    part = o.transpose(1, 2).reshape(b, s, G * v) @ w_o  # [b, s, h]
                    att = part if att is None else att + part
                X = X + att  # [b, s, h]
                y = F.rms_norm(X, (h,), g2, eps=eps)  # [b, s, h]
                X = X + torch.relu(y @ w1 + b1) @ w2 + b2  # [b, s, h]
            return X @ w_out  # [b, s, o]

    return run


def torch_sync(device: str) -> Callable[[], None] | None:
    """A synchronisation function for timing PyTorch on ``device`` (``None`` on the CPU)."""
    if device == "cpu":
        return None
    import torch

    return torch.cuda.synchronize
