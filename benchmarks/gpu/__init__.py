"""The prepared GPU run: ``run.sh`` (every step, each with its own time limit) and
:mod:`~fpt_ref.benchmarks.gpu.checks` (the GPU targets and the checks ``fpt-ref bench`` does
not make). See ``README.md`` beside this file.
"""
