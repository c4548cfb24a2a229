"""Using trained models: length-batched inference, ``pbp predict`` / ``pbp embed`` over FASTA or CSV inputs, and the
attention figure. Knows nothing of Ray; MLflow only through model URIs (``pbp.train.artifacts``)."""
