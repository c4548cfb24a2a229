"""Evaluate a pretrained model on a dataset split, against trivial baselines (``pbp evaluate``).

Reported on the split's proteins (exact one-pass read, inputs corrupted as in pretraining); each ``m_baseline`` is
the score of a predictor that learned nothing, on the same proteins:
  token_loss                CE of the original tokens at non-pad positions; baseline: the split's residue
                            frequencies (``token_loss_baseline``). The input shows 95% of tokens uncorrupted, so the
                            model can copy them: ``corrupted_token_accuracy`` (only where the input was changed to
                            another token) is the honest measure of residue recovery.
  annotation_loss           BCE of the annotations of annotated proteins; baseline: each term's frequency among
                            the split's annotated proteins (``annotation_loss_baseline``; a slightly optimistic one).
  annotation_auc_micro      ROC-AUC over all (annotated protein, term) pairs, predicted from the SEQUENCE ALONE
                            (annotation input all zeros), the way GO prediction is used. Baseline: score every pair
                            with its term's frequency among the split's annotated proteins. Where terms differ in
                            frequency, as GO terms do, this alone ranks pairs well: expect it far above 0.5.
  annotation_auc_macro      the mean over terms of each term's ROC-AUC (terms with both classes in the split). The
                            same frequency baseline is a constant within each term, so it scores 0.5 per term by
                            construction; it is computed all the same, from the scores, like the others.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from pbp.data.episodes import Bucket
from pbp.data.reader import PretrainingStream, ReaderConfig
from pbp.model import ProteinBERT
from pbp.model.tokenizer import VOCAB_SIZE
from pbp.train.artifacts import model_files
from pbp.train.metrics import roc_auc, roc_auc_macro


def load_model(location: str) -> ProteinBERT:
    """A model directory, local, in S3 (e.g. a run's ``final_model/``) or an MLflow artifact URI."""
    with model_files(location) as d:
        return ProteinBERT.from_pretrained(d)


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
    scores, ann_rows, n_prot = [], [], 0  # sequence-only annotation logits and labels of annotated proteins
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
            scores.append(seq_only[annotated].float().numpy())
            ann_rows.append(ann[annotated].numpy())
        n_prot += len(batch["accessions"])
        if max_proteins and n_prot >= max_proteins:
            break
    freq = token_counts / token_counts.sum()
    token_baseline = float(-(freq[freq > 0] * freq[freq > 0].log()).sum())  # CE of predicting the frequencies
    n_terms = stream.n_annotations
    return {
        "proteins": n_prot,
        "token_loss": sums["ce"] / max(sums["n_tok"], 1),
        "token_loss_baseline": token_baseline,
        "corrupted_token_accuracy": sums["corr_ok"] / max(sums["n_corr"], 1),
        "corrupted_token_accuracy_baseline": float(freq.max()),
        "annotation_loss": sums["bce"] / max(sums["n_ann"], 1),
        **annotation_metrics(
            np.concatenate(scores) if scores else np.zeros((0, n_terms), np.float32),
            np.concatenate(ann_rows) if ann_rows else np.zeros((0, n_terms), np.float32),
        ),
    }


def annotation_metrics(scores_NT: np.ndarray, labels_NT: np.ndarray) -> dict[str, float]:
    """Micro and macro ROC-AUC of annotation scores over N annotated proteins and T terms, and the baselines of
    predicting each term's frequency among these proteins (module docstring); NaN where undefined."""
    labels_NT = labels_NT.astype(np.float64)
    freq_T = labels_NT.mean(0) if len(labels_NT) else np.zeros(labels_NT.shape[1])
    p_T = np.clip(freq_T, 1e-7, 1 - 1e-7)
    bce_NT = -(labels_NT * np.log(p_T) + (1 - labels_NT) * np.log(1 - p_T))
    base_NT = np.broadcast_to(freq_T, labels_NT.shape)
    return {
        "annotation_loss_baseline": float(bce_NT.mean()) if len(labels_NT) else math.nan,
        "annotation_auc_micro": roc_auc(scores_NT.ravel(), labels_NT.ravel()),
        "annotation_auc_micro_baseline": roc_auc(base_NT.ravel(), labels_NT.ravel()),
        "annotation_auc_macro": roc_auc_macro(scores_NT, labels_NT),
        "annotation_auc_macro_baseline": roc_auc_macro(base_NT, labels_NT),
    }
