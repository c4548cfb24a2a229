"""The stack fixtures (stack_dir, endpoints, stack_env) live in tests/conftest.py, shared with the data tests."""
