"""``pbp attention``: the paper's attention figure (Fig. 4) for one sequence."""

from __future__ import annotations

import argparse
from pathlib import Path


def register_attention(sub: argparse._SubParsersAction) -> None:
    att = sub.add_parser(
        "attention",
        help="heatmap of every block's and head's global attention over one sequence's residues",
        description="Draws the ProteinBERT paper's interpretation figure (Fig. 4): one panel per block, one row per "
        "head, one column per residue. With --parent, the fine-tuned model's attention minus its pretrained "
        "parent's, on a diverging scale centred at 0.",
    )
    att.add_argument(
        "--model", required=True, help="pbp model: a directory, an s3:// directory or an MLflow URI (runs:/ID/model)"
    )
    att.add_argument("--sequence", required=True, help="the protein sequence, one letter per residue")
    att.add_argument("--out", type=Path, required=True, help="figure file; the format follows the extension (.png)")
    att.add_argument(
        "--parent",
        help="draw the difference from this pretrained model (a location, or 'auto': the fine-tuned model's 'init')",
    )
    att.set_defaults(func=cmd_attention)


def cmd_attention(args: argparse.Namespace) -> int:
    from pbp.predict.attention import model_attention, save_attention_figure

    amap, parent = model_attention(args.model, args.sequence, args.parent)
    out = save_attention_figure(amap, args.out)
    rows, cols = amap.shape
    what = f"{args.model} minus {parent}" if parent else args.model
    print(
        f"attention of {what}: {rows} rows ({amap.n_blocks} blocks x {amap.n_heads} heads) x {cols} residues -> {out}"
    )
    return 0
