"""``pbp demo``: the whole pipeline on the local stack (``pbp.demo.pipeline``; ``make demo`` runs it)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="the whole pipeline on the local stack: data, pretraining, search, registry",
                          description="Synthetic corpus -> shards in S3 -> pretraining on 2 Ray nodes -> an Optuna/ASHA "
                          "campaign on a generated task -> register + promote the best -> predict and attention "
                          "from @champion. Needs `pbp stack up` (make demo does it). See docs/demo.md.")  # fmt: skip
    demo.add_argument("--config", default="configs/demo/default.yaml")
    demo.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trials=2")
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from pbp.config import load_config
    from pbp.demo.pipeline import DemoConfig, run_demo
    from pbp.train.tracking import quiet_mlflow_driver

    quiet_mlflow_driver()  # the demo prints the MLflow links itself
    cfg = load_config(DemoConfig, args.config, args.overrides)
    print(run_demo(cfg).render())
    return 0
