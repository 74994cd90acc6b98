"""Outputs are regular files written atomically; nothing else is ever replaced (fpt_ref.files)."""

from __future__ import annotations

import os
import socket
import stat

import numpy as np
import pytest

from fpt_ref.files import atomic_write, check_output_file, replace_directory, write_bytes


def _fifo(tmp_path):
    p = tmp_path / "fifo"
    os.mkfifo(p)
    return p


def _socket(tmp_path):
    p = tmp_path / "sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(p))
    return p


def _dir(tmp_path):
    p = tmp_path / "d"
    p.mkdir()
    return p


def _missing_folder(tmp_path):
    return tmp_path / "no" / "such" / "file"


REFUSED = [
    ("char device", "char_device", "character device"),  # the conftest fixture
    ("fifo", _fifo, "FIFO"),
    ("socket", _socket, "socket"),
    ("directory", _dir, "directory"),
    ("missing folder", _missing_folder, "does not exist"),
    ("empty", lambda t: "", "empty path"),
]


@pytest.mark.parametrize("label,make,message", REFUSED, ids=[r[0] for r in REFUSED])
def test_non_regular_outputs_are_refused_untouched(request, tmp_path, label, make, message):
    target = request.getfixturevalue(make) if isinstance(make, str) else make(tmp_path)
    before = os.lstat(target) if target and os.path.lexists(target) else None
    called = []
    with pytest.raises(ValueError, match=f"^out: .*{message}"):
        atomic_write(target, called.append, name="out")
    assert called == []  # refused before any work
    if before is not None:
        after = os.lstat(target)
        assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []  # no temporary left


def test_symlink_is_followed_and_stays_a_link(tmp_path):
    target = tmp_path / "real.bin"
    target.write_bytes(b"old")
    link = tmp_path / "link.bin"
    link.symlink_to(target)
    write_bytes(link, b"new")
    assert os.path.islink(link) and target.read_bytes() == b"new"


def test_symlink_to_device_is_refused(tmp_path, char_device):
    link = tmp_path / "link"
    link.symlink_to(char_device)
    with pytest.raises(ValueError, match="character device"):
        check_output_file(link, "out")
    assert os.path.islink(link)


@pytest.mark.parametrize("mode", [0o444, 0o640, 0o664, 0o600])
def test_existing_file_keeps_its_permission_bits(tmp_path, mode):
    p = tmp_path / "f.bin"
    p.write_bytes(b"old")
    os.chmod(p, mode)
    write_bytes(p, b"new")
    assert p.read_bytes() == b"new" and stat.S_IMODE(os.stat(p).st_mode) == mode


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_new_file_gets_0666_minus_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_bytes(tmp_path / "new.bin", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "new.bin").st_mode) == 0o666 & ~umask


def test_failing_writer_leaves_destination_untouched(tmp_path):
    p = tmp_path / "keep.bin"
    p.write_bytes(b"precious")

    def bad(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_write(p, bad)
    assert p.read_bytes() == b"precious"
    assert sorted(os.listdir(tmp_path)) == ["keep.bin"]


def _ours(path):
    return os.path.exists(os.path.join(path, "MARK"))


def test_replace_directory_replaces_a_previous_output_as_a_whole(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "MARK").write_text("")
    (out / "stale.txt").write_text("old case")
    with replace_directory(out, _ours) as tmp:
        open(os.path.join(tmp, "MARK"), "w").close()
        open(os.path.join(tmp, "fresh.txt"), "w").close()
    assert sorted(os.listdir(out)) == ["MARK", "fresh.txt"]
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_replace_directory_refuses_foreign_folders_and_keeps_them_on_error(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    with pytest.raises(ValueError, match="^out_dir: .*not empty"):
        with replace_directory(foreign, _ours):
            raise AssertionError("not reached")
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "MARK").write_text("")
    with pytest.raises(RuntimeError):
        with replace_directory(ours, _ours) as tmp:
            open(os.path.join(tmp, "half"), "w").close()
            raise RuntimeError("failed half way")
    assert sorted(os.listdir(ours)) == ["MARK"]
    assert sorted(os.listdir(tmp_path)) == ["foreign", "ours"]
    assert (foreign / "thesis.tex").read_text() == "years of work"


def test_safetensors_and_npz_are_byte_reproducible(tmp_path):
    import hashlib
    import subprocess
    import sys

    code = (
        "import numpy as np, sys; from fpt_ref.files import write_safetensors, write_npz;"
        "t = {'b': np.arange(3.0), 'a': np.ones((2, 2), np.float32)};"
        "write_safetensors(sys.argv[1] + '.safetensors', t, {'format': 'x', 'norm_eps': '0.1', 'causal': 'true', 'z': '1'});"
        "write_npz(sys.argv[1] + '.npz', t)"
    )
    digests = set()
    for i in range(4):  # separate processes: the library's hash order changes between runs
        subprocess.run([sys.executable, "-c", code, str(tmp_path / f"r{i}")], check=True)
        digests.add(
            tuple(
                hashlib.sha256((tmp_path / f"r{i}{ext}").read_bytes()).hexdigest() for ext in (".safetensors", ".npz")
            )
        )
    assert len(digests) == 1
    from safetensors import safe_open

    with safe_open(str(tmp_path / "r0.safetensors"), framework="numpy") as f:
        assert f.metadata() == {"format": "x", "norm_eps": "0.1", "causal": "true", "z": "1"}
        assert (f.get_tensor("b") == [0.0, 1.0, 2.0]).all() and f.get_tensor("a").dtype == "float32"
    with np.load(tmp_path / "r0.npz") as z:
        assert sorted(z.files) == ["a", "b"] and (z["b"] == [0.0, 1.0, 2.0]).all()
