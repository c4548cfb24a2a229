"""Hyperparameter search: campaigns of training trials under Ray Tune, their pruning and their reports."""
