"""Benchmarks (``pbp bench ...``): every figure is reported against a baseline measured in the same run."""
