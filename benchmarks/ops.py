"""What the benchmarks measure: the model ladder, the operations, and their work counts.

Nothing here times anything (see :mod:`benchmarks.timing`). Every operation is a
zero-argument callable built once per (size, dtype, backend), so that the timing loop
measures only the operation itself.

Work counts (used by the ratios, docs/benchmarks.md):

- forward FLOPs (matmul FLOPs only, 2 per multiply-add; norms, softmax, activations, RoPE,
  the gate's product and bias additions are O(b s h + b E s^2 + b s p) and not counted),
  for every architecture of :data:`ARCHS` (docs/benchmarks.md)::

      F = 2 b s [ sum_n ( h sum_e k_e                W_Q, every query head e
                        + h sum_g (k_g + v_g)        W_K, W_V, every key/value head g (grouped-query:
                                                     G_n < E_n of them; the paper: one per head)
                        + s sum_e (k_e + v_e)        Q K^T and softmax(.) V, every query head
                        + h sum_e v_e                W_O
                        + c h p_n )                  MLP: c = 2 (W_l1, W_l2) or, gated, 3 (W_gate too)
                  + h o ]                            W_out

  The causal mask does not reduce ``F``: the reference computes every logit.
- model bytes: the sum of ``nbytes`` over every tensor of the model (``named_tensors``).
- matmul FLOPs of the reference product ``[n, n] @ [n, n]``: ``2 n^3``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Callable

import numpy as np

import fpt_ref.expansions
from fpt_ref.blocks import PRESETS
from fpt_ref.forward import forward
from fpt_ref.init import init_model, random_inputs
from fpt_ref.model import Model, named_tensors
from fpt_ref.paper import EXPANSIONS as PAPER
from fpt_ref.paper import NAMES
from fpt_ref.plan import run_plan
from fpt_ref.verify import verify

EXPANSIONS = NAMES  # the six expansions, in the paper's order (fpt_ref.paper)
OPS = ("forward",) + EXPANSIONS + ("plan", "verify")

#: the architectures a ladder can be run on: presets of :data:`fpt_ref.blocks.PRESETS`
ARCHS = ("paper", "llama", "qwen2", "gpt2")
#: grouped-query architectures: ``G = E / GQA_GROUP`` key/value heads (at least one)
GQA_ARCHS = ("llama", "qwen2")
GQA_GROUP = 4
#: RMSNorm / LayerNorm eps of the non-paper architectures (Llama 2's ``rms_norm_eps``, GPT-2's ``layer_norm_epsilon``)
ARCH_EPS = 1e-5
ARCH_RULES = (
    "llama, qwen2: G = E/4 key/value heads (at least 1); gated MLP width p_g = 2p/3 rounded up to a multiple of 64 "
    "(Llama's 8h/3 for the paper ladder's p = 4h), so the MLP's 3 h p_g multiply-adds match the paper's 2 h p; "
    "gpt2: the paper's dimensions, a vocabulary of o (tied output)"
)


def gated_width(p: int) -> int:
    """The gated MLP width matching a plain MLP of width ``p`` in FLOPs: ``2p/3`` rounded up to a multiple of 64.

    >>> gated_width(4096), gated_width(1024), gated_width(64)
    (2752, 704, 64)
    """
    return max(64, -(-2 * p // (3 * 64)) * 64)


@dataclass(frozen=True)
class Size:
    """One rung of the ladder: model dimensions (paper names), the input batch and the architecture.

    Every layer has ``E`` heads of key size ``k`` and value size ``v``, ``G`` key/value heads
    (``None``: one per head) and MLP size ``p``; ``arch`` is a preset of
    :data:`fpt_ref.blocks.PRESETS` (:data:`ARCHS`). Inputs are real-valued ``[b, s, h]`` (no
    embedding table), except for a tied architecture (``gpt2``), whose inputs are token ids
    ``[b, s]`` of a vocabulary of ``o``; ``s_max = s``. The ladders hold the paper's sizes;
    :meth:`for_arch` derives the size of another architecture.
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
    G: int | None = None
    arch: str = "paper"

    def dims(self) -> dict:
        """The dimensions: h, N, E, G (key/value heads; E when every head has its own), k, v, p, o, s, b."""
        d = {k: v for k, v in asdict(self).items() if k not in ("name", "arch")}
        d["G"] = self.kv
        return d

    @property
    def kv(self) -> int:
        """Key/value heads per layer."""
        return self.E if self.G is None else self.G

    def for_arch(self, arch: str) -> Size:
        """This size for architecture ``arch`` (:data:`ARCH_RULES`; the paper's size itself for ``"paper"``)."""
        if arch not in ARCHS:
            raise ValueError(f"arch: unknown architecture {arch!r} (architectures: {', '.join(ARCHS)})")
        if arch == "paper":
            return replace(self, arch="paper", G=None)
        gated = PRESETS[arch].mlp == "gated"
        p = gated_width(self.p) if gated else self.p
        G = max(1, self.E // GQA_GROUP) if arch in GQA_ARCHS else None
        return replace(self, arch=arch, p=p, G=G)

    def forward_flops(self) -> int:
        """:func:`forward_flops` of :func:`build_model` for this size on its inputs (no model needed)."""
        E, G, h = self.E, self.kv, self.h
        c = 3 if PRESETS[self.arch].mlp == "gated" else 2
        per_layer = (
            h * E * self.k
            + h * G * (self.k + self.v)
            + self.s * E * (self.k + self.v)
            + h * E * self.v
            + c * h * self.p
        )
        return 2 * self.b * self.s * (self.N * per_layer + h * self.o)

    def params(self) -> int:
        """Parameter count of :func:`build_model` for this size (no model needed)."""
        a, h, E, G, k, v, p = PRESETS[self.arch], self.h, self.E, self.kv, self.k, self.v, self.p
        norm = 2 if a.norm == "layer" else 1  # gain (and bias) per norm
        per_layer = 2 * norm * h + E * (h * k + v * h) + G * (h * k + h * v)
        per_layer += (E * k + G * (k + v)) if a.qkv_bias else 0
        per_layer += h if a.o_bias else 0
        if a.mlp == "gated":
            per_layer += 3 * h * p + ((2 * p + h) if a.mlp_bias else 0)
        else:
            per_layer += 2 * h * p + ((p + h) if a.mlp_bias else 0)
        total = self.N * per_layer
        total += self.s * h if a.positions == "learned" else 0
        total += norm * h if a.final_norm else 0
        total += self.o * h  # W_out, or (tied) the embedding table of a vocabulary of o
        return total


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


def ladder(name: str, sizes: list | None = None, max_params: int | None = None, arch: str = "paper") -> list:
    """The sizes of ladder ``name`` for architecture ``arch`` (:meth:`Size.for_arch`), optionally only those
    named in ``sizes`` or with at most ``max_params``."""
    if name not in LADDERS:
        raise ValueError(f"ladder: unknown ladder {name!r} (ladders: {', '.join(LADDERS)})")
    out = [s.for_arch(arch) for s in LADDERS[name]]
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
    """Matmul FLOPs of ``forward(model, x)`` for ``b`` inputs of ``s`` positions (module doc), any architecture.

    Keys and values are counted once per key/value head (``layer.leader(e) == e``), the
    gated MLP's third product when ``w_gate`` is present.
    """
    h = model.h
    total = h * model.o
    for layer in model.layers:
        ks = [hd.k for hd in layer.heads]
        vs = [hd.v for hd in layer.heads]
        kv = [hd.k + hd.v for e, hd in enumerate(layer.heads) if layer.leader(e) == e]
        mlp = (3 if layer.w_gate is not None else 2) * h * layer.p
        total += h * sum(ks) + h * sum(kv) + s * (sum(ks) + sum(vs)) + h * sum(vs) + mlp
    return 2 * b * s * total


def matmul_flops(n: int) -> int:
    """FLOPs of ``[n, n] @ [n, n]``."""
    return 2 * n**3


def model_bytes(model: Model) -> int:
    """Bytes held by the model's tensors."""
    return int(sum(int(a.nbytes) for a in named_tensors(model).values()))


# ---- models and inputs -----------------------------------------------------------------
def build_model(size: Size, dtype: str, xp=np, seed: int = 0) -> Model:
    """A random model of ``size`` in ``dtype``, on NumPy or CuPy (``xp``).

    ``size.arch == "paper"``: the paper's model (no eps, no mask). Otherwise the preset
    ``size.arch`` with ``G`` key/value heads, eps :data:`ARCH_EPS`, the causal mask, and
    (tied output) a vocabulary of ``o``.
    """
    paper = size.arch == "paper"
    tied = not paper and PRESETS[size.arch].tied
    extra = {} if paper else {"arch": size.arch, "kv_heads": size.G}  # the paper's draw: no arch arguments
    return init_model(
        h=size.h,
        p=size.p,
        n_heads=size.E,
        k=size.k,
        v=size.v,
        n_layers=size.N,
        out_dim=size.o,
        max_seq=size.s,
        vocab=size.o if tied else None,
        eps=0.0 if paper else ARCH_EPS,
        causal=not paper,
        dtype=dtype,
        seed=seed,
        xp=xp,
        **extra,
    )


def build_inputs(model: Model, size: Size, xp=np, seed: int = 0):
    """Real-valued inputs [b, s, h] in the model's dtype, or token ids [b, s] (a model with an embedding table)."""
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
    """``() -> output`` of the same forward written in idiomatic eager PyTorch, for every architecture.

    The model is converted once, outside the timing: per layer the fused ``[W_Q W_K W_V]``
    (every query head, then every key/value head) and stacked ``W_O`` in the forward's batch
    order (:func:`fpt_ref.forward.fused`, as a PyTorch model stores them),
    ``torch.nn.functional.rms_norm`` / ``layer_norm``, RoPE from the same float64 angle tables
    (:func:`fpt_ref.forward.rope_tables`), ``scaled_dot_product_attention`` (scale
    ``1/sqrt(k)``; grouped-query heads with ``enable_gqa``) and the activations of
    ``torch.nn.functional``. Runs under ``torch.inference_mode``. Imports torch (call only
    when it is installed).
    """
    import torch
    import torch.nn.functional as F

    from fpt_ref.forward import fused, rope_tables
    from fpt_ref.xp import to_numpy

    def T(a):  # a NumPy or CuPy array (or None) -> torch tensor on `device`
        return None if a is None else torch.from_numpy(np.array(to_numpy(a), order="C")).to(device)  # a writable copy

    arch = model.arch
    h, eps, causal = model.h, float(model.norm_eps), bool(model.causal)
    acts = {
        "relu": torch.relu,
        "gelu": F.gelu,
        "gelu_tanh": lambda a: F.gelu(a, approximate="tanh"),
        "silu": F.silu,
    }
    act = acts[arch.act]

    def norm(X, g, beta):  # [b, s, h] -> [b, s, h]
        if arch.norm == "layer":
            return F.layer_norm(X, (h,), g, beta, eps=eps)
        return F.rms_norm(X, (h,), g, eps=eps)

    xt = T(x)  # [b, s, h] or token ids [b, s]
    b, s = int(xt.shape[0]), int(xt.shape[1])
    layers = []
    for L in model.layers:
        f = fused(L)
        r = L.group_size
        batches = [(k, v, len(idx) // r) for (k, v), idx in f.batches]  # (k, v, key/value heads)
        kinds = ("norm_mha", "norm_mha_b", "b_o", "norm_mlp", "norm_mlp_b", "w_gate", "b_gate", "w_l1", "b_l1")
        w = {kind: T(getattr(L, kind)) for kind in kinds + ("w_l2", "b_l2")}
        layers.append(dict(w, w_qkv=T(f.w_qkv), b_qkv=T(f.b_qkv), w_o=T(f.w_o), r=r, batches=batches))
    rope_on = arch.positions == "rope"
    tables = {}
    if rope_on:
        for L in layers:
            for k, _, _ in L["batches"]:
                c, sn = rope_tables(arch.rope_theta, k, s, np, model.dtype)  # [s, k/2] each
                tables[k] = (T(c), T(sn))
    embed, pos = T(model.embed), T(model.pos)
    fn_g, fn_b, w_out = T(model.final_norm), T(model.final_norm_b), T(model.output_matrix)

    def rot(t, k):  # [b, G, s, k] -> [b, G, s, k]
        c, sn = tables[k]
        if arch.rope_layout == "half":
            a, bb = t[..., : k // 2], t[..., k // 2 :]
            return torch.cat([a * c - bb * sn, bb * c + a * sn], dim=-1)
        a, bb = t[..., 0::2], t[..., 1::2]
        return torch.stack([a * c - bb * sn, bb * c + a * sn], dim=-1).flatten(-2)

    def run():
        with torch.inference_mode():
            X = embed[xt] if embed is not None else xt  # [b, s, h]
            if pos is not None:
                X = X + pos[:s]  # [b, s, h]
            for L in layers:
                r = L["r"]
                y = norm(X, L["norm_mha"], L["norm_mha_b"])  # [b, s, h]
                qkv = y @ L["w_qkv"]  # [b, s, sum(k) + sum_G(k + v)]
                if L["b_qkv"] is not None:
                    qkv = qkv + L["b_qkv"]
                batches = L["batches"]
                n_q = sum(k * G * r for k, _, G in batches)
                oq, ok, ov = 0, n_q, n_q + n_q // r
                outs = []
                for k, v, G in batches:
                    q = qkv[..., oq : oq + G * r * k].view(b, s, G * r, k).transpose(1, 2)  # [b, G r, s, k]
                    kk = qkv[..., ok : ok + G * k].view(b, s, G, k).transpose(1, 2)  # [b, G, s, k]
                    vv = qkv[..., ov : ov + G * v].view(b, s, G, v).transpose(1, 2)  # [b, G, s, v]
                    oq, ok, ov = oq + G * r * k, ok + G * k, ov + G * v
                    if rope_on:
                        q, kk = rot(q, k), rot(kk, k)
                    o = F.scaled_dot_product_attention(q, kk, vv, is_causal=causal, enable_gqa=r > 1)  # [b, G r, s, v]
                    outs.append(o.transpose(1, 2).reshape(b, s, G * r * v))  # [b, s, G r v]
                att = (outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)) @ L["w_o"]  # [b, s, h]
                if L["b_o"] is not None:
                    att = att + L["b_o"]
                X = X + att  # [b, s, h]
                y = norm(X, L["norm_mlp"], L["norm_mlp_b"])  # [b, s, h]
                a = y @ L["w_l1"]  # [b, s, p]
                if L["b_l1"] is not None:
                    a = a + L["b_l1"]
                if L["w_gate"] is None:
                    a = act(a)  # [b, s, p]
                else:
                    gate = y @ L["w_gate"]  # [b, s, p]
                    a = act(gate if L["b_gate"] is None else gate + L["b_gate"]) * a  # [b, s, p]
                X = X + a @ L["w_l2"]  # [b, s, h]
                if L["b_l2"] is not None:
                    X = X + L["b_l2"]
            if fn_g is not None:
                X = norm(X, fn_g, fn_b)  # [b, s, h]
            return X @ w_out  # [b, s, o]

    return run


def torch_sync(device: str) -> Callable[[], None] | None:
    """A synchronisation function for timing PyTorch on ``device`` (``None`` on the CPU)."""
    if device == "cpu":
        return None
    import torch

    return torch.cuda.synchronize
