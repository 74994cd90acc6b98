"""Build the cases of :mod:`fpt_ref.vectors.cases` and write one directory per case.

Layout of ``DIR`` (docs/vectors.md):

    DIR/index.json                      the architectures; every case: name, path, kind, step, parent, arch
    DIR/<family>/<case>/model.safetensors    the model (fpt_ref.save, float64)
                        inputs.safetensors   ``tokens`` [b, s] int64 or ``inputs`` [b, s, h] float64
                        outputs.safetensors  ``output`` [b, s, o], ``residual.{n}`` [b, s, h], n = 0..N
                        manifest.json        what the case is, dims, blocks, tolerances, seeds, versions
                        vectors.npz          inputs and outputs again, for NumPy-only users
                        model.npz            the model's tensors again (same names as model.safetensors)
                        hf/                  with ``hf``: the model as a Hugging Face checkpoint folder
                                             (config.json, model.safetensors; float64), when a config can
                                             express it (:func:`hf_layout`)
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import __version__
from ..checks import check_int
from ..files import replace_directory, write_npz, write_safetensors, write_text
from ..forward import trace
from ..init import init_model, random_inputs
from ..io import save
from ..memory import ResourceError, require
from ..model import Model, dims, named_tensors, param_count
from ..names import residual_name
from ..plan import apply_step, parse_plan
from ..tolerance import C_IN, C_LAYER, C_OUT, decidable, error_stats, tolerances, top2_gap
from .cases import ALL_FAMILIES, EXPANSIONS, Config, Family, base_kwargs, families, plan_steps, single_steps
from .describe import conventions, needs

FORMAT = "fpt-ref-vectors/1"
#: draws of a family's inputs looking for one without float32 argmax near-ties (an output over
#: the vocabulary, as in the preset families, has more near-ties: ``small`` needs up to 20 draws)
INPUT_ATTEMPTS = 30
#: the case's Hugging Face checkpoint folder, relative to the case directory
HF_FOLDER = "hf"
#: stored dtype of the Hugging Face folders: the reference's values exactly
HF_DTYPE = "float64"
#: base config of each preset's Hugging Face folders (:func:`fpt_ref.hf.save` ``like``); the sizes come from the model
HF_LIKE: dict[str, dict[str, Any]] = {
    "llama": {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_act": "silu",
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "bos_token_id": None,
        "eos_token_id": None,
    },
    "qwen2": {
        "model_type": "qwen2",
        "architectures": ["Qwen2ForCausalLM"],
        "hidden_act": "silu",
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "use_sliding_window": False,
        "bos_token_id": None,
        "eos_token_id": None,
    },
    "gpt2": {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "activation_function": "gelu_new",
        "bos_token_id": None,  # no tokenizer: token ids carry no meaning (GPT-2's default 50256 is beyond the vocabulary)
        "eos_token_id": None,
    },
}
#: the agreement policy (:func:`fpt_ref.tolerances` dtype) that bounds transformers' float64
#: logits of each preset against the reference (docs/hf.md, "Agreement with transformers")
HF_AGREEMENT = {
    "llama": (
        "float32",
        "transformers' float64 Llama computes RMSNorm, the RoPE angles and the softmax in float32",
    ),
    "qwen2": (
        "float32",
        "transformers' float64 Qwen2 computes RMSNorm, the RoPE angles and the softmax in float32",
    ),
    "gpt2": ("float64", "transformers' float64 GPT-2 is float64 throughout"),
}


@dataclass(frozen=True)
class Case:
    """One case: a model, how it was made, and the manifest blocks of the step that made it."""

    name: str  # "<family>/<case>"
    family: Family
    kind: str  # "base" | "expansion" | "plan-step"
    model: Model
    step: str | None = None
    step_index: int | None = None  # 1-based, plan steps only
    plan: str | None = None
    parent: str | None = None
    blocks: tuple = ()
    seed: int | None = None  # seed of init_model (base) or of the expansion's free blocks


def family_seed(seed: int, index: int) -> int:
    """Seed of family ``index``'s base model (``index`` in :data:`fpt_ref.vectors.cases.ALL_FAMILIES`,
    so that a family's files do not depend on which others are written)."""
    return seed * 1000 + 101 * index


