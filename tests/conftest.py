"""Shared pytest configuration and test models: hypothesis profiles, GPU detection,
preservation records, the models several test modules build (``hetero_model``) and a
character device node of the test's own (``char_device``).

Test modules take the shared models as fixtures; a module that needs one at import time
(a parametrization) imports the plain builder: ``from conftest import build_hetero_model``.
"""

from __future__ import annotations

import os
import stat

import pytest
from hypothesis import HealthCheck, settings

import fpt_ref

# Profiles: "ci" (default) runs the documented number of cases; "dev" is quicker; "thorough" is for soak runs.
# "ci" is derandomized so that CI runs are reproducible; "thorough" explores new random cases.
settings.register_profile(
    "ci", deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.register_profile("dev", parent=settings.get_profile("ci"))
settings.register_profile("thorough", parent=settings.get_profile("ci"), derandomize=False)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)
_SCALE = {"ci": 1.0, "dev": 0.1, "thorough": 10.0}[PROFILE]


def examples(n: int) -> int:
    """The number of generated cases for a property test: ``n`` in CI, scaled by the profile."""
    return max(1, int(n * _SCALE))


def gpu_available() -> bool:
    """True when CuPy imports and sees at least one usable CUDA device."""
    try:
        import cupy  # noqa: F401

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # ImportError, CUDA driver/runtime errors: no usable GPU
        return False


def pytest_collection_modifyitems(config, items):
    if any(os.path.basename(str(item.fspath)) in _PROVE_READERS for item in items):
        start_prove_all()  # on the second core while the other tests run
    if gpu_available():
        return
    skip = pytest.mark.skip(reason="no usable GPU (CuPy missing or no CUDA device)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# Largest preservation errors seen by the property tests, printed at the end of the run.
PRESERVATION_RECORDS: dict = {}


def record_preservation(key: str, ulp: float, frac: float) -> None:
    """Record one case: its error in ulps of the output scale and the fraction of the tolerance used."""
    worst = PRESERVATION_RECORDS.get(key, (0.0, 0.0, 0))
    PRESERVATION_RECORDS[key] = (max(worst[0], ulp), max(worst[1], frac), worst[2] + 1)


def pytest_terminal_summary(terminalreporter):
    if PRESERVATION_RECORDS:
        terminalreporter.section("preservation error (ulps of the output scale)")
        for key, (ulp, frac, n) in sorted(PRESERVATION_RECORDS.items()):
            terminalreporter.write_line(
                f"{key}: {n} cases, max {ulp:.2f} ulp, max {100 * frac:.2f}% of the derived tolerance"
            )


@pytest.fixture(scope="session")
def vec(tmp_path_factory):
    """The ``tiny`` reference vectors (seed 0), written once per test session; treat as read-only."""
    from fpt_ref.vectors.cases import load_config
    from fpt_ref.vectors.write import write_vectors

    root = tmp_path_factory.mktemp("vectors")
    write_vectors(root, load_config("tiny"), seed=0)
    return root


# ---- shared test models ------------------------------------------------------------------


def build_hetero_model(vocab=50, eps=1e-6, causal=True, dtype="float64"):
    """Two layers with different p and heads of different (k, v): h=6, o=3, s_max=5.

    Layer 0: p=5, heads (3, 2) x 2. Layer 1: p=7, heads (2, 4) x 3 and one added head (4, 1).
    """
    m = fpt_ref.init_model(
        h=6,
        p=[5, 7],
        n_heads=[2, 3],
        k=[3, 2],
        v=[2, 4],
        n_layers=2,
        out_dim=3,
        max_seq=5,
        vocab=vocab,
        eps=eps,
        causal=causal,
        dtype=dtype,
        seed=1,
    )
    return fpt_ref.add_heads(m, 1, layers=[1], k=4, v=1, seed=7)  # layer 1 now has heads of (2,4) and (4,1)


@pytest.fixture
def hetero_model():
    """:func:`build_hetero_model`, to call with its options: ``hetero_model(vocab=None)``."""
    return build_hetero_model


# ---- a device node of the test's own --------------------------------------------------------


@pytest.fixture
def char_device(tmp_path):
    """A character device node of the test's own, ``tmp_path / "null"`` with the null device's
    numbers (1, 3). A test that tries to write to a device path uses this node, never the
    system's /dev/null: a broken "not a regular file" check then replaces this node only.
    Creating a node needs CAP_MKNOD; where that is not permitted the test is skipped."""
    p = tmp_path / "null"
    try:
        os.mknod(p, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except OSError as exc:  # PermissionError included: no CAP_MKNOD (rootless containers, most users)
        pytest.skip(
            f"cannot create a character device node in tmp_path ({exc}); writing to /dev/null instead is unsafe"
        )
    return p


def run_cli(capsys, *args):
    """``(exit status, stdout, stderr)`` of ``fpt-ref ARGS``, run in-process."""
    from fpt_ref.cli import main

    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


# ---- the session's one full `fpt-ref prove --all` run, in the background (tests/proofs_job.py) ----

_PROVE_JOB: dict = {}
_PROVE_READERS = ("test_proofs_cli.py", "test_proofs_blocks.py")


def start_prove_all() -> None:
    """Start tests/proofs_job.py once per session (no-op if started)."""
    import subprocess
    import sys
    import tempfile

    if "proc" in _PROVE_JOB:
        return
    out_dir = tempfile.mkdtemp(prefix="fpt-prove-")
    job = os.path.join(os.path.dirname(__file__), "proofs_job.py")
    _PROVE_JOB.update(dir=out_dir, proc=subprocess.Popen([sys.executable, job, out_dir]))


def prove_all_result() -> tuple:
    """``(rc, stdout, stderr, tex path, md path, typeset dict)`` of the background run (waits for it)."""
    import json

    start_prove_all()
    status = _PROVE_JOB["proc"].wait(timeout=1200)
    d = _PROVE_JOB["dir"]
    assert status == 0, f"tests/proofs_job.py failed with status {status}"

    def read(name):
        with open(os.path.join(d, name)) as f:
            return f.read()

    typeset = json.loads(read("typeset.json"))
    return (
        int(read("rc")),
        read("stdout"),
        read("stderr"),
        os.path.join(d, "proofs.tex"),
        os.path.join(d, "proofs.md"),
        typeset,
    )


def pytest_sessionfinish(session, exitstatus):
    import shutil

    proc = _PROVE_JOB.get("proc")
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()
    if "dir" in _PROVE_JOB:
        shutil.rmtree(_PROVE_JOB["dir"], ignore_errors=True)
