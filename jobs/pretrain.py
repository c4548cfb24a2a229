"""Pretraining job: Ray Train + DeepSpeed over WebDataset shards, tracked in MLflow.

pbp submit pretrain --config configs/pretrain/tiny.yaml data.url=s3://pbp-data/synth/v1/
"""

from pbp.cli.job import run_job
from pbp.cli.train_cmds import pretrain_and_report
from pbp.train.config import PretrainConfig

if __name__ == "__main__":
    run_job(PretrainConfig, pretrain_and_report)
