"""Plug-ins found by entry-point group: the ``fpt-ref`` sub-commands and the demo's extra lines.

A group lists ``name = module:attribute`` entries. The installed distributions' metadata is
read first (:func:`importlib.metadata.entry_points`); when no distribution declares the
group (a source tree run with ``PYTHONPATH`` and never installed, or installed before the
group existed), the ``[options.entry_points]`` section of the ``setup.cfg`` beside the
``fpt_ref`` package is read instead. ``setup.cfg`` stays the one list of plug-ins either way.

Entries are sorted by name, whatever their source (setuptools writes the metadata sorted,
``setup.cfg`` has its own order, distributions have none among them), so the order of
``fpt-ref --help`` does not depend on how the project was installed. A name given twice
keeps this project's entry.
"""

from __future__ import annotations

import configparser
import importlib
import os

DISTRIBUTION = "fpt-ref"
SETUP_CFG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.cfg")


def _from_metadata(group: str) -> list:
    """``[(name, "module:attr")]`` of ``group`` in the installed metadata, this project's first."""
    from importlib import metadata

    try:
        eps = list(metadata.entry_points(group=group))
    except TypeError:  # Python 3.9: no selection interface
        eps = list(metadata.entry_points().get(group, ()))

    def dist_name(ep) -> str:
        dist = getattr(ep, "dist", None)
        return "" if dist is None else str(dist.metadata["Name"] or "").lower().replace("_", "-")

    eps.sort(key=lambda ep: (dist_name(ep) != DISTRIBUTION, dist_name(ep)))
    return [(ep.name, ep.value) for ep in eps]


def _from_setup_cfg(group: str, path: str = SETUP_CFG) -> list:
    """``[(name, "module:attr")]`` of ``group`` in a ``setup.cfg``, in file order (``[]`` if absent)."""
    if not os.path.isfile(path):
        return []
    cfg = configparser.ConfigParser()
    cfg.read(path, encoding="utf-8")
    text = cfg.get("options.entry_points", group, fallback="")
    out = []
    for line in text.splitlines():
        if line.strip():
            name, _, value = line.partition("=")
            out.append((name.strip(), value.strip()))
    return out


def entry_points(group: str) -> list:
    """``[(name, "module:attr")]`` of ``group`` sorted by name: installed metadata, else the
    source tree's ``setup.cfg``."""
    found = _from_metadata(group) or _from_setup_cfg(group)
    seen: dict = {}
    for name, value in found:
        seen.setdefault(name, value)
    return sorted(seen.items())


def load(value: str, optional: bool = True):
    """The object named by ``"module:attr"``; ``None`` when ``optional`` and that module is not
    present (a part of the project left out of an installation). Other import errors propagate."""
    mod_name, _, attr = value.partition(":")
    try:
        mod = importlib.import_module(mod_name.strip())
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if optional and missing and (mod_name == missing or mod_name.startswith(missing + ".")):
            return None
        raise
    obj = mod
    for part in attr.strip().split(".") if attr.strip() else ():
        obj = getattr(obj, part)
    return obj
