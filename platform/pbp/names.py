"""Names that users choose (run, experiment, model and campaign names) and the keys derived from them.

A name ends up in storage paths, S3 keys and MLflow tags, so it is checked once, where the config is built: 1-128
characters from ASCII letters, digits, '.', '_' and '-', starting with a letter or digit (so never '.' or '..').
A name is never interpolated into a query (an MLflow filter string): queries use :func:`name_key`, a hex digest.
"""

from __future__ import annotations

import hashlib
import re

from pbp.errors import UserError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
ALLOWED = "1-128 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit"


class InvalidNameError(UserError, ValueError):
    """A name outside the safe character set; the message names the field and the value."""


def check_name(value: str, field: str) -> str:
    """``value`` if it is a safe name, else :class:`InvalidNameError` naming ``field``."""
    if not isinstance(value, str) or _NAME.fullmatch(value) is None:  # fullmatch: no trailing newline either
        raise InvalidNameError(f"{field}: {value!r} is not a valid name (allowed: {ALLOWED})")
    return value


def name_key(name: str) -> str:
    """The sha256 hex digest of ``name``: safe to put in a query, whatever the name holds."""
    return hashlib.sha256(name.encode()).hexdigest()
