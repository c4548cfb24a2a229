"""The Keras checkpoint adapter, without TensorFlow: a pbp model is written out in the original's layout
(pickle of (n_annotations, get_weights() list, optimizer_weights)) and must come back identical.
The check against the real Keras model lives in tests/parity (make parity)."""

import builtins
import os
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


def _write(path, n_ann, weights, protocol=pickle.DEFAULT_PROTOCOL):
    with path.open("wb") as f:
        pickle.dump((n_ann, weights, []), f, protocol=protocol)
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


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_roundtrip_through_the_original_layout(tmp_path, source, protocol):
    ckpt = _write(tmp_path / "ckpt.pkl", source.config.n_annotations, to_keras_weights(source), protocol)
    loaded = load_keras_checkpoint(ckpt, padding_mask=False).eval()
    assert loaded.config == source.config
    tokens = pad([encode("MKTAYIAKQR"), encode("MKV")], 12)
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens).token_logits, source(tokens).token_logits, atol=0, rtol=0)


def test_cli_import_writes_safetensors_and_json(tmp_path, source, capsys):
    ckpt = _write(tmp_path / "ckpt.pkl", source.config.n_annotations, to_keras_weights(source))
    assert main(["model", "import-keras", str(ckpt), "--out", str(tmp_path / "out"), "--no-padding-mask"]) == 0
    assert "imported" in capsys.readouterr().out
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
    with pytest.raises(KerasCheckpointError, match=r"short.pkl: .*weight arrays"):
        load_keras_checkpoint(ckpt)


def test_wrong_shape_names_the_array(tmp_path, source):
    weights = to_keras_weights(source)
    weights[3 + 8] = weights[3 + 8][:, :-1]  # block 1's seq-dense kernel
    ckpt = _write(tmp_path / "bad.pkl", source.config.n_annotations, weights)
    with pytest.raises(KerasCheckpointError, match=r"array 11 \(blocks.0.local_dense.weight\)"):
        load_keras_checkpoint(ckpt)


def test_not_a_checkpoint(tmp_path):
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"not a pickle")
    with pytest.raises(KerasCheckpointError, match="junk.pkl: cannot be unpickled"):
        read_keras_checkpoint(junk)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        read_keras_checkpoint(tmp_path / "missing.pkl")
    other = tmp_path / "other.pkl"
    other.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(KerasCheckpointError, match="expected a pickled"):
        read_keras_checkpoint(other)


class _Call:
    """Pickles as a call of ``fn(*args)``: what a crafted checkpoint would run on a plain ``pickle.load``."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_pickle_that_runs_a_command_is_refused_before_it_runs(tmp_path, protocol):
    pwned = tmp_path / "pwned"
    ckpt = tmp_path / "evil.pkl"
    ckpt.write_bytes(pickle.dumps((3, [_Call(os.system, f"touch {pwned}")], []), protocol=protocol))
    with pytest.raises(KerasCheckpointError, match=r"evil.pkl: refused .*(posix|os)\.system") as e:
        read_keras_checkpoint(ckpt)
    assert not pwned.exists()
    # The CLI prints the refusal in one line and writes nothing.
    assert main(["model", "import-keras", str(ckpt), "--out", str(tmp_path / "out")]) == 2
    assert not pwned.exists() and not (tmp_path / "out").exists()
    assert "refused" in str(e.value)


@pytest.mark.parametrize(
    "payload",
    [
        _Call(builtins.eval, "__import__('os').getpid()"),
        _Call(builtins.exec, "import os"),
        _Call(builtins.__import__, "os"),
        _Call(np.load, "x.npy"),  # numpy, but not an array constructor
    ],
    ids=["eval", "exec", "import", "np.load"],
)
def test_other_globals_are_refused_naming_them(tmp_path, payload):
    ckpt = tmp_path / "bad.pkl"
    ckpt.write_bytes(pickle.dumps((3, [payload], [])))
    name = f"{payload.fn.__module__}.{payload.fn.__name__}"
    with pytest.raises(KerasCheckpointError, match=rf"bad.pkl: refused .*{name}"):
        read_keras_checkpoint(ckpt)


def test_protocol_2_bytes_helper_allows_only_latin1(tmp_path):
    import codecs

    ckpt = tmp_path / "codec.pkl"
    ckpt.write_bytes(pickle.dumps((3, [_Call(codecs.encode, "eJzLSM3JyQcABiwCFQ==", "base64")], []), protocol=2))
    with pytest.raises(KerasCheckpointError, match="codec.pkl: cannot be unpickled.*latin1"):
        read_keras_checkpoint(ckpt)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_arrays_of_every_layout_load(tmp_path, protocol):
    arrays = [
        np.arange(6, dtype=np.float32).reshape(2, 3),
        np.arange(12, dtype=np.float64).reshape(3, 4).T,  # not contiguous
        np.zeros((0, 4), np.float32),
        np.array(1.5, np.float32),
    ]
    ckpt = tmp_path / "arrays.pkl"
    ckpt.write_bytes(pickle.dumps((np.int64(2), arrays, [np.float32(0.5)]), protocol=protocol))
    n, loaded = read_keras_checkpoint(ckpt)
    assert n == 2 and len(loaded) == len(arrays)
    for a, b in zip(arrays, loaded, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
