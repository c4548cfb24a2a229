"""Reading a pickle of numpy arrays (the original ProteinBERT's checkpoints) without letting it run code or build an
array that numpy would trust blindly.

A plain ``pickle.load`` calls whatever the file names. Allowing only numpy's own constructors is not enough either:
``numpy.ndarray(shape, dtype('O'), buffer)`` builds an object array whose element pointers are bytes from the file
(reading it crashes the process or worse), and a dtype's pickled state can set flags numpy then relies on. So numpy
never sees the file's arguments here: the pickle's ``numpy.dtype``, ``_reconstruct``, ``scalar`` and ``_frombuffer``
build stand-ins that check what they are given (a plain bool, integer or float dtype; a shape of non-negative
integers; raw bytes of exactly the size the shape needs), and the arrays are made afterwards from the checked pieces
with ``np.frombuffer(...).copy()``. Any other global is refused before it can be called.

    obj = load_arrays(f)        # containers (tuple, list, dict) of numpy arrays and scalars; RefusedPickle otherwise
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable
from typing import IO, Any, ClassVar

import numpy as np

PLAIN_KINDS = "biuf"
"""dtype kinds an array may have: bool, signed and unsigned integers, floats (what model weights are)."""


class RefusedPickle(pickle.UnpicklingError):
    """The file names a global, a dtype or an array layout that is not a plain numpy array's."""


class _Dtype:
    """The pickle's ``numpy.dtype(code, align, copy)`` and its state (the byte order), checked."""

    def __init__(self, code: object, align: object = False, copy: object = False) -> None:
        try:
            dtype = np.dtype(code) if isinstance(code, str) else None
        except TypeError:
            dtype = None
        if dtype is None or dtype.kind not in PLAIN_KINDS or dtype.fields is not None or dtype.subdtype is not None:
            raise RefusedPickle(f"dtype {code!r}")
        self.dtype = dtype

    def __setstate__(self, state: object) -> None:
        if not (isinstance(state, tuple) and len(state) >= 5 and state[1] in ("<", ">", "|", "=")):
            raise RefusedPickle(f"dtype state {state!r}")
        if any(part is not None for part in state[2:5]):  # subarray, names, fields: not a plain dtype
            raise RefusedPickle("a structured or subarray dtype")
        if state[1] in "<>":
            self.dtype = self.dtype.newbyteorder(state[1])


class _NdarrayClass:
    """What the pickle's ``numpy.ndarray`` stands for: only ``_reconstruct``'s first argument, never called."""

    def __call__(self, *args: object) -> Any:
        raise RefusedPickle("a direct numpy.ndarray(...) call (it would build an array over raw bytes unchecked)")


_NDARRAY = _NdarrayClass()


def _array(shape: object, dtype: object, raw: object, fortran: object = False) -> np.ndarray:
    """A writable array from checked pieces (a copy: never a view of the file's bytes)."""
    if type(dtype) is not _Dtype:
        raise RefusedPickle(f"an array whose dtype is a {type(dtype).__name__}")
    real = dtype.dtype
    if not isinstance(real, np.dtype) or real.kind not in PLAIN_KINDS or real.hasobject:  # belt and braces
        raise RefusedPickle(f"dtype {real!r}")
    if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)):
        raise RefusedPickle(f"array shape {shape!r}")
    if isinstance(raw, pickle.PickleBuffer):
        raw = raw.raw()
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise RefusedPickle(f"array data of type {type(raw).__name__} (expected raw bytes)")
    count, size = math.prod(shape), memoryview(raw).nbytes
    if size != count * dtype.dtype.itemsize:
        raise RefusedPickle(f"array of shape {shape} and dtype {dtype.dtype} with {size} bytes of data")
    flat = np.frombuffer(raw, dtype=dtype.dtype, count=count)
    return flat.reshape(shape, order="F" if fortran else "C").copy(order="K")


