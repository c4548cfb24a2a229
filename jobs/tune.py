"""Search campaign job: Ray Tune + Optuna + ASHA over fine-tuning, tracked in MLflow.

pbp submit tune --config configs/tune/tiny.yaml num_samples=8
"""

from pbp.cli.job import run_job
from pbp.tune.campaign import run_campaign
from pbp.tune.config import TuneConfig

if __name__ == "__main__":
    run_job(TuneConfig, run_campaign)
