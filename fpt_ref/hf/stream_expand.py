"""Grow a checkpoint folder a layer at a time: the streaming :func:`fpt_ref.hf.expand` (docs/hf.md).

:func:`expand_stream` never holds the grown model: every output layer is made on its own, from
the one input layer it descends from (or, for a layer a step inserted, from the layer it
follows), by running the plan's steps that touch it on a one-layer model
(:class:`~fpt_ref.model.Model` with a one-row stand-in embedding), and written at once as its
own shard. Every step of docs/spec.md is per layer
or per tensor in structure, so this gives the blocks :func:`fpt_ref.hf.expand` gives, except
the free blocks, whose random values are drawn per output layer (seed ``seed + j`` for layer
``j``; any value of a free block preserves the function). The model-wide tensors go through the
``hidden`` steps on a model without layers. The folder is then certified
against the input by :func:`fpt_ref.certify.stream.certify_folders` before it is put in place:
nothing is written unless every block holds (the forward check is not run).

A layer no step touches, and the model-wide tensors when no step grows the hidden size, are
copied as stored (bits, no conversion) when the output keeps the stored dtype.

Memory: one input layer, one output layer and the model-wide tensors of one model in float64;
the output layer's weights are written from views (no transposed copies), rounded to the
stored dtype in blocks of rows (:func:`fpt_ref.hf.files.write_safetensors_raw`).
"""

from __future__ import annotations

import json
import os

import numpy as np

from ..model import Layer, Model, named_tensors

__all__ = ["expand_stream"]


def _slots(N: int, steps: list) -> list:
    """The output layers as recipes: ``{"origin": ("base", i) or ("new", step, template, at), "steps": [...]}``.

    ``steps``: indices of the plan steps that touch the layer, in order; a layer inserted by
    ``add_layer`` step ``s`` is made from its template (the layer it follows, as it stood
    before step ``s``).
    """
    from ..plan import _selected

    slots: list[dict] = [{"origin": ("base", i), "steps": []} for i in range(N)]
    for s, step in enumerate(steps):
        a = step.args
        if step.op == "add_layer":
            at = int(a["at"])
            count = int(a.get("count", 1))
            if at > len(slots):
                raise ValueError(f"plan: step {s + 1} ({step}): at={at} is beyond the {len(slots)} layers")
            template = slots[max(at - 1, 0)] if slots else None
            snapshot = None if template is None else {"origin": template["origin"], "steps": list(template["steps"])}
            new = [{"origin": ("new", s, snapshot), "steps": []} for _ in range(count)]
            slots = slots[:at] + new + slots[at:]
        elif step.op == "hidden":
            for slot in slots:
                slot["steps"].append(s)
        else:
            for n in _selected(len(slots), a.get("layers")):
                slots[n]["steps"].append(s)
    return slots


def _mini(layer: Layer, like: Model, embed=None, w_out=None, final_norm=None, final_norm_b=None, pos=None) -> Model:
    """A one-layer model holding ``layer``; the model-wide tensors given, or one-row stand-ins."""
    h = int(layer.norm_mha.shape[0])
    arch = like.arch
    dt = like.dtype
    if embed is None:
        embed = np.zeros((1, h), dt)  # [1, h]
        w_out = None if arch.tied else np.zeros((h, 1), dt)  # [h, 1]
        final_norm = np.ones(h, dt) if arch.final_norm else None
        final_norm_b = np.zeros(h, dt) if arch.final_norm and arch.norm == "layer" else None
        pos = None if like.pos is None else np.zeros((1, h), dt)
    return Model(
        embed=embed,
        pos=pos,
        w_out=w_out,
        layers=(layer,),
        norm_eps=like.norm_eps,
        causal=like.causal,
        arch=arch,
        final_norm=final_norm,
        final_norm_b=final_norm_b,
        max_seq=like.max_seq if pos is None else None,
    )


def _apply(model: Model, step, init, seed) -> Model:
    """Step ``step`` on a one-layer model (its ``layers=`` selection is this layer)."""
    from ..plan import apply_step

    args = dict(step.args)
    if "layers" in args:
        args["layers"] = [0]
    if step.op == "add_layer":
        raise AssertionError("add_layer is resolved by _slots")
    return apply_step(model, type(step)(step.op, args), init=init, seed=seed)


