"""Certify two checkpoint folders a layer at a time, read from the safetensors files (docs/certify.md section 7).

:func:`certify_folders` runs the block audit of :func:`fpt_ref.certify.certify` (the same
alignment, the same checks, the same findings) without loading either model: both folders are
opened by :class:`fpt_ref.hf.stream.Stream` (config, names and shapes checked, no values read);
the model-wide tensors are compared one kind at a time (the base's and the grown one's
embedding, then the output matrix, then the final norm); the layer alignment asks for layers in
grown order and each reader keeps one layer, so at most one base and one grown layer are held.
A pair of layers enters the full audit only when row 0 of their two MLP matrices (a few
kilobytes read from the files) holds the base's values, as in the in-memory alignment. A pair
stored with the same bytes and structure (hidden size unchanged) is compared in the files and
audited on the skeleton's shapes, without decoding; so are the model-wide tensors.

The forward check runs only with ``forward=True``, streamed too and on a sample of random
sequences (:mod:`fpt_ref.certify.stream_forward`): over every token id, as in memory, it is
too slow for two CPU cores on a billion parameters. Without it a certificate from here says
"blocks certified, forward not run" when every block, option and config field holds
(:attr:`Certificate.ok` is then true for the audit only; :attr:`Certificate.forward` is
``None``). The blocks certified are what makes the function preserved (docs/spec.md sections 2
and 4); the forward check is the independent numerical confirmation.

Working dtype: float32 for checkpoints stored in bf16, fp16 or float32 (exact widening), float64
when either stores float64; the scaled-block allowance is in ulps of that dtype.
"""

from __future__ import annotations

import os

import numpy as np

from .check import Checker, check_layer, check_model_tensors
from .infer import _order, align, audit, forward_findings, forward_not_run, holds_sample, not_identity, unit0_writes
from .report import Certificate


class _Tensors:
    """The model-wide attributes :func:`check_model_tensors` reads, one kind set at a time."""

    def __init__(self, **kw):
        for kind in ("embed", "pos", "w_out", "final_norm", "final_norm_b"):
            setattr(self, kind, kw.get(kind))


def _sample_fn(ctx, rb, rg):
    """``sample(i, j)`` from each layer's stored row 0 of its two MLP matrices (``None``: load the layers)."""
    cache: dict = {}

    def rows(reader, n):
        key = (id(reader), n)
        if key not in cache:
            cache[key] = reader.sample(n)
        return cache[key]

    if reader_has_no_sample(rb) or reader_has_no_sample(rg):
        return lambda i, j: holds_sample(ctx, rb.layer(i), rg.layer(j))

    def sample(i, j) -> bool:
        B, G = rb.skeleton.layers[i], rg.skeleton.layers[j]
        if G.p < B.p:
            return False
        (b1, b2), (g1, g2) = rows(rb, i), rows(rg, j)
        # the copied blocks hold the base's row 0 at its own width (old entries first)
        return _same(b1, g1[: b1.size]) and _same(b2, g2[: b2.size])

    return sample


def _same_tensor(rb, rg, kind: str) -> bool:
    """Model-wide tensor ``kind`` stored with the same bytes in both folders (or in neither)."""
    a, b = rb.kinds.get(kind), rg.kinds.get(kind)
    if a is None or b is None:
        return a is None and b is None
    from ..hf.files import STORED

    size = int(np.prod(rb.tensors.shape(a), dtype=np.int64)) * STORED[rb.tensors.entries[a][1]].itemsize
    rb.reads += size
    rg.reads += size
    return rb.tensors.same_stored(a, rg.tensors, b)


def reader_has_no_sample(reader) -> bool:
    from ..hf.stream import SAMPLED

    return reader.module.__name__ not in SAMPLED


def _same(a, b) -> bool:
    from .check import same_bits

    return a.shape == b.shape and same_bits(a, b)


