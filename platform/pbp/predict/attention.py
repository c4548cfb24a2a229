"""The paper's interpretation figure (Brandes et al. 2022, Fig. 4): the global attention of every block and head over
the residues of one sequence, as heatmaps; optionally a fine-tuned model's attention minus its pretrained parent's.

In each block, each head's single query (from the global track) attends over all L = n + 2 token positions of the
sequence (``<START>``, n residues, ``<END>``) with a softmax, so a head's weights over those L positions sum to 1.
The figure shows the n residue columns; the weight left on ``<START>``/``<END>`` is kept beside them
(:attr:`AttentionMap.start_end_RS`) so nothing is lost.

Shape legend: R rows = n_blocks * n_heads (row ``b * n_heads + h`` is block b, head h, both 0-based)
              N residues of the sequence   S the 2 special positions (<START>, <END>)

Figures are built on ``matplotlib.figure.Figure`` directly, not through pyplot: nothing global is registered and the
caller's backend is left alone; saving to PNG uses Agg.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pbp.model import ProteinBERT
from pbp.model.tokenizer import encode, normalize_sequence

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DIFF_TITLE = "fine-tuned minus pretrained"
MAX_LETTER_TICKS = 80  # residue letters on the x axis up to this length; position numbers beyond
DPI = 120


@dataclass
class AttentionMap:
    """Global-attention weights of one sequence (or the difference of two models' weights)."""

    weights_RN: np.ndarray
    """(n_blocks * n_heads, n residues) float64: row b * n_heads + h is block b's head h."""
    start_end_RS: np.ndarray
    """(n_blocks * n_heads, 2): the weight on <START> and on <END>; with ``weights_RN`` each row sums to 1."""
    residues: str
    """The normalised sequence, one letter per column."""
    n_blocks: int
    n_heads: int
    diff: bool = False
    """True when the weights are a fine-tuned model's minus its parent's (rows then sum to 0)."""

    @property
    def shape(self) -> tuple[int, int]:
        return self.weights_RN.shape  # type: ignore[return-value]

    def block(self, b: int) -> np.ndarray:
        """(n_heads, n residues): block b's rows."""
        return self.weights_RN[b * self.n_heads : (b + 1) * self.n_heads]


def _record_name(sequence: str) -> str:
    return sequence if len(sequence) <= 30 else f"{sequence[:27]}..."


@torch.no_grad()
def attention_matrix(model: ProteinBERT, sequence: str, record: str | None = None) -> AttentionMap:
    """The global attention of every block and head of ``model`` over ``sequence``'s residues.

    Letters outside the 22-letter alphabet are refused (ValueError naming ``record``, by default the sequence
    itself), as they would be drawn as an unlabelled ``<OTHER>`` column. The annotation input is all zeros, as at
    inference and fine-tuning. -> :class:`AttentionMap`, ``weights_RN`` of shape (n_blocks * n_heads, n residues).
    """
    name = record if record is not None else _record_name(sequence)
    residues = normalize_sequence(sequence, name, unknown="error")
    ids = encode(residues, name, unknown="error")
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        tokens_1L = torch.tensor([ids], dtype=torch.long, device=param.device)
        out = model(tokens_1L, output_attentions=True)
    finally:
        model.train(was_training)
    assert out.attentions is not None
    weights_RL = torch.cat([w_1HL[0] for w_1HL in out.attentions]).double().cpu().numpy()  # blocks stacked
    cfg = model.config
    return AttentionMap(
        weights_RN=weights_RL[:, 1:-1].copy(),
        start_end_RS=weights_RL[:, [0, -1]].copy(),
        residues=residues,
        n_blocks=cfg.n_blocks,
        n_heads=cfg.n_heads,
    )


def attention_diff(finetuned: AttentionMap, pretrained: AttentionMap) -> AttentionMap:
    """``finetuned`` minus ``pretrained`` (same sequence, same numbers of blocks and heads)."""
    if finetuned.residues != pretrained.residues:
        raise ValueError("attention maps of different sequences cannot be subtracted")
    if (finetuned.n_blocks, finetuned.n_heads) != (pretrained.n_blocks, pretrained.n_heads):
        raise ValueError(
            f"the fine-tuned model has {finetuned.n_blocks} blocks x {finetuned.n_heads} heads but the pretrained "
            f"one {pretrained.n_blocks} x {pretrained.n_heads}; their attention cannot be compared head by head"
        )
    return AttentionMap(
        weights_RN=finetuned.weights_RN - pretrained.weights_RN,
        start_end_RS=finetuned.start_end_RS - pretrained.start_end_RS,
        residues=finetuned.residues,
        n_blocks=finetuned.n_blocks,
        n_heads=finetuned.n_heads,
        diff=True,
    )


def attention_figure(amap: AttentionMap, title: str | None = None) -> Figure:
    """One heatmap panel per block (rows = heads, columns = residues) on a shared colour scale with one colorbar.

    Weights use a sequential colormap from 0; a difference uses a diverging one centred at 0, titled
    "fine-tuned minus pretrained".
    """
    from matplotlib.figure import Figure

    n = len(amap.residues)
    width = min(max(6.0, 1.6 + 0.14 * n), 24.0)
    height = 0.9 + amap.n_blocks * (0.45 + 0.28 * amap.n_heads)
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    axes = fig.subplots(amap.n_blocks, 1, sharex=True, squeeze=False)[:, 0]
    style: dict[str, Any]
    if amap.diff:
        bound = float(np.abs(amap.weights_RN).max()) or 1e-6  # a model minus itself: all zeros, still a valid scale
        style = {"cmap": "RdBu_r", "vmin": -bound, "vmax": bound}
        label = "attention difference"
    else:
        style = {"cmap": "viridis", "vmin": 0.0, "vmax": float(amap.weights_RN.max()) or 1.0}
        label = "attention weight"
    for b, ax in enumerate(axes):
        image = ax.imshow(amap.block(b), aspect="auto", interpolation="nearest", **style)
        ax.set_yticks(range(amap.n_heads), [f"head {h + 1}" for h in range(amap.n_heads)])
        ax.set_ylabel(f"block {b + 1}")
    _residue_axis(axes[-1], amap.residues)
    fig.colorbar(image, ax=list(axes), label=label, shrink=0.9)
    fig.suptitle(title or (DIFF_TITLE if amap.diff else "global attention over the residues"))
    return fig


def _residue_axis(ax: Any, residues: str) -> None:
    from matplotlib.ticker import MaxNLocator

    if len(residues) <= MAX_LETTER_TICKS:
        ax.set_xticks(range(len(residues)), list(residues), fontsize=7 if len(residues) > 40 else 9)
        ax.set_xlabel("residue")
    else:  # round 1-based residue positions; residue p sits at column p - 1
        positions = [int(p) for p in MaxNLocator(nbins=12, integer=True).tick_values(1, len(residues))]
        positions = [p for p in positions if 1 <= p <= len(residues)]
        ax.set_xticks([p - 1 for p in positions], [str(p) for p in positions])
        ax.set_xlabel("residue position")


def figure_path(out: str | Path) -> Path:
    """``out`` if its extension names a format matplotlib writes (png, pdf, svg...), else a ValueError naming it:
    checked before any model is downloaded."""
    from matplotlib.figure import Figure

    path = Path(out)
    formats = Figure().canvas.get_supported_filetypes()
    if path.suffix.lower().lstrip(".") not in formats:
        raise ValueError(f"--out {path}: the figure's format follows its extension, and {path.suffix or 'none'!r} is "
                         f"not one of {', '.join('.' + f for f in sorted(formats))}")  # fmt: skip
    return path


def save_attention_figure(amap: AttentionMap, out: str | Path, title: str | None = None) -> Path:
    """Draw :func:`attention_figure` and save it; the format follows the extension (png, pdf, svg...)."""
    path = figure_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    attention_figure(amap, title).savefig(path)
    return path


def parent_location(model_location: str, metadata: dict[str, Any]) -> str:
    """The pretrained parent a fine-tuned model started from (its metadata's ``init``)."""
    init = metadata.get("init")
    if metadata.get("source") != "finetuned":
        why = "is not a fine-tuned model"
    elif init == "none":
        why = "was fine-tuned from scratch (init: none)"
    elif not init:
        why = "records no 'init' in its metadata"
    else:
        return str(init)
    raise ValueError(f"model {model_location!r} {why}, so it has no pretrained parent; name the parent explicitly")


def model_attention(model: str, sequence: str, parent: str | None = None) -> tuple[AttentionMap, str | None]:
    """Attention of the model at ``model`` (a directory, s3:// or MLflow URI), or with ``parent`` its difference
    from the parent's (``"auto"``: the parent recorded in the fine-tuned model's metadata).

    -> (map, the parent's location or None).
    """
    from pbp.finetune.export import load_body

    normalize_sequence(sequence, _record_name(sequence), unknown="error")  # a bad sequence fails before any download
    body, meta = load_body(model)
    amap = attention_matrix(body, sequence)
    if parent is None:
        return amap, None
    location = parent_location(model, meta) if parent == "auto" else parent
    parent_body, _ = load_body(location)
    return attention_diff(amap, attention_matrix(parent_body, sequence)), location
