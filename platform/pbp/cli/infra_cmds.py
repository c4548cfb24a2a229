"""``pbp infra ...``: checks of the cloud manifests in ``infra/`` against what will receive them."""

from __future__ import annotations

import argparse
from pathlib import Path

K8S = Path("infra/k8s")
"""Relative to the working directory: the repository root, where pbp's commands are run."""


def register(sub: argparse._SubParsersAction) -> None:
    infra = sub.add_parser("infra", help="check the cloud manifests")
    isub = infra.add_subparsers(dest="infra_command", metavar="COMMAND", required=True)
    crds = isub.add_parser(
        "check-crds",
        help="validate KubeRay manifests against the CRDs of your cluster or KubeRay version (unknown fields refused)",
        description="CRDs: `kubectl get crd rayclusters.ray.io rayjobs.ray.io -o yaml > crds.yaml` on the target "
        "cluster, or ray-operator/config/crd/bases/*.yaml of a KubeRay checkout. Exit 1 on any problem, each named "
        "by file, document and field.",
    )
    crds.add_argument("--crds", type=Path, action="append", required=True,
                      help="a CRD YAML file (a kubectl List is fine); repeat for several")  # fmt: skip
    crds.add_argument("manifests", type=Path, nargs="*", help="manifests to check (default: infra/k8s/*.yaml)")
    crds.set_defaults(func=cmd_check_crds)


def cmd_check_crds(args: argparse.Namespace) -> int:
    from pbp.crd_check import check

    manifests = args.manifests or sorted(K8S.glob("*.yaml"))
    if not manifests:
        raise ValueError(f"no manifests given and none in {K8S}")
    problems, checked = check(manifests, args.crds)
    for p in problems:
        print(p)
    print(f"{checked} documents checked in {len(manifests)} files: {len(problems)} problems")
    return 1 if problems else 0