def certify_folders(
    base,
    grown,
    *,
    steps: int = 1,
    dtype=None,
    configs: bool = True,
    max_seq=None,
    forward: bool = False,
    batch: int | None = None,
    seq: int | None = None,
    seed: int = 0,
) -> Certificate:
    """The block audit of checkpoint folder ``grown`` against ``base``, a layer at a time.

    Parameters
    ----------
    base, grown : str or os.PathLike
        Hugging Face checkpoint folders (:mod:`fpt_ref.hf`).
    steps : int
        As :func:`fpt_ref.certify.certify`.
    dtype : {"float32", "float64"} or None
        The working dtype of both; ``None``: float64 when either folder stores float64 tensors,
        else float32 (every stored value widens exactly).
    configs : bool
        Check both ``config.json`` files (:func:`fpt_ref.certify.config.check_configs`).
    max_seq : int, optional
        Cap on ``s_max`` (:func:`fpt_ref.hf.read`).
    forward : bool
        Also run the float64 forward check of both folders a layer at a time on a sample of
        random sequences (:func:`fpt_ref.certify.stream_forward.forward_folders`; ``batch``
        sequences of ``seq`` tokens, seed ``seed``; defaults there).

    Returns
    -------
    Certificate
        ``ok`` when every block, option and config field holds (and, with ``forward``, the
        sampled forward check passed); without ``forward``, ``forward`` is ``None`` (not run) and
        a note says so. ``reads``: bytes of stored values the block audit read from both folders.

    Raises
    ------
    ValueError
        Starting ``path:`` or ``config:`` for a folder that is not a readable checkpoint
        (as :func:`fpt_ref.hf.read`), ``dtype:``.
    """
    from ..checks import check_int
    from ..hf.stream import Stream, working_dtype

    steps = check_int("steps", steps, 1)
    if dtype is None:
        from ..hf.files import Tensors

        dtype = working_dtype(Tensors(os.fspath(base)), Tensors(os.fspath(grown)))
    rb, rg = Stream(base, dtype=dtype, max_seq=max_seq), Stream(grown, dtype=dtype, max_seq=max_seq)
    B, G = rb.skeleton, rg.skeleton

    def model_check(ctx) -> Checker:
        top = Checker(ctx)
        for kinds in (("embed",), ("pos",), ("w_out",), ("final_norm", "final_norm_b")):
            if ctx.h == ctx.hn and all(_same_tensor(rb, rg, k) for k in kinds):
                b = {k: getattr(B, k) for k in kinds}  # the same stored bytes: audited on the shapes alone
                top.merge(check_model_tensors(ctx, _Tensors(**b), _Tensors(**b)))
                continue
            g = {k: rg.model_tensor(k) for k in kinds}  # one kind of each model at a time
            b = {k: rb.model_tensor(k) for k in kinds}
            top.merge(check_model_tensors(ctx, _Tensors(**b), _Tensors(**g)))
            del g, b
        return top

    def pair(ctx, i, j):
        if ctx.h == ctx.hn and rb.same_layer(i, rg, j):
            # the same stored bytes and structure: the grown layer is the base layer, so its audit
            # is the base layer's against itself, run on the shapes alone (placeholders)
            return check_layer(ctx, B.layers[i], B.layers[i], i, j)
        # grown layer j is decoded once, and the base layer's tensors it stores as its leading
        # corners are views of it (the base's previous layer is dropped first, so that the grown
        # reader's pooled arrays are free again: no new pages)
        base = rb.layer_within(i, rg, j)
        return check_layer(ctx, base, rg.layer(j), i, j)

    def quick(ctx, j):
        rows = rg.unit0(j)
        return not_identity(ctx, rg.layer(j)) if rows is None else unit0_writes(ctx, *rows)

    def layer_align(ctx):
        out = align(
            ctx,
            B.N,
            G.N,
            rb.layer,
            rg.layer,
            _sample_fn(ctx, rb, rg),
            pair=lambda i, j: pair(ctx, i, j),
            quick=lambda j: quick(ctx, j),
        )
        rb.drop()
        rg.drop()
        return out

    cert, findings = audit(
        B,
        G,
        model_check,
        layer_align,
        base_config=rb.config if configs else None,
        grown_config=rg.config if configs else None,
        steps=steps,
    )
    cert.reads = rb.reads + rg.reads
    if findings is None:
        return cert
    if forward:
        findings += _sampled_forward(cert, base, grown, batch, seq, seed, max_seq, dtype)
    cert.findings = sorted(findings, key=_order(G))
    cert.ok = not cert.findings
    if forward:
        cert.notes.append(f"blocks streamed from the checkpoint folders in {np.dtype(dtype).name}")
    else:
        cert.notes.append(
            f"streamed from the checkpoint folders in {np.dtype(dtype).name}: the forward check was not run"
        )
    return cert


def _sampled_forward(cert: Certificate, base, grown, batch, seq, seed: int, max_seq, working) -> list:
    """The streamed forward check into ``cert.forward`` (and a note); a finding when it fails."""
    from .stream_forward import BATCH, SEQ, forward_folders

    dt = "float64"
    if np.dtype(working) == np.float32 and cert.scaled_rounding > 0:  # as fpt_ref.certify.certify's forward
        dt = "float32"
        cert.notes.append("forward check in float32: the stored scaled blocks are rounded in float32")
    try:
        res = forward_folders(
            base, grown, BATCH if batch is None else batch, SEQ if seq is None else seq, seed, max_seq, dt
        )
    except ValueError as exc:
        return forward_not_run(cert, exc)
    cert.forward = res
    shape = res["inputs"]["sets"]["random"]
    cert.notes.append(
        f"forward check streamed a layer at a time on a sample: {shape[0]} random sequences of {shape[1]} tokens "
        f"({res['inputs']['tokens_covered']} distinct token ids), not every token id"
    )
    return forward_findings(res)
