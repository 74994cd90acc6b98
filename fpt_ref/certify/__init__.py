"""``fpt-ref certify``: does a grown model, made by any tool, contain its base and compute its function?

No manifest is needed: :func:`certify` infers the layer alignment, the added heads and groups
and the widened tensors from the two models, audits every block under the constraint sets of
docs/spec.md sections 2 and 4 (:func:`fpt_ref.blocks.constraint_sets`), then runs both models
in float64. docs/certify.md describes what is accepted and rejected. :func:`certify_folders`
audits two Hugging Face checkpoint folders a layer at a time from the files, and with
``forward=True`` runs the forward check a layer at a time on a sample of random sequences
(docs/certify.md section 7).
"""

from __future__ import annotations

from .check import SCALED_ULPS
from .config import check_configs
from .infer import align_layers, certify, check_options
from .report import Certificate, format_certificate
from .stream import certify_folders

__all__ = [
    "Certificate",
    "certify",
    "certify_folders",
    "align_layers",
    "check_options",
    "check_configs",
    "format_certificate",
    "SCALED_ULPS",
]
