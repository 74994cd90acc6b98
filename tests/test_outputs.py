"""What every writing command does with its output path, class by class (README, "Command line").

File outputs (``init -o``, ``expand -o``): a device, a FIFO, a socket or a folder is refused
(exit 2, one line) and left as it was; a symbolic link is followed (its target written, the
link stays); an existing file keeps its permission bits, a new one gets ``0666 & ~umask``;
a plan that is not preserved, or any error, writes nothing and leaves the input as it was.
Folder outputs (``vectors -o``, ``draw -o``): a file, or a foreign non-empty folder, is
refused; an earlier output is replaced as a whole; the same run gives the same bytes.
``bench --out``: checked before measuring, created only when there are results.
Sizes that need more memory than is available are one line, exit 2, before allocating.
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import time

import pytest

import fpt_ref
import fpt_ref.plan
from fpt_ref.cli import main


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "m.safetensors"
    assert (
        main(
            ["init", "--h", "4", "--p", "6", "--heads", "1", "--k", "2", "--v", "2", "--max-seq", "4", "-o", str(path)]
        )
        == 0
    )
    return path


def _init(out):
    return ["init", "--h", "4", "--p", "6", "--heads", "1", "--k", "2", "--v", "2", "--max-seq", "4", "-o", str(out)]


def _expand(model_file):
    return lambda out: ["expand", str(model_file), "--plan", "mlp p=8", "-o", str(out)]


def _digest(folder) -> dict:
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _one_error_line(capsys, *needles):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ---- file outputs: the classes of paths ---------------------------------------------------


def _special(kind: str, tmp_path, request):
    """A path of the given kind and a check that it is still that kind afterwards. A device is
    a node of the test's own (conftest ``char_device``), never the system's /dev/null."""
    if kind in ("device", "link to a device"):
        dev = request.getfixturevalue("char_device")
        ino = os.lstat(dev).st_ino

        def device_kept():
            st = os.lstat(dev)
            return stat.S_ISCHR(st.st_mode) and st.st_ino == ino

        if kind == "device":
            return str(dev), device_kept
        path = tmp_path / "link"
        os.symlink(dev, path)
        return str(path), lambda: os.path.islink(path) and os.readlink(path) == str(dev) and device_kept()
    if kind == "fifo":
        path = tmp_path / "fifo"
        os.mkfifo(path)
        return str(path), lambda: stat.S_ISFIFO(os.lstat(path).st_mode)
    if kind == "socket":
        path = tmp_path / "sock"
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        s.close()
        return str(path), lambda: stat.S_ISSOCK(os.lstat(path).st_mode)
    if kind == "directory":
        path = tmp_path / "adir"
        path.mkdir()
        return str(path), lambda: path.is_dir() and not any(path.iterdir())
    raise AssertionError(kind)


WRITERS = ["init", "expand"]
SPECIAL = ["device", "fifo", "socket", "directory", "link to a device"]
WHAT = {
    "device": "a character device",
    "fifo": "a FIFO",
    "socket": "a socket",
    "directory": "a directory",
    "link to a device": "a character device",
}


@pytest.mark.parametrize("kind", SPECIAL)
@pytest.mark.parametrize("writer", WRITERS)
def test_non_regular_outputs_are_refused_and_left_alone(writer, kind, tmp_path, model_file, capsys, request):
    path, still = _special(kind, tmp_path, request)
    args = _init(path) if writer == "init" else _expand(model_file)(path)
    capsys.readouterr()
    t0 = time.perf_counter()
    assert main(args) == 2
    assert time.perf_counter() - t0 < 5  # a FIFO is never opened (it would block)
    _one_error_line(capsys, "-o: ", WHAT[kind], "refusing to write")
    assert still()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary left


@pytest.mark.parametrize("writer", WRITERS)
def test_a_symlink_is_followed_and_stays_a_link(writer, tmp_path, model_file):
    target = tmp_path / "target.safetensors"
    target.write_bytes(b"old")
    link = tmp_path / "link.safetensors"
    os.symlink(target, link)
    args = _init(link) if writer == "init" else _expand(model_file)(link)
    assert main(args) == 0
    assert os.path.islink(link) and os.readlink(link) == str(target)
    assert fpt_ref.load(target).h == 4


@pytest.mark.parametrize("mode", [0o444, 0o640, 0o604])
@pytest.mark.parametrize("writer", WRITERS)
def test_an_existing_file_keeps_its_permission_bits(writer, mode, tmp_path, model_file):
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"old")
    os.chmod(out, mode)
    args = _init(out) if writer == "init" else _expand(model_file)(out)
    assert main(args) == 0
    assert stat.S_IMODE(os.stat(out).st_mode) == mode
    assert fpt_ref.load(out).h == 4


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
@pytest.mark.parametrize("writer", WRITERS)
def test_a_new_file_gets_0666_less_the_umask(writer, umask, tmp_path, model_file):
    out = tmp_path / "new.safetensors"
    args = _init(out) if writer == "init" else _expand(model_file)(out)
    old = os.umask(umask)
    try:
        assert main(args) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("writer", WRITERS)
def test_a_missing_folder_is_one_line(writer, tmp_path, model_file, capsys):
    out = tmp_path / "no" / "such" / "m.safetensors"
    args = _init(out) if writer == "init" else _expand(model_file)(out)
    capsys.readouterr()
    assert main(args) == 2
    _one_error_line(capsys, "-o: folder", "does not exist")


@pytest.mark.parametrize("writer", WRITERS)
def test_same_inputs_give_byte_identical_files(writer, tmp_path, model_file):
    paths = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    for out in paths:
        assert main(_init(out) if writer == "init" else _expand(model_file)(out)) == 0
    assert paths[0].read_bytes() == paths[1].read_bytes()


# ---- expand: a failing plan never touches the input ---------------------------------------


def _broken_verify_each(a, others, **kw):
    return [
        {"max_abs": 1.0, "max_rel": 1.0, "max_ulp": 1e16, "tol_abs": 1e-12, "tol_ulp": 10.0, "ok": False}
        for _ in others
    ]


@pytest.mark.parametrize(
    "case,plan,status",
    [
        ("not preserved", "mlp p=8; hidden h=6", 1),
        ("bad step", "mlp p=8; grow x=1", 2),
        ("shrinking step", "mlp p=2", 2),
        ("too large", "hidden h=1000000000", 2),
    ],
)
def test_expand_onto_its_input_leaves_it_untouched_unless_the_run_succeeds(
    case, plan, status, model_file, monkeypatch, capsys
):
    if case == "not preserved":
        monkeypatch.setattr(fpt_ref.plan, "verify_each", _broken_verify_each)
    before = model_file.read_bytes()
    assert main(["expand", str(model_file), "--plan", plan, "-o", str(model_file)]) == status
    assert model_file.read_bytes() == before
    out = capsys.readouterr()
    if status == 1:
        assert "NOT preserved (step 1, 2): nothing written" in out.out
    else:
        assert len(out.err.strip().splitlines()) == 1 and "Traceback" not in out.err


def test_expand_force_writes_a_result_that_is_not_preserved_and_says_so(model_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fpt_ref.plan, "verify_each", _broken_verify_each)
    out = tmp_path / "forced.safetensors"
    assert main(["expand", str(model_file), "--plan", "mlp p=8", "--force", "-o", str(out)]) == 1
    assert "NOT preserved, written because of --force" in capsys.readouterr().out
    assert fpt_ref.load(out).layers[0].p == 8


def test_expand_onto_its_input_replaces_it_after_success(model_file):
    assert main(["expand", str(model_file), "--plan", "mlp p=8", "-o", str(model_file)]) == 0
    assert fpt_ref.load(model_file).layers[0].p == 8


# ---- memory: refused in one line before allocating ----------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["expand", "{m}", "--plan", "hidden h=1000000000", "-o", "{out}"],
        ["expand", "{m}", "--plan", "hidden h=3000000000", "-o", "{out}"],
        ["expand", "{m}", "--plan", "mlp p=1000000000", "-o", "{out}"],
        ["expand", "{m}", "--plan", "add_heads count=1000000000", "-o", "{out}"],
        ["expand", "{m}", "--plan", "add_layer at=0 count=1000000000", "-o", "{out}"],
        ["init", "--vocab", "1000000000", "-o", "{out}"],
        ["init", "--h", "1000000", "--p", "1000000", "-o", "{out}"],
        ["init", "--layers", "100000000", "-o", "{out}"],
    ],
)
def test_sizes_beyond_the_memory_are_one_line_before_allocating(args, model_file, tmp_path, capsys):
    out = tmp_path / "out.safetensors"
    argv = [a.format(m=model_file, out=out) for a in args]
    capsys.readouterr()
    t0 = time.perf_counter()
    assert main(argv) == 2
    assert time.perf_counter() - t0 < 1.0
    _one_error_line(capsys, "needs about", "of memory", "available")
    assert not out.exists()


def test_a_memory_error_still_is_one_line(monkeypatch, tmp_path, capsys):
    import fpt_ref.init

    def exhausted(*a, **k):
        raise MemoryError("Unable to allocate 7.5 GiB for an array with shape (1000000000,)")

    monkeypatch.setattr(fpt_ref.init, "init_model", exhausted)
    assert main(_init(tmp_path / "m.safetensors")) == 2
    _one_error_line(capsys, "out of memory", "Unable to allocate 7.5 GiB")


def test_vectors_config_too_large_is_one_line(tmp_path, capsys):
    import json

    cfg = tmp_path / "huge.json"
    cfg.write_text(json.dumps({"h": 100000, "p": 100000, "vocab": 100000}))
    out = tmp_path / "vec"
    capsys.readouterr()
    assert main(["vectors", "--config", str(cfg), "-o", str(out)]) == 2
    _one_error_line(capsys, "needs about", "available")
    assert not out.exists()


# ---- folder outputs: vectors and draw ------------------------------------------------------


def _vectors(out):
    return ["vectors", "-o", str(out)]


def _draw(out):
    return ["draw", "demo", "--plan", "mlp p=40", "--dpi", "20", "--max-tensors", "1", "--no-check", "-o", str(out)]


FOLDER_WRITERS = {"vectors": _vectors, "draw": _draw}


@pytest.mark.parametrize("writer", FOLDER_WRITERS)
def test_a_foreign_non_empty_folder_is_refused_and_untouched(writer, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    capsys.readouterr()
    assert main(FOLDER_WRITERS[writer](out)) == 2
    _one_error_line(capsys, "is not empty")
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]
    assert (out / "thesis.tex").read_text() == "years of work"


@pytest.mark.parametrize("writer", FOLDER_WRITERS)
def test_a_file_in_place_of_the_folder_is_refused(writer, tmp_path, capsys):
    out = tmp_path / "afile"
    out.write_text("x")
    capsys.readouterr()
    assert main(FOLDER_WRITERS[writer](out)) == 2
    _one_error_line(capsys, "exists and is not a directory")
    assert out.read_text() == "x"


@pytest.mark.parametrize("writer", FOLDER_WRITERS)
def test_a_rerun_replaces_the_earlier_output_whole_and_byte_identical(writer, tmp_path):
    out = tmp_path / "out"
    assert main(FOLDER_WRITERS[writer](out)) == 0
    first = _digest(out)
    assert first
    stale = out / ("fam" if writer == "vectors" else "") / ("stale.json" if writer == "vectors" else "step9_mlp.png")
    stale.parent.mkdir(exist_ok=True)
    stale.write_text("an older run's case")
    assert main(FOLDER_WRITERS[writer](out)) == 0
    assert not stale.exists()
    assert _digest(out) == first  # every file, byte for byte
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left


def test_two_vectors_runs_give_byte_identical_trees(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(_vectors(a)) == 0 and main(_vectors(b)) == 0
    da, db = _digest(a), _digest(b)
    assert len(da) > 300 and da == db


# ---- bench ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        ["--sizes", "no-such-size"],  # nothing measured: rejected after the options parse
        ["--dtypes", "float16"],  # rejected by the parser
    ],
)
def test_bench_rejected_options_leave_no_folder(extra, tmp_path, capsys):
    out = tmp_path / "bench"
    status = main(["bench", "--quick", "--backends", "numpy", "--ops", "mlp", "--out", str(out), *extra])
    assert status == 2
    assert not out.exists()
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("fpt-ref")


def test_bench_out_that_is_a_file_is_refused_before_measuring(tmp_path, capsys, monkeypatch):
    import fpt_ref.benchmarks.runner

    monkeypatch.setattr(fpt_ref.benchmarks.runner, "run", lambda *a, **k: pytest.fail("measured before checking --out"))
    out = tmp_path / "afile"
    out.write_text("x")
    assert main(["bench", "--quick", "--backends", "numpy", "--out", str(out)]) == 2
    _one_error_line(capsys, "--out", "exists and is not a directory")


@pytest.mark.parametrize(
    "plan,what", [("hidden h=3000000", "step 1 (hidden h=3000000)"), ("mlp p=3000000", "step 1 (mlp p=3000000)")]
)
def test_expand_sizes_the_written_result_too(plan, what, model_file, tmp_path, monkeypatch, capsys):
    import fpt_ref.memory

    # a 64 MiB machine: the plan's steps, its check or the written result does not fit
    monkeypatch.setattr(fpt_ref.memory, "available_bytes", lambda: 64 * 1024**2)
    out = tmp_path / "x.safetensors"
    capsys.readouterr()
    t0 = time.perf_counter()
    assert main(["expand", str(model_file), "--plan", plan, "-o", str(out)]) == 2
    assert time.perf_counter() - t0 < 1.0
    _one_error_line(capsys, what, "needs about", "64.0 MiB available")
    assert not out.exists()
