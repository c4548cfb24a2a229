"""The demo's fine-tuning task, generated from the synthetic corpus (``pbp.data.synth``): SYNTHETIC, not biology.

Binary: was the protein made charge-rich? The short proteins of the corpus (at most ``max_len`` residues, so the tiny
fine-tuning stages see them whole) are taken; for half of them (by a seeded hash of the accession) ``enrich`` of the
residues, at random positions, are replaced by charged ones (D, E, K, R), label 1; the others are left as they are,
label 0. A composition shift that a model reads only through its whole-sequence (global) features, learnable in a
few epochs, so the demo's figures show a model that learned something beside the majority-class baseline. Split
70 / 15 / 15 by another hash of the accession into ``train.csv``, ``valid.csv`` and ``test.csv`` (columns ``id``,
``seq``, ``label``)."""

from __future__ import annotations

import csv
import hashlib
import random
from pathlib import Path

from pbp.data.synth import SynthConfig, generate

CHARGED = "DEKR"


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def make_task(out_dir: Path, synth: SynthConfig, max_len: int = 254, seed: int = 0,
              enrich: float = 0.2) -> dict[str, Path]:  # fmt: skip
    rows: dict[str, list[tuple[str, str, int]]] = {"train": [], "valid": [], "test": []}
    for acc, seq, _terms in generate(synth):
        if len(seq) > max_len:
            continue
        label = _hash(f"pbp-demo-label:{seed}:{acc}") % 2
        if label:
            rng = random.Random(_hash(f"pbp-demo-seq:{seed}:{acc}"))
            chars = list(seq)
            for i in rng.sample(range(len(chars)), int(len(chars) * enrich)):
                chars[i] = rng.choice(CHARGED)
            seq = "".join(chars)
        h = _hash(f"pbp-demo-split:{seed}:{acc}") % 100
        rows["train" if h < 70 else ("valid" if h < 85 else "test")].append((acc, seq, label))
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