def build_family(cfg: Config, fam: Family, fseed: int) -> list:
    """All cases of one family: base, the six single expansions, the composed plan's steps."""
    base = init_model(**base_kwargs(cfg, fam, fseed))
    root = f"{fam.name}/base"
    cases = [Case(root, fam, "base", base, seed=fseed)]
    for j, (op, text) in enumerate(single_steps(base).items()):
        assert op == EXPANSIONS[j]
        (step,) = parse_plan(text)
        sd = fseed + 1 + j
        model, blocks = apply_step(base, step, seed=sd, return_manifest=True)
        cases.append(
            Case(f"{fam.name}/{op}", fam, "expansion", model, str(step), parent=root, blocks=tuple(blocks), seed=sd)
        )
    plan = plan_steps(base, cfg)
    steps = parse_plan(plan)
    current, parent = base, root
    for i, step in enumerate(steps, start=1):
        sd = fseed + 10 + i
        current, blocks = apply_step(current, step, seed=sd, return_manifest=True)
        name = f"{fam.name}/plan.{i}-{step.op}"
        cases.append(
            Case(name, fam, "plan-step", current, str(step), i, "; ".join(map(str, steps)), parent, tuple(blocks), sd)
        )
        parent = name
    return cases


def case_inputs(model: Model, x_base):
    """The family's inputs for ``model``: tokens as they are, real inputs zero-padded to ``h``.

    Returns int64 [b, s] or float64 [b, s, h].
    """
    x = np.asarray(x_base)
    if model.embed is not None:
        return x.astype(np.int64)  # [b, s]
    pad = model.h - x.shape[-1]
    return np.pad(x, [(0, 0), (0, 0), (0, pad)]).astype(np.float64)  # [b, s, h]


def reference(model: Model, x) -> dict:
    """float64 ``output`` [b, s, o] and ``residual.{n}`` [b, s, h], n = 0..N."""
    tr = trace(model, x)  # one walk: the output and the N + 1 residual streams [b, s, h]
    out = {"output": np.asarray(tr.output)}  # [b, s, o]
    out.update({residual_name(n): np.asarray(r) for n, r in enumerate(tr.streams)})
    return out


def choose_inputs(cases: list, cfg: Config, fseed: int):
    """Draw the family's inputs so that no case has a float32 argmax near-tie, if possible.

    Up to :data:`INPUT_ATTEMPTS` draws; the first without near-ties is taken, else the one
    with the fewest (the rest are recorded in the manifest and exempt in ``compare``).
    Returns ``(x_base, inputs_seed, refs, tols)`` with ``refs``/``tols`` per case name.
    """
    base = cases[0].model
    best = None
    for attempt in range(INPUT_ATTEMPTS):
        iseed = fseed + 500 + attempt
        x = random_inputs(base, batch=cfg.batch, seq=cfg.seq, seed=iseed)  # [b, s] or [b, s, h]
        refs, tols, ties = {}, {}, 0
        for c in cases:
            refs[c.name] = reference(c.model, case_inputs(c.model, x))
            tols[c.name] = tolerances(c.model, case_inputs(c.model, x), refs[c.name])
            t = tols[c.name]["float32"]["output"]
            ties += int(np.sum(~decidable(refs[c.name]["output"], t["atol"], t["rtol"])))
        if best is None or ties < best[0]:
            best = (ties, x, iseed, refs, tols)
        if ties == 0:
            break
    assert best is not None  # INPUT_ATTEMPTS >= 1 draws
    return best[1:]


def _versions() -> dict:
    import safetensors

    return {
        "fpt_ref": __version__,
        "numpy": np.__version__,
        "safetensors": safetensors.__version__,
        "python": platform.python_version(),
    }


def _role_summary(blocks) -> dict:
    out: dict[str, list[str]] = {}
    for b in blocks:
        out.setdefault(b.role, [])
        if b.tensor not in out[b.role]:
            out[b.role].append(b.tensor)
    return out