def _layer_model(reader, slot: dict, steps: list, like: Model, init, seed: int) -> Model:
    """The one-layer model of output layer ``slot`` after its steps."""
    kind = slot["origin"][0]
    if kind == "base":
        layer = reader.layer(slot["origin"][1])
        m = _mini(layer, like)
    else:
        _, s, template = slot["origin"]
        from ..expansions import add_layer

        base = _layer_model(reader, template, steps, like, init, seed)
        args = {k: v for k, v in steps[s].args.items() if k not in ("at", "count")}
        grown = add_layer(base, 1, **args, init=init, seed=seed)
        m = _mini(grown.layers[1], grown, grown.embed, grown.w_out, grown.final_norm, grown.final_norm_b, grown.pos)
    for s in slot["steps"]:
        m = _apply(m, steps[s], init, seed)
    return m


def _growth_steps(steps: list) -> int:
    """The most growth steps one size took (``certify``'s ``steps``): the most steps of one kind."""
    counts: dict = {}
    for step in steps:
        counts[step.op] = counts.get(step.op, 0) + 1
    return max(counts.values(), default=1)


def expand_stream(
    path,
    plan,
    out_dir,
    dtype: str | None = None,
    init="normal",
    seed: int = 0,
    check: bool = True,
    max_seq: int | None = None,
):
    """Grow checkpoint folder ``path`` by ``plan`` into ``out_dir``, one layer at a time (module doc).

    Parameters
    ----------
    path, plan, out_dir, dtype, init, max_seq
        As :func:`fpt_ref.hf.expand`.
    seed : int
        Output layer ``j`` draws its free blocks with seed ``seed + j``; the model-wide
        tensors with ``seed``.
    check : bool
        Certify the result against ``path`` (:func:`fpt_ref.certify.stream.certify_folders`)
        before it is put in place.

    Returns
    -------
    Certificate or None
        The certificate (``check``), else ``None``.

    Raises
    ------
    ValueError
        As :func:`fpt_ref.hf.expand` (``model:``, ``plan:``, ``path:``, ``config:``, ``dtype:``,
        ``out_dir:``), all before anything is written; ``plan:`` naming the first finding when
        the result is not certified (nothing written: for instance a scaled block stored in
        bfloat16 with a factor that is not a power of two, docs/hf.md).
    """
    from .. import hf
    from .._version import version
    from ..files import replace_directory, write_bytes, write_text
    from ..plan import parse_plan, plan_dims
    from .files import CONFIG, DTYPE_NAMES, INDEX, STORED, write_safetensors_raw
    from .stream import Stream

    if dtype is not None and dtype not in DTYPE_NAMES:
        raise ValueError(f"dtype: expected one of {', '.join(DTYPE_NAMES)}, got {dtype!r}")
    hf.check_out_dir(out_dir)
    reader = Stream(path, dtype="float64", max_seq=max_seq)
    like = reader.skeleton
    steps = parse_plan(plan)
    ends = plan_dims(like, steps)
    if ends:
        hf.check_dims(ends[-1], like.arch, like.causal, reader.config)
    name = dtype or {v: k for k, v in DTYPE_NAMES.items()}[reader.stored_dtype]
    st = DTYPE_NAMES[name]
    slots = _slots(like.N, steps)
    module = reader.module
    files = [f"model-{i + 1:05d}-of-{len(slots) + 1:05d}.safetensors" for i in range(len(slots) + 1)]
    meta = {"format": "pt", hf.MARK: version()}
    weight_map: dict = {}
    total = 0
    options = set()
    cfg = None
    layer_prefix = None
    with replace_directory(out_dir, hf._is_ours, name="out_dir") as tmp:
        # the model-wide tensors: the hidden steps on a model without layers (copied as stored without one)
        hidden = any(step.op == "hidden" for step in steps)
        if not hidden and all(reader.tensors.entries[t][1] == st for t in reader.kinds.values()):
            out = {t: reader.tensors.raw(t) for t in reader.kinds.values()}
            write_safetensors_raw(os.path.join(tmp, files[-1]), out, st, meta)
            total += sum(int(a.size) for a in out.values()) * STORED[st].itemsize
            weight_map.update({k: files[-1] for k in out})
            del out
        else:
            mw = {k: _writable(reader.model_tensor(k)) for k in ("embed", "pos", "w_out", "final_norm", "final_norm_b")}
            m = Model(
                layers=(),
                norm_eps=like.norm_eps,
                causal=like.causal,
                arch=like.arch,
                max_seq=like.max_seq if mw["pos"] is None else None,
                **mw,
            )
            del mw
            for step in steps:
                if step.op == "hidden":
                    m = _apply(m, step, init, seed)
            out = {}
            for kind, tensor in reader.kinds.items():  # names and orientation as stored: nn.Linear's lm_head [V, h]
                a = getattr(m, kind)
                out[tensor] = np.ascontiguousarray(a.T) if kind == "w_out" else a
            del m
            write_safetensors_raw(os.path.join(tmp, files[-1]), out, st, meta)
            total += sum(int(a.size) for a in out.values()) * STORED[st].itemsize
            weight_map.update({k: files[-1] for k in out})
            del out
        for j, slot in enumerate(slots):
            if slot["origin"][0] == "base" and not slot["steps"]:
                names = reader.layer_names.get(slot["origin"][1], [])
                if all(reader.tensors.entries[t][1] == st for t in names):  # unchanged: copied as stored
                    out = {_renumber(t, j): reader.tensors.raw(t) for t in names}
                    write_safetensors_raw(os.path.join(tmp, files[j]), out, st, meta)
                    total += sum(int(a.size) for a in out.values()) * STORED[st].itemsize
                    weight_map.update({k: files[j] for k in out})
                    del out
                    continue
            m = _layer_model(reader, slot, steps, like, init, seed + j)
            reader.drop()  # the input layer's arrays the grown layer does not hold are freed here
            options.add((m.norm_eps, m.arch.rope_theta))
            for a in named_tensors(m).values():
                # read-only: to_hf then transposes nn.Linear's weights as views instead of copies
                # (fpt_ref.hf.common.t), and the writer rounds them in blocks of rows
                a.flags.writeable = False
            cfg, tensors = module.to_hf(m, _config(reader.config, m))
            del m
            out = {}
            for k, v in tensors.items():
                if _is_layer(k):
                    layer_prefix = k[: k.index(".0.") + 1] if layer_prefix is None else layer_prefix
                    out[k.replace(layer_prefix + "0.", f"{layer_prefix}{j}.", 1)] = v
            del tensors
            write_safetensors_raw(os.path.join(tmp, files[j]), out, st, meta)
            total += sum(int(a.size) for a in out.values()) * STORED[st].itemsize
            weight_map.update({k: files[j] for k in out})
            del out
        reader.drop()
        if len(options) > 1:
            raise ValueError(
                f"plan: the layers grown one at a time disagree on norm_eps or rope_theta ({sorted(options)}): "
                "a step that changes a model-wide option must select every layer"
            )
        if cfg is None:  # every layer copied as stored: the config of one of them, as read
            m = _layer_model(reader, slots[0], steps, like, init, seed)
            cfg, _ = module.to_hf(m, _config(reader.config, m))
            del m
        cfg = dict(cfg)
        for key in ("vocab_size", "max_position_embeddings", "n_positions", "n_ctx"):  # no step changes them
            if key in reader.config:
                cfg[key] = reader.config[key]
        n_out = len(slots)
        for key in ("num_hidden_layers", "n_layer"):
            if key in cfg:
                cfg[key] = n_out
        if cfg.get("layer_types") is not None:
            cfg["layer_types"] = ["full_attention"] * n_out
        cfg["dtype"] = name
        if "torch_dtype" in cfg:
            cfg["torch_dtype"] = name
        write_text(os.path.join(tmp, CONFIG), json.dumps(cfg, indent=2, sort_keys=True) + "\n", "out_dir")
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        write_text(os.path.join(tmp, INDEX), json.dumps(index, indent=2, sort_keys=True) + "\n", "out_dir")
        for f in hf.COPIED:
            src = os.path.join(os.fspath(path), f)
            if os.path.isfile(src):
                with open(src, "rb") as fh:
                    write_bytes(os.path.join(tmp, f), fh.read(), "out_dir")
        cert = None
        if check:
            from ..certify.stream import certify_folders

            cert = certify_folders(path, tmp, steps=_growth_steps(steps), max_seq=max_seq)
            if not cert.ok:
                first = cert.first
                assert first is not None  # a certificate that fails names its first finding
                raise ValueError(
                    f"plan: the grown folder is not certified, nothing written: {first.tensor}"
                    f"{(' ' + first.block) if first.block else ''}: {first.reason}"
                )
    return cert


def _renumber(name: str, j: int) -> str:
    """Tensor ``name`` of some layer as the same tensor of layer ``j``."""
    import re

    return re.sub(r"((?:^|\.)(?:layers|h)\.)[0-9]+\.", lambda m: f"{m.group(1)}{j}.", name, count=1)


def _writable(a):
    return None if a is None else np.array(a)


def _is_layer(name: str) -> bool:
    from .stream import _LAYER

    return _LAYER.search(name) is not None


def _config(base: dict, m: Model) -> dict:
    """``base`` with ``layer_types`` cut to one entry (the one-layer model's config)."""
    cfg = dict(base)
    for key in ("num_hidden_layers", "n_layer"):
        if key in cfg:
            cfg[key] = 1
    if cfg.get("layer_types") is not None:
        cfg["layer_types"] = cfg["layer_types"][:1]
    return cfg
