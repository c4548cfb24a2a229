"""Adapter for the original ProteinBERT (Keras) checkpoints.

The original saves a pickle of ``(n_annotations, weights, optimizer_weights)``, where ``weights`` is Keras'
``model.get_weights()`` list. For a model with ``n_blocks`` blocks it holds ``3 + 23 * n_blocks + 4`` arrays
(145 for the paper's 6 blocks), in layer-creation order:

    dense-global-input kernel (A, G), bias (G)
    embedding-seq-input (T, D)
    per block: global-to-seq-dense kernel (G, D), bias
               narrow-conv kernel (k, D, D), bias      wide-conv kernel (k, D, D), bias
               seq-merge1-norm gamma, beta             seq-dense kernel (D, D), bias
               seq-merge2-norm gamma, beta             global-dense1 kernel (G, G), bias
               global-attention Wq (H, G, K), Wk (H, D, K), Wv (H, D, V)
               global-merge1-norm gamma, beta          global-dense2 kernel (G, G), bias
               global-merge2-norm gamma, beta
    output-seq kernel (D, T), bias       output-annotations kernel (G, A), bias

Keras dense kernels are (in, out) (PyTorch: (out, in)); conv kernels are (k, in, out) (PyTorch: (out, in, k)).
The wide convolution's dilation cannot be read from the weights; it defaults to the paper's 5.

The pickle is read by a restricted unpickler: it builds numpy arrays, dtypes and scalars and plain containers, and
refuses every other global (``os.system``, ``builtins.eval``, ...) before anything in the file can run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pbp.model.array_pickle import RefusedPickle, load_arrays
from pbp.model.config import ModelConfig
from pbp.model.proteinbert import ProteinBERT

ARRAYS_BEFORE_BLOCKS = 3
ARRAYS_PER_BLOCK = 23
ARRAYS_AFTER_BLOCKS = 4

# (pbp parameter suffix, kind) per block, in Keras order; kind says how to convert the array.
_BLOCK_LAYOUT: tuple[tuple[str, str], ...] = (
    ("global_to_local.weight", "dense"),
    ("global_to_local.bias", "copy"),
    ("narrow_conv.weight", "conv"),
    ("narrow_conv.bias", "copy"),
    ("wide_conv.weight", "conv"),
    ("wide_conv.bias", "copy"),
    ("local_norm1.weight", "copy"),
    ("local_norm1.bias", "copy"),
    ("local_dense.weight", "dense"),
    ("local_dense.bias", "copy"),
    ("local_norm2.weight", "copy"),
    ("local_norm2.bias", "copy"),
    ("global_dense1.weight", "dense"),
    ("global_dense1.bias", "copy"),
    ("attention.Wq", "copy"),
    ("attention.Wk", "copy"),
    ("attention.Wv", "copy"),
    ("global_norm1.weight", "copy"),
    ("global_norm1.bias", "copy"),
    ("global_dense2.weight", "dense"),
    ("global_dense2.bias", "copy"),
    ("global_norm2.weight", "copy"),
    ("global_norm2.bias", "copy"),
)
assert len(_BLOCK_LAYOUT) == ARRAYS_PER_BLOCK


class KerasCheckpointError(ValueError):
    """A checkpoint that does not have the original's layout; the message names the array."""


