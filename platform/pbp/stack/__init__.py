"""The embedded local stack: SeaweedFS (S3), MLflow (tracking + registry) and a multi-node Ray cluster on 127.0.0.1.

Knows nothing of training. Clients (data, train, submit) read endpoints and credentials through
:mod:`pbp.stack.endpoints`, from the environment first and from the stack's state dir otherwise.
"""
