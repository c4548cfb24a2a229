"""Search campaign job: Ray Tune + Optuna + ASHA over fine-tuning, tracked in MLflow.

pbp submit tune --config configs/tune/tiny.yaml num_samples=8
pbp submit tune --resume NAME      # a campaign stopped or interrupted: continue it
"""

import sys

from pbp.cli.main import main

# The same command as `pbp tune`: one-line errors, and a `pbp jobs stop` said as such, not a traceback.
if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
