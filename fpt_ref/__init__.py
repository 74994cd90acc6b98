"""fpt-ref: reference implementation of composable function-preserving transformer expansions.

Gesmundo & Maile, arXiv:2308.06103. The specification is docs/spec.md; it overrides this code.
"""

from ._version import version as _version
from .blocks import PRESETS, Arch
from .expansions import Block, add_heads, add_layer, expand_attention, expand_heads, expand_hidden, expand_mlp
from .forward import Trace, forward, residual_streams, trace
from .init import init_model, random_inputs
from .io import FormatError, load, save
from .model import Head, Layer, Model, convert, dims, from_tensors, named_tensors, param_count, to_tensors
from .plan import PlanError, Step, apply_step, parse_plan, run_plan
from .tolerance import error_stats, natural_scale, tolerance_abs, tolerance_ulps, tolerances
from .verify import verify, verify_each

__version__ = _version()

__all__ = [
    "Arch",
    "PRESETS",
    "Model",
    "Layer",
    "Head",
    "Block",
    "init_model",
    "random_inputs",
    "forward",
    "residual_streams",
    "trace",
    "Trace",
    "load",
    "save",
    "FormatError",
    "expand_mlp",
    "add_heads",
    "expand_heads",
    "expand_attention",
    "expand_hidden",
    "add_layer",
    "parse_plan",
    "run_plan",
    "apply_step",
    "Step",
    "PlanError",
    "verify",
    "verify_each",
    "convert",
    "error_stats",
    "tolerance_ulps",
    "tolerance_abs",
    "natural_scale",
    "tolerances",
    "dims",
    "named_tensors",
    "from_tensors",
    "to_tensors",
    "param_count",
]
