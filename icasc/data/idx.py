"""A small, strict reader of IDX files (the MNIST family's format), plain or gzip-compressed.

An IDX file is a 4-byte magic number ``00 00 <dtype> <ndim>``, then ``ndim`` big-endian uint32 sizes, then
the values in row-major order. Only dtype ``0x08`` (unsigned byte) is read: it is what MNIST, Fashion-MNIST
and KMNIST use for both images and labels. Anything else, and any file whose data is shorter or longer than
its header says, is refused with an error that names the file, so a truncated download fails loudly instead
of training on garbage.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

__all__ = ["UBYTE", "read_idx"]

UBYTE = 0x08
"""The IDX dtype code of unsigned bytes, the only one :func:`read_idx` accepts."""


def _read_bytes(path: Path) -> bytes:
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as error:  # BadGzipFile is an OSError
        raise ValueError(
            f"{path} is not a complete gzip file ({error}); delete it and fetch it again"
        ) from error


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """Read an unsigned-byte IDX file (``.gz`` is decompressed) into a uint8 array.

    Args:
        path: The file; a name ending in ``.gz`` is read as gzip.
        ndim: The number of dimensions the caller expects (3 for images ``[N, rows, cols]``, 1 for labels).

    Returns:
        A writable uint8 array of the shape in the file's header.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: The file is not a gzip file although named ``.gz``, its magic number is wrong, its dtype
            is not unsigned byte, it has another number of dimensions than ``ndim``, or its data is shorter
            (truncated) or longer than its header says. The message names the file.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(
            f"{path} is not an IDX file: {len(data)} bytes, too short for the 4-byte magic number"
        )
    zero, dtype, dims = data[:2], data[2], data[3]
    if zero != b"\x00\x00":
        raise ValueError(
            f"{path} is not an IDX file: its magic number {data[:4].hex()} does not start with 0000 "
            "(is it compressed without a .gz suffix?)"
        )
    if dtype != UBYTE:
        raise ValueError(f"{path}: IDX dtype code 0x{dtype:02x}, expected 0x{UBYTE:02x} (unsigned byte)")
    if dims != ndim:
        raise ValueError(f"{path}: IDX file has {dims} dimensions, expected {ndim}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path} is truncated: {len(data)} bytes, shorter than its {header}-byte header")
    shape = tuple(int(v) for v in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected, found = math.prod(shape), len(data) - header
    if found < expected:
        raise ValueError(
            f"{path} is truncated: its header says {'x'.join(map(str, shape))} = {expected} bytes of data, "
            f"the file holds {found}; delete it and fetch it again"
        )
    if found > expected:
        raise ValueError(
            f"{path} is malformed: {found - expected} bytes follow the {expected} bytes of data its header "
            f"({'x'.join(map(str, shape))}) announces"
        )
    # a bytearray makes the array writable, so torch.from_numpy takes it without a copy or a warning
    return np.frombuffer(bytearray(memoryview(data)[header:]), dtype=np.uint8).reshape(shape)
