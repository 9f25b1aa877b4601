"""A fast, memory-mapped reader of the GGUF container (header, metadata, tensor table, tensor bytes).

Why not gguf.GGUFReader: it builds a numpy view per array element, so opening a file with a 262k-token
vocabulary (Gemma 3) takes 10+ seconds; this reader parses the header with struct in well under a second
and maps the file once. Tests check it against GGUFReader field by field and tensor by tensor.

Format (little-endian): "GGUF", u32 version (2 or 3), u64 tensor count, u64 metadata count, then metadata
(key string, u32 value type, value), then tensor infos (name, u32 n_dims, u64 dims[n_dims] fastest-varying
first, u32 ggml type, u64 offset into the data section), then padding to `general.alignment` (default 32)
and the data section.
"""

from __future__ import annotations

import mmap
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType


class GGUFError(ValueError):
    """A GGUF file ladle cannot use; the message names the file and the reason on one line."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


# Value type id -> (struct format, size) for scalars; 8 = string, 9 = array.
_SCALARS: dict[int, tuple[str, int]] = {
    0: ("<B", 1),
    1: ("<b", 1),
    2: ("<H", 2),
    3: ("<h", 2),
    4: ("<I", 4),
    5: ("<i", 4),
    6: ("<f", 4),
    7: ("<?", 1),
    10: ("<Q", 8),
    11: ("<q", 8),
    12: ("<d", 8),
}
_NUMPY: dict[int, str] = {
    0: "<u1",
    1: "<i1",
    2: "<u2",
    3: "<i2",
    4: "<u4",
    5: "<i4",
    6: "<f4",
    7: "<u1",
    10: "<u8",
    11: "<i8",
    12: "<f8",
}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    name: str
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]  # PyTorch order (slowest-varying first): a matrix is (rows, row_length)
    offset: int  # absolute byte offset in the file
    nbytes: int

    @property
    def row_length(self) -> int:
        return self.shape[-1]


@dataclass
class GGUFFile:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo]
    _map: mmap.mmap = field(repr=False)

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    def tensor_bytes(self, name: str) -> torch.Tensor:
        """The tensor's raw bytes as a read-only uint8 tensor on the mapped file: [rows, row_bytes] for a
        matrix (one GGML row per tensor row), flat otherwise. No copy is made."""
        info = self.tensors[name]
        array = np.frombuffer(self._map, dtype=np.uint8, count=info.nbytes, offset=info.offset)
        if len(info.shape) >= 2:
            array = array.reshape(-1, info.nbytes // int(np.prod(info.shape[:-1])))
        with warnings.catch_warnings():
            # The map is read-only; ladle never writes through these tensors (loaders copy or wrap them).
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(array)

    def close(self) -> None:
        self._map.close()


class _Cursor:
    def __init__(self, path: Path, buf: mmap.mmap) -> None:
        self.path, self.buf, self.pos = path, buf, 0

    def take(self, size: int) -> int:
        start = self.pos
        if size < 0 or start + size > len(self.buf):
            raise GGUFError(
                self.path,
                f"truncated or corrupt header: needs byte {start + size:,} "
                f"but the file has {len(self.buf):,}",
            )
        self.pos += size
        return start

    def scalar(self, vtype: int) -> Any:
        fmt, size = _SCALARS[vtype]
        return struct.unpack_from(fmt, self.buf, self.take(size))[0]

    def u32(self) -> int:
        return self.scalar(4)

    def u64(self) -> int:
        return self.scalar(10)

    def string(self) -> str:
        n = self.u64()
        start = self.take(n)
        return bytes(self.buf[start : start + n]).decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.scalar(vtype)
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, count = self.u32(), self.u64()
            if count > len(self.buf):
                raise GGUFError(self.path, f"corrupt metadata: array of {count:,} elements in a smaller file")
            if etype in _NUMPY:
                size = _SCALARS[etype][1]
                start = self.take(count * size)
                arr = np.frombuffer(self.buf, dtype=_NUMPY[etype], count=count, offset=start)
                return [bool(v) for v in arr] if etype == 7 else arr.tolist()
            return [self.value(etype) for _ in range(count)]
        raise GGUFError(self.path, f"corrupt metadata: unknown value type {vtype} at byte {self.pos - 4:,}")


def read_gguf(path: str | Path) -> GGUFFile:
    """Parses the header and tensor table and maps the file; raises GGUFError for anything malformed."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:  # ValueError: mmap of an empty file
        raise GGUFError(path, f"cannot map the file ({exc})") from exc
    try:
        return _parse(path, buf)
    except GGUFError:
        buf.close()
        raise
    except (struct.error, UnicodeError, OverflowError, MemoryError, ValueError) as exc:
        buf.close()
        raise GGUFError(path, f"corrupt file ({exc})") from exc


def _parse(path: Path, buf: mmap.mmap) -> GGUFFile:
    cur = _Cursor(path, buf)
    if len(buf) < 24 or buf[:4] != b"GGUF":
        raise GGUFError(path, f"not a GGUF file (starts with {bytes(buf[:4])!r}, expected b'GGUF')")
    cur.take(4)
    version = cur.u32()
    if version not in (2, 3):
        hint = " (a big-endian file?)" if version > 0xFFFF else ""
        raise GGUFError(path, f"unsupported GGUF version {version}{hint}; ladle reads versions 2 and 3")
    n_tensors, n_kv = cur.u64(), cur.u64()
    if n_tensors > len(buf) or n_kv > len(buf):
        raise GGUFError(path, f"corrupt header: {n_tensors:,} tensors and {n_kv:,} metadata entries")

    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        metadata[key] = cur.value(cur.u32())

    raw_infos = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.u32()
        if n_dims > 8:
            raise GGUFError(path, f"corrupt tensor info for {name!r}: {n_dims} dimensions")
        dims = [cur.u64() for _ in range(n_dims)]
        raw_infos.append((name, dims, cur.u32(), cur.u64()))

    alignment = int(metadata.get("general.alignment", 32))
    if alignment <= 0 or alignment & (alignment - 1):
        raise GGUFError(path, f"corrupt header: general.alignment = {alignment} is not a power of two")
    data_start = -(-cur.pos // alignment) * alignment

    tensors: dict[str, TensorInfo] = {}
    for name, dims, type_id, offset in raw_infos:
        try:
            qtype = GGMLQuantizationType(type_id)
        except ValueError:
            raise GGUFError(path, f"tensor {name!r} has unknown GGML type id {type_id}") from None
        block, type_size = GGML_QUANT_SIZES[qtype]
        n_elements = int(np.prod(dims)) if dims else 1
        if dims and dims[0] % block:
            raise GGUFError(
                path,
                f"tensor {name!r}: row length {dims[0]} is not a multiple of the "
                f"{qtype.name} block size {block}",
            )
        nbytes = n_elements // block * type_size
        start = data_start + offset
        if start + nbytes > len(buf):
            raise GGUFError(
                path,
                f"truncated: tensor {name!r} needs bytes up to {start + nbytes:,} but the "
                f"file has {len(buf):,}",
            )
        if name in tensors:
            raise GGUFError(path, f"corrupt tensor table: {name!r} appears twice")
        tensors[name] = TensorInfo(name, qtype, tuple(int(d) for d in reversed(dims)), start, nbytes)
    return GGUFFile(path=path, version=version, metadata=metadata, tensors=tensors, _map=buf)
