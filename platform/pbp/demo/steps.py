"""The demo's steps, in order (``STEPS``): each takes the ``Demo`` and returns its one-line figure."""

from __future__ import annotations

import csv
from typing import Any

from pbp.demo.pipeline import Demo, DemoSummary


def stack(d: Demo) -> str:
    from pbp.stack.state import StackState, default_state_dir

    out = d.pbp("stack", "stack", "up")
    state = StackState.load(default_state_dir())
    assert state is not None
    from pbp.stack.services import PROMETHEUS_HINT

    d.state["links"] = {
        "MLflow UI": state.mlflow_uri,
        "Ray dashboard": state.ray_dashboard_url,
        "Prometheus": f"{state.prometheus_url}  (Grafana dashboards: dashboards/grafana/)"
        if state.prometheus_url
        else PROMETHEUS_HINT,
    }
    reused = "already running" in out or "healthy in 0." in out
    parts = "S3, MLflow" + (", Prometheus" if state.prometheus_url else "")
    return f"{state.workers} Ray worker nodes, {parts} ({'reused' if reused else 'started'})"


def corpus(d: Demo) -> str:
    out = d.out / "synth"
    d.pbp("corpus", "data", "synth", "--out", str(out), "--proteins", str(d.cfg.proteins))
    d.state["fasta"], d.state["go"] = out / "synth.fasta.gz", out / "synth_go.tsv"
    return f"{d.cfg.proteins} SYNTHETIC proteins with planted motifs -> {out}"


def shards(d: Demo) -> str:
    from pbp.data.storage import Store
    from pbp.stack.endpoints import bucket_for

    url = f"s3://{bucket_for('data', what='the demo')}/{d.cfg.name}/{d.cfg.data_key}/"
    d.state["data_url"] = url
    if not Store(url).exists("manifest.json"):
        d.pbp("shards", "data", "build", "--fasta", str(d.state["fasta"]), "--go-table", str(d.state["go"]),
              "--min-go-records", str(d.cfg.min_go_records), "--out", url)  # fmt: skip
        how = "built"
    else:
        how = "reused"
    from pbp.data.shards import inspect

    info = inspect(url, verify=True)
    if info["problems"]:
        raise ValueError(f"{url}: {info['problems']}")
    n = sum(v["shards"] for v in info["splits"].values())
    return f"{how}: {info['records']} proteins, {info['go_vocabulary']} GO terms, {n} shards (verified) in {url}"


def pretrain(d: Demo) -> str:
    from pbp.train.launch import finished_run

    run = d.cfg.pretrain_run
    d.state["pretrained"] = _pretrained_url(run)
    if finished_run(d.state["pretrained"].removesuffix("/final_model/"), d.cfg.pretrain_steps) is not None:
        # a second `make demo`: the run reached its steps and exported its model
        return f"reused: run {run} finished its {d.cfg.pretrain_steps} steps before; model {d.state['pretrained']}"
    out = d.pbp("pretrain", "pretrain", "--config", "configs/pretrain/tiny.yaml", f"run_name={run}",
                f"data.url={d.state['data_url']}", f"max_steps={d.cfg.pretrain_steps}", "scaling.num_workers=2")  # fmt: skip
    losses = _last_losses(out)
    return f"{d.cfg.pretrain_steps} steps on 2 Ray workers (DeepSpeed ZeRO-2){losses}; model {d.state['pretrained']}"


def _pretrained_url(run: str) -> str:
    from pbp.stack.endpoints import runs_storage

    return f"{runs_storage('pretrain')}/{run}/final_model/"


def _last_losses(out: str) -> str:
    """``, loss 4.30 (step 5) -> 0.58 (step 200)`` from pbp pretrain's progress lines."""
    import re

    found = re.findall(r"\] step (\d+)/\d+: loss ([0-9.]+)", out)
    if not found:
        return ""
    (s0, l0), (s1, l1) = min(found, key=lambda x: int(x[0])), max(found, key=lambda x: int(x[0]))
    return f", loss {float(l0):.3f} (step {s0}) -> {float(l1):.3f} (step {s1})"


def task(d: Demo) -> str:
    from pbp.data.synth import SynthConfig
    from pbp.demo.task import make_task

    paths = make_task(d.out / "task", SynthConfig(n_proteins=d.cfg.proteins))
    d.state["task"] = paths
    counts = {k: sum(1 for _ in csv.DictReader(p.open())) for k, p in paths.items()}
    pos = sum(int(r["label"]) for r in csv.DictReader(paths["train"].open()))
    return (f"binary 'made charge-rich': train {counts['train']} ({pos} positive), valid {counts['valid']}, "
            f"test {counts['test']}")  # fmt: skip


