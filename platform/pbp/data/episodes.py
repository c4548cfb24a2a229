"""Sequence-length episodes, as the original pretraining: every protein goes to one length bucket at random.

Bucket b (length ``seq_len_b``) is chosen with probability proportional to ``exp(-max(r, 1/r))``, where
``r = (len + 2) / seq_len_b`` (residues plus START/END); so short proteins mostly land in short buckets and long ones
in long buckets, and a protein longer than its bucket is cropped to a random window. A batch always comes from one
bucket, with that bucket's batch size (the original: 128/128, 512/64, 1024/32).
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from pbp.model.tokenizer import ADDED_TOKENS_PER_SEQ


@dataclass
class Bucket:
    seq_len: int
    batch_size: int


DEFAULT_BUCKETS = (Bucket(128, 128), Bucket(512, 64), Bucket(1024, 32))


def bucket_probabilities(n_residues: int, seq_lens: Sequence[int]) -> tuple[float, ...]:
    return _probabilities(n_residues, tuple(seq_lens))


@functools.lru_cache(maxsize=1 << 16)
def _probabilities(n_residues: int, seq_lens: tuple[int, ...]) -> tuple[float, ...]:
    length = n_residues + ADDED_TOKENS_PER_SEQ
    w = [math.exp(-max(length / s, s / length)) for s in seq_lens]
    total = sum(w)
    return tuple(x / total for x in w)


def choose_bucket(n_residues: int, seq_lens: Sequence[int], rng: random.Random) -> int:
    probs = bucket_probabilities(n_residues, seq_lens)
    u, acc = rng.random(), 0.0
    for i, p in enumerate(probs):
        acc += p
        if u <= acc:
            return i
    return len(probs) - 1
