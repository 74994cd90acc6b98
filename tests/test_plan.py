"""Plans: parsing (text and JSON), errors, and running them."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import fpt_ref
from fpt_ref import PlanError, Step, paper, parse_plan, plan, run_plan

TEXT = (
    "mlp p=48 layers=0,1; add_heads count=2\nheads v=12 layers=1 heads=0; attention k=12; hidden h=24; add_layer at=1"
)
STEPS = [
    Step("mlp", {"p": 48, "layers": [0, 1]}),
    Step("add_heads", {"count": 2}),
    Step("heads", {"v": 12, "layers": [1], "heads": [0]}),
    Step("attention", {"k": 12}),
    Step("hidden", {"h": 24}),
    Step("add_layer", {"at": 1}),
]


def test_parse_text():
    assert parse_plan(TEXT) == STEPS


def test_parse_json_string_and_file(tmp_path):
    obj = [{"op": s.op, **s.args} for s in STEPS]
    assert parse_plan(json.dumps(obj)) == STEPS
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(obj))
    assert parse_plan(str(path)) == STEPS
    assert parse_plan(obj) == STEPS


def test_str_round_trip():
    assert parse_plan("; ".join(map(str, STEPS))) == STEPS


@pytest.mark.parametrize(
    "plan,msg",
    [
        ("grow p=4", "unknown step 'grow'"),
        ("mlp q=4", "has no key 'q'"),
        ("mlp p=x", "is not an integer"),
        ("mlp p=4,5", "takes one integer"),
        ("mlp layers=0", "needs p="),
        ("mlp p", "is not key=value"),
        ("mlp p=4 p=5", "given twice"),
        ("", "no steps"),
        (" ; ", "no steps"),
        ('[{"p": 4}]', "'op' key"),
        ("[1, 2", "invalid JSON"),
        ("missing.json", "cannot read"),
        ("heads v=4 heads=a,b", "list of integers"),
        ('[{"op": [1]}]', "unknown step"),
        ('{"op": "mlp", "p": 9}', "must be a list of steps"),
        ('[{"op": "mlp", "p": 9, "p": 10}]', "key 'p' given twice"),
    ],
)
def test_plan_errors(plan, msg):
    with pytest.raises(PlanError, match=msg):
        parse_plan(plan)


def test_indices_refer_to_the_model_when_the_step_runs(hetero_model):
    m = hetero_model()  # 2 layers
    res = fpt_ref.run_plan(m, "add_layer at=2; mlp p=12 layers=2")
    assert res[-1].model.layers[2].p == 12 and res[-1].model.N == 3
    with pytest.raises(ValueError, match="layers: layer index 2 is out of range"):
        fpt_ref.run_plan(m, "mlp p=12 layers=2; add_layer at=2")


def test_run_plan_reports_each_step_against_the_original(hetero_model):
    m = hetero_model()
    res = fpt_ref.run_plan(m, TEXT.replace("48", "9").replace("12", "7").replace("24", "10"), seed=4)
    assert [r.step for r in res] == parse_plan(TEXT.replace("48", "9").replace("12", "7").replace("24", "10"))
    assert all(r.error["ok"] for r in res)
    assert res[-1].model.h == 10 and res[-1].model.N == 3
    # the seed makes runs reproducible; a different seed changes free blocks only
    again = fpt_ref.run_plan(m, [s for s in parse_plan("mlp p=9")], seed=4)
    assert np.array_equal(again[0].model.layers[0].w_l1, res[0].model.layers[0].w_l1)


# ---- the plan keys are the paper's table (fpt_ref.paper) ---------------------------------

TEXT_OF = {"int": "3", "ints": "0,1", "str": "W_Q", "bool": "true"}  # a value of each kind, as plan text
VALUE_OF = {"int": 3, "ints": [0, 1], "str": "W_Q", "bool": True}  # and what parse_plan makes of it


@pytest.mark.parametrize("op", paper.NAMES)
def test_plan_accepts_exactly_the_keys_of_the_papers_table(op):
    row = paper.EXPANSIONS[op]
    required = {k: TEXT_OF[row.keys[k]] for k in row.required}
    for key, kind in row.keys.items():
        args = {**required, key: TEXT_OF[kind]}
        (step,) = parse_plan(op + " " + " ".join(f"{k}={v}" for k, v in args.items()))
        assert step.op == op and step.args[key] == VALUE_OF[kind], (op, key)
    others = {k for r in paper.EXPANSIONS.values() for k in r.keys} - set(row.keys) - set(plan.RENAMED_KEYS.get(op, ()))
    for key in sorted(others) + ["q"]:
        text = op + " " + " ".join(f"{k}={v}" for k, v in {**required, key: "1"}.items())
        with pytest.raises(PlanError, match=f"has no key '{key}'"):
            parse_plan(text)
    for key in row.required:
        rest = {k: v for k, v in required.items() if k != key}
        with pytest.raises(PlanError, match=f"needs {key}="):
            parse_plan(op + " " + " ".join(f"{k}={v}" for k, v in rest.items()))


def test_plan_steps_run_the_functions_the_table_names():
    assert list(plan.STEPS) == list(paper.NAMES)
    for op, row in paper.EXPANSIONS.items():
        assert plan.STEPS[op][0] is getattr(fpt_ref, row.function), op


@pytest.mark.parametrize("value", ["1e9", "4.0", "x", "true", ""])
def test_plan_integers_are_decimal_integers(value):
    with pytest.raises(PlanError, match=rf"plan: step 'hidden': h={value!r} is not an integer"):
        parse_plan([{"op": "hidden", "h": value}])


@pytest.mark.parametrize("value", [True, 4.0, None, [1.5]])
def test_plan_json_integers_refuse_other_types(value):
    with pytest.raises(PlanError, match="is not"):
        parse_plan([{"op": "mlp", "p": 9, "layers": value}])


@pytest.fixture
def small_model():
    return fpt_ref.init_model(h=4, p=8, n_heads=1, k=2, v=2, n_layers=2, out_dim=3, max_seq=4)


def test_add_layer_old_heads_key_is_deprecated_and_means_n_heads():
    with pytest.warns(DeprecationWarning, match="'heads=' is deprecated, use 'n_heads='"):
        (step,) = parse_plan("add_layer at=1 heads=3")
    assert step.args == {"at": 1, "n_heads": 3}
    with pytest.raises(PlanError, match="give n_heads= only"):
        parse_plan("add_layer at=1 heads=3 n_heads=2")


def test_json_plan_file_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "plan.json"
    path.write_bytes("\ufeff".encode() + b'[{"op": "hidden", "h": 24}]')
    assert parse_plan(str(path)) == [plan.Step("hidden", {"h": 24})]
    text = tmp_path / "plan.txt"
    text.write_bytes("\ufeff".encode() + b"mlp p=12; hidden h=24")
    assert [s.op for s in parse_plan(str(text))] == ["mlp", "hidden"]


def test_run_plan_seed_none_draws_fresh_entropy(small_model):
    a = run_plan(small_model, "mlp p=12", seed=None)
    b = run_plan(small_model, "mlp p=12", seed=None)
    assert a[0].error["ok"] and b[0].error["ok"]
    assert not np.array_equal(a[0].model.layers[0].w_l1, b[0].model.layers[0].w_l1)
    c = run_plan(small_model, "mlp p=12", seed=np.int64(3))
    d = run_plan(small_model, "mlp p=12", seed=3)
    assert np.array_equal(c[0].model.layers[0].w_l1, d[0].model.layers[0].w_l1)


@pytest.mark.parametrize(
    "text,step",
    [
        ("hidden h=1000000000", "step 1 (hidden h=1000000000)"),
        ("mlp p=12; mlp p=1000000000", "step 2 (mlp p=1000000000)"),
        ("add_layer at=0 p=100000 count=100000", "step 1 (add_layer at=0 p=100000 count=100000)"),
        ("add_heads count=100000000", "step 1 (add_heads count=100000000)"),
    ],
)
def test_run_plan_refuses_a_plan_too_large_before_the_first_step(small_model, text, step, monkeypatch):
    import time

    from fpt_ref.memory import ResourceError

    calls = []
    monkeypatch.setattr(plan, "apply_step", lambda *a, **k: calls.append(a))
    t0 = time.perf_counter()
    with pytest.raises(ResourceError, match=rf"^plan: {re.escape(step)} needs about .* of memory, .* available"):
        run_plan(small_model, text)
    assert time.perf_counter() - t0 < 1.0 and not calls


def test_plan_bytes_counts_every_model_held(small_model):
    from fpt_ref.memory import model_bytes

    steps = parse_plan("mlp p=12; hidden h=8")
    need, checking = plan.plan_bytes(small_model, steps, check=False)
    assert checking == 0
    d0, d1, d2 = [fpt_ref.dims(small_model)] + plan.plan_dims(small_model, steps)
    b = [model_bytes(d, 8) for d in (d0, d1, d2)]
    assert need == [b[0] + 2 * b[1], b[0] + b[1] + 2 * b[2]]
    real = run_plan(small_model, "mlp p=12; hidden h=8", check=False)
    assert [fpt_ref.dims(r.model) for r in real] == [d1, d2]
