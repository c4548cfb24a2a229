"""Distributed pretraining: Ray Train + DeepSpeed over streamed shards, checkpoints in object storage, MLflow."""
