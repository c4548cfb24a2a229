"""``pbp pretrain``: distributed pretraining on the Ray cluster (RAY_ADDRESS, else the local stack)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain with Ray Train + DeepSpeed over WebDataset shards (driver here, workers on the cluster)",
        description="Loads the PretrainConfig from YAML with dotted overrides; resumes a run of the same run_name "
        "from its newest complete checkpoint. `pbp submit pretrain --config ...` runs the same inside the cluster.",
    )
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.url=s3://pbp-data/synth/v1/")
    p.add_argument("--address", default=None, help="Ray GCS address (default: RAY_ADDRESS, else the local stack)")
    p.set_defaults(func=cmd_pretrain)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from pbp.config import load_config
    from pbp.train.config import PretrainConfig
    from pbp.train.launch import pretrain

    cfg = load_config(PretrainConfig, args.config, args.overrides)
    result = pretrain(cfg, address=args.address)
    print(f"run {cfg.run_name}: finished; metrics {result.metrics}; checkpoint {result.checkpoint}")
    return 0
