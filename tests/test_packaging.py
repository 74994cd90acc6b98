"""The distribution installs every package, and proofs/ and benchmarks/ only inside fpt_ref."""

from __future__ import annotations

import configparser
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _options():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    packages = cfg["options"]["packages"].split()
    package_dir = dict(
        (k.strip(), v.strip())
        for k, v in (line.split("=") for line in cfg["options"]["package_dir"].split("\n") if line)
    )
    return packages, package_dir


def _folder(package: str, package_dir: dict) -> str:
    for prefix in sorted(package_dir, key=len, reverse=True):
        if package == prefix or package.startswith(prefix + "."):
            rest = package[len(prefix) :].lstrip(".").split(".") if package != prefix else []
            return os.path.join(ROOT, package_dir[prefix], *[r for r in rest if r])
    return os.path.join(ROOT, *package.split("."))


def test_every_package_folder_is_listed_and_nothing_else():
    packages, package_dir = _options()
    assert package_dir == {"fpt_ref.proofs": "proofs", "fpt_ref.benchmarks": "benchmarks"}
    assert all(p == "fpt_ref" or p.startswith("fpt_ref.") for p in packages)  # no generic top-level names
    found = set()
    for top, name in (("fpt_ref", "fpt_ref"), ("proofs", "fpt_ref.proofs"), ("benchmarks", "fpt_ref.benchmarks")):
        for folder, dirs, files in os.walk(os.path.join(ROOT, top)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            if "__init__.py" in files:
                rel = os.path.relpath(folder, os.path.join(ROOT, top))
                found.add(name if rel == "." else name + "." + rel.replace(os.sep, "."))
    assert set(packages) == found
    for p in packages:
        assert os.path.isfile(os.path.join(_folder(p, package_dir), "__init__.py")), p


def test_gpu_extra_names_one_cupy_wheel():
    # every cupy-cudaNNx wheel installs the same `cupy` module: an extra with two would break CuPy
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    extras = cfg["options.extras_require"]
    cupy = [r for name in extras for r in extras[name].split() if r.lower().startswith("cupy")]
    assert len(cupy) == 1 and cupy[0].startswith("cupy-cuda13x"), cupy
    assert extras["gpu"].split() == cupy
