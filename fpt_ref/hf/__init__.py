"""Hugging Face checkpoint folders: read them into fpt_ref models and write models back (docs/hf.md).

A checkpoint folder holds ``config.json`` and ``model.safetensors`` (or shards listed by
``model.safetensors.index.json``). No torch is needed: tensors are read with safetensors'
NumPy API (:mod:`fpt_ref.hf.files`), bfloat16 widened by bit manipulation.

- :func:`load` ``(path) -> Model``; :func:`read` gives the :class:`Checkpoint` (model,
  config dict, family, stored dtype).
- :func:`expand` ``(path, plan, out_dir)`` grows a checkpoint folder by a plan (refused before
  any step runs when the end state does not fit the config) and writes the result.
- :func:`save` ``(model, out_dir, like=...)`` writes ``config.json`` (the base config with
  every size field replaced) and the tensors, in the base's dtype unless ``dtype`` is given;
  a model the family's config cannot express is refused before anything is written
  (:func:`check`), naming the config field.

Checkpoints too large to load: :mod:`fpt_ref.hf.stream` reads a folder a layer at a time and
:func:`fpt_ref.hf.stream_expand.expand_stream` grows one a layer at a time (docs/hf.md).

Families: ``llama``, ``mistral``, ``qwen2`` (:mod:`fpt_ref.hf.llama`) and ``gpt2``
(:mod:`fpt_ref.hf.gpt2`).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

import numpy as np

from ..files import replace_directory, write_text
from ..model import Model
from . import gpt2, llama
from .files import CONFIG, CONFIG_DTYPES, DTYPE_NAMES, INDEX, SINGLE, Tensors, is_checkpoint, read_config, read_header

__all__ = [
    "Checkpoint",
    "read",
    "load",
    "save",
    "expand",
    "check",
    "check_out_dir",
    "plan_checkpoint",
    "check_dims",
    "family_of",
    "is_checkpoint",
    "FAMILIES",
]

#: model_type -> module with ``to_model``, ``check``, ``to_hf``
FAMILIES = {**{m: llama for m in llama.MODEL_TYPES}, **{m: gpt2 for m in gpt2.MODEL_TYPES}}
#: model types refused with the block they would need
UNSUPPORTED = {
    "qwen3": "per-head query/key norms (q_norm, k_norm over head_dim)",
    "qwen3_moe": "per-head query/key norms and a mixture of experts",
    "mixtral": "a mixture of experts (block_sparse_moe)",
    "qwen2_moe": "a mixture of experts",
    "gemma": "an embedding scaled by sqrt(hidden_size) and (1 + weight) norm gains",
    "gemma2": "logit soft-capping, post-norms and sliding layers",
    "gemma3": "per-head query/key norms, post-norms and sliding layers",
    "phi3": "fused qkv_proj and gate_up_proj with partial rotary",
}
#: other files of a checkpoint folder that :func:`save` copies from a ``like`` folder
COPIED = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
#: safetensors metadata key marking a folder written by :func:`save`
MARK = "fpt_ref"
_SHARD = re.compile(r"^model-[0-9]{5}-of-[0-9]{5}\.safetensors$")
#: default shard size of :func:`save` (bytes): above it the tensors go to shards with an index
SHARD_BYTES = 5 * 1024**3


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint folder read by :func:`read`.

    Attributes
    ----------
    model : Model
        The fpt_ref model (arrays in the working dtype).
    config : dict
        ``config.json`` as read.
    family : str
        ``config["model_type"]``.
    stored_dtype : str
        The dtype of the stored tensors: ``"float32"``, ``"bfloat16"``, ``"float16"`` or ``"float64"``.
    """

    model: Model
    config: dict
    family: str
    stored_dtype: str


def family_of(config: dict):
    """The family module (:mod:`fpt_ref.hf.llama`, :mod:`fpt_ref.hf.gpt2`) of a config dict."""
    kind = config.get("model_type")
    if kind in FAMILIES:
        return FAMILIES[kind]
    if kind in UNSUPPORTED:
        raise ValueError(f"config: model_type {kind!r} is not supported: it has {UNSUPPORTED[kind]}")
    raise ValueError(f"config: model_type {kind!r} is not supported (supported: {', '.join(FAMILIES)})")


def _working_dtype(dtype):
    dt = np.dtype(dtype)
    if dt not in (np.float64, np.float32):
        raise ValueError(f"dtype: the working dtype must be float64 or float32, got {dt}")
    return dt


