"""Fine-tuning job: Ray Train over a task's CSV files, tracked in MLflow.

pbp submit finetune --config configs/finetune/tiny.yaml init=s3://pbp-runs/pretrain/tiny/final_model/
"""

from pbp.cli.finetune_cmds import finetune_and_report
from pbp.cli.job import run_job
from pbp.finetune.config import FinetuneConfig

if __name__ == "__main__":
    run_job(FinetuneConfig, finetune_and_report)