def read_keras_checkpoint(path: str | Path) -> tuple[int, list[np.ndarray]]:
    """Unpickle an original checkpoint -> (n_annotations, weights), allowing only numpy arrays and containers
    (:mod:`pbp.model.array_pickle`)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such checkpoint file")
    with p.open("rb") as f:
        try:
            obj = load_arrays(f)
        except RefusedPickle as e:
            raise KerasCheckpointError(
                f"{p}: refused to unpickle: {e} is not part of a ProteinBERT checkpoint (only numpy arrays of bool, "
                "integer or float, their dtypes and scalars, and plain containers are allowed)"
            ) from None
        except Exception as e:
            raise KerasCheckpointError(f"{p}: cannot be unpickled as a ProteinBERT checkpoint ({e})") from None
    if not (isinstance(obj, tuple | list) and len(obj) == 3):
        raise KerasCheckpointError(f"{p}: expected a pickled (n_annotations, weights, optimizer_weights) tuple")
    n_annotations, weights, _optimizer_weights = obj
    if not isinstance(weights, list | tuple) or not all(isinstance(w, np.ndarray) for w in weights):
        raise KerasCheckpointError(f"{p}: 'weights' must be a list of numpy arrays")
    return int(n_annotations), list(weights)


def infer_config(n_annotations: int, weights: Sequence[np.ndarray], **overrides: object) -> ModelConfig:
    """Read the architecture off the arrays' count and shapes."""
    n = len(weights)
    n_blocks, rest = divmod(n - ARRAYS_BEFORE_BLOCKS - ARRAYS_AFTER_BLOCKS, ARRAYS_PER_BLOCK)
    if rest or n_blocks < 1:
        raise KerasCheckpointError(
            f"{n} weight arrays: expected {ARRAYS_BEFORE_BLOCKS} + {ARRAYS_PER_BLOCK} x n_blocks + "
            f"{ARRAYS_AFTER_BLOCKS} (145 for the paper's model)"
        )
    A, G = weights[0].shape
    _, D = weights[2].shape
    k = weights[ARRAYS_BEFORE_BLOCKS + 2].shape[0]
    H, _, K = weights[ARRAYS_BEFORE_BLOCKS + 14].shape
    if n_annotations != A:
        raise KerasCheckpointError(
            f"array 0 (dense-global-input kernel) has {A} inputs but n_annotations={n_annotations}"
        )
    values: dict[str, object] = dict(
        n_annotations=A, d_local=D, d_global=G, n_blocks=n_blocks, n_heads=H, d_key=K, conv_kernel_size=k
    )
    values.update(overrides)
    return ModelConfig(**values)  # type: ignore[arg-type]


def keras_weights_to_state_dict(weights: Sequence[np.ndarray], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Convert the Keras list to a pbp state dict, checking every shape against ``cfg``."""
    names: list[tuple[str, str]] = [
        ("global_input.weight", "dense"),
        ("global_input.bias", "copy"),
        ("embedding.weight", "copy"),
    ]
    for b in range(cfg.n_blocks):
        names += [(f"blocks.{b}.{suffix}", kind) for suffix, kind in _BLOCK_LAYOUT]
    names += [
        ("token_head.weight", "dense"),
        ("token_head.bias", "copy"),
        ("annotation_head.weight", "dense"),
        ("annotation_head.bias", "copy"),
    ]
    if len(weights) != len(names):
        raise KerasCheckpointError(f"{len(weights)} weight arrays, the config needs {len(names)}")
    expected = ProteinBERT(cfg).state_dict()
    state: dict[str, torch.Tensor] = {}
    for i, ((name, kind), w) in enumerate(zip(names, weights, strict=True)):
        arr = np.asarray(w, dtype=np.float32)
        if kind == "dense":
            arr = arr.T  # (in, out) -> (out, in)
        elif kind == "conv":
            arr = arr.transpose(2, 1, 0)  # (k, in, out) -> (out, in, k)
        t = torch.from_numpy(np.ascontiguousarray(arr))
        if t.shape != expected[name].shape:
            raise KerasCheckpointError(
                f"array {i} ({name}): shape {tuple(w.shape)} does not match the model "
                f"(expects {tuple(expected[name].shape)} after conversion)"
            )
        state[name] = t
    return state


def load_keras_checkpoint(path: str | Path, **config_overrides: object) -> ProteinBERT:
    """Build a :class:`ProteinBERT` holding the original checkpoint's weights."""
    n_annotations, weights = read_keras_checkpoint(path)
    try:
        cfg = infer_config(n_annotations, weights, **config_overrides)
        state = keras_weights_to_state_dict(weights, cfg)
    except KerasCheckpointError as e:
        raise KerasCheckpointError(f"{path}: {e}") from None
    model = ProteinBERT(cfg)
    model.load_state_dict(state)
    return model