def read(path, dtype="float64", max_seq: int | None = None) -> Checkpoint:
    """Read checkpoint folder ``path`` into a :class:`Checkpoint`.

    Parameters
    ----------
    path : str or os.PathLike
        A folder with ``config.json`` and ``model.safetensors`` (or its shards and index).
    dtype : {"float64", "float32"}
        The working dtype of the model's arrays; every stored dtype widens exactly to float64.
    max_seq : int, optional
        Cap on ``s_max``: RoPE families store ``min(max_position_embeddings, max_seq)``,
        GPT-2 keeps the first ``max_seq`` rows of ``wpe``. ``fpt_ref.verify`` covers every
        position up to ``s_max``, so small caps keep checks fast.

    Raises
    ------
    ValueError
        Starting ``path:`` for a folder that is not a readable checkpoint, ``config:`` for a
        setting, block or tensor the reader does not support (naming the field or tensor).
    """
    from ..checks import check_int
    from ..memory import require

    dt = _working_dtype(dtype)
    if max_seq is not None:
        max_seq = check_int("max_seq", max_seq, 1)
    folder = os.fspath(path)
    if not os.path.isdir(folder):
        raise ValueError(f"path: {folder} is not a folder")
    config = read_config(folder)
    module = family_of(config)
    tensors = Tensors(folder)
    require(tensors.nbytes(dt.itemsize), f"loading {folder}")
    model = module.to_model(config, tensors, dtype=dt, max_seq=max_seq)
    return Checkpoint(model, config, config["model_type"], CONFIG_DTYPES[tensors.stored_dtype()])


def load(path, dtype="float64", max_seq: int | None = None):
    """The fpt_ref :class:`~fpt_ref.model.Model` of checkpoint folder ``path`` (:func:`read`)."""
    return read(path, dtype=dtype, max_seq=max_seq).model


def _base(like) -> tuple:
    """``(config dict, dtype name)`` of ``like``: a Checkpoint, a folder or a config dict."""
    if isinstance(like, Checkpoint):
        return dict(like.config), like.stored_dtype
    if isinstance(like, dict):
        config = dict(like)
        name = config.get("dtype", config.get("torch_dtype")) or "float32"
        return config, name if name in DTYPE_NAMES else "float32"
    if isinstance(like, (str, os.PathLike)):
        folder = os.fspath(like)
        if not is_checkpoint(folder):
            raise ValueError(f"like: {folder} is not a checkpoint folder (config.json and model.safetensors)")
        return read_config(folder), CONFIG_DTYPES[Tensors(folder).stored_dtype()]
    raise TypeError(f"like: expected a Checkpoint, a checkpoint folder or a config dict, got {type(like).__name__}")


def check(model, like) -> None:
    """Refuse (``ValueError`` starting ``model:``, naming the config field) a model that the
    config family of ``like`` cannot express; return None when :func:`save` would accept it."""
    config, _ = _base(like)
    family_of(config).to_hf(model, config)


def check_dims(d: dict, arch, causal: bool, like) -> None:
    """:func:`check` from dimensions alone (:func:`fpt_ref.model.dims`, e.g. the end state of
    :func:`fpt_ref.plan.plan_dims`), so a plan can be refused before it runs."""
    config, _ = _base(like)
    module = family_of(config)
    if module is gpt2:
        gpt2.check(d, arch, causal, config)
    else:
        llama.check(d, arch, causal, config, config["model_type"])


def _is_ours(folder: str) -> bool:
    names = os.listdir(folder)
    allowed = {CONFIG, INDEX, SINGLE, *COPIED}
    if not all(n in allowed or _SHARD.match(n) for n in names):
        return False
    weights = sorted(n for n in names if n == SINGLE or _SHARD.match(n))
    if not weights:
        return False
    try:
        meta, _, _ = read_header(os.path.join(folder, weights[0]))
    except (OSError, ValueError):
        return False
    return MARK in meta


def check_out_dir(out_dir) -> None:
    """``ValueError`` naming ``out_dir`` unless it is new, empty or a folder this package wrote
    (checked before any work; :func:`save` replaces only such a folder)."""
    raw = os.fspath(out_dir)
    if os.path.exists(raw) and (not os.path.isdir(raw) or (os.listdir(raw) and not _is_ours(raw))):
        raise ValueError(f"out_dir: {raw} is not a new, empty or earlier output folder")


