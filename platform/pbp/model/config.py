"""The model's typed configuration (plain dataclass; the YAML loader lives in ``pbp.config``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pbp.model.tokenizer import VOCAB_SIZE


@dataclass
class ModelConfig:
    """ProteinBERT hyper-parameters. Defaults are the paper's model (15,981,321 parameters)."""

    n_annotations: int = 8943
    """A: size of the GO-annotation vector (global input and annotation output)."""
    d_local: int = 128
    """Channels of the local (per-residue) track."""
    d_global: int = 512
    """Width of the global (per-protein) track."""
    n_blocks: int = 6
    """Number of transformer-like blocks."""
    n_heads: int = 4
    """Global-attention heads; value dim per head is d_global / n_heads."""
    d_key: int = 64
    """Key/query dim per attention head."""
    conv_kernel_size: int = 9
    """Kernel size of both 1-D convolutions in each block."""
    wide_conv_dilation: int = 5
    """Dilation of the wide convolution (the narrow one has dilation 1)."""
    layer_norm_eps: float = 1e-3
    """Keras' LayerNormalization default epsilon, kept for parity."""
    padding_mask: bool = True
    """pbp's improvement: attention ignores <PAD> and convolutions see zeros there, so outputs do not depend on
    batch padding. False reproduces the original exactly (padding leaks into the global track)."""
    vocab_size: int = VOCAB_SIZE
    """Token vocabulary (26 in the original); only change it together with the tokenizer."""

    def __post_init__(self) -> None:
        for name in ("n_annotations", "d_local", "d_global", "n_blocks", "n_heads", "d_key", "conv_kernel_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.d_global % self.n_heads:
            raise ValueError(f"model.d_global ({self.d_global}) must be divisible by model.n_heads ({self.n_heads})")
        if self.conv_kernel_size % 2 == 0:
            raise ValueError(f"model.conv_kernel_size must be odd for 'same' padding, got {self.conv_kernel_size}")
        if self.wide_conv_dilation < 1:
            raise ValueError(f"model.wide_conv_dilation must be >= 1, got {self.wide_conv_dilation}")
        if self.layer_norm_eps <= 0:
            raise ValueError(f"model.layer_norm_eps must be > 0, got {self.layer_norm_eps}")
        if self.vocab_size != VOCAB_SIZE:
            raise ValueError(f"model.vocab_size must be {VOCAB_SIZE} (the tokenizer's vocabulary)")

    @property
    def d_value(self) -> int:
        return self.d_global // self.n_heads

    @property
    def local_feature_dim(self) -> int:
        """Fine-tuning features per residue: every local LayerNorm output plus the token probabilities."""
        return 2 * self.n_blocks * self.d_local + self.vocab_size

    @property
    def global_feature_dim(self) -> int:
        """Fine-tuning features per protein: global input layer, every global LayerNorm, annotation probs."""
        return self.d_global + 2 * self.n_blocks * self.d_global + self.n_annotations

    def to_dict(self) -> dict[str, object]:
        return asdict(self)
