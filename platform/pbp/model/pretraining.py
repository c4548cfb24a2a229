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

import numpy as np
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
    """Corrupt a batch (see module docstring). Inputs are not modified. See :func:`corrupt_sparse`, which this
    calls with the positions that may be noised and the present annotations found by a scan of the inputs."""
    pad_mask_BL = tokens_BL != PAD_ID
    noisable = None if cfg.corrupt_padding else pad_mask_BL.reshape(-1).nonzero().squeeze(1).cpu().numpy()
    present = annotations_BA.reshape(-1).nonzero().squeeze(1).cpu().numpy()
    return corrupt_sparse(tokens_BL, pad_mask_BL, noisable, present, annotations_BA.shape[1], cfg, generator)


def corrupt_sparse(
    tokens_BL: torch.Tensor,
    pad_mask_BL: torch.Tensor,
    noisable_N: np.ndarray | None,
    present_P: np.ndarray,
    n_annotations: int,
    cfg: CorruptionConfig,
    generator: torch.Generator | None = None,
) -> CorruptedBatch:
    """:func:`corrupt` given what a data loader already knows: ``noisable_N`` the flat positions of ``tokens_BL``
    that may be replaced (None: all; by default the non-<PAD> ones), ``present_P`` the present annotations as flat
    indices ``sample * n_annotations + term``. -> dense (B, L) tokens and (B, A) float annotations.

    Drawn sparsely, with exactly the distribution of an independent draw per position and per term: the number of
    replaced positions from a binomial, that many distinct positions uniformly, random tokens only there; a draw
    per PRESENT annotation for the drop; the number of absent annotations switched on from a binomial, placed
    uniformly among the absent ones. So the cost grows with the residues and annotations present, not with the
    batch's padding or the vocabulary (8,943 terms in the original): a dense draw per term and per position took
    most of the reader's time (``pbp bench data``). Draws come from a numpy generator seeded from ``generator``."""
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator).item()))
    n_samples = tokens_BL.shape[0]
    n_positions = tokens_BL.numel() if noisable_N is None else len(noisable_N)
    picked = rng.choice(n_positions, rng.binomial(n_positions, cfg.p_token_noise), replace=False, shuffle=False)
    where = picked if noisable_N is None else noisable_N[picked]
    noisy_tokens = tokens_BL.clone(memory_format=torch.contiguous_format)
    noisy_tokens.view(-1)[torch.from_numpy(where).to(tokens_BL.device)] = torch.from_numpy(
        rng.integers(0, VOCAB_SIZE, len(where))
    ).to(device=tokens_BL.device, dtype=tokens_BL.dtype)

    n_flat = n_samples * n_annotations
    on = np.zeros(n_flat, dtype=np.float32)
    on[present_P[rng.random(len(present_P)) >= cfg.p_annotation_drop]] = 1.0
    on[_choose_outside(rng, n_flat, np.sort(present_P), cfg.p_annotation_add)] = 1.0
    on_BA = on.reshape(n_samples, n_annotations)
    on_BA[rng.random(n_samples) < cfg.p_no_annotation_input] = 0.0
    annotations = torch.from_numpy(on_BA).to(pad_mask_BL.device)
    return CorruptedBatch(tokens=noisy_tokens, annotations=annotations, pad_mask=pad_mask_BL)


def _choose_outside(rng: np.random.Generator, n: int, excluded: np.ndarray, p: float) -> np.ndarray:
    """Each index of ``range(n)`` not in ``excluded`` (sorted, distinct) independently with probability ``p``: a
    binomial count of distinct ranks among the absent ones, mapped to indices past the excluded ones before them."""
    absent = n - len(excluded)
    ranks = rng.choice(absent, rng.binomial(absent, p), replace=False, shuffle=False)
    return ranks + np.searchsorted(excluded - np.arange(len(excluded)), ranks, side="right")


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
