"""``pbp model ...``: inspect configs and import the original ProteinBERT weights."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pbp
from pbp.config import load_config


def register(sub: argparse._SubParsersAction) -> None:
    model = sub.add_parser("model", help="model configs and weights")
    msub = model.add_subparsers(dest="model_command", metavar="COMMAND", required=True)

    info = msub.add_parser("info", help="parameter count and fine-tuning feature sizes of a model config, as JSON")
    info.add_argument("config", help="model config YAML (or a job config with a 'model' section)")
    info.add_argument("overrides", nargs="*", help="dotted overrides, e.g. n_blocks=4")
    info.set_defaults(func=cmd_info)

    imp = msub.add_parser(
        "import-keras",
        help="convert an original ProteinBERT checkpoint (.pkl) to pbp's safetensors + JSON directory",
        description="Reads the original's pickle of (n_annotations, weights, optimizer_weights) with a restricted "
        "unpickler that builds only numpy arrays and plain containers and refuses anything else (so a crafted file "
        "cannot run code). The output directory holds model.safetensors and config.json.",
    )
    imp.add_argument("checkpoint", type=Path)
    imp.add_argument("--out", type=Path, required=True, help="output directory")
    imp.add_argument(
        "--wide-conv-dilation", type=int, default=5, help="dilation of the wide convolution (not stored; paper: 5)"
    )
    imp.add_argument(
        "--no-padding-mask", action="store_true", help="save with padding_mask=false (bit-for-bit original behaviour)"
    )
    imp.set_defaults(func=cmd_import_keras)


def cmd_info(args: argparse.Namespace) -> int:
    from pbp.model import ModelConfig, ProteinBERT

    cfg = load_config(ModelConfig, args.config, args.overrides, section="model")
    model = ProteinBERT(cfg)
    print(
        json.dumps(
            {
                "config": str(args.config),
                "parameters": model.num_parameters(),
                "local_features_per_residue": cfg.local_feature_dim,
                "global_features_per_protein": cfg.global_feature_dim,
                "model": cfg.to_dict(),
            },
            indent=2,
        )
    )
    return 0


def cmd_import_keras(args: argparse.Namespace) -> int:
    from pbp.model.keras_adapter import load_keras_checkpoint

    out: Path = args.out
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out}: output directory is not empty; choose a new one (nothing was written)")
    model = load_keras_checkpoint(
        args.checkpoint, wide_conv_dilation=args.wide_conv_dilation, padding_mask=not args.no_padding_mask
    )
    model.save_pretrained(
        out, metadata={"source": "keras-checkpoint", "checkpoint": args.checkpoint.name, "pbp_version": pbp.__version__}
    )
    print(f"imported {model.num_parameters():,} parameters from {args.checkpoint} -> {out}")
    return 0