def manifest(case: Case, cfg: Config, seed: int, x, iseed: int, ref: dict, tol: dict, root_out, parent_out) -> dict:
    """The manifest.json content of one case (docs/vectors.md, "Manifest")."""
    m = case.model
    argmax: dict[str, float | list[list[int]]] = {"min_top2_gap": float(np.min(top2_gap(ref["output"])))}
    for dt, per in tol.items():
        dec = decidable(ref["output"], per["output"]["atol"], per["output"]["rtol"])
        argmax[f"near_ties_{dt}"] = [list(map(int, ix)) for ix in np.argwhere(~dec)]
    what = {
        "base": "base model",
        "expansion": f"the single expansion '{case.step}' applied to {case.parent}",
        "plan-step": f"step {case.step_index} ('{case.step}') of the plan '{case.plan}', applied to {case.parent}",
    }[case.kind]
    return {
        "format": FORMAT,
        "case": case.name,
        "family": case.family.name,
        "kind": case.kind,
        "description": what,
        "step": case.step,
        "step_index": case.step_index,
        "plan": case.plan,
        "parent": case.parent,
        "root": f"{case.family.name}/base",
        "model": {
            "file": "model.safetensors",
            "dtype": "float64",
            "norm_eps": float(m.norm_eps),
            "causal": bool(m.causal),
            "input": "tokens" if m.embed is not None else "inputs",
            "dims": dims(m),
            "params": param_count(m),
            "preset": case.family.arch,
            "arch": m.arch.to_dict(),
            "needs": needs(m),
            "conventions": conventions(m),
        },
        "inputs": {
            "name": "tokens" if m.embed is not None else "inputs",
            "shape": list(x.shape),
            "dtype": str(x.dtype),
        },
        "outputs": {name: list(a.shape) for name, a in ref.items()},
        "blocks": [b.to_dict() for b in case.blocks],
        "block_roles": _role_summary(case.blocks),
        "tolerance": {
            "rule": "|actual - ref| <= atol + rtol * |ref| elementwise; rtol = L * (u_dtype + u_float64), "
            "atol = rtol * scale (scale: largest sum of absolute summands of an entry)",
            "constants": {"C_IN": C_IN, "C_LAYER": C_LAYER, "C_OUT": C_OUT},
            **tol,
        },
        "argmax": argmax,
        "preservation": {
            "vs_root": error_stats(root_out, ref["output"]),
            "vs_parent": None if parent_out is None else error_stats(parent_out, ref["output"]),
        },
        "seed": seed,
        "seeds": {"model_or_step": case.seed, "inputs": iseed},
        "config": cfg.to_dict(),
        "versions": _versions(),
        "files": {
            "model": "model.safetensors",
            "inputs": "inputs.safetensors",
            "outputs": "outputs.safetensors",
            "npz": "vectors.npz",
            "model_npz": "model.npz",
        },
    }


def _hf_path(case_name: str) -> str:
    return f"{case_name}/{HF_FOLDER}"


def hf_reason(case: Case) -> str | None:
    """Why ``case``'s model has no Hugging Face checkpoint folder, or None when it can have one.

    The reason of a preset family's case is :func:`fpt_ref.hf.check`'s message (the config
    field that cannot express the model: per-layer widths, ``k != v``, ...).
    """
    arch = case.family.arch
    if arch not in HF_LIKE:
        return "the paper's model (docs/spec.md section 1) has no Hugging Face architecture"
    from .. import hf

    try:
        hf.check(case.model, HF_LIKE[arch])
    except ValueError as exc:
        return str(exc)
    return None


def hf_layout(case: Case, reasons: dict) -> dict:
    """The ``hf`` entry of ``case``'s manifest (docs/vectors.md, "Hugging Face layout").

    ``reasons`` maps every case name of the family to :func:`hf_reason`. ``folder`` is the
    case's checkpoint folder (relative to the case directory) or None with ``reason``;
    ``base`` and ``parent`` are the folders (relative to the vectors directory) of the
    family's base and of the case's parent, None where they have none.
    """
    reason = reasons[case.name]
    root = f"{case.family.name}/base"
    arch = case.family.arch
    out: dict[str, Any] = {"folder": None if reason else HF_FOLDER, "reason": reason}
    if arch in HF_LIKE:
        policy, why = HF_AGREEMENT[arch]
        out.update(
            model_type=HF_LIKE[arch]["model_type"],
            dtype=HF_DTYPE,
            config=None if reason else f"{HF_FOLDER}/config.json",
            weights=None if reason else f"{HF_FOLDER}/model.safetensors",
            base=None if reasons[root] else _hf_path(root),
            parent=None if case.parent is None or reasons[case.parent] else _hf_path(case.parent),
            agreement={
                "policy": policy,
                "why": why,
                "tolerance": f"tolerance.{policy}.output",
            },
        )
    return out


