"""``pbp predict``, ``pbp embed`` (a FASTA/CSV file through a model) and ``pbp attention`` (the paper's attention
figure, Fig. 4, for one sequence)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from pbp.predict.files import Written


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
    from pbp.predict.attention import figure_path, model_attention, save_attention_figure

    figure_path(args.out)  # a bad extension fails before any download
    amap, parent = model_attention(args.model, args.sequence, args.parent)
    out = save_attention_figure(amap, args.out)
    rows, cols = amap.shape
    what = f"{args.model} minus {parent}" if parent else args.model
    print(
        f"attention of {what}: {rows} rows ({amap.n_blocks} blocks x {amap.n_heads} heads) x {cols} residues -> {out}"
    )
    return 0


def _io_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="models:/NAME@champion, models:/NAME/V, runs:/ID/model, a model "
                   "directory or s3:// directory")  # fmt: skip
    p.add_argument("--input", required=True, help="FASTA (plain or .gz) or CSV with a header")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seq-column", default="seq", help="CSV input: the sequence column (default seq)")
    p.add_argument("--id-column", default="", help="CSV input: the id column (default: 'id' if present, else line)")
    p.add_argument("--max-tokens", type=int, default=16384, help="tokens per inference batch (default 16384)")
    p.add_argument("--strict", action="store_true", help="skip records with characters outside the 22 amino-acid "
                   "letters (default: read them as <OTHER>, as the model was trained, and count them)")  # fmt: skip


def register_predict(sub: argparse._SubParsersAction) -> None:
    pr = sub.add_parser("predict", help="predictions of a model for every sequence of a FASTA/CSV file, to CSV",
                        description="Fine-tuned models: the task's predictions; pretrained models: the top GO terms "
                        "with names and probabilities. Bad records are reported by id and skipped (listed in "
                        "OUT.errors.jsonl); see docs/predict.md.")  # fmt: skip
    _io_args(pr)
    pr.add_argument("--top-k", type=int, default=10, help="pretrained models: GO terms per protein (default 10)")
    pr.set_defaults(func=cmd_predict)
    em = sub.add_parser("embed", help="per-protein (and per-residue) embeddings of a FASTA/CSV file",
                        description="Per protein: the last block's global output; --per-residue adds the last "
                        "block's local output per residue (parquet only). See docs/predict.md.")  # fmt: skip
    _io_args(em)
    em.add_argument("--per-residue", action="store_true")
    em.set_defaults(func=cmd_embed)


def _report(what: str, written: Written, out: Path) -> None:
    from pbp.predict.files import input_note

    print(f"{what} {written.rows} sequences -> {out}")
    for line in input_note(written.inputs.stats):
        print(line)
    errors = written.errors
    if errors.total:
        bad = ", ".join(f"{e['record'] or 'line ' + str(e['line'])} ({e['reason']})" for e in errors.entries[:10])
        more = f" and {errors.total - 10} more" if errors.total > 10 else ""
        print(f"skipped {errors.total} bad record(s): {bad}{more}; details in {out.name}.errors.jsonl")


def cmd_predict(args: argparse.Namespace) -> int:
    from pbp.predict.files import predict_file

    written = predict_file(args.model, args.input, args.out, seq_column=args.seq_column, id_column=args.id_column,
                           top_k=args.top_k, max_tokens=args.max_tokens, unknown=_unknown(args))  # fmt: skip
    _report("predicted", written, args.out)
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from pbp.predict.files import embed_file

    written = embed_file(args.model, args.input, args.out, per_residue=args.per_residue, seq_column=args.seq_column,
                         id_column=args.id_column, max_tokens=args.max_tokens, unknown=_unknown(args))  # fmt: skip
    _report("embedded", written, args.out)
    return 0


def _unknown(args: argparse.Namespace) -> Literal["other", "error"]:
    return "error" if args.strict else "other"
