"""Pretraining job: Ray Train + DeepSpeed over WebDataset shards, tracked in MLflow.

pbp submit pretrain --config configs/pretrain/tiny.yaml data.url=s3://pbp-data/synth/v1/
"""

import sys

from pbp.cli.main import main

# The same command as `pbp pretrain`: one-line errors, and a `pbp jobs stop` said as such, not a traceback.
if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
