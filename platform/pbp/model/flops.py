"""Analytic FLOP count of ProteinBERT, for speed reports as a fraction of measured matmul peak.

Counted: every matmul and convolution, as 2 FLOPs per multiply-accumulate (the usual convention; elementwise ops,
LayerNorm, softmax and the embedding lookup are not counted, so the figure is a lower bound of work done).
Training = forward + backward, where backward costs 2x forward for every layer (input and weight gradients),
except the global input layer, whose input (the annotation vector) needs no gradient: 1x there.
"""

from __future__ import annotations

from pbp.model.config import ModelConfig


def forward_flops(cfg: ModelConfig, seq_len: int) -> dict[str, int]:
    """Forward FLOPs for ONE sample of ``seq_len`` positions, split by part."""
    D, G, A, T = cfg.d_local, cfg.d_global, cfg.n_annotations, cfg.vocab_size
    H, K, V, k = cfg.n_heads, cfg.d_key, cfg.d_value, cfg.conv_kernel_size
    per_position_block = (
        2 * (2 * k * D * D)  # narrow + wide convolution
        + 2 * D * D  # seq dense
        + 2 * D * H * (K + V)  # attention keys and values
        + 2 * H * K  # q . k scores
        + 2 * H * V  # weighted sum of values
    )
    per_protein_block = 2 * G * D + 2 * (2 * G * G) + 2 * G * H * K  # global->local, two global denses, queries
    return {
        "global_input": 2 * A * G,
        "blocks_local": cfg.n_blocks * per_position_block * seq_len,
        "blocks_global": cfg.n_blocks * per_protein_block,
        "token_head": 2 * D * T * seq_len,
        "annotation_head": 2 * G * A,
    }


def train_flops(cfg: ModelConfig, seq_len: int) -> int:
    """Forward + backward FLOPs for one sample (see module docstring)."""
    fwd = forward_flops(cfg, seq_len)
    return 3 * sum(fwd.values()) - fwd["global_input"]
