"""The benchmark code (benchmarks/): work counts, ratios, records, output files, CLI, GPU skip.

Nothing here depends on a measured time: ratios are checked on given timings, the timing
loop on a fake timer, and the end-to-end runs only on the presence and shape of their output.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from conftest import build_hetero_model
from fpt_ref.benchmarks import machine, ops, ratios, report, runner, timing

import fpt_ref
from fpt_ref.cli import main as cli_main
from fpt_ref.model import convert, param_count

RECORD_FIELDS = {
    "op",
    "backend",
    "dtype",
    "size",
    "dims",
    "params",
    "seconds",
    "seconds_min",
    "seconds_max",
    "repeats",
    "ratio_matmul",
    "ratio_copy",
    "ratio_torch",
    "ratio_transformers",
    "speedup_gpu",
    "arch",
    "loadavg",
    "cpu_others",
    "under_load",
    "thread_setting",
    "threads",
}
DIMS = {"h", "N", "E", "G", "k", "v", "p", "o", "s", "b"}


# ---- work counts -----------------------------------------------------------------------
class _Counting(np.ndarray):
    """An ndarray that adds up the FLOPs (2 m k n per product) of every matmul it takes part in."""

    flops = 0

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        plain = [np.asarray(a) if isinstance(a, _Counting) else a for a in inputs]
        outs = kwargs.get("out")
        if outs is not None:
            kwargs["out"] = tuple(np.asarray(o) if isinstance(o, _Counting) else o for o in outs)
        if ufunc is np.matmul and method == "__call__":
            a, b = plain
            batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) if a.ndim > 2 or b.ndim > 2 else ()
            _Counting.flops += 2 * int(np.prod(batch)) * a.shape[-2] * a.shape[-1] * b.shape[-1]
        out = getattr(ufunc, method)(*plain, **kwargs)
        if outs is not None:  # in place: hand back the caller's own arrays
            return outs[0] if len(outs) == 1 else outs
        return out.view(_Counting) if isinstance(out, np.ndarray) else out

    def __array_function__(self, func, types, args, kwargs):  # concatenate etc. keep counting
        out = super().__array_function__(func, types, args, kwargs)
        return out.view(_Counting) if type(out) is np.ndarray else out


class _CountingNamespace:
    __name__ = "numpy"

    @staticmethod
    def asarray(a, dtype=None):
        return np.asarray(a, dtype=dtype).view(_Counting)


def test_forward_flops_matches_the_matmuls_the_forward_performs():
    # heterogeneous heads (two (k, v) groups in layer 1) and per-layer p
    m = convert(build_hetero_model(vocab=None), _CountingNamespace)
    x = np.random.default_rng(0).normal(size=(3, 5, 6))
    _Counting.flops = 0
    fpt_ref.forward(m, x)
    assert _Counting.flops > 0
    assert ops.forward_flops(m, 3, 5) == _Counting.flops


def test_forward_flops_by_hand():
    # h=4, one layer, two heads (k=2, v=3), p=5, o=6, b=1, s=7:
    # QKV 4*(2*4+6)=56, logits+AV 7*(4+6)=70, W_O 4*6=24, MLP 2*4*5=40, W_out 4*6=24 -> 214; x 2 b s
    m = fpt_ref.init_model(h=4, p=5, n_heads=2, k=2, v=3, n_layers=1, out_dim=6, max_seq=7)
    assert ops.forward_flops(m, 1, 7) == 2 * 7 * 214


@pytest.mark.parametrize("size", ops.QUICK + ops.CPU[:2], ids=lambda s: s.name)
def test_size_params_formula(size):
    m = ops.build_model(size, "float32")
    assert size.params() == param_count(m)
    assert size.forward_flops() == ops.forward_flops(m, size.b, size.s)


def test_model_bytes_and_matmul_flops():
    m = ops.build_model(ops.QUICK[0], "float32")
    assert ops.model_bytes(m) == 4 * param_count(m)
    assert ops.model_bytes(convert(m, dtype="float64")) == 8 * param_count(m)
    assert ops.matmul_flops(3) == 54


def test_plan_text_grows_every_dimension_and_runs():
    s = ops.QUICK[0]
    assert ops.plan_text(s) == "mlp p=80; add_heads count=1; heads v=20; attention k=20; hidden h=40; add_layer at=1"
    m = ops.build_model(s, "float64")
    out = ops.expansion_fn("plan", m, s)()
    assert out.h == 40 and out.N == 3 and fpt_ref.verify(m, out)["ok"]


def test_ladder_selection_and_errors():
    assert [s.name for s in ops.ladder("cpu", ["s", "xs"])] == ["xs", "s"]
    assert all(s.params() <= 10**6 for s in ops.ladder("gpu", max_params=10**6))
    assert max(s.params() for s in ops.ladder("gpu")) > 10**9  # the GPU ladder reaches ~1B parameters
    with pytest.raises(ValueError, match="^sizes: zz not in the cpu ladder"):
        ops.ladder("cpu", ["zz"])
    with pytest.raises(ValueError, match="unknown ladder"):
        ops.ladder("huge")


# ---- ratios from given timings ---------------------------------------------------------
def _rec(**kw):
    base = {"op": "forward", "backend": "numpy", "dtype": "float32", "size": "s", "seconds": 1.0}
    base.update(kw)
    return base


def test_compute_ratios_from_given_timings():
    recs = [
        # 3e9 FLOP in 2 s = 1.5 GFLOP/s; reference 8e9 FLOP in 4 s = 2 GFLOP/s -> 0.75
        _rec(flops=3e9, seconds=2.0, ref_matmul_flops=8e9, ref_matmul_seconds=4.0, ref_torch_seconds=2.5),
        _rec(op="mlp", seconds=0.6, ref_copy_seconds=0.25),
        _rec(backend="cupy", flops=3e9, seconds=0.05, ref_matmul_flops=8e9, ref_matmul_seconds=0.02),
        _rec(backend="cupy", size="xl", seconds=0.5),  # no NumPy record of that size
    ]
    out = ratios.compute_ratios(recs)
    assert out[0]["ratio_matmul"] == pytest.approx(0.75, rel=1e-12)
    assert out[0]["ratio_torch"] == pytest.approx(0.8, rel=1e-12)
    assert out[0]["ratio_copy"] is None and out[0]["speedup_gpu"] is None
    assert out[1]["ratio_copy"] == pytest.approx(2.4, rel=1e-12)
    assert out[1]["ratio_matmul"] is None and out[1]["ratio_torch"] is None
    assert out[2]["speedup_gpu"] == pytest.approx(40.0, rel=1e-12)  # 2.0 s on NumPy / 0.05 s on CuPy
    assert out[2]["ratio_matmul"] == pytest.approx((3e9 / 0.05) / (8e9 / 0.02), rel=1e-12)
    assert out[3]["speedup_gpu"] is None
    assert "ratio_copy" not in recs[0]  # inputs untouched


def test_summarize_and_measure_with_a_fake_timer():
    assert timing.summarize([3.0, 1.0, 2.0, 10.0]) == {
        "seconds": 2.5,
        "seconds_min": 1.0,
        "seconds_max": 10.0,
        "repeats": 4,
    }
    calls = []

    def fake_timer(fn):
        calls.append(fn())
        return 0.5

    fns = {"a": lambda: "a", "b": lambda: "b", "c": lambda: "c"}
    # warm-up round costs 1.5 "s"; budget 5 -> ceil(5 / 1.5) = 4 rounds
    t = timing.measure(fns, timer=fake_timer, min_repeats=2, max_repeats=9, budget_s=5.0)
    assert {k: len(v) for k, v in t.items()} == {"a": 4, "b": 4, "c": 4}
    assert "".join(calls) == "abc" + "abc" + "bca" + "cab" + "abc"  # warm-up, then rotated rounds
    calls.clear()
    t = timing.measure(fns, timer=fake_timer, min_repeats=2, max_repeats=3, budget_s=100.0)
    assert len(t["a"]) == 3
    with pytest.raises(ValueError, match="^min_repeats, max_repeats: need 1 <= min_repeats <= max_repeats, got 3, 2"):
        timing.measure(fns, timer=fake_timer, min_repeats=3, max_repeats=2)


def test_measure_rounds_alternates_groups_with_settle_enter_and_rewarm():
    log, sleeps = [], []

    def timer(fn):
        log.append("T")
        fn()
        return 0.5

    def fn(name):
        return lambda: log.append(name)

    groups = {
        # warm-up cost 1.0 >= rewarm_s: never re-warmed; settles 0.1 s before each visit
        "A": timing.Group({"a1": fn("a1"), "a2": fn("a2")}, timer, lambda: log.append("enterA"), settle_s=0.1),
        # warm-up cost 0.5 < rewarm_s: one untimed call before each timed visit; no settling
        "B": timing.Group({"b": fn("b")}, timer, lambda: log.append("enterB")),
    }
    # 2 groups x budget 0.75 / warm-up round 1.5 -> 1 round, raised to min_repeats = 2
    t = timing.measure_rounds(groups, min_repeats=2, max_repeats=9, budget_s=0.75, rewarm_s=0.6, sleep=sleeps.append)
    assert t == {"A": {"a1": [0.5, 0.5], "a2": [0.5, 0.5]}, "B": {"b": [0.5, 0.5]}}
    warm = ["enterA", "T", "a1", "T", "a2", "enterB", "T", "b"]
    round0 = ["enterA", "T", "a1", "T", "a2", "enterB", "b", "T", "b"]
    round1 = ["enterB", "b", "T", "b", "enterA", "T", "a2", "T", "a1"]  # groups and functions rotated
    assert log == warm + round0 + round1
    assert sleeps == [0.1, 0.1, 0.1]  # before each visit of A
    sleeps.clear()
    timing.measure_rounds({"A": groups["A"]}, min_repeats=1, max_repeats=1, sleep=sleeps.append)
    assert sleeps == []  # one group: nothing to settle from
    with pytest.raises(ValueError, match="^groups: nothing to measure"):
        timing.measure_rounds({"A": timing.Group({})})


# ---- machine: instruction set, load ------------------------------------------------------
V3 = {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}
V2 = {"cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3", "sse2"}
V4 = {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}


def test_isa_level_from_cpuinfo_flags():
    assert machine.isa_level(V2 | V3 | V4) == "AVX-512 (x86-64-v4)"
    assert machine.isa_level(V2 | V3 | (V4 - {"avx512vl"})) == "AVX2 (x86-64-v3)"  # AVX-512F alone is not v4
    assert machine.isa_level(V2 | (V3 - {"fma"})) == "SSE4.2 (x86-64-v2)"
    assert machine.isa_level({"sse2"}) == "x86-64"
    assert machine.isa_level({"asimd", "sve"}) == "SVE" and machine.isa_level({"fp", "asimd"}) == "NEON"
    assert machine.isa_level(set()) == "unknown"


def test_machine_examples():
    import doctest

    assert doctest.testmod(machine).failed == 0


def test_others_load_from_snapshots():
    a = {"busy_s": 100.0, "own_s": 10.0, "wall_s": 50.0}
    # in 2 s the usable cores were busy 3 s, 1 s of it this process: others kept 1 core busy
    assert machine.others_load(a, {"busy_s": 103.0, "own_s": 11.0, "wall_s": 52.0}) == 1.0
    assert machine.others_load(a, {"busy_s": 101.0, "own_s": 11.5, "wall_s": 52.0}) == 0.0  # tick rounding
    assert machine.others_load(a, {"busy_s": 101.0, "own_s": 10.0, "wall_s": 50.005}) is None  # too short
    assert machine.others_load(None, a) is None and machine.others_load(a, None) is None


def test_under_load_threshold():
    cores = 2
    edge = machine.LOAD_THRESHOLD * cores
    assert not machine.under_load(edge, [9.0, 9.0, 9.0], cores)  # the measured share decides, not loadavg
    assert machine.under_load(edge + 0.01, [0.0, 0.0, 0.0], cores)
    assert machine.under_load(None, [2.01, 0, 0], cores) and not machine.under_load(None, [2.0, 0, 0], cores)
    assert not machine.under_load(None, None, cores)


def test_others_load_sees_another_busy_process():
    if machine.cpu_sample() is None:
        pytest.skip("no /proc/stat on this system")
    code = "import time\nt = time.perf_counter()\nwhile time.perf_counter() - t < 0.8: pass"
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        import time

        time.sleep(0.15)  # the child is running
        a = machine.cpu_sample()
        time.sleep(0.5)
        b = machine.cpu_sample()
    finally:
        proc.wait(timeout=30)
    assert machine.others_load(a, b) >= 0.5  # the busy child held about one core


# ---- end to end ------------------------------------------------------------------------
def _tiny_config(**kw):
    base = dict(sizes=["xxs"], backends=("numpy",), dtypes=("float64",), min_repeats=1, max_repeats=1)
    base.update(kw)
    return runner.Config.quick(**base)


def test_quick_run_end_to_end_writes_json_table_plots(tmp_path):
    res = runner.run(_tiny_config(dtypes=("float32", "float64")), log_stream=None)
    recs = res["records"]
    got = {(r["op"], r["backend"], r["dtype"]) for r in recs}
    for dt in ("float32", "float64"):
        for op in ops.OPS + ("matmul",):
            assert (op, "numpy", dt) in got
    for r in recs:
        assert RECORD_FIELDS <= set(r) and set(r["dims"]) == DIMS
        assert r["seconds_min"] <= r["seconds"] <= r["seconds_max"]
    fwd = [r for r in recs if r["op"] == "forward"]
    assert all(r["ratio_matmul"] > 0 and r["flops"] > 0 for r in fwd)
    assert all(r["ratio_copy"] > 0 and r["bytes"] > 0 for r in recs if r["op"] in ops.EXPANSIONS + ("plan",))
    assert all(r["verify_ok"] for r in recs if r["op"] == "verify")
    assert res["machine"]["cpu"]["usable_cores"] >= 1 and res["machine"]["blas"]["name"]
    paths = report.write_all(res, str(tmp_path / "out"))
    names = sorted(p.rsplit("/", 1)[1] for p in paths)
    assert names == ["backends.png", "results.json", "roofline.png", "table.md", "time_vs_params.png"]
    back = json.loads((tmp_path / "out" / "results.json").read_text())
    assert back["schema"] == runner.SCHEMA and len(back["records"]) == len(recs)
    for png in ("backends.png", "roofline.png", "time_vs_params.png"):
        assert (tmp_path / "out" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (tmp_path / "out" / "table.md").read_text()
    assert "AMD" in table or res["machine"]["summary"] in table
    assert "No GPU results" in table and "| xxs |" in table
    cpu = res["machine"]["cpu"]
    assert cpu["isa"] and isinstance(cpu["simd"], list) and cpu["isa"] in res["machine"]["summary"]
    assert res["machine"]["records_under_load"] == sum(r["under_load"] for r in recs)
    assert all(isinstance(r["under_load"], bool) for r in recs)


def test_one_thread_rounds_run_with_one_thread_and_restore_the_default(monkeypatch):
    default = machine.blas_threads()
    if default is None or default == 1:
        res = runner.run(_tiny_config(ops=("forward",)), log_stream=None)
        assert any(n.startswith("one-thread NumPy rounds: skipped") for n in res["notes"])
        return
    seen = []

    def forward_fn(model, x):
        return lambda: seen.append(machine.blas_threads())

    monkeypatch.setattr(runner.ops, "forward_fn", forward_fn)
    res = runner.run(_tiny_config(ops=("forward",), backends=("numpy",)), log_stream=None)
    assert set(seen) == {default, 1}  # the default rounds and the one-thread rounds, each as set
    assert machine.blas_threads() == default  # restored
    fwd = {r["thread_setting"]: r for r in res["records"] if r["op"] == "forward"}
    assert fwd["default"]["threads"] == default and fwd["one"]["threads"] == 1
    assert res["config"]["one_thread"] is True
    seen.clear()
    res = runner.run(_tiny_config(ops=("forward",), backends=("numpy",), one_thread=False), log_stream=None)
    assert set(seen) == {default} and {r["thread_setting"] for r in res["records"]} == {"default"}


def test_torch_rounds_pair_each_thread_setting():
    torch = pytest.importorskip("torch")
    default = torch.get_num_threads()
    res = runner.run(_tiny_config(ops=("forward",), backends=("numpy", "torch"), settle_s=0.0), log_stream=None)
    assert torch.get_num_threads() == default
    recs = {(r["backend"], r["thread_setting"]): r for r in res["records"] if r["op"] == "forward"}
    settings = ["default"] + (["one"] if default > 1 else [])
    for st in settings:
        ours, theirs = recs[("numpy", st)] if ("numpy", st) in recs else None, recs[("torch-cpu", st)]
        assert theirs["threads"] == (1 if st == "one" else default)
        if ours is not None:  # the ratio pairs the same thread setting
            assert ours["ratio_torch"] == pytest.approx(ours["seconds"] / theirs["seconds"], rel=1e-12)
    assert {r["cpu_others"] is None or r["cpu_others"] >= 0 for r in res["records"]} == {True}


def test_time_budget_stops_before_the_next_size():
    res = runner.run(_tiny_config(ops=("forward",), time_budget_s=0.0), log_stream=None)
    assert res["records"] == []
    assert any(n.startswith("time budget of 0 s spent after") and "before numpy xxs float64" in n for n in res["notes"])


def test_forward_flops_in_records_match_the_model():
    res = runner.run(_tiny_config(ops=("forward", "verify")), log_stream=None)
    size = ops.QUICK[0]
    m = ops.build_model(size, "float64")
    fwd = next(r for r in res["records"] if r["op"] == "forward")
    assert fwd["flops"] == ops.forward_flops(m, size.b, size.s)
    ver = next(r for r in res["records"] if r["op"] == "verify")
    big = ops.expansion_fn("plan", m, size)()
    assert ver["flops"] == fwd["flops"] + ops.forward_flops(big, size.b, size.s)
    assert ver["out_params"] == param_count(big)


def test_gpu_path_skipped_cleanly_without_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` raises ImportError
    cp, why = machine.cupy_status()
    assert cp is None and "CuPy not importable" in why
    res = runner.run(_tiny_config(backends=("numpy", "cupy"), ops=("forward",)), log_stream=None)
    assert any(n.startswith("cupy: skipped") for n in res["notes"])
    assert {r["backend"] for r in res["records"]} == {"numpy"}
    assert res["machine"]["gpu"] is None and "no GPU" in res["machine"]["summary"]


def test_torch_skipped_cleanly_when_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    res = runner.run(_tiny_config(backends=("numpy", "torch"), ops=("forward",)), log_stream=None)
    assert any(n.startswith("torch: skipped") for n in res["notes"])
    assert all(r["ratio_torch"] is None for r in res["records"])


def test_runner_rejects_bad_config():
    with pytest.raises(ValueError, match="^backends: unknown backend"):
        runner.run(_tiny_config(backends=("numpy", "jax")), log_stream=None)
    with pytest.raises(ValueError, match="^ops: unknown op"):
        runner.run(_tiny_config(ops=("forward", "fly")), log_stream=None)
    with pytest.raises(ValueError, match="^dtypes: unknown dtype"):
        runner.run(_tiny_config(dtypes=("float16",)), log_stream=None)
    with pytest.raises(ValueError, match="^sizes: huge not in the quick ladder"):
        ops.ladder("quick", ["huge"])


def test_ops_are_the_papers_six_expansions():
    assert ops.EXPANSIONS == ("mlp", "add_heads", "heads", "attention", "hidden", "add_layer")
    assert ops._FUNCS == {
        "mlp": fpt_ref.expand_mlp,
        "add_heads": fpt_ref.add_heads,
        "heads": fpt_ref.expand_heads,
        "attention": fpt_ref.expand_attention,
        "hidden": fpt_ref.expand_hidden,
        "add_layer": fpt_ref.add_layer,
    }


def test_speedup_gpu_is_over_the_default_thread_numpy_record():
    recs = [
        _rec(seconds=3.0, thread_setting="one"),
        _rec(seconds=2.0, thread_setting="default"),
        _rec(backend="cupy", seconds=0.1),
    ]
    assert ratios.compute_ratios(recs)[2]["speedup_gpu"] == pytest.approx(20.0, rel=1e-12)


def test_table_marks_records_under_load_and_shows_one_thread_columns():
    size = ops.QUICK[0]

    def rec(backend, setting, sec, loaded, **kw):
        r = dict(op="forward", backend=backend, dtype="float32", size=size.name, dims=size.dims())
        r.update(params=size.params(), seconds=sec, thread_setting=setting, under_load=loaded, **kw)
        return r

    recs = [
        rec("numpy", "default", 2.0, False, ref_torch_seconds=4.0),
        rec("torch-cpu", "default", 4.0, False),
        rec("numpy", "one", 3.0, True, ref_torch_seconds=1.5),
        rec("torch-cpu", "one", 1.5, False),
    ]
    res = {
        "machine": {"summary": "m", "cpu": {"loadavg": None, "usable_cores": 2}},
        "config": {"ladder": "quick"},
        "records": ratios.compute_ratios(recs),
        "notes": [],
    }
    table = report.markdown_table(res)
    assert "NumPy s (1 thr)" in table and "ratio_torch (1 thr)" in table
    row = next(line for line in table.splitlines() if line.startswith("| xxs |"))
    assert row.split(" | ")[3:] == ["2", "-", "4", "0.50", "3*", "-", "1.5", "2.00 |"]
    assert "Under load: 1 of 4 records" in table and "25% of the 2 usable cores" in table


def test_table_has_gpu_columns_when_cupy_records_exist():
    size = ops.QUICK[0]
    recs = []
    for backend, sec in (("numpy", 2.0), ("cupy", 0.1)):
        recs.append(
            dict(
                op="forward",
                backend=backend,
                dtype="float32",
                size=size.name,
                dims=size.dims(),
                params=size.params(),
                seconds=sec,
                flops=1e9,
                ref_matmul_flops=1e9,
                ref_matmul_seconds=sec / 2,
            )
        )
    res = {
        "machine": {"summary": "test machine", "cpu": {"loadavg": None}},
        "config": {"ladder": "quick"},
        "records": ratios.compute_ratios(recs),
        "notes": [],
    }
    table = report.markdown_table(res)
    assert "CuPy s" in table and "speedup_gpu" in table and "No GPU results" not in table
    assert "| 20.0 |" in table  # speedup 2.0 / 0.1
    assert "| 0.50 |" in table  # ratio_matmul (1e9/2) / (1e9/1)
    for backend, sec in (("numpy", 1.0), ("cupy", 0.05)):
        recs.append(dict(recs[0], op="mlp", backend=backend, seconds=sec, ref_copy_seconds=sec / 2, flops=None))
        recs.append(dict(recs[0], op="verify", backend=backend, seconds=sec, out_params=99, verify_ok=True))
        recs[-1]["verify_max_ulp"] = 3.0
    res["records"] = ratios.compute_ratios(recs)
    table = report.markdown_table(res)
    gpu_rows = table.split("**Expansions on the GPU**")[1].split("**Verify**")[0]
    assert "| xxs | 18k | float32 | 0.05 / 2.0 / 20.0 |" in gpu_rows  # seconds / ratio_copy / speedup_gpu
    assert "| float32 | numpy | 1 |" in table and "| float32 | cupy | 0.05 |" in table  # verify on both


# ---- CLI -------------------------------------------------------------------------------
def test_cli_bench_quick(tmp_path, capsys):
    out = tmp_path / "b"
    code = cli_main(
        [
            "bench",
            "--quick",
            "--sizes",
            "xxs",
            "--backends",
            "numpy",
            "--dtypes",
            "float32",
            "--ops",
            "forward,mlp",
            "--repeats",
            "1",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert (out / "results.json").exists() and (out / "table.md").exists()
    assert "wrote" in capsys.readouterr().out


def test_cli_thread_and_budget_options():
    from fpt_ref.benchmarks.cli import add_arguments, config_from_args

    from fpt_ref.cli_args import Parser

    p = Parser(prog="t")
    add_arguments(p)
    cfg = config_from_args(p.parse_args([]), gpu_usable=False)
    assert cfg.one_thread is True and cfg.time_budget_s is None
    cfg = config_from_args(p.parse_args(["--no-one-thread", "--time-budget", "90"]), gpu_usable=False)
    assert cfg.one_thread is False and cfg.time_budget_s == 90


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["--time-budget", "0"], "at least 1"),
        (["--backends", "numpy,jax"], "unknown jax"),
        (["--dtypes", "float16"], "unknown float16"),
        (["--repeats", "0"], "at least 1"),
        (["--sizes", "huge", "--quick"], "sizes: huge not in the quick ladder"),
    ],
)
def test_cli_bad_arguments_exit_2(argv, msg, capsys, tmp_path):
    assert cli_main(["bench", "--out", str(tmp_path)] + argv) == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1


def test_python_dash_m_benchmarks(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fpt_ref.benchmarks",
            "--quick",
            "--sizes",
            "xxs",
            "--backends",
            "numpy",
            "--dtypes",
            "float64",
            "--ops",
            "forward",
            "--repeats",
            "1",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "results.json").read_text())["records"]
    proc = subprocess.run(
        [sys.executable, "-m", "fpt_ref.benchmarks", "--repeats", "0", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "python -m fpt_ref.benchmarks: argument --repeats: must be at least 1, got 0"
    ]


# ---- PyTorch reference (optional) ------------------------------------------------------
@pytest.mark.parametrize("causal,eps", [(False, 0.0), (True, 1e-6)])
def test_torch_reference_computes_our_forward(causal, eps):
    pytest.importorskip("torch")
    m = build_hetero_model(vocab=None, causal=causal, eps=eps)
    x = np.random.default_rng(1).normal(size=(2, 5, 6))
    ours = fpt_ref.forward(m, x)
    theirs = ops.torch_forward_fn(m, x)().numpy()
    tol = fpt_ref.tolerance_abs(m, m, 5, np.max(np.abs(ours)))
    assert np.max(np.abs(ours - theirs)) <= tol


def test_machine_info_fields():
    info = machine.machine_info()
    assert info["cpu"]["model"] and info["cpu"]["logical_cores"] >= 1
    assert info["numpy"] == np.__version__ and "blas" in info and info["gpu"] is None
    assert isinstance(info["summary"], str) and "cores" in info["summary"]


# ---- GPU -------------------------------------------------------------------------------
@pytest.mark.gpu
def test_gpu_quick_run_records_speedup():
    cp, why = machine.cupy_status()
    if cp is None:
        pytest.skip(why)
    res = runner.run(_tiny_config(backends=("numpy", "cupy"), ops=("forward", "mlp", "verify")), log_stream=None)
    gpu = [r for r in res["records"] if r["backend"] == "cupy"]
    assert {r["op"] for r in gpu} >= {"forward", "mlp", "verify", "matmul"}
    assert all(r["speedup_gpu"] is not None and r["speedup_gpu"] > 0 for r in gpu if r["op"] != "matmul")
    assert res["machine"]["gpu"]["model"] and "cuda_runtime" in res["machine"]["gpu"]
    assert all(r["verify_ok"] for r in gpu if r["op"] == "verify")


@pytest.mark.gpu
def test_cuda_timer_synchronises():
    cp, why = machine.cupy_status()
    if cp is None:
        pytest.skip(why)
    a = cp.ones((512, 512), dtype=cp.float32)
    t = timing.cuda_timer(cp)(lambda: a @ a)
    assert t > 0 and math.isfinite(t)


def test_bad_out_is_rejected_before_measuring(tmp_path):
    from fpt_ref.cli import main

    afile = tmp_path / "afile"
    afile.write_text("")
    assert main(["bench", "--quick", "--out", str(afile)]) == 2


def test_nothing_measured_is_a_usage_error(tmp_path, capsys):
    from fpt_ref.cli import main

    assert (
        main(["bench", "--quick", "--backends", "numpy", "--max-params-cpu", "10", "--out", str(tmp_path / "b")]) == 2
    )
    assert "nothing was measured" in capsys.readouterr().err
