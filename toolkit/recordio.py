"""MXNet RecordIO, byte-compatible with MXNet 1.x and dmlc-core (MXNet's recordio.py).

Hand-written because no maintained library reads and writes this format outside MXNet itself
(DALI only reads it). Readers use `os.pread` on a descriptor opened lazily in the calling process,
so one reader object can be pickled into DataLoader workers or shared between threads.
"""
import contextlib
import os
import struct
import warnings
from typing import Iterator, List, NamedTuple, Optional, Tuple, Union

import numpy as np

from toolkit.atomic import temp_path
from toolkit.errors import UserError

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
MAX_RECORD = 1 << 29  # a record (or part) must be shorter than 2**29 bytes
_LEN_MASK = MAX_RECORD - 1
_IR_FORMAT = "<IfQQ"
IR_SIZE = struct.calcsize(_IR_FORMAT)  # 24


class RecordIOError(UserError):
    """A malformed, truncated or oversize record file."""


class IRHeader(NamedTuple):
    """Image record header: flag (number of labels, 0 for a scalar), label, id, id2."""
    flag: int
    label: Union[float, np.ndarray]
    id: int
    id2: int


# ---------------------------------------------------------------- image record header

def pack(header, payload: bytes) -> bytes:
    """Pack an IRHeader (or a 4-tuple) and payload as MXNet's `recordio.pack` does."""
    flag, label, id_, id2 = header
    if isinstance(label, (int, float, np.integer, np.floating)):
        return struct.pack(_IR_FORMAT, 0, float(label), id_, id2) + payload
    labels = np.asarray(label, dtype=np.float32).ravel()
    return struct.pack(_IR_FORMAT, labels.size, 0.0, id_, id2) + labels.tobytes() + payload


def unpack(record: bytes) -> Tuple[IRHeader, bytes]:
    """Split a record into its IRHeader and the bytes after the header (and labels)."""
    if len(record) < IR_SIZE:
        raise RecordIOError(f"image record of {len(record)} bytes is shorter than its 24-byte header")
    flag, label, id_, id2 = struct.unpack_from(_IR_FORMAT, record)
    if flag > 0:
        end = IR_SIZE + 4 * flag
        if len(record) < end:
            raise RecordIOError(f"image record claims {flag} labels but holds {len(record)} bytes")
        labels = np.frombuffer(record, dtype=np.float32, count=flag, offset=IR_SIZE).copy()
        return IRHeader(flag, labels, id_, id2), record[end:]
    return IRHeader(flag, label, id_, id2), record[IR_SIZE:]


def unpack_label(record: bytes):
    """Only the label(s) of an image record: a float, or a float32 array when flag > 0."""
    flag, label = struct.unpack_from("<If", record)
    if flag > 0:
        return np.frombuffer(record, dtype=np.float32, count=flag, offset=IR_SIZE).copy()
    return label


def first_label(label) -> float:
    """The class of a record from its label(s) (`IRHeader.label` or `unpack_label`): the label, or the
    FIRST label of a multi-label record (flag > 0, MXNet's im2rec --pack-label). The one label rule of
    both loaders and of every label check."""
    return float(label) if np.isscalar(label) else float(np.asarray(label).reshape(-1)[0])


# ---------------------------------------------------------------- framing

def _ceil4(n: int) -> int:
    return (n + 3) & ~3


def frame(record: bytes) -> bytes:
    """Frame one record as dmlc-core's RecordIOWriter does, splitting at aligned magic words."""
    parts = []
    start = 0
    pos = record.find(MAGIC_BYTES)
    while pos != -1:
        if pos % 4 == 0:  # dmlc-core only looks for the magic at 4-byte aligned offsets
            parts.append(record[start:pos])
            start = pos + 4
            pos = record.find(MAGIC_BYTES, start)
        else:
            pos = record.find(MAGIC_BYTES, pos + 1)
    parts.append(record[start:])
    out = bytearray()
    last = len(parts) - 1
    for i, part in enumerate(parts):
        if len(part) >= MAX_RECORD:
            raise RecordIOError(
                f"record of {len(record)} bytes is too large for RecordIO (limit 2**29 bytes); "
                "store the image smaller (--resize) or re-encode it")
        cflag = 0 if last == 0 else (1 if i == 0 else (3 if i == last else 2))
        out += struct.pack("<II", MAGIC, (cflag << 29) | len(part))
        out += part
        out += b"\0" * (_ceil4(len(part)) - len(part))
    return bytes(out)


