"""``pbp data synth``: a SYNTHETIC protein corpus for the demo and tests (not biology).

Sequences draw residues i.i.d. from UniProtKB/Swiss-Prot's amino-acid composition, with log-normal lengths
(median ~ 300, clipped to [min_len, max_len]) like real proteins. ``n_motifs`` random 7-residue motifs are planted;
each motif determines a GO-like term (``GO:99MMMMM``, outside the real GO id range), and motifs come in families
whose shared parent term is annotated too, so the annotation task is learnable from the sequence and the
annotation vector has structure. About ``p_unannotated`` of the proteins get no motif and no annotation.
The output is a real-format pair: ``synth.fasta.gz`` and ``synth_go.tsv`` (accession, GO id, aspect), so the demo
exercises the same ingestion path as users' downloads.
"""

from __future__ import annotations

import gzip
import io
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# UniProtKB/Swiss-Prot amino-acid composition (percent; release statistics), the 20 standard residues.
COMPOSITION = {
    "A": 8.25, "R": 5.53, "N": 4.06, "D": 5.45, "C": 1.37, "Q": 3.93, "E": 6.75, "G": 7.07, "H": 2.27, "I": 5.96,
    "L": 9.66, "K": 5.84, "M": 2.42, "F": 3.86, "P": 4.70, "S": 6.56, "T": 5.34, "W": 1.08, "Y": 2.92, "V": 6.87,
}  # fmt: skip
MOTIF_LEN = 7


@dataclass
class SynthConfig:
    n_proteins: int = 2000
    n_motifs: int = 24
    motifs_per_family: int = 4
    max_motifs_per_protein: int = 3
    p_unannotated: float = 0.2
    min_len: int = 30
    max_len: int = 1500
    seed: int = 0


def motif_term(i: int) -> str:
    return f"GO:99{i:05d}"


def family_term(f: int) -> str:
    return f"GO:98{f:05d}"


def iter_proteins(cfg: SynthConfig) -> Iterator[tuple[str, str, list[str]]]:
    """(accession, sequence, GO-like terms), one protein at a time (memory does not grow with ``n_proteins``)."""
    rng = random.Random(cfg.seed)
    residues, weights = list(COMPOSITION), list(COMPOSITION.values())
    motifs = ["".join(rng.choices(residues, weights, k=MOTIF_LEN)) for _ in range(cfg.n_motifs)]
    for n in range(cfg.n_proteins):
        length = int(min(cfg.max_len, max(cfg.min_len, rng.lognormvariate(5.7, 0.6))))
        seq = rng.choices(residues, weights, k=length)
        terms: set[str] = set()
        if rng.random() >= cfg.p_unannotated:
            k = rng.randint(1, cfg.max_motifs_per_protein)
            for m in rng.sample(range(cfg.n_motifs), k):
                pos = rng.randrange(0, max(1, length - MOTIF_LEN))
                seq[pos : pos + MOTIF_LEN] = motifs[m]
                terms |= {motif_term(m), family_term(m // cfg.motifs_per_family)}
        yield f"SYN{n:07d}", "".join(seq[:length]), sorted(terms)


def generate(cfg: SynthConfig) -> list[tuple[str, str, list[str]]]:
    """-> [(accession, sequence, GO-like terms)]."""
    return list(iter_proteins(cfg))


def write_corpus(out_dir: Path, cfg: SynthConfig, compresslevel: int = 9) -> tuple[Path, Path]:
    """Write ``synth.fasta.gz`` and ``synth_go.tsv`` into ``out_dir`` (streamed); returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fasta, table = out_dir / "synth.fasta.gz", out_dir / "synth_go.tsv"
    with (
        fasta.open("wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=compresslevel) as gz,
        io.TextIOWrapper(gz) as f,
        table.open("w") as t,
    ):
        for acc, seq, terms in iter_proteins(cfg):
            f.write(f">{acc} synthetic protein (pbp data synth, seed {cfg.seed})\n")
            for i in range(0, len(seq), 60):
                f.write(seq[i : i + 60] + "\n")
            for term in terms:
                t.write(f"{acc}\t{term}\tF\n")
    return fasta, table
