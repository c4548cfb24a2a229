"""``pbp pretrain``: distributed pretraining on the Ray cluster (RAY_ADDRESS, else the local stack)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from pbp.cli.job import add_job_args, enter_submit_dir, say_tracking_incomplete

if TYPE_CHECKING:
    from pbp.train.config import PretrainConfig
    from pbp.train.launch import PretrainResult


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain with Ray Train + DeepSpeed over WebDataset shards (driver here, workers on the cluster)",
        description="Loads the PretrainConfig from YAML with dotted overrides; resumes a run of the same run_name "
        "from its newest complete checkpoint. `pbp submit pretrain --config ...` runs the same inside the cluster.",
    )
    add_job_args(p, "data.url=s3://pbp-data/synth/v1/")
    p.set_defaults(func=cmd_pretrain)

    e = sub.add_parser(
        "evaluate",
        help="a pretrained model on a dataset split (losses, annotation ROC-AUC micro and macro), or a fine-tuned "
        "model on a labelled CSV file (the task's metrics, overall and per length bucket); each beside its trivial "
        "baseline",
    )
    e.add_argument("--model", required=True, help="model directory, local or s3:// (a run's final_model/), or an "
                   "MLflow URI (models:/NAME@champion, runs:/ID/model)")  # fmt: skip
    e.add_argument("--data", required=True, help="pretrained model: a dataset URL; fine-tuned model: a CSV file "
                   "with a header (local or s3://)")  # fmt: skip
    e.add_argument("--split", default="valid", choices=("train", "valid"), help="pretrained model: the split")
    e.add_argument("--seq-len", type=int, default=512, help="pretrained model: tokens per sequence")
    e.add_argument("--max-proteins", type=int, default=None)
    e.add_argument("--seq-column", default="", help="fine-tuned model: the sequence column (default: the model's)")
    e.add_argument("--label-column", default="", help="fine-tuned model: the label column (default: the model's)")
    e.add_argument("--unseen-labels", choices=("error", "drop"), default="error",
                   help="fine-tuned model: a row whose class the model was not trained on stops the evaluation "
                   "(error, naming file and line) or is left out and counted (drop)")  # fmt: skip
    e.add_argument("--json", type=Path, default=None)
    e.set_defaults(func=cmd_evaluate)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from pbp.stack.endpoints import set_ray_auth_env

    set_ray_auth_env(address=args.address)  # before anything imports Ray
    from pbp.config import load_config
    from pbp.train.config import PretrainConfig

    cfg = load_config(PretrainConfig, args.config, args.overrides)  # a submitted job: the copy's file, before moving
    enter_submit_dir()
    return 0 if pretrain_and_report(cfg, address=args.address) else 1


def pretrain_and_report(cfg: PretrainConfig, address: str | None = None) -> bool:
    """Run pretraining, then say where its checkpoint is: the end of ``pbp pretrain`` and of the submitted job
    (``jobs/pretrain.py``) alike. -> False when its MLflow run was not finished (MLflow did not answer at its end):
    the command then fails, saying how to finish it."""
    from pbp.train.launch import pretrain

    res = pretrain(cfg, address=address)
    print(pretrain_lines(cfg.run_name, res, res.mlflow_run_id))
    if res.tracking_gaps:
        say_tracking_incomplete(cfg.run_name, "its model and checkpoint are in storage", res.tracking_gaps)
        return False
    return True


def pretrain_lines(run_name: str, res: PretrainResult, run_id: str | None) -> str:
    """The closing lines of a pretraining run: its last loss, where its model and checkpoint are, its MLflow run."""
    from pbp.train.tracking import run_link

    metrics, run_url, checkpoint_url = res.metrics, res.run_url, res.checkpoint_url
    loss = ""
    if {"loss", "token_loss", "annotation_loss"} <= metrics.keys():  # as the progress lines put it
        loss = (f": loss {metrics['loss']:.4f} (token {metrics['token_loss']:.4f}, "
                f"annotation {metrics['annotation_loss']:.4f})")  # fmt: skip
    done = "finished" if res.trained else "already finished (nothing left to train)"
    lines = [f"run {run_name}: {done} at step {metrics.get('step', '?')}{loss}",
             f"model:      {run_url}/final_model  (fine-tune it: pbp finetune --config ... init={run_url}/final_model)",
             f"checkpoint: {checkpoint_url or 'none'}"]  # fmt: skip
    if run_id is not None:
        lines.append(f"MLflow:     {run_link(run_id)}")
    return "\n".join(lines)


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from pbp.finetune.export import META, find_model_dir
    from pbp.train.artifacts import model_files
    from pbp.train.evaluate import evaluate
    from pbp.train.metrics import baseline_table

    with model_files(args.model) as root:
        d = find_model_dir(root, args.model)
        _check_data_fits_model(args.model, args.data, finetuned=(d / META).is_file())
        if (d / META).is_file():  # a fine-tuned model: its task's metrics on a labelled file
            res = _evaluate_finetuned(args, d)
        else:
            from pbp.model import ProteinBERT

            res = evaluate(ProteinBERT.from_pretrained(d), args.data, args.split, args.seq_len,
                           max_proteins=args.max_proteins)  # fmt: skip
            print(f"{args.data} split {args.split}: {int(res.get('proteins', 0))} proteins")
            print(baseline_table(res))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


def _check_data_fits_model(model: str, data: str, finetuned: bool) -> None:
    """A fine-tuned model is scored on a labelled CSV file, a pretrained one on a pbp dataset (a folder or s3://
    prefix with its manifest): the other kind of --data is named as such (it read as an empty file or a dataset
    without its manifest)."""
    folder = data.endswith("/") or Path(data).is_dir()
    table = data.lower().removesuffix(".gz").endswith((".csv", ".tsv")) or Path(data).is_file()
    if finetuned and folder:
        raise ValueError(f"--data {data}: a folder or prefix (a pbp dataset?), but {model} is a fine-tuned model, "
                         "scored on a labelled CSV file (its sequence and label columns)")  # fmt: skip
    if not finetuned and table:
        raise ValueError(f"--data {data}: a file, but {model} is a pretrained model, scored on a pbp dataset (the "
                         "folder or s3:// prefix `pbp data build` wrote); a labelled CSV scores a fine-tuned model")  # fmt: skip


def _evaluate_finetuned(args: argparse.Namespace, model_dir: Path) -> dict[str, float]:
    """``pbp evaluate`` of a fine-tuned model: its metrics on ``--data`` beside their baselines, the per-length
    table, and how many rows ``--unseen-labels drop`` left out."""
    from pbp.cli.finetune_cmds import BUCKET_KEY, length_table
    from pbp.finetune.data import UnknownClassError
    from pbp.finetune.scoring import evaluate_file
    from pbp.train.metrics import baseline_table

    try:
        res = evaluate_file(model_dir, args.data, seq_column=args.seq_column, label_column=args.label_column,
                            max_rows=args.max_proteins or 0, drop_unseen=args.unseen_labels == "drop")  # fmt: skip
    except UnknownClassError as e:
        raise UnknownClassError(f"{e}, or leave such rows out: --unseen-labels drop") from None
    left_out = res.get("test_rows_left_out")
    print(baseline_table({k: v for k, v in res.items() if not BUCKET_KEY.match(k) and k != "test_rows_left_out"}))
    print(length_table(res))
    if left_out is not None:
        print(f"{int(left_out)} row(s) of {args.data} left out: their class is not one the model was trained on "
              "(--unseen-labels drop)")  # fmt: skip
    return res