class RecordWriter:
    """Sequential .rec writer (MXRecordIO 'w'). Writes to a temp name, renamed on close().

    Use as a context manager: on an exception the temp file is removed and nothing appears
    under the final name.
    """

    def __init__(self, path: str):
        self.path = path
        self._tmp = temp_path(path)
        self._f = open(self._tmp, "wb")
        self.offset = 0

    def write(self, record: bytes) -> int:
        """Append one record; return the byte offset at which it starts."""
        data = frame(record)
        start = self.offset
        self._f.write(data)
        self.offset += len(data)
        return start

    def close(self):
        for tmp, path in self.finish():
            os.replace(tmp, path)

    def finish(self) -> List[Tuple[str, str]]:
        """Complete the file(s) under their temp names, renamed by the caller (with others: a set of
        shards replaces an earlier set at once, toolkit/shards.py): [(temp path, final path)]."""
        if self._f is None:
            return []
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        self._f = None
        return [(self._tmp, self.path)]

    def abort(self):
        if self._f is not None:
            self._f.close()
            self._f = None
            if os.path.exists(self._tmp):
                os.remove(self._tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()


class IndexedRecordWriter(RecordWriter):
    """.rec + .idx writer (MXIndexedRecordIO 'w'); the .idx is written and renamed with the .rec."""

    def __init__(self, idx_path: str, rec_path: str):
        super().__init__(rec_path)
        self.idx_path = idx_path
        self._idx_lines: List[str] = []

    def write_idx(self, key: int, record: bytes) -> int:
        offset = self.write(record)
        self._idx_lines.append(f"{key}\t{offset}\n")
        return offset

    def finish(self) -> List[Tuple[str, str]]:
        if self._f is None:
            return []
        tmp = temp_path(self.idx_path)
        with open(tmp, "w") as f:
            f.writelines(self._idx_lines)
            f.flush()
            os.fsync(f.fileno())
        # the .rec is renamed before its .idx: an .idx never points into a missing .rec
        return super().finish() + [(tmp, self.idx_path)]

    def abort(self):
        if self._f is not None:
            super().abort()
            with contextlib.suppress(FileNotFoundError):
                os.remove(temp_path(self.idx_path))


# ---------------------------------------------------------------- reading

class RecordReader:
    """Random-access and sequential reader of one .rec file, safe across fork and threads."""

    def __init__(self, path: str):
        if not os.path.isfile(path):
            raise RecordIOError(f"{path}: record file not found")
        self.path = path
        self.size = os.path.getsize(path)
        self._fd: Optional[int] = None
        self._pid: Optional[int] = None

    def _handle(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # each process opens its own handle
            self._fd = os.open(self.path, os.O_RDONLY)
            self._pid = os.getpid()
        return self._fd

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fd"] = state["_pid"] = None
        return state

    def close(self):
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _pread(self, n: int, offset: int) -> bytes:
        return os.pread(self._handle(), n, offset)

    def read_at(self, offset: int) -> Tuple[bytes, int]:
        """Read the record starting at `offset`; return (payload, offset of the next record)."""
        chunks = []
        pos = offset
        while True:
            head = self._pread(8, pos)
            if len(head) < 8:
                raise RecordIOError(f"{self.path}: truncated record header at offset {pos} "
                                    f"(file is {self.size} bytes)")
            magic, lrec = struct.unpack("<II", head)
            if magic != MAGIC:
                raise RecordIOError(f"{self.path}: no record magic at offset {pos} "
                                    "(corrupt file, or an .idx that does not match this .rec)")
            cflag, length = lrec >> 29, lrec & _LEN_MASK
            data = self._pread(length, pos + 8) if length else b""
            if len(data) < length:
                raise RecordIOError(f"{self.path}: record at offset {pos} is truncated "
                                    f"({len(data)} of {length} bytes present)")
            if chunks or cflag in (2, 3):
                chunks.append(MAGIC_BYTES)
            chunks.append(data)
            pos += 8 + _ceil4(length)
            if cflag in (0, 3):
                return b"".join(chunks), pos

    def __iter__(self) -> Iterator[Tuple[int, bytes]]:
        """Yield (offset, payload) for every record in file order."""
        pos = 0
        while pos < self.size:
            payload, nxt = self.read_at(pos)
            yield pos, payload
            pos = nxt


def read_index(idx_path: str) -> List[Tuple[int, int]]:
    """Parse an .idx file into [(key, offset), ...] in file order."""
    if not os.path.isfile(idx_path):
        raise RecordIOError(f"{idx_path}: index file not found "
                            "(rebuild it with: tools/im2rec.py --verify --fix-index PREFIX)")
    entries = []
    with open(idx_path) as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise RecordIOError(f"{idx_path}:{lineno}: expected 'key<TAB>offset', got {line!r}")
            try:
                entries.append((int(fields[0]), int(fields[1])))
            except ValueError:
                raise RecordIOError(f"{idx_path}:{lineno}: key and offset must be integers, "
                                    f"got {line.strip()!r}") from None
    return entries


def read_index_arrays(idx_path: str) -> Tuple[np.ndarray, np.ndarray]:
    """(keys, offsets) of an .idx as int64 arrays: numpy's C parser, no Python object per record,
    so memory stays at 16 bytes a record (ImageNet's 1.28M: 20 MB) in every process."""
    if not os.path.isfile(idx_path):
        read_index(idx_path)  # raises the one-line error
    try:
        with warnings.catch_warnings():  # an empty index is valid (an empty .rec)
            warnings.simplefilter("ignore", UserWarning)
            table = np.loadtxt(idx_path, dtype=np.int64, ndmin=2, delimiter=None)
    except ValueError:
        read_index(idx_path)  # names the bad line
        raise
    if table.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if table.shape[1] != 2:
        read_index(idx_path)
    return np.ascontiguousarray(table[:, 0]), np.ascontiguousarray(table[:, 1])


class IndexedRecordReader(RecordReader):
    """A .rec with its .idx (MXIndexedRecordIO 'r'): keys in file order, records by key or position."""

    def __init__(self, idx_path: str, rec_path: str):
        super().__init__(rec_path)
        self.idx_path = idx_path
        self.keys, self.offsets = read_index_arrays(idx_path)
        self._position_of = None
        if len(self.offsets) and int(self.offsets.min()) < 0:
            bad = int(np.argmax(self.offsets < 0))
            raise RecordIOError(f"{idx_path}:{bad + 1}: offset {int(self.offsets[bad])} is negative; "
                                "rebuild it with: tools/im2rec.py --verify --fix-index PREFIX")
        if len(self.offsets) and int(self.offsets.max()) >= self.size:
            bad = int(np.argmax(self.offsets >= self.size))
            raise RecordIOError(f"{idx_path}:{bad + 1}: offset {int(self.offsets[bad])} points past "
                                f"the end of {rec_path} ({self.size} bytes); the .rec is truncated "
                                "or the .idx belongs to another file")

    def __len__(self) -> int:
        return len(self.keys)

    def read(self, i: int) -> bytes:
        """The i-th record in index order. An offset where no record starts: the .idx is stale
        (written for another packing of the .rec), named with its line and how to rebuild it."""
        offset = int(self.offsets[i])
        try:
            return self.read_at(offset)[0]
        except RecordIOError as exc:
            if "no record magic" not in exc.message:
                raise
            raise RecordIOError(f"{self.idx_path}:{i + 1}: offset {offset} is not the start of a record of "
                                f"{self.path}: the .idx does not match the .rec (stale, or from another "
                                "packing); delete the .idx and rebuild it: tools/im2rec.py --verify --fix-index "
                                f"{os.path.splitext(self.path)[0]}") from None

    def read_idx(self, key: int) -> bytes:
        """The record with this key (MXNet's read_idx)."""
        if self._position_of is None:  # built on first use only: readers by position never need it
            self._position_of = {int(k): i for i, k in enumerate(self.keys)}
        return self.read(self._position_of[key])
