"""The package's version, read from its single source: ``setup.cfg``'s ``version``."""

from __future__ import annotations


def version() -> str:
    """The package's version: ``setup.cfg``'s ``version``, its single source.

    Read from the installed distribution's metadata (``importlib.metadata``); when the
    package runs from a source tree that is not installed, from ``setup.cfg`` beside it.
    """
    import os

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = os.path.join(here, "setup.cfg")
    if os.path.isfile(cfg):  # a source tree: its setup.cfg is the truth, even when an older copy is installed
        import configparser

        parser = configparser.ConfigParser()
        parser.read(cfg, encoding="utf-8")
        if parser.has_option("metadata", "version"):
            return parser.get("metadata", "version")
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("fpt-ref")
    except PackageNotFoundError:
        return "unknown"
