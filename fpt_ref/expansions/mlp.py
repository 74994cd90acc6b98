"""MLP expansion (paper Definition/Theorem 3.1)."""

from __future__ import annotations

from dataclasses import replace

from ..model import Model
from ..names import tensor_name
from ._common import Builder, check_grows, finish, layer_indices

#: ``zero=`` choices: the constrained block and the block names of its zero set (docs/spec.md 2.1, 4.2)
ZERO_SETS = {"M_l2": ("M_l2",), "M_l1": ("M_l1", "m_b_l1"), "M_gate": ("M_gate", "m_b_gate")}


def expand_mlp(model: Model, p: int, layers=None, *, zero="M_l2", init="normal", seed=0, return_manifest=False):
    """Grow the MLP inner size ``p -> p^`` of the chosen layers (paper section 3.1; docs/spec.md 4.2).

    ``W_l1 -> [W_l1  M_l1]`` (h x p^), ``b_l1 -> [b_l1  m_b_l1]`` (p^),
    ``W_l2 -> [[W_l2], [M_l2]]`` (p^ x h); a gated MLP also ``W_gate -> [W_gate  M_gate]``,
    ``b_gate -> [b_gate  m_b_gate]``.

    Constrained (``zero="M_l2"``, the paper's): ``M_l2 = 0`` ((p^-p) x h); the new hidden units
    are multiplied by the zero rows, so the output is unchanged. Free: every other new block.
    Alternatives, each exact because every activation has ``act(0) = 0``: ``zero="M_l1"``
    (``M_l1 = 0`` and ``m_b_l1 = 0``: the new units' input, or the gated product's "up"
    factor, is zero) and, for a gated MLP, ``zero="M_gate"`` (``M_gate = 0``, ``m_b_gate = 0``:
    ``act(0) = 0`` zeroes the product). Which new blocks train at the first step differs:
    docs/spec.md section 4.2.

    Parameters
    ----------
    model : Model
    p : int
        New MLP size ``p^``; must exceed the current ``p_n`` of every chosen layer.
    layers : int or sequence of int, optional
        Layers to expand (default: all).
    zero : {"M_l2", "M_l1", "M_gate"}
        The constrained block (with its bias entries).
    init, seed : free-block initializer and its seed (see :class:`Builder`).
    return_manifest : bool
        Also return the list of :class:`Block` records.

    Returns
    -------
    Model (and the manifest when ``return_manifest``).

    Examples
    --------
    >>> import fpt_ref
    >>> model = fpt_ref.init_model(h=4, p=8, n_heads=1, k=2, v=2, n_layers=2, out_dim=3, max_seq=4)
    >>> big, manifest = expand_mlp(model, 12, layers=[0], return_manifest=True)
    >>> big.layers[0].p, big.layers[1].p
    (12, 8)
    >>> for block in manifest:
    ...     print(block)
    layers.0.w_l1[0:4, 0:8] copied (W_l1)
    layers.0.w_l1[0:4, 8:12] free (M_l1)
    layers.0.b_l1[0:8] copied (b_l1)
    layers.0.b_l1[8:12] free (m_b_l1)
    layers.0.w_l2[0:8, 0:4] copied (W_l2)
    layers.0.w_l2[8:12, 0:4] zero (M_l2)
    >>> fpt_ref.verify(model, big)["ok"]
    True
    """
    if zero not in ZERO_SETS:
        raise ValueError(f"zero: must be one of {', '.join(ZERO_SETS)}, got {zero!r}")
    if zero == "M_gate" and model.arch.mlp != "gated":
        raise ValueError("zero: 'M_gate' needs a gated MLP; this model's MLP is plain")
    chosen = layer_indices(model, layers)
    b = Builder(model, "mlp", init, seed)
    zeroed = set(ZERO_SETS[zero])

    def grow(name, arr, block, shape, axis):  # [old | new] along axis; the new block zero or free
        new = b.zeros(block, shape) if block in zeroed else b.free(block, shape, arr)
        return b.concat(name, [b.copied(arr), new], axis=axis)

    new_layers = list(model.layers)
    for n in chosen:
        L = model.layers[n]
        p_new = check_grows("p", p, L.p, f"layer {n}")
        d = p_new - L.p
        changes = {}  # built in file order (the manifest's order)
        if L.w_gate is not None:
            changes["w_gate"] = grow(tensor_name("w_gate", n), L.w_gate, "M_gate", (model.h, d), 1)  # [h, p^]
        if L.b_gate is not None:
            changes["b_gate"] = grow(tensor_name("b_gate", n), L.b_gate, "m_b_gate", (d,), 0)  # [p^]
        changes["w_l1"] = grow(tensor_name("w_l1", n), L.w_l1, "M_l1", (model.h, d), 1)  # [h, p^]
        if L.b_l1 is not None:
            changes["b_l1"] = grow(tensor_name("b_l1", n), L.b_l1, "m_b_l1", (d,), 0)  # [p^]
        changes["w_l2"] = grow(tensor_name("w_l2", n), L.w_l2, "M_l2", (d, model.h), 0)  # [p^, h]
        new_layers[n] = replace(L, **changes)
    return finish(replace(model, layers=tuple(new_layers)), b.blocks, return_manifest)
