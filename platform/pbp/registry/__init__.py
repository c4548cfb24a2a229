"""The MLflow model registry as pbp uses it: register models with their lineage, promote them through a gate on
their test metric, keep an append-only, hash-chained audit trail in MLflow, roll back. See docs/registry.md.

Modules: ``server`` (client, errors, who is asking), ``lineage`` (version tags), ``register``, ``gate`` (scores on
one test split), ``lock`` (one decision at a time per model), ``audit`` (the trail), ``promote`` (promote, rollback).
"""
