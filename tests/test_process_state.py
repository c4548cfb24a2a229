"""The autouse fixture gives every test its process state back: what a test changes (environment, MLflow URI,
webdataset openers) is undone, so no test depends on another's leftovers."""

from __future__ import annotations

import os

import mlflow

from .conftest import ProcessState


def test_environment_tracking_uri_and_openers_are_restored():
    import importlib

    from pbp.data.storage import register_webdataset_opener

    gopen = importlib.import_module("webdataset.gopen")
    before = ProcessState()
    uri_before = mlflow.get_tracking_uri()
    os.environ["PBP_LEAK_TEST"] = "1"
    os.environ.update({"MLFLOW_TRACKING_USERNAME": "leak"})
    mlflow.set_tracking_uri("http://127.0.0.1:1/leak")
    gopen.gopen_schemes["leak"] = print
    register_webdataset_opener()  # pbp's own s3:// opener (no endpoint needed to register it)
    before.restore()
    assert "PBP_LEAK_TEST" not in os.environ and os.environ.get("MLFLOW_TRACKING_USERNAME") != "leak"
    assert mlflow.get_tracking_uri() == uri_before and "leak" not in gopen.gopen_schemes
    assert ("s3" in gopen.gopen_schemes) == ("s3" in (before.schemes or {}))
