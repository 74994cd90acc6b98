"""Memory figures computed from dimensions (fpt_ref.memory) against what really happens."""

from __future__ import annotations

import tracemalloc

import pytest

from fpt_ref.expansions import add_heads, add_layer, expand_attention, expand_heads, expand_hidden, expand_mlp
from fpt_ref.forward import forward
from fpt_ref.init import init_model, random_inputs
from fpt_ref.memory import ResourceError, dims_after, forward_bytes, model_bytes, param_count_of, require
from fpt_ref.model import dims, param_count

FNS = {
    "mlp": expand_mlp,
    "add_heads": add_heads,
    "heads": expand_heads,
    "attention": expand_attention,
    "hidden": expand_hidden,
    "add_layer": add_layer,
}

STEPS = [
    ("mlp", {"p": 40}),
    ("mlp", {"p": 41, "layers": [1]}),
    ("add_heads", {}),
    ("add_heads", {"count": 3, "layers": [0], "k": 5}),
    ("add_heads", {"count": 2, "v": 7}),
    ("heads", {"v": 12, "layers": [1], "heads": [0]}),
    ("heads", {"v": 11}),
    ("attention", {"k": 10, "layers": [0], "heads": [1]}),
    ("attention", {"k": 9}),
    ("hidden", {"h": 21}),
    ("add_layer", {"at": 0}),
    ("add_layer", {"at": 2}),
    ("add_layer", {"at": 1, "n_heads": 3, "k": 4}),
    ("add_layer", {"at": 1, "p": 9, "v": 3}),
]


@pytest.mark.parametrize("op,args", STEPS, ids=[f"{op}-{i}" for i, (op, _) in enumerate(STEPS)])
def test_dims_after_matches_the_expansion(op, args):
    model = init_model(h=16, p=[32, 24], n_heads=[2, 3], k=[8, 6], v=[8, 5], n_layers=2, vocab=20, max_seq=6)
    grown = FNS[op](model, **args)
    assert dims_after(dims(model), op, args) == dims(grown)
    assert param_count_of(dims(grown)) == param_count(grown)


SHAPES = [(64, 256, 4, 64, 8), (32, 64, 2, 12, 4), (128, 512, 8, 128, 2), (16, 32, 1, 256, 1)]  # h, p, E, s, b


@pytest.mark.parametrize("h,p,E,s,b", SHAPES)
def test_forward_bytes_bounds_the_measured_peak(h, p, E, s, b):
    model = init_model(h=h, p=p, n_heads=E, k=16, v=16, n_layers=2, max_seq=s, causal=True)
    x = random_inputs(model, batch=b, seq=s)
    forward(model, x)  # warm up whatever NumPy caches
    tracemalloc.start()
    forward(model, x)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    est = forward_bytes(dims(model), b, s, 8)
    assert peak <= est, (peak, est)
    assert est <= 4 * peak, (peak, est)  # an estimate, not a blanket refusal


def test_model_bytes_is_exact():
    model = init_model(h=12, p=[7, 9], n_heads=[1, 3], k=[2, 5], v=[3, 4], n_layers=2, vocab=11, dtype="float32")
    assert model_bytes(dims(model), 4) == sum(int(a.nbytes) for a in _tensors(model))


def _tensors(model):
    from fpt_ref.model import named_tensors

    return named_tensors(model).values()


def test_require_names_the_figures():
    require(10, "small", available=100)
    with pytest.raises(ResourceError, match=r"^step 2 \(hidden\) needs about 1\.0 GiB of memory, 1\.0 MiB available"):
        require(1024**3, "step 2 (hidden)", available=1024**2)
    assert issubclass(ResourceError, ValueError)
