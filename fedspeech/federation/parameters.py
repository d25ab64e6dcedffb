"""Parameter exchange: only trainable tensors travel, by name, as a Flower ArrayRecord.

Flower's `Array` holds a tensor as `.npy` bytes and `Array.numpy()` parses and copies them. A
round of a large model moves every tensor several times, so both directions here read the
bytes in place (`array_view`) and write each tensor with a single copy (`array_from_numpy`).
"""

from __future__ import annotations

import io
import threading
import warnings

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from fedspeech.models.base import SpeechModel

NUMPY_STYPE = "numpy.ndarray"
#: NumPy parses every `.npy` header with `ast.literal_eval`; on CPython 3.11 threads that build AST
#: objects at the same time can fail with `SystemError: AST constructor recursion depth mismatch`
#: (seen in a client thread of the threaded test federation while others parsed headers; CPython
#: gh-106905 and pytest#10763 describe the symptom). Parsing one header at a time costs microseconds.
_HEADER_LOCK = threading.Lock()


def trainable_state(model: SpeechModel) -> dict[str, torch.Tensor]:
    """The exchanged tensors on the CPU (no copy for a CPU model), in a stable (module) order."""
    names = set(model.trainable_names())
    return {n: p.detach().cpu() for n, p in model.named_parameters() if n in names}


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    out = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(out, header)
    return out.getvalue()


def array_from_numpy(values: np.ndarray) -> Array:
    """An `Array` holding `values` as `.npy` bytes (what `Array(ndarray)` makes, one copy less)."""
    if not values.flags.c_contiguous:
        values = values.copy(order="C")          # (ascontiguousarray would make a 0-d array 1-d)
    data = b"".join((_npy_header(values.dtype, values.shape), memoryview(values).cast("B")))
    return Array(dtype=str(values.dtype), shape=tuple(values.shape), stype=NUMPY_STYPE, data=data)


def _npy_header_size(data: bytes | memoryview) -> int:
    """Bytes of the `.npy` magic, version and header at the start of `data` (format 1.0, 2.0, 3.0)."""
    head = bytes(memoryview(data)[:12])
    if head[:6] != b"\x93NUMPY":
        raise ValueError("not .npy data (no NUMPY magic)")
    if head[6] == 1:
        return 10 + int.from_bytes(head[8:10], "little")
    return 12 + int.from_bytes(head[8:12], "little")


def array_view(array: Array) -> np.ndarray:
    """A read-only NumPy view of an `Array`'s data, `bytes` or a buffer (what arrives through Ray,
    `ray_transport`): only the header is parsed and copied, never the tensor."""
    if array.stype != NUMPY_STYPE:
        raise TypeError(f"unsupported array serialisation {array.stype!r}")
    header_size = _npy_header_size(array.data)
    stream = io.BytesIO(bytes(memoryview(array.data)[:header_size]))
    version = np.lib.format.read_magic(stream)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    with _HEADER_LOCK:
        shape, fortran, dtype = read_header(stream)
    if fortran:
        raise ValueError("Fortran-ordered arrays are not exchanged")
    return np.frombuffer(array.data, dtype=dtype, count=int(np.prod(shape)),
                         offset=header_size).reshape(shape)


def readonly_tensor(values: np.ndarray) -> torch.Tensor:
    """A torch view of a (possibly read-only) NumPy array, to read from: never write to it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return torch.from_numpy(values)


def tensor_view(array: Array) -> torch.Tensor:
    """A torch view of an `Array`'s bytes, to copy from (the bytes are immutable: never write)."""
    return readonly_tensor(array_view(array))


def to_record(model: SpeechModel) -> ArrayRecord:
    """The model's exchanged tensors as an ArrayRecord (one copy per tensor)."""
    return ArrayRecord({n: array_from_numpy(t.numpy()) for n, t in trainable_state(model).items()})


def record_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Read-only views of every tensor of a record, by name."""
    return {name: array_view(arr) for name, arr in record.items()}


def numpy_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """An ArrayRecord from NumPy arrays."""
    return ArrayRecord({k: array_from_numpy(v) for k, v in arrays.items()})


def load_record(model: SpeechModel, record: ArrayRecord) -> None:
    """Copy received tensors into the model; names must be exactly the exchanged set."""
    expected = set(model.trainable_names())
    received = set(record.keys())
    if received != expected:
        missing, extra = sorted(expected - received)[:5], sorted(received - expected)[:5]
        raise KeyError(f"parameter names differ from the model's trainable set: "
                       f"missing {missing}, unexpected {extra}")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, arr in record.items():
            params[name].copy_(tensor_view(arr))


def record_nbytes(record: ArrayRecord) -> int:
    """Bytes of a record's arrays as they travel (tensor data + one .npy header per tensor)."""
    return sum(memoryview(arr.data).nbytes for arr in record.values())