def write_case(case_dir: str, case: Case, x, ref: dict, man: dict) -> None:
    """Write the six files of one case into ``case_dir`` (created), each byte-reproducible; with an
    ``hf`` entry naming a folder, the model as a Hugging Face checkpoint folder too."""
    os.makedirs(case_dir, exist_ok=True)
    save(case.model, os.path.join(case_dir, "model.safetensors"))
    in_name = man["inputs"]["name"]
    write_safetensors(os.path.join(case_dir, "inputs.safetensors"), {in_name: np.ascontiguousarray(x)})
    write_safetensors(
        os.path.join(case_dir, "outputs.safetensors"), {k: np.ascontiguousarray(v) for k, v in ref.items()}
    )
    write_npz(os.path.join(case_dir, "vectors.npz"), {in_name: x, **ref})
    write_npz(os.path.join(case_dir, "model.npz"), {k: np.asarray(v) for k, v in named_tensors(case.model).items()})
    # strict JSON for other languages
    write_text(os.path.join(case_dir, "manifest.json"), json.dumps(man, indent=1, allow_nan=False) + "\n")
    if man.get("hf", {}).get("folder"):
        from .. import hf

        like = HF_LIKE[case.family.arch]
        hf.save(case.model, os.path.join(case_dir, man["hf"]["folder"]), like=like, dtype=HF_DTYPE, shard_bytes=None)


