"""Fine-tuning heads: the original recipe (``proteinbert/finetuning.py`` + ``get_model_with_hidden_layers_as_outputs``).

Features fed to the head:
  per residue  (B, L, 2*n_blocks*D + T): every local LayerNorm output, then the token-output probabilities
               (1,562 for the paper's model);
  per protein  (B, G + 2*n_blocks*G + A): the global input layer, every global LayerNorm output, then the annotation
               output probabilities (15,599 for the paper's model).
Head: Dropout(0.5) then one Linear layer, on the per-residue features for residue tasks, else per protein.
As in the original, the annotation input is all zeros unless the caller passes annotations.

Residue labels: label j belongs to residue j, which sits at token position j + 1 (after <START>); <START>, <END>
and <PAD> positions carry ``IGNORE_INDEX`` and weigh nothing in the loss (:func:`residue_labels_to_positions`).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pbp.model.proteinbert import ProteinBERT

IGNORE_INDEX = -100


class TaskKind(enum.StrEnum):
    NUMERIC = "numeric"  # regression per protein: MSE loss, Spearman's rho
    BINARY = "binary"  # per protein: BCE, ROC-AUC
    CATEGORICAL = "categorical"  # per protein: CE, accuracy
    RESIDUE_BINARY = "residue_binary"  # per residue: BCE, ROC-AUC over residues
    RESIDUE_CATEGORICAL = "residue_categorical"  # per residue: CE, accuracy over residues

    @property
    def per_residue(self) -> bool:
        return self in (TaskKind.RESIDUE_BINARY, TaskKind.RESIDUE_CATEGORICAL)

    @property
    def metric_name(self) -> str:
        """The headline metric's name; the metrics and their baselines are in ``pbp.train.metrics``."""
        return {"numeric": "spearman", "binary": "roc_auc", "residue_binary": "roc_auc"}.get(self.value, "accuracy")


@dataclass
class TaskSpec:
    kind: TaskKind
    n_classes: int = 1
    """Number of classes for categorical kinds (ignored otherwise)."""

    def __post_init__(self) -> None:
        self.kind = TaskKind(self.kind)
        if self.kind in (TaskKind.CATEGORICAL, TaskKind.RESIDUE_CATEGORICAL) and self.n_classes < 2:
            raise ValueError(f"task kind {self.kind.value} needs n_classes >= 2, got {self.n_classes}")

    @property
    def n_outputs(self) -> int:
        return self.n_classes if self.kind in (TaskKind.CATEGORICAL, TaskKind.RESIDUE_CATEGORICAL) else 1

    def flattened(self) -> TaskSpec:
        """Per-residue kinds as their per-protein counterpart, for losses and metrics over the labelled positions
        flattened into one list (per-protein kinds are returned unchanged)."""
        kind = {TaskKind.RESIDUE_BINARY: TaskKind.BINARY, TaskKind.RESIDUE_CATEGORICAL: TaskKind.CATEGORICAL}
        return TaskSpec(kind.get(self.kind, self.kind), self.n_classes)


def extract_features(
    model: ProteinBERT,
    tokens_BL: torch.Tensor,
    annotations_BA: torch.Tensor | None = None,
    pad_mask_BL: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (local features (B, L, model.config.local_feature_dim), global features (B, global_feature_dim))."""
    out = model(tokens_BL, annotations_BA, pad_mask=pad_mask_BL, output_hidden_states=True)
    assert out.local_hidden is not None and out.global_hidden is not None
    local_BLF = torch.cat([*out.local_hidden, torch.softmax(out.token_logits, dim=-1)], dim=-1)
    global_BF = torch.cat([*out.global_hidden, torch.sigmoid(out.annotation_logits)], dim=-1)
    return local_BLF, global_BF


class FinetuneModel(nn.Module):
    """A pretrained ProteinBERT body with the original's fine-tuning head.

    Output of ``forward``: NUMERIC/BINARY (B,), CATEGORICAL (B, C), RESIDUE_BINARY (B, L), RESIDUE_CATEGORICAL
    (B, L, C); logits (no sigmoid/softmax).
    """

    def __init__(self, body: ProteinBERT, task: TaskSpec, dropout: float = 0.5) -> None:
        super().__init__()
        self.body, self.task = body, task
        cfg = body.config
        in_dim = cfg.local_feature_dim if task.kind.per_residue else cfg.global_feature_dim
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(in_dim, task.n_outputs)
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def freeze_body(self) -> None:
        """Train only the head (the original's first fine-tuning phase)."""
        self.body.requires_grad_(False)

    def unfreeze_body(self) -> None:
        self.body.requires_grad_(True)

    @property
    def body_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.body.parameters())

    def forward(self, tokens_BL: torch.Tensor, annotations_BA: torch.Tensor | None = None) -> torch.Tensor:
        local_BLF, global_BF = extract_features(self.body, tokens_BL, annotations_BA)
        x = local_BLF if self.task.kind.per_residue else global_BF
        logits = self.head(self.dropout(x))
        return logits.squeeze(-1) if self.task.n_outputs == 1 else logits

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean loss; for residue tasks positions labelled ``IGNORE_INDEX`` weigh nothing."""
        return task_loss(self.task, logits, labels)


def task_loss(task: TaskSpec, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    kind = task.kind
    if kind is TaskKind.NUMERIC:
        return F.mse_loss(logits.float(), labels.float())
    if kind is TaskKind.BINARY:
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
    if kind is TaskKind.CATEGORICAL:
        return F.cross_entropy(logits.float(), labels.long())
    valid = labels != IGNORE_INDEX
    if kind is TaskKind.RESIDUE_BINARY:
        if not valid.any():
            return logits.sum() * 0.0
        return F.binary_cross_entropy_with_logits(logits[valid].float(), labels[valid].float())
    return F.cross_entropy(logits.float().flatten(0, 1), labels.long().flatten(), ignore_index=IGNORE_INDEX)


def residue_labels_to_positions(labels: Sequence[Sequence[int]], seq_len: int) -> torch.Tensor:
    """Per-residue label lists -> (B, seq_len) int64 aligned with tokens; START/END/PAD get ``IGNORE_INDEX``."""
    out = torch.full((len(labels), seq_len), IGNORE_INDEX, dtype=torch.long)
    for row, lab in enumerate(labels):
        if len(lab) + 2 > seq_len:
            raise ValueError(f"row {row}: {len(lab)} residue labels do not fit seq_len={seq_len} with START/END")
        out[row, 1 : 1 + len(lab)] = torch.as_tensor(list(lab), dtype=torch.long)
    return out
