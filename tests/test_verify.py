"""verify does not say "preserved" for different models (fpt_ref.verify)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fpt_ref import expand_hidden, expand_mlp
from fpt_ref.init import init_model
from fpt_ref.verify import input_sets, verify


def _tokens(**kw):
    base = dict(h=8, p=16, n_heads=2, k=4, v=4, n_layers=2, out_dim=5, max_seq=12, vocab=50, eps=1e-6, causal=True)
    base.update(kw)
    return init_model(**base)


def _row_shifted(model, row, delta=100.0):
    embed = np.array(model.embed, copy=True)
    embed[row] += delta
    return replace(model, embed=embed)


def _pos_shifted(model, row, delta=1.0):
    pos = np.array(model.pos, copy=True)
    pos[row] += delta
    return replace(model, pos=pos)


# every single embedding row and every single positional row is read
@pytest.mark.parametrize("row", [0, 5, 37, 48, 49])
def test_a_changed_embedding_row_is_never_preserved(row):
    a = _tokens()
    st = verify(a, _row_shifted(a, row))
    assert not st["ok"] and st["max_abs"] > 1e-3


@pytest.mark.parametrize("row", [0, 6, 11])
def test_a_changed_position_row_is_never_preserved(row):
    a = _tokens()
    for seq in (None, 1, 4):  # even when the random draws are short
        st = verify(a, _pos_shifted(a, row), seq=seq)
        assert not st["ok"], (row, seq)


def test_every_token_and_position_is_in_the_inputs():
    a = _tokens(vocab=50, max_seq=12)
    sets = dict(input_sets(a, [a], batch=2, seq=3))
    assert set(np.unique(sets["all tokens"])) == set(range(50))
    assert sets["all tokens"].shape[1] == 12 and sets["random"].shape == (2, 3)


def test_large_vocabulary_in_bounded_batches():
    a = _tokens(h=4, p=4, n_heads=1, k=2, v=2, n_layers=1, vocab=150_000, max_seq=16, out_dim=2)
    b = _row_shifted(a, 149_999, 10.0)
    st = verify(a, b, max_bytes=2 * 1024**2)
    assert not st["ok"] and st["inputs"]["tokens_covered"] == 150_000 and st["inputs"]["batch_rows"] < 9375
    assert verify(a, expand_mlp(a, 6), max_bytes=2 * 1024**2)["ok"]


def test_batching_does_not_change_the_figures():
    a = _tokens(vocab=200)
    b = expand_hidden(expand_mlp(a, 24), 12)
    one = verify(a, b, max_bytes=1 << 40)
    many = verify(a, b, max_bytes=1)  # one sequence per batch
    assert many["inputs"]["batch_rows"] == 1 and one["inputs"]["batch_rows"] > 20
    for key in ("max_abs", "max_rel", "max_ulp", "tol_abs", "tol_ulp", "ok"):
        assert one[key] == many[key], key


@pytest.mark.parametrize("eps", [1e-4, 1e-5])
def test_small_input_scale_exposes_the_eps_trap(eps):
    # float32, real inputs, eps not rescaled after a hidden expansion: at input scale 1 the
    # change hides below float32's tolerance; at scale 0.01 it is about 100x larger and caught
    a = init_model(h=8, p=16, n_heads=2, k=4, v=4, n_layers=2, out_dim=5, max_seq=8, eps=eps, dtype="float32")
    b = expand_hidden(a, 16)
    trapped = replace(b, norm_eps=a.norm_eps)
    assert verify(a, b, scale=0.01)["ok"] and verify(a, b)["ok"]
    at_1, at_001 = verify(a, trapped), verify(a, trapped, scale=0.01)
    assert at_1["ok"] and not at_001["ok"]
    assert at_001["max_rel"] > 50 * at_1["max_rel"]


def test_manifest_audit_is_part_of_the_verdict():
    a = _tokens()
    b, manifest = expand_mlp(a, 24, return_manifest=True)
    st = verify(a, b, manifest=manifest, op="mlp")
    assert st["ok"] and st["audit"]["ok"] and st["audit"]["blocks"] == len(manifest)
    w = np.array(b.layers[0].w_l2, copy=True)
    w[-1, 0] = 1e-30  # far below any tolerance: the function check cannot see it, the audit can
    bad = replace(b, layers=(replace(b.layers[0], w_l2=w),) + b.layers[1:])
    st = verify(a, bad, manifest=manifest, op="mlp")
    assert not st["ok"] and st["max_abs"] <= st["tol_abs"]
    assert "zero block" in st["audit"]["findings"][0]["reason"]


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"batch": 0}, "^batch: "),
        ({"batch": True}, "^batch: "),
        ({"seq": 13}, "^seq: "),
        ({"scale": 0.0}, "^scale: "),
        ({"batch": 10**12}, "needs about"),
    ],
)
def test_bad_arguments_name_the_parameter(kw, message):
    a = _tokens()
    with pytest.raises(ValueError, match=message):
        verify(a, a, **kw)


@pytest.mark.parametrize(
    "cut,reason",
    [
        (lambda m: replace(m, embed=m.embed[:40]), "ids 40.. are lost"),
        (lambda m: replace(m, pos=m.pos[:8]), "longer inputs are lost"),
    ],
)
def test_a_truncated_model_is_never_preserved(cut, reason):
    a = _tokens()
    st = verify(a, cut(a))
    assert not st["ok"] and reason in st["reason"] and st["max_abs"] == 0  # agrees where it can, still refused


def test_scale_applies_to_real_inputs_only_and_manifest_needs_op():
    a = _tokens()
    with pytest.raises(ValueError, match="^scale: applies to real-valued inputs"):
        verify(a, a, scale=0.5)
    b, manifest = expand_mlp(a, 24, return_manifest=True)
    with pytest.raises(ValueError, match="^op: "):
        verify(a, b, manifest=manifest)


def test_cli_expand_manifest_out_then_verify_manifest(tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.numpy import load_file

    from fpt_ref.cli import main
    from fpt_ref.files import write_safetensors

    a, b, rec = tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "rec.json"
    assert main(["init", "--vocab", "30", "--eps", "1e-6", "-o", str(a)]) == 0
    plan = "mlp p=40; add_heads count=1; heads v=10 layers=1 heads=0; attention k=10; hidden h=20; add_layer at=1"
    assert main(["expand", str(a), "--plan", plan, "--manifest-out", str(rec), "-o", str(b)]) == 0
    capsys.readouterr()
    assert main(["verify", str(a), str(b), "--manifest", str(rec)]) == 0
    assert "audited bit for bit: all as recorded" in capsys.readouterr().out
    # a zero block given a value far below the tolerance: the function check passes, the audit does not
    t = load_file(str(b))
    with safe_open(str(b), framework="numpy") as f:
        meta = f.metadata()
    t["layers.0.w_l2"][-1, 0] = 1e-300
    write_safetensors(b, t, meta)
    assert main(["verify", str(a), str(b), "--manifest", str(rec)]) == 1
    out = capsys.readouterr().out
    assert ": preserved" in out and "blocks: NOT as recorded: layers.0.w_l2" in out
    # a record that is not one: one line, exit 2, before any work
    (tmp_path / "bad.json").write_text('{"format": "x"}')
    assert main(["verify", str(a), str(b), "--manifest", str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a fpt-ref-manifest/1 record" in err[0]


def test_run_plan_checks_at_the_chosen_input_scale():
    from fpt_ref.plan import run_plan

    a = init_model(h=8, p=16, n_heads=2, k=4, v=4, n_layers=2, out_dim=5, max_seq=8, eps=1e-3)
    res = run_plan(a, "mlp p=20; hidden h=12", scale=0.01)
    assert all(r.error["ok"] for r in res)
    with pytest.raises(ValueError, match="^scale: "):
        run_plan(a, "mlp p=20", scale=0.0)
    with pytest.raises(ValueError, match="^scale: applies to real-valued inputs"):
        run_plan(_tokens(), "mlp p=20", scale=0.5)
