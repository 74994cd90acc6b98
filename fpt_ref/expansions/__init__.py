"""The six function-preserving expansions of docs/spec.md section 2, one per module."""

from ._common import ROLES, Block
from .add_heads import add_heads
from .add_layer import add_layer
from .attention import expand_attention
from .heads import expand_heads
from .hidden import expand_hidden
from .mlp import expand_mlp

__all__ = [
    "Block",
    "ROLES",
    "expand_mlp",
    "add_heads",
    "expand_heads",
    "expand_attention",
    "expand_hidden",
    "add_layer",
]
