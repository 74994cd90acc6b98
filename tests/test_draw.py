"""Tests of ``fpt-ref draw`` (fpt_ref/draw): the figures show exactly the manifest's blocks.

Expected blocks are written out by hand from the theorems (docs/spec.md section 2), never taken
from the drawing code. Figures are rendered with matplotlib's Agg backend.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from fpt_ref.cli import main  # noqa: E402
from fpt_ref.demo import DEMO_MODEL, DEMO_PLAN  # noqa: E402
from fpt_ref.draw import caption, draw_plan, draw_results, run_for_drawing, step_figure  # noqa: E402
from fpt_ref.draw.architecture import model_figure, track  # noqa: E402
from fpt_ref.draw.cards import axis_map  # noqa: E402
from fpt_ref.draw.selection import group_manifest, select_tensors  # noqa: E402
from fpt_ref.draw.styles import ROLE_STYLE  # noqa: E402
from fpt_ref.expansions import add_heads, add_layer, expand_attention, expand_heads, expand_hidden, expand_mlp  # noqa: E402
from fpt_ref.init import init_model  # noqa: E402
from fpt_ref.io import save  # noqa: E402
from fpt_ref.model import named_tensors  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def outlines(fig) -> set:
    """``(role, tensor, "r0:r1,c0:c1")`` of every block outline drawn in ``fig``."""
    out = set()
    for ax in fig.axes:
        for p in ax.patches:
            gid = p.get_gid()
            if gid and gid.split("|")[0] in ROLE_STYLE:
                role, tensor, idx = gid.split("|")
                out.add((role, tensor, idx))
    return out


def axes_by_gid(fig) -> dict:
    return {ax.get_gid(): ax for ax in fig.axes if ax.get_gid()}


def small(**kw):
    args = dict(h=4, p=6, n_heads=1, k=2, v=2, n_layers=1, out_dim=3, max_seq=5, vocab=7, eps=1e-6, seed=3)
    args.update(kw)
    return init_model(**args)


def test_mlp_step_outlines_are_the_theorem_blocks():
    m = small()
    m2, man = expand_mlp(m, 9, return_manifest=True)
    fig = step_figure(m, m2, man, title="mlp p=9")
    # Theorem 3.1 with h=4, p=6, p^=9: W_l1 gains free columns 6:9, b_l1 free entries 6:9,
    # W_l2 gains zero rows 6:9; the old blocks are copied.
    assert outlines(fig) == {
        ("copied", "layers.0.w_l1", "0:4,0:6"),
        ("free", "layers.0.w_l1", "0:4,6:9"),
        ("copied", "layers.0.b_l1", "0:1,0:6"),
        ("free", "layers.0.b_l1", "0:1,6:9"),
        ("copied", "layers.0.w_l2", "0:6,0:4"),
        ("zero", "layers.0.w_l2", "6:9,0:4"),
    }
    axes = axes_by_gid(fig)
    after = np.asarray(axes["after|layers.0.w_l2"].images[0].get_array())
    np.testing.assert_array_equal(after, np.asarray(m2.layers[0].w_l2))  # the heat map is the real tensor
    assert np.all(after[6:9] == 0.0)
    before = np.asarray(axes["before|layers.0.w_l2"].images[0].get_array())
    np.testing.assert_array_equal(before, np.asarray(m.layers[0].w_l2))


def test_attention_step_shows_scaled_and_zero_blocks_both_mirrors():
    m = small(k=2)
    for scale, scaled, zero, free in (("W_K", "w_k", "w_k", "w_q"), ("W_Q", "w_q", "w_q", "w_k")):
        m2, man = expand_attention(m, 8, scale=scale, return_manifest=True)
        got = outlines(step_figure(m, m2, man))
        pre = "layers.0.heads.0."
        assert ("scaled", pre + scaled, "0:4,0:2") in got
        assert ("zero", pre + zero, "0:4,2:8") in got
        assert ("free", pre + free, "0:4,2:8") in got
        assert ("copied", pre + free, "0:4,0:2") in got
        assert len(got) == 4


def test_new_head_and_stacked_w_o():
    m = small(n_heads=1, v=2)
    m2, man = add_heads(m, 1, return_manifest=True)
    fig = step_figure(m, m2, man)
    axes = axes_by_gid(fig)
    assert len(axes["before|layers.0.heads.1.w_q"].images) == 0  # "did not exist"
    got = outlines(fig)
    # W_O = [W_O,0; W_O,1] is (2 v) x h = 4 x 4: head 0's rows 0:2 copied, the new head's rows 2:4 zero (M_O)
    assert ("copied", "layers.0.W_O", "0:2,0:4") in got and ("zero", "layers.0.W_O", "2:4,0:4") in got
    stack = np.asarray(axes["after|layers.0.W_O"].images[0].get_array())
    np.testing.assert_array_equal(stack[:2], np.asarray(m.layers[0].heads[0].w_o))
    assert np.all(stack[2:] == 0.0)


def test_heads_expansion_inserts_zero_rows_after_each_head_block():
    m = small(n_heads=2, v=2)
    m2, man = expand_heads(m, 5, heads=[0], return_manifest=True)
    fig = step_figure(m, m2, man)
    # stacked W_O: head 0 now rows 0:5 (old 0:2 copied, inserted 2:5 zero), head 1 moves to rows 5:7
    assert {o for o in outlines(fig) if o[1] == "layers.0.W_O"} == {
        ("copied", "layers.0.W_O", "0:2,0:4"),
        ("zero", "layers.0.W_O", "2:5,0:4"),
        ("copied", "layers.0.W_O", "5:7,0:4"),
    }
    stack = np.asarray(axes_by_gid(fig)["after|layers.0.W_O"].images[0].get_array())
    assert np.all(stack[2:5] == 0.0)
    np.testing.assert_array_equal(stack[5:7], np.asarray(m.layers[0].heads[1].w_o))


def test_role_styles_differ_without_colour():
    """Greyscale print: each role must differ from every other by line style, width or hatch."""
    keys = {role: (st["linestyle"], st["linewidth"], st["hatch"]) for role, st in ROLE_STYLE.items()}
    assert len(set(keys.values())) == 4
    assert set(ROLE_STYLE) == {"copied", "scaled", "zero", "free"}


def test_cap_draws_every_role_and_lists_the_rest():
    m = small(h=6, n_layers=3, n_heads=3)
    m2, man = expand_hidden(m, 9, return_manifest=True)
    groups = group_manifest(man)
    chosen, omitted = select_tensors(groups, max_tensors=3)
    assert len(chosen) == 3 and len(chosen) + len(omitted) == len(groups)
    drawn_roles = {b.role for n in chosen for b in groups[n]}
    assert drawn_roles == {"copied", "scaled", "zero", "free"}
    fig = step_figure(m, m2, man, max_tensors=3)
    assert len(fig.fpt_cards) == 3
    assert {b.role for card in fig.fpt_cards for b in card.blocks} == {"copied", "scaled", "zero", "free"}
    text = " ".join(t.get_text() for t in fig.texts)
    assert fig.fpt_omitted and f"not drawn ({len(fig.fpt_omitted)})" in text
    with pytest.raises(ValueError, match="max_tensors"):
        select_tensors(groups, max_tensors=0)


def test_long_axis_is_subsampled_but_keeps_narrow_new_blocks():
    am = axis_map((0, 1000, 1002), max_cells=64)
    assert len(am.idx) <= 64 + 3
    assert am.disp[-1] - am.disp[-2] == 2  # the 2 new entries keep their own cells
    assert np.all(am.idx[am.disp[-2] :] >= 1000) and np.all(am.idx[: am.disp[-2]] < 1000)
    m = small(p=300)
    m2, man = expand_mlp(m, 302, return_manifest=True)
    fig = step_figure(m, m2, man, max_cells=40)
    img = np.asarray(axes_by_gid(fig)["after|layers.0.w_l2"].images[0].get_array())
    assert img.shape[0] < 60 and img.shape[1] == 4
    assert np.all(img[-2:] == 0.0) and np.all(np.abs(img[:-2]).max(axis=1) > 0)


def test_model_figure_tracks_new_layers_and_heads():
    m = small(n_layers=2, n_heads=2)
    m1, man1 = add_heads(m, 1, layers=[0], return_manifest=True)
    m2, man2 = add_layer(m1, 0, return_manifest=True)
    infos = track(m, [m1, m2], [man1, man2])
    # the new layer is layer 0 (step 2); old layers 0, 1 moved to 1, 2; old layer 0 gained head 2 in step 1
    assert [i.origin for i in infos] == [None, 0, 1]
    assert infos[0].added_by == 1 and infos[0].zero == {"w_o", "w_l2", "b_l2"}
    assert infos[1].heads == [(0, None), (1, None), (None, 0)]
    assert infos[2].heads == [(0, None), (1, None)]
    fig = model_figure(m, m2, [m1, m2], [man1, man2])
    gids = {p.get_gid() for ax in fig.axes for p in ax.patches if p.get_gid()}
    assert "layer|after|0|new" in gids and "layer|after|1|old" in gids
    assert "head|after|1|2|new" in gids and "head|after|1|1|old" in gids
    assert "layer|before|0|old" in gids and not any(g.startswith("layer|before") and g.endswith("new") for g in gids)


def test_demo_plan_figures(tmp_path):
    model = init_model(**DEMO_MODEL)
    snapshot = {k: np.array(v) for k, v in named_tensors(model).items()}
    paths = draw_plan(model, DEMO_PLAN, str(tmp_path), dpi=40)
    names = [os.path.basename(p) for p in paths]
    assert names == [
        "step1_mlp.png",
        "step2_add_heads.png",
        "step3_heads.png",
        "step4_attention.png",
        "step5_hidden.png",
        "step6_add_layer.png",
        "model.png",
    ]
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == PNG_MAGIC
        assert os.path.getsize(p) > 5000
    for k, v in named_tensors(model).items():  # drawing never mutates the model
        np.testing.assert_array_equal(v, snapshot[k])


def test_cli_draw_and_errors(tmp_path, capsys):
    path = str(tmp_path / "m.safetensors")
    save(small(), path)
    out = str(tmp_path / "figs")
    assert main(["draw", path, "--plan", "mlp p=8; add_layer at=1", "-o", out, "--dpi", "30"]) == 0
    assert sorted(os.listdir(out)) == ["model.png", "step1_mlp.png", "step2_add_layer.png"]
    capsys.readouterr()
    assert main(["draw", str(tmp_path / "missing.safetensors"), "--plan", "mlp p=8", "-o", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.safetensors" in err
    assert main(["draw", path, "-o", out]) == 2
    assert "--plan" in capsys.readouterr().err
    assert main(["draw", path, "--plan", "mlp p=2", "-o", out]) == 2  # does not grow p=6
    assert "p=2" in capsys.readouterr().err
    assert main(["draw", path, "--plan", "mlp p=8", "-o", path]) == 2  # -o is a file
    assert "not a directory" in capsys.readouterr().err


def test_register_is_cheap():
    code = (
        "import sys, fpt_ref.draw.cli, fpt_ref.cli; fpt_ref.cli.build_parser(); "
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported before drawing'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_captions_state_the_papers_theorems():
    assert caption("mlp") == ("Theorem 3.1, MLP expansion", "constraint: M_l2 = 0")
    assert caption("add_heads") == ("Theorem 3.2, head addition", "constraint: M_O = 0")
    assert caption("heads") == ("Theorem 3.3, heads expansion", "constraint: M_O,e = 0")
    assert caption("attention") == (
        "Theorem 3.4, attention expansion",
        "constraint: M_K,e = 0 and W_K,e x sqrt(k^/k) (or mirror: M_Q, W_Q)",
    )
    assert caption("hidden") == (
        "Theorem 3.5, hidden dimension expansion",
        "constraint: new columns of I, P, W_O, W_l2, b_l2 = 0; g x sqrt(h/h^); eps x h/h^",
    )
    assert caption("add_layer") == (
        "Theorem 3.6, layer addition",
        "constraint: new layer's W_O = 0, W_l2 = 0, b_l2 = 0",
    )


def test_draw_results_names_its_parameter(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    results = run_for_drawing(small(), "mlp p=8", check=False)
    with pytest.raises(ValueError, match="^out_dir: .* exists and is not a directory"):
        draw_results(small(), results, str(afile))


def test_committed_figures_are_small_pngs():
    """docs/figures: `fpt-ref draw demo` output (palette-quantized), embedded by README and tutorial."""
    fig_dir = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "figures")
    for name in ("step1_mlp.png", "step3_heads.png", "step4_attention.png", "step5_hidden.png", "model.png"):
        path = os.path.join(fig_dir, name)
        with open(path, "rb") as f:
            assert f.read(8) == PNG_MAGIC, name
        assert 10_000 < os.path.getsize(path) < 200_000, name


def test_draw_exits_1_when_a_step_is_not_preserved(tmp_path, monkeypatch):
    import fpt_ref.plan
    from fpt_ref.cli import main

    def broken_verify_each(a, others, **kw):
        return [
            {"max_abs": 1.0, "max_rel": 1.0, "max_ulp": 1e16, "tol_abs": 1e-12, "tol_ulp": 10.0, "ok": False}
            for _ in others
        ]

    monkeypatch.setattr(fpt_ref.plan, "verify_each", broken_verify_each)
    assert main(["draw", "demo", "--plan", "mlp p=40", "-o", str(tmp_path / "d"), "--dpi", "20"]) == 1


def test_draw_dpi_bounds(tmp_path, capsys):
    from fpt_ref.cli import main

    assert main(["draw", "demo", "-o", str(tmp_path / "d"), "--dpi", "0"]) == 2
    assert "argument --dpi: must be at least 10, got 0" in capsys.readouterr().err
    assert main(["draw", "demo", "-o", str(tmp_path / "d"), "--dpi", "100000"]) == 2
    assert "argument --dpi: must be at most 600, got 100000" in capsys.readouterr().err
    assert main(["draw", "demo", "-o", str(tmp_path / "d"), "--max-tensors", "0"]) == 2
    assert "argument --max-tensors: must be at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