def save(model, out_dir, like, dtype: str | None = None, shard_bytes: int | None = SHARD_BYTES) -> str:
    """Write ``model`` as a Hugging Face checkpoint folder ``out_dir``.

    Parameters
    ----------
    model : Model
    out_dir : str or os.PathLike
        A new or empty folder, or one :func:`save` wrote before (replaced as a whole). The
        folder is built beside it and renamed into place (:func:`fpt_ref.files.replace_directory`).
    like : Checkpoint, folder or dict
        The base checkpoint: its config gives the family and every field the model does not
        determine (copied); a folder also gives its tokenizer and generation files (copied).
    dtype : {"float32", "bfloat16", "float16", "float64"}, optional
        The stored dtype; default the base's (a folder's tensors, a config's ``dtype``).
        bfloat16 and float16 round to nearest, ties to even, from the model's values.
    shard_bytes : int or None
        Above this many bytes the tensors go to shards ``model-0000i-of-0000n.safetensors``
        with ``model.safetensors.index.json``; None writes one file.

    Returns
    -------
    str
        The real path of the folder written.

    Raises
    ------
    ValueError
        Starting ``model:`` (naming the config field) for a model the config cannot express,
        ``dtype:``, ``like:``, ``out_dir:``; all before anything is written.
    """
    from ..checks import check_int
    from ..files import write_bytes
    from .files import write_checkpoint_tensors

    config, base_dtype = _base(like)
    name = base_dtype if dtype is None else dtype
    if name not in DTYPE_NAMES:
        raise ValueError(f"dtype: expected one of {', '.join(DTYPE_NAMES)}, got {dtype!r}")
    if shard_bytes is not None:
        shard_bytes = check_int("shard_bytes", shard_bytes, 1)
    cfg, tensors = family_of(config).to_hf(model, config)
    cfg["dtype"] = name
    if "torch_dtype" in cfg:
        cfg["torch_dtype"] = name
    copied = {}
    if isinstance(like, (str, os.PathLike)):
        for f in COPIED:
            src = os.path.join(os.fspath(like), f)
            if os.path.isfile(src):
                copied[f] = src
    from .._version import version

    meta = {"format": "pt", MARK: version()}
    text = json.dumps(cfg, indent=2, sort_keys=True) + "\n"
    with replace_directory(out_dir, _is_ours, name="out_dir") as tmp:
        write_checkpoint_tensors(tmp, tensors, DTYPE_NAMES[name], meta, shard_bytes)
        write_text(os.path.join(tmp, CONFIG), text, "out_dir")
        for f, src in copied.items():
            with open(src, "rb") as fh:
                write_bytes(os.path.join(tmp, f), fh.read(), "out_dir")
    return os.path.realpath(os.fspath(out_dir))


def plan_checkpoint(path, plan, out_dir, dtype: str | None = None, max_seq: int | None = None) -> tuple:
    """``(Checkpoint, steps)``: everything :func:`expand` checks before any step runs.

    ``dtype`` (a stored dtype or None), ``out_dir`` (:func:`check_out_dir`), the checkpoint
    (:func:`read`), the plan (:func:`fpt_ref.plan.parse_plan`) and its end state against the
    family's config (:func:`check_dims`); ``ValueError`` naming the first that fails.
    """
    from ..plan import parse_plan, plan_dims

    if dtype is not None and dtype not in DTYPE_NAMES:
        raise ValueError(f"dtype: expected one of {', '.join(DTYPE_NAMES)}, got {dtype!r}")
    check_out_dir(out_dir)
    ck = read(path, max_seq=max_seq)
    steps = parse_plan(plan)
    ends = plan_dims(ck.model, steps)
    if ends:
        check_dims(ends[-1], ck.model.arch, ck.model.causal, ck)
    return ck, steps


def expand(
    path,
    plan,
    out_dir,
    dtype: str | None = None,
    max_seq: int | None = None,
    init="normal",
    seed: int | None = 0,
    check: bool = True,
    shard_bytes: int | None = SHARD_BYTES,
) -> list:
    """Grow checkpoint folder ``path`` by ``plan`` and write the result as a checkpoint folder.

    The plan's end state is checked against the family's config (:func:`check_dims`) and
    ``dtype`` and ``out_dir`` are checked before any step runs; then the steps run
    (:func:`fpt_ref.plan.run_plan`, float64), and with ``check`` every step is verified against
    the base (every token id and position up to ``s_max``: cap it with ``max_seq``) and audited
    block by block. Nothing is written unless every step is preserving; the folder is written
    by :func:`save` with ``like=path`` (its config, dtype and tokenizer files).

    Returns
    -------
    list of :class:`fpt_ref.plan.StepResult`

    Raises
    ------
    ValueError
        ``model:`` naming the config field the end state cannot fill, ``plan:`` for a refused
        or non-preserving step, ``path:``/``config:`` for the input, ``dtype:``, ``out_dir:``.
    """
    from ..plan import run_plan

    ck, steps = plan_checkpoint(path, plan, out_dir, dtype=dtype, max_seq=max_seq)
    results = run_plan(ck.model, steps, init=init, seed=seed, check=check)
    for r in results:
        if check and not r.error["ok"]:
            raise ValueError(f"plan: step {r.step} is not preserving: {r.row()}")
    save(results[-1].model if results else ck.model, out_dir, like=path, dtype=dtype, shard_bytes=shard_bytes)
    return results
