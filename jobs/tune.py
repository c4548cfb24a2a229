"""Search campaign job: Ray Tune + Optuna + ASHA over fine-tuning, tracked in MLflow.

pbp submit tune --config configs/tune/tiny.yaml num_samples=8
"""

from pbp.cli.finetune_cmds import tune_and_report
from pbp.cli.job import run_job
from pbp.tune.config import TuneConfig

if __name__ == "__main__":
    run_job(TuneConfig, tune_and_report)
