"""Fine-tuning job: Ray Train over a task's CSV files, tracked in MLflow.

pbp submit finetune --config configs/finetune/tiny.yaml init=s3://pbp-runs/pretrain/tiny/final_model/
"""

import sys

from pbp.cli.main import main

# The same command as `pbp finetune`: one-line errors, and a `pbp jobs stop` said as such, not a traceback.
if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]]))
