"""The stand-ins for the generated bindings' buffer helpers: same bytes, faster.

Each test compares a stand-in with the generated function it replaces
(``iroh_speedups.ORIGINALS``), byte for byte, or checks the bytes Rust itself reads.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import struct
import time

import iroh
import pytest
from iroh import iroh_ffi

from gate.services.transport import iroh_speedups
from gate.services.transport.iroh_speedups import ORIGINALS


def rust_buffer_bytes(rbuf: iroh_ffi._UniffiRustBuffer) -> bytes:
    return ctypes.string_at(rbuf.data, rbuf.len) if rbuf.len else b""


def buffer_holding(raw: bytes) -> iroh_ffi._UniffiRustBuffer:
    """A Rust-allocated buffer with exactly `raw` in it, as Rust would hand one over."""
    builder = iroh_ffi._UniffiRustBufferBuilder()
    builder.write(raw)
    return builder.finalize()


def test_the_bridge_applies_them_once_and_idempotently():
    importlib.import_module("gate.services.transport.iroh_trio")
    assert iroh_speedups.applied()
    installed = (
        iroh_ffi._UniffiRustBufferBuilder.write,
        iroh_ffi._UniffiFfiConverterBytes.lower,
        iroh_ffi._UniffiFfiConverterBytes.lift,
        iroh_ffi._UniffiRustCallStatus.default,
    )
    iroh_speedups.apply()
    iroh_speedups.apply()
    assert (
        iroh_ffi._UniffiRustBufferBuilder.write,
        iroh_ffi._UniffiFfiConverterBytes.lower,
        iroh_ffi._UniffiFfiConverterBytes.lift,
        iroh_ffi._UniffiRustCallStatus.default,
    ) == installed
    assert installed[0] is not ORIGINALS["write"]


@pytest.mark.parametrize("size", [0, 1, 65536, 1024 * 1024 + 1])
@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_bytes_round_trip_through_a_rust_buffer(size, kind):
    payload = os.urandom(size)
    rbuf = iroh_ffi._UniffiFfiConverterBytes.lower(kind(payload))
    # i32 length prefix (big-endian), then the bytes: what Rust reads.
    raw = rust_buffer_bytes(rbuf)
    assert raw == size.to_bytes(4, "big") + payload
    assert iroh_ffi._UniffiFfiConverterBytes.lift(rbuf) == payload  # frees rbuf


@pytest.mark.parametrize("size", [0, 1, 300, 65536])
def test_lowered_bytes_match_the_generated_lowering(size):
    payload = os.urandom(size)
    ours = iroh_speedups.lower_bytes(payload)
    theirs = ORIGINALS["lower"](payload)
    assert rust_buffer_bytes(ours) == rust_buffer_bytes(theirs)
    ours.free()
    theirs.free()


@pytest.mark.parametrize("size", [0, 1, 300, 65536])
def test_lifted_bytes_match_the_generated_lifting(size):
    raw = struct.pack(">i", size) + os.urandom(size)
    assert iroh_speedups.lift_bytes(buffer_holding(raw)) == ORIGINALS["lift"](buffer_holding(raw))


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"", "read past end"),
        (b"\x00\x00", "read past end"),
        (struct.pack(">i", -1), "negative"),
        (struct.pack(">i", 5) + b"abc", "read past end"),
        (struct.pack(">i", 1) + b"abc", "junk data left"),
    ],
)
def test_a_malformed_buffer_is_refused_like_the_generated_code_does(raw, error):
    # The generated reader raises InternalError, but RuntimeError for junk left over.
    expected = RuntimeError if error.startswith("junk") else iroh_ffi.InternalError
    with pytest.raises(expected, match=error):
        iroh_speedups.lift_bytes(buffer_holding(raw))
    with pytest.raises(expected, match=error):
        ORIGINALS["lift"](buffer_holding(raw))


@pytest.mark.parametrize("size", [0, 1, 100, 4096])
def test_memmove_write_matches_the_generated_one(size):
    payload = os.urandom(size)
    outputs = []
    for write in (ORIGINALS["write"], iroh_speedups.memmove_write):
        builder = iroh_ffi._UniffiRustBufferBuilder()
        builder.write_u8(7)  # an unaligned start
        write(builder, payload)
        builder.write_u8(9)
        rbuf = builder.finalize()
        outputs.append(rust_buffer_bytes(rbuf))
        rbuf.free()
    assert outputs[0] == outputs[1] == b"\x07" + payload + b"\x09"


def test_a_zeroed_call_status_is_the_generated_default():
    ours, theirs = iroh_speedups.zeroed_call_status(), ORIGINALS["default"]()
    assert bytes(ours) == bytes(theirs)
    assert ours.code == iroh_ffi._UniffiRustCallStatus.CALL_SUCCESS
    assert ours.error_buf.len == 0 and not ours.error_buf.data


def test_errors_from_rust_still_lift_through_the_zeroed_status():
    # A failing call fills the status we pass in; the generated error path reads it.
    with pytest.raises(iroh.IrohError):
        iroh.SecretKey.from_bytes(b"too short")


def test_the_stand_ins_are_faster():
    payload = os.urandom(300)

    def per_call(lower) -> float:
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(300):
                lower(payload).free()
            best = min(best, time.perf_counter() - started)
        return best

    assert per_call(iroh_speedups.lower_bytes) < per_call(ORIGINALS["lower"]) / 1.5