class _Array:
    """The pickle's ``_reconstruct(ndarray, (0,), b'b')``; its state ``(version, shape, dtype, fortran, raw)`` makes
    the array."""

    array: np.ndarray | None = None

    def __setstate__(self, state: object) -> None:
        if not (isinstance(state, tuple) and len(state) == 5):
            raise RefusedPickle(f"array state of {len(state) if isinstance(state, tuple) else type(state).__name__}")
        _version, shape, dtype, fortran, raw = state
        self.array = _array(shape, dtype, raw, bool(fortran))


def _reconstruct(cls: object, shape: object = (0,), code: object = b"b") -> _Array:
    if cls is not _NDARRAY:
        raise RefusedPickle(f"_reconstruct of {type(cls).__name__} (only numpy.ndarray)")
    return _Array()


def _scalar(dtype: object, raw: object = b"") -> Any:
    """``numpy.generic``: the one item of a 0-d array."""
    return _array((), dtype, raw)[()]


def _frombuffer(buffer: object, dtype: object, shape: object, order: object = "C") -> np.ndarray:
    """Protocol 5's reduction of a contiguous array."""
    return _array(shape, dtype, buffer, order == "F")


def _latin1_bytes(text: object, encoding: object = "") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes (numpy's raw data), and nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise RefusedPickle(f"_codecs.encode is allowed only for latin1 text, got {encoding!r}")
    return text.encode("latin1")


def _empty_bytes(*args: object) -> bytes:
    """``bytes()`` as protocol-2 pickles use it for empty bytes (an empty array's data), and nothing else."""
    if args:
        raise RefusedPickle("bytes() is allowed only without arguments")
    return b""


def _globals() -> dict[tuple[str, str], Callable[..., Any] | _NdarrayClass]:
    """The globals numpy's own pickles name (numpy 1.x ``numpy.core.*``, 2.x ``numpy._core.*``) -> the stand-ins."""
    allowed: dict[tuple[str, str], Callable[..., Any] | _NdarrayClass] = {
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _Dtype,
        ("_codecs", "encode"): _latin1_bytes,
        ("__builtin__", "bytes"): _empty_bytes,  # protocol 2 names Python 3's builtins by their Python 2 module
        ("builtins", "bytes"): _empty_bytes,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = _reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = _scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = _frombuffer
    return allowed


_PythonUnpickler: Any = pickle._Unpickler  # type: ignore[attr-defined]


class _ArraysOnlyUnpickler(_PythonUnpickler):  # the Python one: its BUILD opcode can be checked, the C one's not
    """Only the globals of :func:`_globals`; BUILD (set an object's state) only on an array or dtype stand-in, whose
    ``__setstate__`` checks it: on anything else (a stand-in function, the ``numpy.ndarray`` marker) it would
    overwrite attributes, ``__class__`` included, and so forge a stand-in the checks trust."""

    _allowed = _globals()
    dispatch: ClassVar[dict[int, Callable[..., None]]] = dict(_PythonUnpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        found = self._allowed.get((module, name))
        if found is None:
            raise RefusedPickle(f"{module}.{name}")
        return found

    def load_build(self) -> None:
        target = self.stack[-2]
        if type(target) not in (_Array, _Dtype):
            raise RefusedPickle(f"setting the state of a {type(target).__name__}")
        _PythonUnpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = load_build


def _real(obj: object) -> object:
    """The loaded object with the stand-ins replaced by the arrays and dtypes they checked."""
    if isinstance(obj, _Array):
        if obj.array is None:
            raise RefusedPickle("an array without its state")
        return obj.array
    if isinstance(obj, _Dtype):
        return obj.dtype
    if isinstance(obj, _NdarrayClass):
        raise RefusedPickle("numpy.ndarray outside an array")
    if isinstance(obj, list | tuple):
        return type(obj)(_real(x) for x in obj)
    if isinstance(obj, dict):
        return {k: _real(v) for k, v in obj.items()}
    return obj


def load_arrays(f: IO[bytes]) -> object:
    """Unpickle ``f``, allowing only plain containers of numpy arrays and scalars (module docstring); a
    :class:`RefusedPickle` (message: what was refused) for anything else."""
    return _real(_ArraysOnlyUnpickler(f).load())
