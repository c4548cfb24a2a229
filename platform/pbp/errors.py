"""The base of errors meant for the user: the CLI prints their message (which names the file, record, service or
key) without a traceback. Anything else is a bug and keeps its traceback."""


class UserError(Exception):
    """Mixed into pbp's error classes whose message says what is wrong and what to do."""