def config_bytes(cfg: Config, archs="paper") -> int:
    """Upper estimate of the memory one family's cases hold (bytes), from the config alone.

    Every case model of a family is held at once (the base, six expansions, the plan's
    steps), each at most the size of the base grown by every step of the plan; plus their
    float64 reference outputs and residual streams, and one forward pass. With the
    families of real architectures (``archs``): up to ``3 heads`` heads per layer (grouped
    families and a whole added group), a gated MLP counted as a plain one of ``3/2 p`` units
    (three ``h x p`` matrices), ``o`` up to ``vocab`` (tied output).
    """
    from ..memory import dims_after, forward_bytes, model_bytes

    real = any(f.arch != "paper" for f in families(archs))
    N, E = cfg.layers, (3 * cfg.heads + 1 if real else cfg.heads + 1)  # hetero families: one more head on odd layers
    p, k, v = cfg.p + max(1, cfg.p // 2), cfg.k + 2 + (cfg.k % 2 if real else 0), cfg.v + 2
    p = p + p // 2 if real else p
    d: dict[str, Any] = {
        "h": cfg.h,
        "o": max(cfg.out_dim, cfg.vocab) if real else cfg.out_dim,
        "s_max": cfg.max_seq,
        "vocab": cfg.vocab,
        "N": N,
        "layers": [{"p": p, "heads": [[k, v]] * E} for _ in range(N)],
    }
    for step in parse_plan(cfg.plan) if cfg.plan else []:
        args = dict(step.args)
        if step.op == "add_layer":
            args.pop("count", None)
        d = dims_after(d, step.op, {k_: v_ for k_, v_ in args.items() if v_ is not None})
    n_cases = 1 + len(EXPANSIONS) + 8
    streams = cfg.batch * cfg.seq * (d["h"] * (d["N"] + 1) + d["o"]) * 8
    return n_cases * (model_bytes(d, 8) + streams) + forward_bytes(d, cfg.batch, cfg.seq, 8)


def is_vectors_dir(path: str) -> bool:
    """Whether ``path`` holds an earlier output of :func:`write_vectors` (its ``index.json``)."""
    try:
        with open(os.path.join(path, "index.json"), encoding="utf-8") as f:
            return json.load(f).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def write_vectors(out_dir, cfg: Config, seed: int = 0, archs="paper", hf: bool = False) -> list:
    """Build every case of ``cfg`` and write it under ``out_dir``; returns the index entries.

    ``archs`` selects the families by architecture (:func:`fpt_ref.vectors.cases.families`:
    ``"paper"``, the default, the four families of the paper's model; ``"all"``; or some of
    ``paper``, ``llama``, ``qwen2``, ``gpt2``, comma-separated or a list). A family's files
    are the same whichever others are written.

    With ``hf``, every case of a preset family (``llama``, ``qwen2``, ``gpt2``) whose model a
    Hugging Face config can express (:func:`fpt_ref.hf.check`) also gets its model as a
    checkpoint folder ``hf/`` (float64, :func:`fpt_ref.hf.save`); every manifest gets an
    ``hf`` entry (:func:`hf_layout`: the folder, or the reason it has none) and every index
    entry an ``hf`` path (or None). The other files are the same with or without ``hf``.

    ``out_dir`` is missing, empty, or an earlier output of this function: it is replaced as
    a whole (:func:`fpt_ref.files.replace_directory`), so no stale case of an older run
    survives; the new folder is built beside it and put in place only when complete.
    Same ``cfg`` and ``seed`` give byte-identical files.

    Raises ``ValueError`` when ``out_dir`` exists and is not a directory or holds something
    else, when ``seed`` is not an integer >= 0, when ``archs`` names an unknown architecture,
    when the config's dimensions do not allow the expansions (message names the family and
    the step), or (:class:`fpt_ref.memory.ResourceError`) when a family's models would not fit
    in memory.
    """
    seed = check_int("seed", seed, 0)
    if not isinstance(hf, bool):
        raise ValueError(f"hf: expected True or False, got {hf!r}")
    fams = families(archs)
    require(config_bytes(cfg, archs), f"config {cfg.name}: the cases of one family")
    with replace_directory(out_dir, is_vectors_dir, name="out_dir") as tmp:
        return _write_all(tmp, cfg, seed, fams, hf)


def _write_all(out_dir: str, cfg: Config, seed: int, fams: tuple, hf: bool = False) -> list:
    built = []  # every family is built before anything is written, so a bad plan leaves no partial output
    for fam in fams:
        fseed = family_seed(seed, ALL_FAMILIES.index(fam))
        try:
            built.append((fseed, build_family(cfg, fam, fseed)))
        except ValueError as exc:
            raise (
                type(exc)(f"family {fam.name}: {exc}")
                if isinstance(exc, ResourceError)
                else ValueError(f"family {fam.name}: {exc}")
            ) from None
    index = []
    for fseed, cases in built:
        x_base, iseed, refs, tols = choose_inputs(cases, cfg, fseed)
        root_out = refs[cases[0].name]["output"]
        reasons = {c.name: hf_reason(c) for c in cases} if hf else {}
        for c in cases:
            x = case_inputs(c.model, x_base)
            ref = refs[c.name]
            parent_out = None if c.parent is None else refs[c.parent]["output"]
            man = manifest(c, cfg, seed, x, iseed, ref, tols[c.name], root_out, parent_out)
            entry = {
                "case": c.name,
                "path": c.name,
                "kind": c.kind,
                "step": c.step,
                "parent": c.parent,
                "arch": c.family.arch,
            }
            if hf:
                man["hf"] = hf_layout(c, reasons)
                if man["hf"]["folder"]:
                    man["files"]["hf"] = man["hf"]["folder"]
                entry["hf"] = None if reasons[c.name] else _hf_path(c.name)
            write_case(os.path.join(out_dir, *c.name.split("/")), c, x, ref, man)
            index.append(entry)
    archs = sorted({f.arch for f in fams}, key=[f.arch for f in ALL_FAMILIES].index)
    text = json.dumps(
        {"format": FORMAT, "config": cfg.to_dict(), "seed": seed, "archs": archs, "cases": index}, indent=1
    )
    write_text(os.path.join(out_dir, "index.json"), text + "\n")
    return index
