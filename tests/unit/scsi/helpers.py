"""CDB builders and a one-command runner for the SCSI unit tests."""

from __future__ import annotations

import struct

from appliance.scsi import ScsiCommand, ScsiDisk, ScsiResult

STALE = 0xA5   # what Data-In buffers hold before a command: must never reach the host


def views(data: bytes, split: int | None = None) -> list[memoryview]:
    """`data` as writable buffers of `split` bytes each (the ring's iovecs)."""
    if split is None:
        return [memoryview(bytearray(data))]
    return [memoryview(bytearray(data[i:i + split])) for i in range(0, len(data), split)]


def run(disk: ScsiDisk, cdb: bytes, *, out: bytes | None = None, in_len: int = 0,
        split: int | None = None) -> tuple[ScsiResult, bytes]:
    """Execute one command; returns the result and the Data-In bytes the kernel would send
    (the whole buffer, cut at read_len when set)."""
    bufs = views(out, split) if out is not None else views(bytes([STALE]) * in_len, split)
    (result,) = disk.execute([ScsiCommand(cdb, bufs)])
    data = b"".join(bytes(b) for b in bufs)
    if out is None and result.read_len is not None:
        assert result.read_len <= len(data)
        # The tail past read_len must not keep stale bytes either (zero-filled).
        assert STALE not in data[result.read_len:] or not data[result.read_len:]
        data = data[:result.read_len]
    return result, data


def sense_triplet(result: ScsiResult) -> tuple[int, int, int]:
    assert result.status == 0x02, f"expected CHECK CONDITION, got {result}"
    s = result.sense
    assert len(s) == 18 and s[0] & 0x7F == 0x70 and s[7] == 10
    return s[2] & 0x0F, s[12], s[13]


def field_pointer(result: ScsiResult) -> tuple[bool, int, int | None]:
    """(C/D, byte, bit) of the sense-key specific field pointer."""
    s = result.sense
    assert s[15] & 0x80, f"SKSV not set in {s.hex()}"
    bit = s[15] & 0x07 if s[15] & 0x08 else None
    return bool(s[15] & 0x40), int.from_bytes(s[16:18], "big"), bit


def information(result: ScsiResult) -> int | None:
    s = result.sense
    return int.from_bytes(s[3:7], "big") if s[0] & 0x80 else None


def assert_check(result: ScsiResult, key: int, asc: int, ascq: int = 0,
                 *, cdb_field: tuple[int, int | None] | None = None,
                 param_field: tuple[int, int | None] | None = None) -> None:
    assert sense_triplet(result) == (key, asc, ascq), result.sense.hex()
    if cdb_field is not None:
        assert field_pointer(result) == (True, *cdb_field)
    if param_field is not None:
        assert field_pointer(result) == (False, *param_field)


def rw6(op: int, lba: int, n: int) -> bytes:
    return bytes([op, (lba >> 16) & 0x1F, (lba >> 8) & 0xFF, lba & 0xFF, n & 0xFF, 0])


def rw10(op: int, lba: int, n: int, flags: int = 0) -> bytes:
    return struct.pack(">BBIBHB", op, flags, lba, 0, n, 0)


def rw12(op: int, lba: int, n: int, flags: int = 0) -> bytes:
    return struct.pack(">BBIIBB", op, flags, lba, n, 0, 0)


def rw16(op: int, lba: int, n: int, flags: int = 0) -> bytes:
    return struct.pack(">BBQIBB", op, flags, lba, n, 0, 0)


def read10(lba: int, n: int, flags: int = 0) -> bytes:
    return rw10(0x28, lba, n, flags)


def write10(lba: int, n: int, flags: int = 0) -> bytes:
    return rw10(0x2A, lba, n, flags)


def pattern(nbytes: int, seed: int = 1) -> bytes:
    """Distinct, non-zero bytes so misplaced blocks are caught."""
    return bytes(((i * 31 + seed * 7) % 251) + 1 for i in range(nbytes))
