"""MLP expansion (paper Definition/Theorem 3.1)."""

from __future__ import annotations

from dataclasses import replace

from ..model import Model
from ..names import tensor_name
from ._common import Builder, check_grows, finish, layer_indices


def expand_mlp(model: Model, p: int, layers=None, *, init="normal", seed=0, return_manifest=False):
    """Grow the MLP inner size ``p -> p^`` of the chosen layers (paper section 3.1).

    ``W_l1 -> [W_l1  M_l1]`` (h x p^), ``b_l1 -> [b_l1  m_b_l1]`` (p^),
    ``W_l2 -> [[W_l2], [M_l2]]`` (p^ x h).

    Constrained: ``M_l2 = 0`` ((p^-p) x h). Free: ``M_l1`` (h x (p^-p)), ``m_b_l1`` (p^-p).
    The new hidden units are multiplied by the zero rows ``M_l2``, so the output is unchanged.

    Parameters
    ----------
    model : Model
    p : int
        New MLP size ``p^``; must exceed the current ``p_n`` of every chosen layer.
    layers : int or sequence of int, optional
        Layers to expand (default: all).
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
    chosen = layer_indices(model, layers)
    b = Builder(model, "mlp", init, seed)
    new_layers = list(model.layers)
    for n in chosen:
        L = model.layers[n]
        p_new = check_grows("p", p, L.p, f"layer {n}")
        d = p_new - L.p
        w_l1 = b.concat(
            tensor_name("w_l1", n), [b.copied(L.w_l1), b.free("M_l1", (model.h, d), L.w_l1)], axis=1
        )  # [h, p^]
        b_l1 = b.concat(tensor_name("b_l1", n), [b.copied(L.b_l1), b.free("m_b_l1", (d,), L.b_l1)], axis=0)  # [p^]
        w_l2 = b.concat(tensor_name("w_l2", n), [b.copied(L.w_l2), b.zeros("M_l2", (d, model.h))], axis=0)  # [p^, h]
        new_layers[n] = replace(L, w_l1=w_l1, b_l1=b_l1, w_l2=w_l2)
    return finish(replace(model, layers=tuple(new_layers)), b.blocks, return_manifest)
