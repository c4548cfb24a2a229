"""ProteinBERT in plain PyTorch: tokenizer, model, pretraining objective, fine-tuning heads.

Nothing here imports Ray, DeepSpeed, MLflow or any other part of pbp.
"""

from pbp.model.config import ModelConfig
from pbp.model.proteinbert import GlobalAttention, ProteinBERT, ProteinBERTOutput

__all__ = ["GlobalAttention", "ModelConfig", "ProteinBERT", "ProteinBERTOutput"]
