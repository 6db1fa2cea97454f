"""Analysis layer: theory checks, experiments, figure registry and benchmarks.

Run ``python -m analysis --help``.  Nothing here re-implements the mathematics of
:mod:`lowrank_prox`; experiments are configs plus run functions that return numbers.
"""
