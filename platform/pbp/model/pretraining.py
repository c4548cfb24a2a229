"""The pretraining objective: input corruption and the two-part loss, as in the original ``pretraining.py``.

Corruption (``EpochGenerator._encode_epoch`` in the original):
  * every token position is replaced, with probability ``p_token_noise`` (0.05), by a token drawn uniformly from
    all 26 (so a replacement can be the same token, or a special one);
  * every present annotation is dropped with ``p_annotation_drop`` (0.25), every absent one switched on with
    ``p_annotation_add`` (1e-4);
  * then a random ``p_no_annotation_input`` (0.5) of the samples get an all-zero annotation input.
The original also corrupted <PAD> positions; pbp leaves them alone by default (``corrupt_padding=False``), since
with the padding mask they are never seen, and a <PAD> drawn as noise at a real position is still a real position
because the mask comes from the *uncorrupted* tokens.

Loss = cross-entropy of the ORIGINAL tokens at every non-<PAD> position (including START/END, as the original)
     + ``annotation_loss_weight`` x binary cross-entropy of the UNCORRUPTED annotations, averaged over terms, for
       proteins that have at least one annotation (weight 0 for unannotated ones: absent labels are unknown).
Each part is a proper weighted mean (sum of weighted losses / sum of weights). Keras divided by the element count
instead, which only rescales a batch's loss by its fraction of non-pad positions / annotated proteins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pbp.model.proteinbert import ProteinBERTOutput
from pbp.model.tokenizer import PAD_ID, VOCAB_SIZE


@dataclass
class CorruptionConfig:
    """Pretraining corruption rates (the original's defaults)."""

    p_token_noise: float = 0.05
    """Probability that a token position is replaced by a uniformly random token."""
    p_annotation_drop: float = 0.25
    """Probability that a present annotation is removed from the input."""
    p_annotation_add: float = 1e-4
    """Probability that an absent annotation is switched on in the input."""
    p_no_annotation_input: float = 0.5
    """Fraction of samples whose annotation input is all zeros."""
    corrupt_padding: bool = False
    """The original corrupted <PAD> positions too; True reproduces that."""

    def __post_init__(self) -> None:
        for name in ("p_token_noise", "p_annotation_drop", "p_annotation_add", "p_no_annotation_input"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"corruption.{name} must be a probability in [0, 1], got {v}")


@dataclass
class PretrainingLossConfig:
    annotation_loss_weight: float = 1.0
    """Weight of the annotation BCE relative to the token CE (the original's ``annots_loss_weight``)."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.annotation_loss_weight) and self.annotation_loss_weight >= 0):
            raise ValueError(
                f"loss.annotation_loss_weight must be a finite number >= 0, got {self.annotation_loss_weight}"
            )


@dataclass
class CorruptedBatch:
    tokens: torch.Tensor
    """(B, L) corrupted input tokens."""
    annotations: torch.Tensor
    """(B, A) corrupted 0/1 input annotations (float32)."""
    pad_mask: torch.Tensor
    """(B, L) bool, True at real (non-<PAD>) positions of the ORIGINAL tokens."""


def corrupt(
    tokens_BL: torch.Tensor,
    annotations_BA: torch.Tensor,
    cfg: CorruptionConfig,
    generator: torch.Generator | None = None,
) -> CorruptedBatch:
    """Corrupt a batch (see module docstring). Inputs are not modified."""
    pad_mask_BL = tokens_BL != PAD_ID
    noise_BL = torch.rand(tokens_BL.shape, generator=generator, device=tokens_BL.device) < cfg.p_token_noise
    if not cfg.corrupt_padding:
        noise_BL &= pad_mask_BL
    random_BL = torch.randint(0, VOCAB_SIZE, tokens_BL.shape, generator=generator, device=tokens_BL.device)
    noisy_tokens = torch.where(noise_BL, random_BL.to(tokens_BL.dtype), tokens_BL)

    present_BA = annotations_BA.bool()
    u_BA = torch.rand(annotations_BA.shape, generator=generator, device=annotations_BA.device)
    keep_BA = present_BA & (u_BA >= cfg.p_annotation_drop)
    add_BA = ~present_BA & (u_BA < cfg.p_annotation_add)
    noisy_BA = keep_BA | add_BA
    no_input_B = torch.rand(annotations_BA.shape[0], generator=generator, device=annotations_BA.device)
    noisy_BA &= ~(no_input_B < cfg.p_no_annotation_input).unsqueeze(1)
    return CorruptedBatch(tokens=noisy_tokens, annotations=noisy_BA.float(), pad_mask=pad_mask_BL)


@dataclass
class PretrainingLoss:
    total: torch.Tensor
    """Scalar: token_loss + annotation_loss_weight * annotation_loss."""
    token_loss: torch.Tensor
    """Scalar: mean CE over non-<PAD> positions."""
    annotation_loss: torch.Tensor
    """Scalar: mean BCE over terms of annotated proteins (0 when none in the batch)."""
    n_tokens: torch.Tensor
    """Scalar: non-<PAD> positions in the batch (a tensor, so logging it does not force a device sync)."""
    n_annotated: torch.Tensor
    """Scalar: proteins with at least one annotation."""


def pretraining_loss(
    out: ProteinBERTOutput,
    tokens_BL: torch.Tensor,
    annotations_BA: torch.Tensor,
    cfg: PretrainingLossConfig | None = None,
) -> PretrainingLoss:
    """Loss of a model output against the ORIGINAL (uncorrupted) tokens and annotations."""
    cfg = cfg or PretrainingLossConfig()
    token_w_BL = (tokens_BL != PAD_ID).float()
    ce_BL = F.cross_entropy(out.token_logits.float().transpose(1, 2), tokens_BL.long(), reduction="none")
    n_tokens = token_w_BL.sum()
    token_loss = (ce_BL * token_w_BL).sum() / n_tokens.clamp_min(1.0)

    target_BA = annotations_BA.float()
    annotated_B = (target_BA > 0).any(dim=1).float()
    bce_BA = F.binary_cross_entropy_with_logits(out.annotation_logits.float(), target_BA, reduction="none")
    n_annotated = annotated_B.sum()
    annotation_loss = (bce_BA.mean(dim=1) * annotated_B).sum() / n_annotated.clamp_min(1.0)
    return PretrainingLoss(
        total=token_loss + cfg.annotation_loss_weight * annotation_loss,
        token_loss=token_loss,
        annotation_loss=annotation_loss,
        n_tokens=n_tokens.detach(),
        n_annotated=n_annotated.detach(),
    )
