"""The Keras checkpoint adapter, without TensorFlow: a pbp model is written out in the original's layout
(pickle of (n_annotations, get_weights() list, optimizer_weights)) and must come back identical.
The check against the real Keras model lives in tests/parity (make parity)."""

import builtins
import os
import pickle
import subprocess
import sys

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
    with pytest.raises(
        KerasCheckpointError, match="codec.pkl: refused to unpickle: _codecs.encode is allowed only for latin1"
    ):
        read_keras_checkpoint(ckpt)


class _Raw:
    """Pickles as ``numpy.ndarray(shape, dtype, buffer)``: an array over bytes of the file."""

    def __init__(self, dtype: str):
        self.dtype = dtype

    def __reduce__(self):
        return np.ndarray, ((4,), np.dtype(self.dtype), b"\x41" * 32)


def test_arrays_numpy_would_trust_blindly_are_refused_before_any_is_built(tmp_path):
    # An object array over the file's bytes (its "pointers" 0x4141...): reading it crashed the process (a segfault).
    code = (
        "import pickle, sys, numpy as np; sys.path.insert(0, 'tests'); from test_keras_adapter import _Raw; "
        f"open({str(tmp_path / 'obj.pkl')!r}, 'wb').write(pickle.dumps((3, [_Raw('O')], []), protocol=2)); "
        "from pbp.cli.main import main; "
        f"sys.exit(main(['model', 'import-keras', {str(tmp_path / 'obj.pkl')!r}, '--out', {str(tmp_path / 'o')!r}]))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr  # not -11 (SIGSEGV)
    assert "obj.pkl: refused to unpickle: dtype 'O8'" in res.stderr, res.stderr
    cases = {
        "direct": (_Raw("f4"), r"a direct numpy.ndarray\(\.\.\.\) call"),  # even with a plain dtype
        "object": (np.array([None, 1], dtype=object), r"dtype 'O8'"),  # numpy's own pickle of an object array
        "structured": (np.zeros(2, dtype=[("a", "f4")]), r"dtype 'V4'"),
        "unicode": (np.array(["ab"]), r"dtype 'U2'"),
    }
    for name, (payload, refusal) in cases.items():
        ckpt = tmp_path / f"{name}.pkl"
        ckpt.write_bytes(pickle.dumps((3, [payload], []), protocol=2))
        with pytest.raises(KerasCheckpointError, match=rf"{name}\.pkl: refused to unpickle: {refusal}"):
            read_keras_checkpoint(ckpt)


def test_a_pickle_cannot_rewrite_the_stand_ins_that_check_it(tmp_path):
    """Pickle's BUILD sets any object's attributes (``__class__`` included): a file gave the ``scalar`` stand-in a
    dtype 'O', turned the ``numpy.ndarray`` marker into a dtype stand-in pointing at it, and passed that to
    ``_frombuffer`` (numpy 1.x would then build an object array over the file's bytes). BUILD now reaches only the
    array and dtype stand-ins' own checks."""
    import pickle as p

    from pbp.model import array_pickle

    def glob(module: str, name: str) -> bytes:
        return p.GLOBAL + f"{module}\n{name}\n".encode()

    def text(x: str) -> bytes:
        return p.SHORT_BINUNICODE + bytes([len(x)]) + x.encode()

    data = p.PROTO + b"\x02" + glob("numpy.core.multiarray", "scalar") + p.BINPUT + b"\x01"
    data += p.EMPTY_DICT + p.MARK + text("dtype") + text("O") + text("itemsize") + p.BININT1 + b"\x08"
    data += p.SETITEMS + p.BUILD + p.POP
    data += glob("numpy", "ndarray") + p.BINPUT + b"\x02" + p.EMPTY_DICT + text("dtype") + p.BINGET + b"\x01"
    data += p.SETITEM + p.EMPTY_DICT + text("__class__") + glob("numpy", "dtype") + p.SETITEM + p.TUPLE2 + p.BUILD
    data += p.POP + glob("numpy.core.numeric", "_frombuffer") + p.MARK + p.SHORT_BINBYTES + b"\x08" + b"A" * 8
    data += p.BINGET + b"\x02" + p.EMPTY_TUPLE + p.TUPLE + p.REDUCE + p.STOP
    ckpt = tmp_path / "forged.pkl"
    ckpt.write_bytes(data)
    with pytest.raises(
        KerasCheckpointError, match=r"forged\.pkl: refused to unpickle: setting the state of a function"
    ):
        read_keras_checkpoint(ckpt)
    assert type(array_pickle._NDARRAY).__name__ == "_NdarrayClass" and not vars(array_pickle._scalar)


def test_an_array_whose_data_does_not_fill_its_shape_is_refused(tmp_path):
    data = pickle.dumps((3, [np.zeros((2, 3), np.float32)], []), protocol=3)  # no frames: bytes can be cut
    raw = np.zeros((2, 3), np.float32).tobytes()
    assert data.count(raw) == 1
    ckpt = tmp_path / "short.pkl"  # the shape says 24 bytes, the data has 20: numpy would read past them
    ckpt.write_bytes(data.replace(bytes([len(raw)]) + raw, bytes([len(raw) - 4]) + raw[:-4]))
    with pytest.raises(
        KerasCheckpointError, match=r"short\.pkl: refused .*shape \(2, 3\) and dtype float32 with 20 bytes"
    ):
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
