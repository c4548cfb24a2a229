"""Search campaign job: Ray Tune + Optuna + ASHA over fine-tuning, tracked in MLflow.

pbp submit tune --config configs/tune/tiny.yaml num_samples=8
"""

import argparse

from pbp.config import load_config
from pbp.tune.campaign import run_campaign
from pbp.tune.config import TuneConfig

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    run_campaign(load_config(TuneConfig, args.config, args.overrides))