def campaign(d: Demo) -> str:
    from pbp.train.tracking import BEST_MODEL_TAG, configure_mlflow, find_run

    name = d.cfg.campaign_name
    t = d.state["task"]
    e = d.cfg.trial_epochs
    overrides = (f"finetune_overrides=[init={d.state['pretrained']}, task.kind=binary, task.name={d.cfg.name}-charge, "
                 f"task.train={t['train']}, task.valid={t['valid']}, task.test={t['test']}, "
                 f"task.max_rows={d.cfg.task_max_rows}, stages.0.max_epochs={e[0]}, stages.1.max_epochs={e[1]}, "
                 f"stages.2.max_epochs={e[2]}, stages.0.seq_len=256, stages.1.seq_len=256, stages.2.seq_len=256]")  # fmt: skip
    args = ["tune", "--config", "configs/tune/tiny.yaml", f"name={name}", f"num_samples={d.cfg.trials}",
            f"report_dir={d.out / 'tune'}", "asha.grace_period=1", overrides]  # fmt: skip
    from pbp.tune.campaign import campaign_exists, campaign_url

    reused = campaign_exists(campaign_url(name))
    if reused:  # a second `make demo`: its trials are done, the campaign reports
        d.pbp("campaign", "tune", "--resume", name)
    else:
        d.pbp("campaign", *args)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(configure_mlflow())
    exp = client.get_experiment_by_name("pbp-tune")
    run_id = find_run(client, exp.experiment_id, name) if exp is not None else None
    if run_id is None:
        raise RuntimeError(f"campaign {name}: no parent run in the MLflow experiment pbp-tune")
    parent = client.get_run(run_id)
    d.state["best_uri"] = parent.data.tags[BEST_MODEL_TAG]
    d.state["report"] = d.out / "tune" / name / "report.html"
    m = parent.data.metrics
    base = m.get("best_value_baseline")
    beside = f" (trivial baseline {base:.3f})" if base is not None else ""
    return (f"{'reused: ' if reused else ''}{d.cfg.trials} trials (ASHA + TPE): {int(m.get('trials_completed', 0))} "
            f"completed, {int(m.get('trials_pruned', 0))} pruned; best valid ROC-AUC "
            f"{m.get('best_value', float('nan')):.3f}{beside}")  # fmt: skip


def register(d: Demo) -> str:
    from pbp.registry.register import register as do_register
    from pbp.registry.register import versions_of_source

    earlier = versions_of_source(d.cfg.name, d.state["best_uri"])
    if earlier:  # a second `make demo`: the same model, not another copy of it
        d.state["version"] = earlier[-1]
        return f"reused: {d.state['best_uri']} is models:/{d.cfg.name}/{earlier[-1]}"
    r = do_register(d.state["best_uri"], d.cfg.name)
    d.state["version"] = r.version
    return f"{d.state['best_uri']} -> models:/{r.name}/{r.version}"


def promote(d: Demo) -> str:
    from pbp.registry.promote import aliases
    from pbp.registry.promote import promote as do_promote
    from pbp.registry.server import CHAMPION, client

    if aliases(client(), d.cfg.name).get(CHAMPION) == d.state["version"]:
        return f"reused: @{CHAMPION} is version {d.state['version']}"
    out = do_promote(d.cfg.name, d.state["version"])
    rec = out.record
    if not out.promoted:
        return f"refused by the gate: {out.message}"
    return f"@champion = version {rec['version']}: {rec['metric']} {rec['candidate_value']:.3f} ({rec['gate']})"


def predict(d: Demo) -> str:
    from pbp.predict.files import predict_file

    test = d.state["task"]["test"]
    rows = list(csv.DictReader(test.open()))[: d.cfg.predict_rows]
    inp = d.out / "predict_input.csv"
    with inp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "seq"], lineterminator="\n")
        w.writeheader()
        w.writerows({"id": r["id"], "seq": r["seq"]} for r in rows)
    out = d.out / "predictions.csv"
    n = predict_file(f"models:/{d.cfg.name}@champion", str(inp), out).rows
    preds = {r["id"]: float(r["probability"]) for r in csv.DictReader(out.open())}
    hits = sum((preds[r["id"]] > 0.5) == (r["label"] == "1") for r in rows)
    majority = max(sum(r["label"] == "1" for r in rows), sum(r["label"] == "0" for r in rows))
    d.state["predictions"] = out
    return f"{n} test proteins from @champion: {hits}/{n} right (majority class: {majority}/{n}) -> {out}"


def attention(d: Demo) -> str:
    from pbp.predict.attention import model_attention, save_attention_figure

    seq = next(csv.DictReader(d.state["task"]["test"].open()))["seq"]
    amap, parent = model_attention(f"models:/{d.cfg.name}@champion", seq, "auto")
    out = save_attention_figure(amap, d.out / "attention.png")
    d.state["attention"] = out
    return (
        f"attention of @champion minus its parent {parent}: {amap.shape[0]} heads x {amap.shape[1]} residues -> {out}"
    )


STEPS = [("stack", stack), ("corpus", corpus), ("shards", shards), ("pretrain", pretrain), ("task", task),
         ("campaign", campaign), ("register", register), ("promote", promote), ("predict", predict),
         ("attention", attention)]  # fmt: skip


def summary(d: Demo) -> DemoSummary:
    files: dict[str, Any] = {"campaign report": d.state.get("report"), "predictions": d.state.get("predictions"),
                             "attention figure": d.state.get("attention"), "step logs": d.logs}  # fmt: skip
    return DemoSummary(d.steps, d.state.get("links", {}), {k: str(v) for k, v in files.items() if v})
