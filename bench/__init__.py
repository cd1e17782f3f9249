"""Benchmarks (installed as ``affedge.bench``); recorded runs live in ``bench/results/``."""
