"""Reading a model directory's files with errors that name the file: its JSON documents and its safetensors
weights (a copy cut short, weights of another model)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file whose top level is an object; a ValueError naming the file otherwise."""
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    return doc


def load_weights(model: nn.Module, path: Path) -> None:
    """``model.load_state_dict`` from a safetensors file, which must hold exactly the model's tensors with their
    shapes; else a ValueError naming the file and what differs (a file cut short, another model's weights)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except SafetensorError as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e}); a copy cut short? copy it again") from None
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match the config: missing {missing}, unexpected {unexpected}")
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise ValueError(
                f"{path}: tensor {k!r} has shape {tuple(v.shape)}, config expects {tuple(expected[k].shape)}"
            )
    model.load_state_dict(state)
