"""Protein data: real formats in, versioned WebDataset shards in object storage, a streaming reader out.

May use the tokenizer and corruption of ``pbp.model``; knows nothing of Ray, DeepSpeed or MLflow.
"""
