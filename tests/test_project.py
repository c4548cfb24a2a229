"""Project invariants: layout, the two README commands, CI entry point, lock file."""

import platform
import subprocess

from .conftest import REPO


def test_platform_dir_is_not_a_package_and_stdlib_platform_works():
    assert not (REPO / "platform" / "__init__.py").exists()
    assert (REPO / "platform" / "pbp" / "__init__.py").exists()
    assert platform.system()  # the standard library's module, not our folder


def test_readme_shows_the_two_commands_and_ci_runs_the_test_one():
    readme = (REPO / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    ci = [ln for ln in (REPO / ".ci" / "run").read_text().splitlines() if ln and not ln.startswith("#")]
    assert ci[-1] == "make test"


def test_make_demo_runs_the_pipeline_command():
    res = subprocess.run(["make", "-n", "demo"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert (
        res.returncode == 0
        and "pbp stack up" in res.stdout
        and "pbp demo --config configs/demo/default.yaml" in res.stdout
    )


def test_lock_pins_the_measured_set():
    pins = dict(line.split("==", 1) for line in (REPO / "requirements.lock").read_text().splitlines() if "==" in line)
    assert pins["torch"] == "2.13.0"  # the CPU build on disk; a bare torch pulls CUDA
    assert pins["s3fs"].startswith("2026.")  # without the lock pip backtracks to s3fs 0.4
    for name in ("ray", "deepspeed", "mlflow", "boto3", "botocore", "aiobotocore", "webdataset", "optuna"):
        assert name in pins, name


def test_no_database_or_large_file_is_tracked():
    """mlflow.db (a local MLflow client's default store) was committed once by accident."""
    tracked = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True).stdout
    paths = [REPO / p for p in tracked.decode().split("\0") if p]
    assert not [p for p in paths if p.suffix in (".db", ".sqlite", ".pkl", ".pt", ".safetensors")]
    assert not [p for p in paths if p.is_file() and p.stat().st_size > 512 * 1024]
