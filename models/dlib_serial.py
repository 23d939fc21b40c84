"""Reader for dlib's binary serialization primitives (dlib/serialize.h, dlib/cuda/tensor.h).

dlib files are not self-describing: a reader has to know, from the C++ type being loaded,
which primitive comes next. This module only knows the primitives; the network layout is
walked by the caller (models/dlib_resnet.py), which checks every version tag it reads so a
file for a different network fails loudly instead of producing a plausible-looking model.

Encodings, as defined by dlib:
- integers: a control byte (bit 7 = negative, bits 0-3 = number of payload bytes, bits 4-6
  always 0) followed by the magnitude, little-endian;
- floating-point scalars: two such integers, mantissa then exponent, value = m * 2**e, with
  exponents 32000/32001/32002 meaning +inf/-inf/NaN;
- strings: an integer length, then raw bytes; bools: ASCII '1' or '0';
- tensors: version 2, four integers (num_samples, k, nr, nc), then the values as raw
  little-endian IEEE float32, so the bulk of a 22 MB model is read with one numpy view per
  tensor rather than a Python loop per float.
"""
from __future__ import annotations

import builtins  # the reader has a method named int; annotations inside it mean the type
import math

import numpy as np

from models.manifest import ModelError

_FLOAT_INF, _FLOAT_NINF, _FLOAT_NAN = 32000, 32001, 32002
_TENSOR_VERSION = 2
_ALIAS_TENSOR_VERSION = 1


class DlibFormatError(ModelError):
    """The bytes do not follow the dlib layout we expect at this point of the file."""


class DlibReader:
    """Sequential reader over the bytes of one dlib file; positions appear in every error."""

    def __init__(self, data: bytes, name: str = "dlib file"):
        self._data = memoryview(data)
        self._pos = 0
        self._name = name

    @property
    def pos(self) -> int:
        return self._pos

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def fail(self, what: str) -> DlibFormatError:
        return DlibFormatError(f"{self._name}: {what} (at byte {self._pos} of {len(self._data)})")

    def _take(self, n: int) -> memoryview:
        if n > self.remaining:
            raise self.fail(f"file ends early: need {n} more bytes, have {self.remaining}")
        chunk = self._data[self._pos:self._pos + n]
        self._pos += n
        return chunk

    def int(self) -> int:
        control = self._take(1)[0]
        size = control & 0x0F
        if control & 0x70 or not 1 <= size <= 8:
            self._pos -= 1
            raise self.fail(f"bad integer control byte 0x{control:02x}")
        value = int.from_bytes(self._take(size), "little")
        return -value if control & 0x80 else value

    def float(self) -> float:
        mantissa = self.int()
        exponent = self.int()
        if exponent == _FLOAT_INF:
            return math.inf
        if exponent == _FLOAT_NINF:
            return -math.inf
        if exponent == _FLOAT_NAN:
            return math.nan
        return math.ldexp(mantissa, exponent)

    def bool(self) -> bool:
        ch = bytes(self._take(1))
        if ch not in (b"0", b"1"):
            self._pos -= 1
            raise self.fail(f"bad bool byte {ch!r}")
        return ch == b"1"

    def string(self) -> str:
        n = self.int()
        if n < 0:
            raise self.fail(f"negative string length {n}")
        raw = bytes(self._take(n))
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError as e:
            raise self.fail(f"non-ASCII string {raw[:32]!r}") from e

    def expect_int(self, allowed: tuple[builtins.int, ...], what: str) -> builtins.int:
        v = self.int()
        if v not in allowed:
            raise self.fail(f"{what}: version {v}, expected one of {allowed}")
        return v

    def expect_string(self, allowed: tuple[str, ...], what: str) -> str:
        s = self.string()
        if s not in allowed:
            raise self.fail(f"{what}: found {s!r}, expected one of {allowed}")
        return s

    def tensor(self) -> np.ndarray:
        """A dlib resizable_tensor as a float32 array of shape (num_samples, k, nr, nc)."""
        self.expect_int((_TENSOR_VERSION,), "tensor")
        shape = tuple(self.int() for _ in range(4))
        if any(d < 0 for d in shape):
            raise self.fail(f"negative tensor dimension {shape}")
        count = math.prod(shape)
        raw = self._take(4 * count)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def alias_tensor(self) -> tuple[builtins.int, builtins.int, builtins.int, builtins.int]:
        """The shape of a dlib alias_tensor (a view into a layer's parameter tensor)."""
        self.expect_int((_ALIAS_TENSOR_VERSION,), "alias_tensor")
        a, b, c, d = (self.int() for _ in range(4))
        return a, b, c, d
