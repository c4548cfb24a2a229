"""``pbp finetune`` and ``pbp tune``: fine-tuning and search campaigns on the Ray cluster (RAY_ADDRESS, else the
local stack)."""

from __future__ import annotations

import argparse
import os
import re
from typing import TYPE_CHECKING

from pbp.cli.job import add_job_args, enter_submit_dir, say_tracking_incomplete

if TYPE_CHECKING:
    from pbp.finetune.config import FinetuneConfig
    from pbp.tune.config import TuneConfig
    from pbp.tune.report import CampaignSummary, TrialRecord


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a (pre)trained ProteinBERT on a task's CSV files with Ray Train; tracked in MLflow",
        description="Loads the FinetuneConfig from YAML with dotted overrides (stages.0.lr=3e-3 sets the first "
        "stage's lr); resumes a run of the same run_name from its newest complete checkpoint.",
    )
    add_job_args(p, "init=s3://pbp-runs/pretrain/tiny/final_model/")
    p.set_defaults(func=cmd_finetune)


def cmd_finetune(args: argparse.Namespace) -> int:
    from pbp.stack.endpoints import set_ray_auth_env

    set_ray_auth_env(address=args.address)  # before anything imports Ray
    from pbp.config import load_config
    from pbp.finetune.config import FinetuneConfig

    cfg = load_config(FinetuneConfig, args.config, args.overrides)  # a submitted job: the copy's file, before moving
    enter_submit_dir()
    return 0 if finetune_and_report(cfg, address=args.address) else 1


def finetune_and_report(cfg: FinetuneConfig, address: str | None = None) -> bool:
    """Run fine-tuning, then print its metrics beside their baselines and where the model is: the end of
    ``pbp finetune`` and of the submitted job (``jobs/finetune.py``) alike. -> False when the run trained but its
    MLflow run lacks the model (MLflow did not answer at the end): the command then fails, saying how to finish it."""
    from pbp.finetune.launch import finetune
    from pbp.train.metrics import baseline_table
    from pbp.train.tracking import run_id_of, run_link

    res = finetune(cfg, address=address)
    print(baseline_table({k: v for k, v in res.metrics.items() if not BUCKET_KEY.match(k)}))
    by_length = length_table(res.metrics)
    if by_length:
        print(by_length)
    state = "finished" if res.trained else "already finished (nothing left to train)"
    if res.tracking_gaps:
        say_tracking_incomplete(cfg.run_name, f"trained; model in {res.run_url}/final_model", res.tracking_gaps)
        return False
    print(f"run {cfg.run_name}: {state}; model in {res.run_url}/final_model and the MLflow run's 'model' artifact "
          f"(experiment {cfg.tracking.experiment})")  # fmt: skip
    if not res.trained:
        print(
            "(a finished run is not trained further, also with larger stages' max_epochs: another run_name trains "
            "with them)"
        )
    run_id = (res.mlflow_run_id or run_id_of(cfg.tracking.experiment, cfg.run_name)) if cfg.tracking.enabled else None
    if run_id is not None:
        print(f"MLflow:  {run_link(run_id)}\nregister it: pbp registry register {run_id} --name MODEL_NAME")
    return True


BUCKET_KEY = re.compile(r"test_((?:le|gt)\d+)_(\w+)$")
"""A test metric of one length bucket (``test_le512_spearman``, ``test_gt1024_n``: sequences of up to 512 tokens,
of more than 1024)."""


def length_table(metrics: dict[str, float]) -> str:
    """The test metrics per length bucket, a row per bucket (its row count ``n`` first); empty without buckets."""
    rows: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if m := BUCKET_KEY.match(key):
            rows.setdefault(m.group(1), {})[m.group(2)] = value
    if not rows:
        return ""
    names = ["n", *dict.fromkeys(k for r in rows.values() for k in r if k != "n")]
    lines = [("test by length", *names)] + [
        (f"tokens {'<=' if b.startswith('le') else '>'} {b[2:]}",
         *("-" if k not in r else str(int(r[k])) if k == "n" else f"{r[k]:.4f}" for k in names))
        for b, r in rows.items()
    ]  # fmt: skip
    width = max(len(line[0]) for line in lines)
    return "\n".join(f"{line[0]:{width}}" + "".join(f"  {c:>10}" for c in line[1:]) for line in lines)


def register_tune(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "tune",
        help="a search campaign: Ray Tune + Optuna (TPE) + ASHA over fine-tuning settings; MLflow parent + child runs",
        description="Loads the TuneConfig from YAML with dotted overrides. --resume NAME continues an interrupted "
        "campaign from its state in storage; --warm-start OTHER seeds the search with a finished campaign's "
        "evaluated points (same space).",
    )
    add_job_args(t, "num_samples=16 space.head_dropout.high=0.3", config_required=False)
    t.add_argument("--resume", metavar="NAME", default=None, help="continue campaign NAME")
    t.add_argument("--warm-start", metavar="OTHER", default=None, help="seed with campaign OTHER's evaluated points")
    t.set_defaults(func=cmd_tune)


