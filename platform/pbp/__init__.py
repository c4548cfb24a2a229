"""pbp: pretrain, fine-tune, track and ship ProteinBERT protein language models."""

__version__ = "0.1.0"
