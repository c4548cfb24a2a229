"""``pbp infra check-crds``: KubeRay manifests validated against CRDs, unknown fields refused, each problem named.

KubeRay's own CRDs are not shipped with pbp (they are KubeRay's files, and the users' clusters have theirs); these
tests use a small CRD written here with the v1 field names pbp's manifests use, pod templates left open."""

import subprocess
import sys

import pytest
import yaml

from pbp.crd_check import check, load_schemas

from .conftest import REPO

K8S = REPO / "infra" / "k8s"
OPEN = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
GROUP = {"rayStartParams": STR_MAP, "template": OPEN}


def _crd(kind: str, spec: dict, required: list[str]) -> dict:
    schema = {"type": "object", "properties": {
        "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"},
        "spec": {"type": "object", "properties": spec, "required": required},
        "status": OPEN}}  # fmt: skip
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{kind.lower()}s.ray.io"},
            "spec": {"group": "ray.io", "names": {"kind": kind, "plural": f"{kind.lower()}s"}, "scope": "Namespaced",
                     "versions": [{"name": "v1", "served": True, "storage": True,
                                   "schema": {"openAPIV3Schema": schema}}]}}  # fmt: skip


CLUSTER_SPEC = {
    "rayVersion": {"type": "string"},
    "enableInTreeAutoscaling": {"type": "boolean"},
    "authOptions": {"type": "object", "properties": {"mode": {"type": "string", "enum": ["disabled", "token"]}}},
    "headGroupSpec": {"type": "object", "properties": GROUP, "required": ["template"]},
    "workerGroupSpecs": {"type": "array", "items": {"type": "object", "required": ["groupName", "template"],
        "properties": {"groupName": {"type": "string"}, "replicas": {"type": "integer"},
                       "minReplicas": {"type": "integer"}, "maxReplicas": {"type": "integer"}, **GROUP}}},
}  # fmt: skip
JOB_SPEC = {
    "clusterSelector": STR_MAP, "entrypoint": {"type": "string"},
    "submissionMode": {"type": "string", "enum": ["HTTPMode", "K8sJobMode", "InteractiveMode", "SidecarMode"]},
    "activeDeadlineSeconds": {"type": "integer"}, "backoffLimit": {"type": "integer"},
    "runtimeEnvYAML": {"type": "string"}, "shutdownAfterJobFinishes": {"type": "boolean"},
}  # fmt: skip


@pytest.fixture
def crds(tmp_path):
    """As ``kubectl get crd rayclusters.ray.io rayjobs.ray.io -o yaml`` writes them: one List."""
    path = tmp_path / "crds.yaml"
    items = [_crd("RayCluster", CLUSTER_SPEC, ["headGroupSpec"]), _crd("RayJob", JOB_SPEC, ["entrypoint"])]
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}))
    return path


def test_pbps_manifests_pass(crds):
    problems, checked = check(sorted(K8S.glob("*.yaml")), [crds])
    assert problems == [] and checked == 3


def test_each_problem_is_named_by_file_document_and_field(crds, tmp_path):
    cluster = yaml.safe_load((K8S / "raycluster.yaml").read_text())
    cluster["spec"]["authOptions"]["mode"] = "tokens"
    cluster["spec"]["workerGroupSpecs"][0]["replicas"] = "two"
    cluster["spec"]["workerGroupSpec"] = cluster["spec"].pop("workerGroupSpecs")[1:]  # a typo the server would drop
    job = yaml.safe_load((K8S / "rayjob-smoke.yaml").read_text())
    del job["spec"]["entrypoint"]
    service = {"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": "x"}, "spec": {}}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump_all([cluster, job, service]))
    problems, checked = check([bad], [crds])
    text = [str(p) for p in problems]
    assert checked == 2
    assert any(t.startswith(f"{bad} (document 0, RayCluster): spec.authOptions.mode: 'tokens' is not one of")
               for t in text), text  # fmt: skip
    assert any("document 0, RayCluster): spec: Additional properties are not allowed ('workerGroupSpec'" in t
               for t in text), text  # fmt: skip
    assert any("(document 1, RayJob): spec: 'entrypoint' is a required property" in t for t in text), text
    assert any("(document 2, RayService): <root>: no CRD given for ray.io/v1 RayService" in t for t in text), text
    assert len(problems) == 4, text

    cluster["spec"]["workerGroupSpecs"] = cluster["spec"].pop("workerGroupSpec")
    cluster["spec"]["authOptions"]["mode"] = "token"
    cluster["spec"]["workerGroupSpecs"][0]["replicas"] = "two"
    bad.write_text(yaml.safe_dump(cluster))
    assert [str(p).split(": ", 1)[1] for p in check([bad], [crds])[0]] == [
        "spec.workerGroupSpecs[0].replicas: 'two' is not of type 'integer'"
    ]


def test_the_command_exits_1_on_problems_and_refuses_files_without_crds(crds, tmp_path):
    good = subprocess.run([sys.executable, "-m", "pbp.cli.main", "infra", "check-crds", "--crds", str(crds)],
                          cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert good.returncode == 0, good.stdout + good.stderr
    assert "3 documents checked in 3 files: 0 problems" in good.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text((K8S / "rayjob-smoke.yaml").read_text().replace("backoffLimit: 0", "backoffLimit: none"))
    res = subprocess.run([sys.executable, "-m", "pbp.cli.main", "infra", "check-crds", "--crds", str(crds), str(bad)],
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 1 and "spec.backoffLimit: 'none' is not of type 'integer'" in res.stdout
    with pytest.raises(ValueError, match="no CustomResourceDefinition with an openAPIV3Schema in .*raycluster.yaml"):
        load_schemas([K8S / "raycluster.yaml"])
