"""Pretraining job: Ray Train + DeepSpeed over WebDataset shards, tracked in MLflow.

pbp submit pretrain --config configs/pretrain/tiny.yaml data.url=s3://pbp-data/synth/v1/
"""

import argparse

from pbp.config import load_config
from pbp.train.config import PretrainConfig
from pbp.train.launch import pretrain

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    pretrain(load_config(PretrainConfig, args.config, args.overrides))
