"""The cluster smoke check behind ``jobs/smoke.py``: every alive Ray node reaches object storage and MLflow.

Runs inside a Ray job. One zero-CPU task is pinned to each alive node; it writes, reads and deletes an object in
the data bucket and lists MLflow experiments with the node's own credentials (environment or state dir). The
driver logs one MLflow run with an artifact (stored in S3 through MLflow's proxy) and prints a line
``PBP_SMOKE {json}`` with the node count and per-node results. Exit code 0 only if every node passed.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

from pbp.stack.endpoints import apply_mlflow_env, bucket_for, require, resolve


def probe_here() -> dict[str, Any]:
    """S3 round trip + MLflow API call from this process, with this node's credentials."""
    import ray

    ep = resolve()
    node_id = ray.get_runtime_context().get_node_id()
    out: dict[str, Any] = {"node_id": node_id, "host": socket.gethostname()}
    bucket = bucket_for("data", ep, "the smoke check's S3 round trip")
    try:
        s3 = ep.boto3_client()
        key = f"_smoke/{node_id}-{time.time_ns()}"
        s3.put_object(Bucket=bucket, Key=key, Body=node_id.encode())
        ok = s3.get_object(Bucket=bucket, Key=key)["Body"].read() == node_id.encode()
        s3.delete_object(Bucket=bucket, Key=key)
        out["s3"] = "ok" if ok else "read back different bytes"
    except Exception as e:
        out["s3"] = f"error: {type(e).__name__}: {e}"
    try:
        from mlflow.tracking import MlflowClient

        apply_mlflow_env(ep)
        MlflowClient(tracking_uri=ep.mlflow_uri).search_experiments(max_results=1)
        out["mlflow"] = "ok"
    except Exception as e:
        out["mlflow"] = f"error: {type(e).__name__}: {e}"
    return out


def main() -> int:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ray.init()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    probe = ray.remote(num_cpus=0)(probe_here)
    refs = [
        probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
        for n in nodes
    ]
    results = ray.get(refs, timeout=300)
    ok = all(r["s3"] == "ok" and r["mlflow"] == "ok" for r in results)
    run_id = None
    try:
        import mlflow

        ep = resolve()
        apply_mlflow_env(ep)
        mlflow.set_tracking_uri(require(ep.mlflow_uri, "MLflow tracking URI"))
        mlflow.set_experiment("pbp-smoke")
        with mlflow.start_run(run_name=os.environ.get("PBP_SUBMISSION_ID", "smoke")) as run:
            mlflow.log_param("nodes", len(nodes))
            mlflow.log_metric("nodes_ok", sum(r["s3"] == "ok" and r["mlflow"] == "ok" for r in results))
            mlflow.log_dict({"results": results}, "smoke.json")
            run_id = run.info.run_id
    except Exception as e:
        ok = False
        print(f"MLflow run from the driver failed: {type(e).__name__}: {e}")
    summary = {"nodes": len(nodes), "ok": ok, "mlflow_run_id": run_id, "results": results}
    print("PBP_SMOKE " + json.dumps(summary), flush=True)
    return 0 if ok else 1
