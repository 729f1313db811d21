"""Reader of MXNet's `.params` files (the NDArray list format of `mx.nd.save`, `save_checkpoint`,
Gluon's `export` and `save_parameters`).

Hand-written: no maintained library reads this format outside MXNet itself (MXNet is retired and
its wheels need numpy < 1.24). Layout, little-endian, as `src/ndarray/ndarray.cc` writes and reads it:

    uint64 0x112 (list magic), uint64 reserved, uint64 count, then `count` arrays, then
    uint64 count of names, each name a uint64 length and its bytes (no names: `mx.nd.save(list)`).

One array, by the magic its first uint32 holds:
    0xF993FACA (V3, numpy shape semantics), 0xF993FAC9 (V2, MXNet >= 0.11): int32 storage type
        (0 dense; sparse arrays are refused), shape, then as V1;
    0xF993FAC8 (V1): shape (uint32 ndim, int64 dims), int32 dev_type, int32 dev_id, int32 dtype flag,
        raw data;
    anything else (before the magic existed): that uint32 is ndim, uint32 dims, then as V1.
An array whose shape is unknown (ndim 0 outside V3, -1 in V3) carries nothing more and is empty.
"""
import struct
from typing import Dict, List, Tuple

import numpy as np

from toolkit.errors import UserError

LIST_MAGIC = 0x112
V1, V2, V3 = 0xF993FAC8, 0xF993FAC9, 0xF993FACA
# MXNet's mshadow type flags
DTYPES = {0: np.float32, 1: np.float64, 2: np.float16, 3: np.uint8, 4: np.int32, 5: np.int8,
          6: np.int64, 7: np.bool_, 8: np.int16, 9: np.uint16, 10: np.uint32, 11: np.uint64}
DTYPE_NAMES = {12: "bfloat16"}


class _Stream:
    def __init__(self, data: bytes, path: str):
        self.data, self.pos, self.path = data, 0, path

    def take(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.data, self.skip(struct.calcsize(fmt)))
        return values if len(values) > 1 else values[0]

    def skip(self, size: int) -> int:
        """Step over `size` bytes; returns where they start."""
        if self.pos + size > len(self.data):
            raise UserError(f"{self.path}: not an MXNet .params file (ends early at byte {self.pos}); "
                            "pass the PREFIX-NNNN.params that mx.model.save_checkpoint or net.export wrote")
        self.pos += size
        return self.pos - size

    def raw(self, size: int) -> bytes:
        start = self.skip(size)
        return self.data[start:start + size]


def _shape(s: _Stream, legacy_ndim=None, signed=False) -> Tuple[int, ...]:
    if legacy_ndim is not None:  # before the magic: uint32 ndim (already read), uint32 dims
        return tuple(s.take(f"{legacy_ndim}I")) if legacy_ndim > 1 else \
            ((s.take("I"),) if legacy_ndim == 1 else ())
    ndim = s.take("i" if signed else "I")
    if ndim <= 0:
        return (-1,) if ndim < 0 else ()
    dims = s.take(f"{ndim}q")
    return tuple(dims) if ndim > 1 else (dims,)


def _array(s: _Stream, index: int) -> np.ndarray:
    magic = s.take("I")
    if magic in (V2, V3):
        stype = s.take("i")
        if stype not in (0, -1):
            raise UserError(f"{s.path}: array {index} is sparse (storage type {stype}); convert it to "
                            "dense in MXNet (arr.tostype('default')) and save again")
        shape = _shape(s, signed=magic == V3)
        if shape == (-1,) or (magic == V2 and shape == ()):
            return np.zeros((0,), np.float32)  # unknown shape: MXNet stores and reads nothing more
    elif magic == V1:
        shape = _shape(s)
        if shape == ():
            return np.zeros((0,), np.float32)
    else:
        shape = _shape(s, legacy_ndim=magic)
        if shape == ():
            return np.zeros((0,), np.float32)
    _dev_type, _dev_id, flag = s.take("iii")
    if flag not in DTYPES:
        raise UserError(f"{s.path}: array {index} has dtype {DTYPE_NAMES.get(flag, f'flag {flag}')}, "
                        "which this reader does not take; cast it to float32 in MXNet and save again")
    dtype = np.dtype(DTYPES[flag])
    count = int(np.prod(shape, dtype=np.int64))
    start = s.skip(count * dtype.itemsize)
    return np.frombuffer(s.data, dtype=dtype, count=count, offset=start).reshape(shape).copy()


def read_params(path: str) -> Dict[str, np.ndarray]:
    """name -> array, keys as stored (`arg:`/`aux:` prefixes kept; unnamed lists get '0', '1', ...)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise UserError(f"{path}: cannot read the .params file ({exc.strerror})") from None
    s = _Stream(data, path)
    if len(data) < 24 or s.take("Q") != LIST_MAGIC:
        raise UserError(f"{path}: not an MXNet .params file (no NDArray list magic 0x112 at its start); "
                        "pass the PREFIX-NNNN.params that mx.model.save_checkpoint or net.export wrote")
    s.take("Q")  # reserved
    count = s.take("Q")
    if count > len(data):
        raise UserError(f"{path}: not an MXNet .params file (claims {count} arrays)")
    arrays = [_array(s, i) for i in range(count)]
    names = _names(s, count)
    return dict(zip(names, arrays))


def _names(s: _Stream, count: int) -> List[str]:
    n = s.take("Q")
    if n == 0:
        return [str(i) for i in range(count)]
    if n != count:
        raise UserError(f"{s.path}: {count} arrays but {n} names; the file is damaged")
    names = []
    for _ in range(n):
        length = s.take("Q")
        names.append(s.raw(length).decode("utf-8", errors="replace"))
    return names


def split_arg_aux(params: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """One namespace: Module's `arg:NAME`/`aux:NAME` and Gluon export's plain NAME both become NAME."""
    out = {}
    for key, value in params.items():
        name = key.split(":", 1)[1] if key.startswith(("arg:", "aux:")) else key
        out[name] = value
    return out
