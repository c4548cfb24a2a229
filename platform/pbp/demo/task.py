"""The demo's fine-tuning task, generated from the synthetic corpus (``pbp.data.synth``): SYNTHETIC, not biology.

Binary: does the protein carry a motif of motif family 0 (GO-like term ``GO:9800000``)? Pretraining sees those
motifs through the annotation task, so a pretrained model should fine-tune on it faster than one from scratch.
Proteins of at most ``max_len`` residues (so the tiny fine-tuning stages see them whole), split 70 / 15 / 15 by a
seeded hash of the accession into ``train.csv``, ``valid.csv`` and ``test.csv`` (columns ``id``, ``seq``,
``label``)."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

from pbp.data.synth import SynthConfig, family_term, generate

TERM = family_term(0)


def make_task(out_dir: Path, synth: SynthConfig, max_len: int = 254, seed: int = 0) -> dict[str, Path]:
    rows: dict[str, list[tuple[str, str, int]]] = {"train": [], "valid": [], "test": []}
    for acc, seq, terms in generate(synth):
        if len(seq) > max_len:
            continue
        h = int.from_bytes(hashlib.sha256(f"pbp-demo:{seed}:{acc}".encode()).digest()[:8], "big") % 100
        split = "train" if h < 70 else ("valid" if h < 85 else "test")
        rows[split].append((acc, seq, int(TERM in terms)))
    for split, r in rows.items():
        if len({label for *_, label in r}) < 2:
            raise ValueError(f"demo task: the {split} split has one class only ({len(r)} proteins); raise "
                             "demo.proteins")  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, r in rows.items():
        paths[split] = out_dir / f"{split}.csv"
        with paths[split].open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "seq", "label"])
            w.writerows(r)
    return paths
