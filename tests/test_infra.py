"""The cloud manifests parse, carry the fields their launchers require, keep auth on and secrets out, and every job
entrypoint and config they reference exists in the repo."""

import re
from pathlib import Path

import pytest
import yaml

from .conftest import REPO

INFRA = REPO / "infra"
# Files a manifest may reference before they exist (none now); the test fails once a listed one lands.
PENDING: set[str] = set()


def _docs(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def test_every_manifest_parses():
    files = sorted(INFRA.rglob("*.yaml"))
    assert {f.relative_to(INFRA).as_posix() for f in files} >= {
        "aws/cluster.yaml", "k8s/raycluster.yaml", "k8s/rayjob-smoke.yaml", "k8s/rayjob-pretrain.yaml",
    }  # fmt: skip
    for f in files:
        assert _docs(f), f


def test_aws_cluster_launcher_config():
    cfg = _docs(INFRA / "aws/cluster.yaml")[0]
    for key in ("cluster_name", "provider", "auth", "available_node_types", "head_node_type", "max_workers",
                "setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):  # fmt: skip
        assert key in cfg, key
    assert cfg["provider"]["type"] == "aws" and cfg["provider"]["region"]
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    assert {"head", "gpu_worker", "cpu_dataprep"} <= set(types)
    assert types["head"]["resources"] == {"CPU": 0}
    for name, t in types.items():
        assert {"node_config", "resources", "min_workers", "max_workers"} <= set(t), name
        assert t["min_workers"] <= t["max_workers"] <= cfg["max_workers"], name
        assert "IamInstanceProfile" in t["node_config"], f"{name}: S3 must come from an instance profile"
    assert types["gpu_worker"]["node_config"]["InstanceType"].startswith(("g", "p"))
    start = " ".join(cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"])
    assert start.count(". ~/pbp/infra/aws/node_env.sh && ") == 2  # the environment every Ray process starts with
    node_env = (INFRA / "aws/node_env.sh").read_text()
    assert "export RAY_AUTH_MODE=token" in node_env and "PBP_RUNS_BUCKET=" in node_env
    assert "aws secretsmanager get-secret-value" in node_env  # MLflow's password fetched on the node, never written
    assert "--dashboard-host=127.0.0.1" in start
    setup = " ".join(cfg["setup_commands"])
    assert "requirements.lock" in setup and "python3.11 -m venv" in setup and "MLFLOW" not in setup
    assert all(t["node_config"].get("ImageId") for t in types.values())  # Ray's default AMI has no Python 3.11


def test_aws_cluster_config_validates_against_the_launchers_own_schema():
    """The schema `ray up` checks a cluster config against, shipped in the ray wheel (so the test follows the
    pinned Ray); a misspelt or misplaced key fails here, not at `ray up` time."""
    import json

    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    cfg = _docs(INFRA / "aws/cluster.yaml")[0]
    jsonschema.validate(cfg, schema)
    head = cfg["available_node_types"]["head"]
    for bad in ({**cfg, "max_worker": 2}, {**cfg, "max_workers": "two"},  # strict enough to catch a typo
                {**cfg, "available_node_types": {**cfg["available_node_types"], "head": {**head, "min_worker": 0}}}):  # fmt: skip
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_kuberay_manifests_have_token_auth_and_required_fields():
    cluster = _docs(INFRA / "k8s/raycluster.yaml")[0]
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    spec = cluster["spec"]
    assert spec["authOptions"] == {"mode": "token"}
    assert tuple(int(x) for x in spec["rayVersion"].split(".")[:2]) >= (2, 52)
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"]
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert {"gpu", "dataprep"} <= set(groups)
    for g in groups.values():
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        assert g["template"]["spec"]["containers"][0]["image"] == head["image"]
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # Every group's pods reach MLflow and name the user's buckets (the smoke job checks every node).
    for c in [head] + [g["template"]["spec"]["containers"][0] for g in groups.values()]:
        names = {e["name"] for e in c.get("env", [])}
        assert {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_PASSWORD", "PBP_RUNS_BUCKET", "PBP_DATA_BUCKET"} <= names, c
    # A GPU pod of base.yaml's worker: its CPU request holds the run's cpus_per_worker.
    from pbp.config import load_config
    from pbp.train.config import PretrainConfig

    base = load_config(PretrainConfig, REPO / "configs/pretrain/base.yaml")
    assert base.scaling.cpus_per_worker <= float(gpu["resources"]["requests"]["cpu"])
    for job_file in ("rayjob-smoke.yaml", "rayjob-pretrain.yaml"):
        job = _docs(INFRA / "k8s" / job_file)[0]
        assert job["kind"] == "RayJob" and job["spec"]["entrypoint"].startswith("python ")
        assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}


def test_no_credentials_in_infra():
    for f in INFRA.rglob("*"):
        if f.is_file():
            text = f.read_text()
            assert not re.search(r"AKIA[0-9A-Z]{16}", text), f
            assert not re.search(r"(?i)aws_secret_access_key\s*[:=]\s*\S", text), f


def test_referenced_entrypoints_and_configs_exist():
    refs = set()
    for f in INFRA.rglob("*"):
        if f.is_file():
            refs |= set(re.findall(r"\b((?:jobs|configs)/[\w./-]+\.(?:py|yaml))", f.read_text()))
    assert "jobs/smoke.py" in refs
    missing = sorted(r for r in refs - PENDING if not (REPO / r).exists())
    assert not missing, f"infra references files that do not exist: {missing}"
    landed = sorted(r for r in PENDING if (REPO / r).exists())
    assert not landed, f"{landed} exist now: remove them from PENDING"
    for line in (INFRA / "docker/Dockerfile").read_text().splitlines():
        if line.startswith("COPY"):
            for src in line.split()[1:-1]:
                if not src.startswith("--"):
                    assert (REPO / src).exists(), src


@pytest.mark.parametrize("job", ["smoke", "pretrain"])
def test_jobs_are_thin(job):
    lines = [ln for ln in (REPO / "jobs" / f"{job}.py").read_text().splitlines() if ln.strip()]
    assert len(lines) < 25
