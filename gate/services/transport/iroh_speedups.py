"""Faster stand-ins for hot helpers of iroh's uniffi-generated Python bindings.

Every byte Gate sends or receives over iroh crosses ``iroh.iroh_ffi`` as a uniffi
``RustBuffer``: a 4-byte big-endian length, then the bytes. The generated helpers that
build and read those buffers are written for generality, not speed, and a peer hop
makes several such calls per request on each node. On a small ``write_all`` they were
a large share of the call's CPU time (the README's Benchmarks has the figures):

* lowering the bytes took a context manager, a 16-byte allocation, a ``reserve`` call
  into Rust, the length written one byte at a time and the payload copied one byte at
  a time (:func:`memmove_write` alone fixed that last part: a Python loop per byte
  capped how fast one stream could carry data);
* each call's status struct was built field by field.

The stand-ins do the same work with one allocation call and ``memmove``/``string_at``;
the buffers Rust sees, and the values Python gets back, are byte for byte the same
(tests compare them with the generated code). :func:`apply` installs all of them; it is
idempotent and runs when :mod:`gate.services.transport.iroh_trio` is imported.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable
from typing import Any

from iroh import iroh_ffi as _ffi

__all__ = [
    "ORIGINALS",
    "applied",
    "apply",
    "lift_bytes",
    "lower_bytes",
    "memmove_write",
    "zeroed_call_status",
]

_CallStatus = _ffi._UniffiRustCallStatus
_alloc = _ffi._UniffiLib.ffi_iroh_ffi_rustbuffer_alloc
_free = _ffi._UniffiLib.ffi_iroh_ffi_rustbuffer_free
_LENGTH = struct.Struct(">i")
_MAX_LENGTH = 2**31 - 1  # uniffi writes the length as an i32

# What apply() replaces, kept for the tests that compare old and new.
ORIGINALS: dict[str, Callable[..., Any]] = {
    "write": _ffi._UniffiRustBufferBuilder.write,
    "lower": _ffi._UniffiFfiConverterBytes.lower,
    "lift": _ffi._UniffiFfiConverterBytes.lift,
    "default": _CallStatus.default,
}


def zeroed_call_status() -> Any:
    """``_UniffiRustCallStatus.default()``: ctypes zero-fills, which is CALL_SUCCESS and an
    empty error buffer, without building the nested buffer struct by hand."""
    return _CallStatus()


def _address(rbuf: Any) -> int:
    address: int = ctypes.cast(rbuf.data, ctypes.c_void_p).value or 0
    return address


def lower_bytes(value: Any) -> Any:
    """bytes-like → a new RustBuffer holding ``len (i32, big-endian) + bytes``."""
    data = value if type(value) is bytes else bytes(value)
    size = len(data)
    if size > _MAX_LENGTH:
        raise ValueError(f"{size} bytes do not fit in one uniffi buffer")
    status = _CallStatus()
    rbuf = _alloc(size + 4, ctypes.byref(status))
    if status.code != _CallStatus.CALL_SUCCESS:
        _ffi._uniffi_check_call_status(None, status)  # type: ignore[no-untyped-call]
    address = _address(rbuf)
    ctypes.memmove(address, _LENGTH.pack(size), 4)
    if size:
        ctypes.memmove(address + 4, data, size)
    rbuf.len = size + 4
    return rbuf


def lift_bytes(rbuf: Any) -> bytes:
    """A RustBuffer from Rust holding ``len + bytes`` → bytes; frees the buffer."""
    try:
        total = rbuf.len
        if total < 4:
            raise _ffi.InternalError("read past end of rust buffer")
        address = _address(rbuf)
        (size,) = _LENGTH.unpack(ctypes.string_at(address, 4))
        if size < 0:
            raise _ffi.InternalError("Unexpected negative byte string length")
        if size + 4 != total:
            # The generated reader's two failure modes: too short, or junk left over.
            if size + 4 > total:
                raise _ffi.InternalError("read past end of rust buffer")
            raise RuntimeError(
                f"junk data left in buffer at end of consume_with_stream {total - size - 4}"
            )
        return ctypes.string_at(address + 4, size)
    finally:
        status = _CallStatus()
        _free(rbuf, ctypes.byref(status))


def memmove_write(self: Any, value: Any) -> None:
    """``_UniffiRustBufferBuilder.write`` as one memmove instead of a per-byte loop."""
    data = value if type(value) is bytes else bytes(value)
    size = len(data)
    with self._reserve(size):
        if size:
            ctypes.memmove(_address(self.rbuf) + self.rbuf.len, data, size)


def apply() -> None:
    """Install every stand-in into the generated module. Idempotent."""
    _ffi._UniffiRustBufferBuilder.write = memmove_write  # type: ignore[method-assign]
    _ffi._UniffiFfiConverterBytes.lower = staticmethod(lower_bytes)  # type: ignore[method-assign]
    _ffi._UniffiFfiConverterBytes.lift = staticmethod(lift_bytes)  # type: ignore[method-assign]
    _CallStatus.default = staticmethod(zeroed_call_status)  # type: ignore[method-assign]


def applied() -> bool:
    """True when every stand-in is in place."""
    return (
        _ffi._UniffiRustBufferBuilder.write is memmove_write
        and _ffi._UniffiFfiConverterBytes.lower is lower_bytes
        and _ffi._UniffiFfiConverterBytes.lift is lift_bytes
        and _CallStatus.default is zeroed_call_status
    )