def cmd_tune(args: argparse.Namespace) -> int:
    from pbp.stack.endpoints import set_ray_auth_env

    set_ray_auth_env(address=args.address)  # before anything imports Ray
    from pbp.config import load_config
    from pbp.tune.campaign import load_campaign_config
    from pbp.tune.config import TuneConfig, resume_storage

    if args.resume:
        cfg = load_campaign_config(
            args.resume, resume_storage(args.config is not None, args.warm_start, args.overrides)
        )
    elif args.config is None:
        raise ValueError("give --config configs/tune/<task>.yaml (or --resume NAME)")
    else:
        cfg = load_config(TuneConfig, args.config, args.overrides)  # a submitted job: the copy's file, before moving
    enter_submit_dir()
    tune_and_report(cfg, resume=bool(args.resume), warm_start=args.warm_start, address=args.address)
    return 0


def tune_and_report(cfg: TuneConfig, *, resume: bool = False, warm_start: str | None = None,
                    address: str | None = None) -> None:  # fmt: skip
    """Run (or resume) a campaign, then print its closing lines (trials by status, the best trial, the report, the
    parent run's MLflow link): the end of ``pbp tune`` and of the submitted job (``jobs/tune.py``) alike."""
    from pbp.train.tracking import quiet_mlflow_driver, run_link
    from pbp.tune.campaign import run_campaign

    quiet_mlflow_driver()  # the parent run's link is printed at the end
    # Ray Tune's newer output prints, whatever the verbosity, a configuration table, "View detailed results here"
    # with the storage path stripped of its s3:// and a `tensorboard --logdir` of a local staging dir; the older
    # engine at verbose=0 prints none of it. The campaign's own lines say what matters. A user's setting wins.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    res = run_campaign(cfg, resume=resume, warm_start=warm_start, address=address)
    if res.finished_before:
        print(f"campaign {cfg.name}: already finished (nothing left to run); its report and parent run are rewritten")
    print(campaign_lines(cfg.name, res.summary, res.best))
    # A job on a cluster elsewhere wrote its report on the cluster's node, in Ray's copy of the project: say where a
    # user can open it (the parent run's artifacts), not a path on someone else's disk.
    remote = os.environ.get("PBP_SUBMISSION_ID") and not os.environ.get("PBP_SUBMIT_DIR")
    where = " (on the job's node; open it from the parent run's artifacts, campaign/report.html)" if remote else ""
    print(f"report: {res.report}{where}\nMLflow:  {run_link(res.parent_run_id)} (parent run, experiment "
          f"{cfg.experiment})")  # fmt: skip
    from pbp.tune.campaign import CampaignError

    if res.best is None:  # nothing to hand on: a failure for the shell, the job and CI alike
        raise CampaignError(f"campaign {cfg.name}: no trial completed, so there is no best model (the failed "
                            "trials' errors are above, each with where its whole error is)")  # fmt: skip
    if not res.best_model_logged:  # a register line here failed with 'Failed to download artifacts'
        raise CampaignError(f"campaign {cfg.name}: the best trial's model is not in MLflow (the warning above says "
                            f"why); `pbp tune --resume {cfg.name}` logs it once it can, then `pbp registry register "
                            f"{res.parent_run_id}` takes it")  # fmt: skip
    print(f"register the best trial's model: pbp registry register {res.parent_run_id} --name MODEL_NAME")


def campaign_lines(name: str, summary: CampaignSummary, best: TrialRecord | None) -> str:
    """The campaign's closing lines: trials by status, then the best trial, its value and its parameters."""
    counts = ", ".join(f"{sum(t.status == s for t in summary.trials)} {s}" for s in ("completed", "pruned", "failed"))
    lines = [f"campaign {name}: {len(summary.trials)} trials: {counts}"]
    if summary.stopped:
        lines.append(f"why:     {summary.stopped}")
    if best is not None:
        from pbp.tune.report import baseline_note, format_params

        lines.append(f"best:    trial {best.trial_id} {summary.metric}={best.value:.4f}{baseline_note(summary)} with "
                     f"{format_params(best.params)}")  # fmt: skip
        value, base = best.value, summary.baseline
        if value is not None and base is not None and not (value > base if summary.mode == "max" else value < base):
            lines.append(f"note:    no trial beat the trivial baseline: the best model predicts no better than a "
                         f"constant ({summary.metric} {value:.4f} against {base:.4f}); the registry's promotion "
                         "gate refuses a model whose headline test metric does not beat its baseline. More rows, "
                         "epochs or another space may help")  # fmt: skip
    return "\n".join(lines)
