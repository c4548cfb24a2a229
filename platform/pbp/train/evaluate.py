"""Evaluate a pretrained model on a dataset split, against trivial baselines (``pbp evaluate``).

Reported on the split's proteins (exact one-pass read, inputs corrupted as in pretraining):
  token_loss                CE of the original tokens at non-pad positions; baseline: the split's residue
                            frequencies (``token_loss_baseline``). The input shows 95% of tokens uncorrupted, so the
                            model can copy them: ``corrupted_token_accuracy`` (only where the input was changed to
                            another token) is the honest measure of residue recovery.
  annotation_loss           BCE of the annotations of annotated proteins; baseline: each term's frequency among
                            the split's annotated proteins (``annotation_loss_baseline``; a slightly optimistic one).
  annotation_auc            micro ROC-AUC over (annotated protein, term) pairs, predicted from the SEQUENCE ALONE
                            (annotation input all zeros), the way GO prediction is used.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from pbp.data.episodes import Bucket
from pbp.data.reader import PretrainingStream, ReaderConfig
from pbp.data.storage import Store
from pbp.model import ProteinBERT
from pbp.model.finetune import roc_auc
from pbp.model.tokenizer import VOCAB_SIZE


def load_model(location: str) -> ProteinBERT:
    """A model directory, local or in S3 (e.g. a run's ``final_model/``)."""
    if not location.startswith("s3://"):
        return ProteinBERT.from_pretrained(location)
    store = Store(location)
    tmp = Path(tempfile.mkdtemp(prefix="pbp-model-"))
    for name in ("config.json", "model.safetensors"):
        (tmp / name).write_bytes(store.get_bytes(name))
    return ProteinBERT.from_pretrained(tmp)


@torch.no_grad()
def evaluate(
    model: ProteinBERT,
    data_url: str,
    split: Literal["train", "valid"] = "valid",
    seq_len: int = 512,
    batch_size: int = 32,
    max_proteins: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    model.eval()
    cfg = ReaderConfig(url=data_url, split=split, mode="exact", shuffle_buffer=0, buckets=(Bucket(seq_len, batch_size),),
                       seed=seed)  # fmt: skip
    stream = PretrainingStream(cfg)
    if stream.n_annotations != model.config.n_annotations:
        raise ValueError(
            f"the model predicts {model.config.n_annotations} annotations, {data_url} has {stream.n_annotations}"
        )
    token_counts = torch.zeros(VOCAB_SIZE, dtype=torch.float64)
    sums = {"ce": 0.0, "n_tok": 0.0, "bce": 0.0, "n_ann": 0.0, "corr_ok": 0.0, "n_corr": 0.0}
    scores, labels, term_pos, n_prot = [], [], torch.zeros(stream.n_annotations, dtype=torch.float64), 0
    ann_rows = []
    for batch in stream:
        tokens, ann, mask = batch["tokens"], batch["annotations"], batch["pad_mask"]
        out = model(batch["input_tokens"], batch["input_annotations"], pad_mask=mask)
        ce = F.cross_entropy(out.token_logits.transpose(1, 2), tokens, reduction="none")
        sums["ce"] += float(ce[mask].sum())
        sums["n_tok"] += float(mask.sum())
        token_counts += torch.bincount(tokens[mask], minlength=VOCAB_SIZE).double()
        changed = (batch["input_tokens"] != tokens) & mask
        sums["corr_ok"] += float((out.token_logits.argmax(-1) == tokens)[changed].sum())
        sums["n_corr"] += float(changed.sum())
        annotated = ann.sum(1) > 0
        if annotated.any():
            bce = F.binary_cross_entropy_with_logits(out.annotation_logits, ann, reduction="none").mean(1)
            sums["bce"] += float(bce[annotated].sum())
            sums["n_ann"] += float(annotated.sum())
            seq_only = model(batch["input_tokens"], None, pad_mask=mask).annotation_logits
            scores.append(seq_only[annotated].flatten().numpy())
            labels.append(ann[annotated].flatten().numpy())
            term_pos += ann[annotated].sum(0).double()
            ann_rows.append(ann[annotated])
        n_prot += len(batch["accessions"])
        if max_proteins and n_prot >= max_proteins:
            break
    freq = token_counts / token_counts.sum()
    token_baseline = float(-(freq[freq > 0] * freq[freq > 0].log()).sum())  # CE of predicting the frequencies
    p = (term_pos / max(sums["n_ann"], 1)).clamp(1e-7, 1 - 1e-7)
    all_ann = torch.cat(ann_rows).double() if ann_rows else torch.zeros(0, stream.n_annotations)
    ann_baseline = float(-(all_ann * p.log() + (1 - all_ann) * (1 - p).log()).mean()) if len(all_ann) else math.nan
    return {
        "proteins": float(n_prot),
        "token_loss": sums["ce"] / max(sums["n_tok"], 1),
        "token_loss_baseline": token_baseline,
        "corrupted_token_accuracy": sums["corr_ok"] / max(sums["n_corr"], 1),
        "corrupted_token_accuracy_baseline": float(freq.max()),
        "annotation_loss": sums["bce"] / max(sums["n_ann"], 1),
        "annotation_loss_baseline": ann_baseline,
        "annotation_auc": roc_auc(np.concatenate(scores), np.concatenate(labels)) if scores else math.nan,
    }
