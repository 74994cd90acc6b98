"""Which tensors of a step to draw: the manifest grouped by tensor, one card per kind.

Large steps are capped at ``max_tensors`` cards (one per kind of tensor, e.g. one
``W_K,e`` stands for all heads' ``W_K,e``); :func:`kinds_text` names the rest for the
caption. Roles come only from the manifest.
"""

from __future__ import annotations

from collections.abc import Sequence

from .symbols import parse_name

NEW_ROLES = ("zero", "free")


def group_manifest(manifest: Sequence) -> dict:
    """``{tensor name: [Block, ...]}`` in manifest order."""
    groups: dict = {}
    for b in manifest:
        groups.setdefault(b.tensor, []).append(b)
    return groups


def is_new_tensor(blocks: Sequence) -> bool:
    """True when a tensor is made only of new blocks (it did not exist before the step)."""
    return all(b.role in NEW_ROLES for b in blocks)


def select_tensors(groups: dict, max_tensors: int = 6):
    """Choose which tensors to draw: ``(chosen, omitted)``, both lists of names.

    One representative per kind of tensor (its first occurrence); first enough kinds to show
    every role present in the step (greedy), then one of each pattern of roles not yet
    shown, then kinds holding a zero constraint, then the rest in manifest order, up to
    ``max_tensors``. ``chosen`` keeps manifest order.
    """
    if max_tensors < 1:
        raise ValueError(f"max_tensors: must be at least 1, got {max_tensors}")
    reps: dict = {}
    for name, blocks in groups.items():
        key = (parse_name(name)[0], tuple(b.role for b in blocks), is_new_tensor(blocks))
        reps.setdefault(key, name)
    order = list(reps.values())
    roles_of = {n: {b.role for b in groups[n]} for n in order}
    chosen: list = []
    uncovered = set().union(*roles_of.values()) if roles_of else set()
    while uncovered and len(chosen) < max_tensors:
        best = max((n for n in order if n not in chosen), key=lambda n: len(roles_of[n] & uncovered))
        if not roles_of[best] & uncovered:
            break
        chosen.append(best)
        uncovered -= roles_of[best]

    def add(pred):
        for n in order:
            if len(chosen) < max_tensors and n not in chosen and pred(n):
                chosen.append(n)

    shown = {tuple(b.role for b in groups[n]) for n in chosen}
    for n in order:  # a tensor of each block pattern not yet shown (e.g. new free rows)
        pattern = tuple(b.role for b in groups[n])
        if len(chosen) < max_tensors and n not in chosen and pattern not in shown:
            chosen.append(n)
            shown.add(pattern)
    add(lambda n: "zero" in roles_of[n])  # then the constrained ones
    add(lambda n: True)
    chosen = [n for n in groups if n in chosen]
    omitted = [n for n in groups if n not in chosen]
    return chosen, omitted


def kinds_text(names: Sequence[str]) -> str:
    kinds: dict = {}
    for n in names:
        kinds.setdefault(parse_name(n)[0], []).append(n)
    return ", ".join(f"{k} x{len(v)}" if len(v) > 1 else v[0] for k, v in kinds.items())
