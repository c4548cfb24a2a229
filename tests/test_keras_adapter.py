"""The Keras checkpoint adapter, without TensorFlow: a pbp model is written out in the original's layout
(pickle of (n_annotations, get_weights() list, optimizer_weights)) and must come back identical.
The check against the real Keras model lives in tests/parity (make parity)."""

import pickle

import numpy as np
import pytest
import torch

from pbp.cli.main import main
from pbp.model import ModelConfig, ProteinBERT
from pbp.model.keras_adapter import (
    _BLOCK_LAYOUT,
    KerasCheckpointError,
    load_keras_checkpoint,
    read_keras_checkpoint,
)
from pbp.model.tokenizer import encode, pad


def to_keras_weights(model: ProteinBERT) -> list[np.ndarray]:
    """The inverse of the adapter: pbp state dict -> Keras get_weights() order and layouts."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}

    def conv(name, kind):
        a = sd[name]
        if kind == "dense":
            return a.T.copy()
        return a.transpose(2, 1, 0).copy() if kind == "conv" else a

    out = [conv("global_input.weight", "dense"), sd["global_input.bias"], sd["embedding.weight"]]
    for b in range(model.config.n_blocks):
        out += [conv(f"blocks.{b}.{suffix}", kind) for suffix, kind in _BLOCK_LAYOUT]
    out += [
        conv("token_head.weight", "dense"),
        sd["token_head.bias"],
        conv("annotation_head.weight", "dense"),
        sd["annotation_head.bias"],
    ]
    return out


def _write(path, n_ann, weights):
    with path.open("wb") as f:
        pickle.dump((n_ann, weights, []), f)
    return path


@pytest.fixture
def source(tiny_cfg):
    model = ProteinBERT(ModelConfig(**{**tiny_cfg.to_dict(), "padding_mask": False})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def test_paper_model_has_145_keras_arrays():
    assert len(to_keras_weights(ProteinBERT(ModelConfig()))) == 145


def test_roundtrip_through_the_original_layout(tmp_path, source):
    ckpt = _write(tmp_path / "ckpt.pkl", source.config.n_annotations, to_keras_weights(source))
    with pytest.warns(UserWarning, match="pickle files can run arbitrary code"):
        loaded = load_keras_checkpoint(ckpt, padding_mask=False).eval()
    assert loaded.config == source.config
    tokens = pad([encode("MKTAYIAKQR"), encode("MKV")], 12)
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens).token_logits, source(tokens).token_logits, atol=0, rtol=0)


def test_cli_import_writes_safetensors_and_json(tmp_path, source, capsys):
    ckpt = _write(tmp_path / "ckpt.pkl", source.config.n_annotations, to_keras_weights(source))
    assert main(["model", "import-keras", str(ckpt), "--out", str(tmp_path / "out"), "--no-padding-mask"]) == 0
    assert "pickle files can run arbitrary code" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors"]
    model = ProteinBERT.from_pretrained(tmp_path / "out")
    assert model.config.padding_mask is False
    # Refuses to write into a non-empty directory, leaving it as it was.
    before = (tmp_path / "out" / "model.safetensors").read_bytes()
    assert main(["model", "import-keras", str(ckpt), "--out", str(tmp_path / "out")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == before


def test_wrong_array_count_is_named(tmp_path, source):
    weights = to_keras_weights(source)[:-1]
    ckpt = _write(tmp_path / "short.pkl", source.config.n_annotations, weights)
    with pytest.warns(UserWarning), pytest.raises(KerasCheckpointError, match=r"short.pkl: .*weight arrays"):
        load_keras_checkpoint(ckpt)


def test_wrong_shape_names_the_array(tmp_path, source):
    weights = to_keras_weights(source)
    weights[3 + 8] = weights[3 + 8][:, :-1]  # block 1's seq-dense kernel
    ckpt = _write(tmp_path / "bad.pkl", source.config.n_annotations, weights)
    with (
        pytest.warns(UserWarning),
        pytest.raises(KerasCheckpointError, match=r"array 11 \(blocks.0.local_dense.weight\)"),
    ):
        load_keras_checkpoint(ckpt)


def test_not_a_checkpoint(tmp_path):
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"not a pickle")
    with pytest.warns(UserWarning), pytest.raises(KerasCheckpointError, match="junk.pkl: cannot be unpickled"):
        read_keras_checkpoint(junk)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        read_keras_checkpoint(tmp_path / "missing.pkl")
    other = tmp_path / "other.pkl"
    other.write_bytes(pickle.dumps({"a": 1}))
    with pytest.warns(UserWarning), pytest.raises(KerasCheckpointError, match="expected a pickled"):
        read_keras_checkpoint(other)
