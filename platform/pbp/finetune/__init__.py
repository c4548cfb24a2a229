"""Fine-tuning: task data, batching, the frozen-body feature cache, the training loop on Ray Train, export as
safetensors + JSON and as an MLflow pyfunc. See docs/finetuning.md."""
