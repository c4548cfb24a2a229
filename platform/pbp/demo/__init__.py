"""``pbp demo`` / ``make demo``: the whole pipeline on the local stack, as one library function (``pipeline``)
with a thin command. ``task`` generates the demo's fine-tuning task from the synthetic corpus."""
