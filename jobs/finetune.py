"""Fine-tuning job: Ray Train over a task's CSV files, tracked in MLflow.

pbp submit finetune --config configs/finetune/tiny.yaml init=s3://pbp-runs/pretrain/tiny/final_model/
"""

import argparse

from pbp.config import load_config
from pbp.finetune.config import FinetuneConfig
from pbp.finetune.launch import finetune

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    finetune(load_config(FinetuneConfig, args.config, args.overrides))
