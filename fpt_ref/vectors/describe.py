"""What an implementation must build to reproduce a case: the blocks and their conventions.

The manifest of every case (docs/vectors.md, "Manifest") names its architecture
(``model.arch``, :meth:`fpt_ref.blocks.Arch.to_dict`), lists the blocks an implementation
needs (``model.needs``, :func:`needs`) and spells out the conventions that differ between
frameworks (``model.conventions``, :func:`conventions`: RoPE layout and angles, the
grouped-query mapping, the output). ``fpt-ref compare`` prints them for a case that is not
the paper's model (:func:`arch_line`). The definitions are docs/spec.md sections 1 and 4.1.
"""

from __future__ import annotations

from ..model import Model

_ACT = {
    "relu": "relu: max(x, 0)",
    "gelu": "gelu (erf): x/2 (1 + erf(x / sqrt 2))",
    "gelu_tanh": "gelu (tanh approximation): x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))",
    "silu": "silu: x / (1 + exp(-x))",
}


def _kv_heads(model: Model) -> list:
    """Key/value heads per layer (``E`` for a multi-head layer)."""
    return [layer.G if layer.grouped else layer.E for layer in model.layers]


def needs(model: Model) -> list:
    """The blocks of ``model``, one short phrase each (docs/spec.md section 4.1 names).

    Returns
    -------
    list of str
        The norm, the MLP and activation, the positions, the attention (with grouped-query
        attention when some layer has fewer key/value heads than heads), the attention
        biases, the final norm and the output.
    """
    a = model.arch
    norm = "LayerNorm (gain and bias)" if a.norm == "layer" else "RMSNorm"
    out = [f"{norm}, eps={model.norm_eps!r}"]
    out.append(f"{a.mlp} MLP, {_ACT[a.act].split(':')[0]}, {'with' if a.mlp_bias else 'without'} biases")
    if a.positions == "rope":
        pair = "i with i + k/2" if a.rope_layout == "half" else "2i with 2i + 1"
        out.append(f"RoPE, {a.rope_layout} layout (dim {pair}), theta={a.rope_theta!r}")
    else:
        out.append("learned positions P" if a.positions == "learned" else "no positions")
    grouped = [n for n, layer in enumerate(model.layers) if layer.grouped]
    causal = "causal" if model.causal else "full (not causal)"
    if grouped:
        out.append(f"grouped-query attention (kv_heads per layer {_kv_heads(model)}), {causal}")
    else:
        out.append(f"multi-head attention, {causal}")
    if a.qkv_bias:
        out.append("q/k/v biases")
    if a.o_bias:
        out.append("attention output bias b_o")
    if a.final_norm:
        out.append("final norm before W_out")
    out.append("tied output (W_out = embed^T; no w_out tensor)" if a.tied else "untied output W_out")
    return out


def conventions(model: Model) -> dict:
    """The conventions an implementation of ``model`` must follow, as plain text per block.

    Keys: ``residual.0``, ``norm``, ``mlp``, ``act``, ``output`` always; ``rope`` with RoPE,
    ``grouped_query`` when some layer is grouped, ``biases`` when the attention has biases.
    """
    a = model.arch
    if a.norm == "layer":
        norm = "g (x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) + beta, over the last axis"
    else:
        norm = "g x / sqrt(mean(x^2) + eps), over the last axis"
    if a.mlp == "gated":
        mlp = "(act(X W_gate + b_gate) * (X W_l1 + b_l1)) W_l2 + b_l2: w_gate is the gate, w_l1 the up, w_l2 the down"
    else:
        mlp = "act(X W_l1 + b_l1) W_l2 + b_l2"
    if not a.mlp_bias:
        mlp += " (no b_gate, b_l1, b_l2)"
    first = "embed[tokens]" if model.embed is not None else "inputs"
    if a.positions == "learned":
        first += " + pos[:s]"
    w_out = "embed^T (tied; the file has no w_out)" if a.tied else "w_out"
    out = {
        "residual.0": f"X_1 = {first}",
        "norm": norm,
        "mlp": mlp,
        "act": _ACT[a.act],
        "output": f"{'Norm_f(residual.N)' if a.final_norm else 'residual.N'} @ {w_out}",
    }
    if a.positions == "rope":
        pair = "(i, i + k/2)" if a.rope_layout == "half" else "(2i, 2i + 1)"
        out["rope"] = (
            f"theta={a.rope_theta!r}, layout {a.rope_layout}: dims {pair} form pair i = 0..k/2-1; angle "
            "a = m theta^(-2i/k) at 0-based position m; (x_a, x_b) -> (x_a cos a - x_b sin a, x_b cos a + x_a sin a); "
            "on queries and keys after their biases, before Q K^T / sqrt(k); values are not rotated"
        )
    if any(layer.grouped for layer in model.layers):
        out["grouped_query"] = (
            f"kv_heads per layer {_kv_heads(model)}: query head j reads key/value head floor(j / (E / kv_heads)); "
            "w_k, w_v (and b_k, b_v) of key/value head g are stored in query head g * E / kv_heads"
        )
    if a.qkv_bias or a.o_bias:
        parts = (["Q = X W_Q + b_q, K = X W_K + b_k, V = X W_V + b_v"] if a.qkv_bias else []) + (
            ["MHA(X) = sum_e H_e W_O,e + b_o"] if a.o_bias else []
        )
        out["biases"] = "; ".join(parts)
    return out


def is_paper_case(man: dict) -> bool:
    """Whether the manifest ``man`` describes the paper's model (no ``model.arch``, or the default one)."""
    from ..blocks import Arch

    arch = (man.get("model") or {}).get("arch") if isinstance(man.get("model"), dict) else None
    if not isinstance(arch, dict):
        return True
    try:
        return Arch.from_dict(arch).is_paper
    except (TypeError, ValueError):
        return False


def arch_line(man: dict) -> str | None:
    """One line naming the architecture a case needs, or ``None`` for the paper's model."""
    if is_paper_case(man):
        return None
    model = man.get("model") or {}
    preset = model.get("preset")
    what = f"the {preset} preset" if isinstance(preset, str) and preset != "paper" else "real-architecture blocks"
    needs_ = model.get("needs")
    listed = "; ".join(str(n) for n in needs_) if isinstance(needs_, list) else "see manifest.json model.arch"
    return f"architecture: {what} (docs/spec.md section 4): {listed}"
