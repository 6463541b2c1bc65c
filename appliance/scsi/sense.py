"""Sense data, and the one place that turns a failure into SCSI status + sense.

Handlers raise `ScsiError` (built with the helpers below); `result_for_exception` also maps
the Volume's errors and anything unexpected, so nothing ever escapes `ScsiDisk.execute`.
Only fixed-format sense is produced (SPC-4 r37 4.5.3); descriptor format is never requested by
us (REQUEST SENSE with DESC=1 is refused, see admin.py).
"""

from __future__ import annotations

import logging
from enum import IntEnum

from appliance.scsi.command import ScsiResult, Status
from appliance.volume import InvalidRequest, MediumError, SyncAborted

log = logging.getLogger(__name__)

FIXED_SENSE_LEN = 18


class SenseKey(IntEnum):
    """Sense keys (SPC-4 sense key descriptions)."""

    NO_SENSE = 0x0
    NOT_READY = 0x2
    MEDIUM_ERROR = 0x3
    HARDWARE_ERROR = 0x4
    ILLEGAL_REQUEST = 0x5
    UNIT_ATTENTION = 0x6
    DATA_PROTECT = 0x7
    ABORTED_COMMAND = 0xB
    MISCOMPARE = 0xE


def fixed_sense(key: int, asc: int, ascq: int, *, information: int | None = None,
                sense_key_specific: bytes | None = None) -> bytes:
    """Fixed-format sense data, current error (SPC-4 r37 4.5.3): 18 bytes."""
    buf = bytearray(FIXED_SENSE_LEN)
    buf[0] = 0x70
    buf[2] = key & 0x0F
    # INFORMATION is 4 bytes here; a value that does not fit is left out (VALID=0).
    if information is not None and 0 <= information <= 0xFFFFFFFF:
        buf[0] |= 0x80
        buf[3:7] = information.to_bytes(4, "big")
    buf[7] = FIXED_SENSE_LEN - 8          # ADDITIONAL SENSE LENGTH
    buf[12] = asc
    buf[13] = ascq
    if sense_key_specific is not None:
        buf[15:18] = sense_key_specific   # carries SKSV in its first bit
    return bytes(buf)


def field_pointer(byte: int, bit: int | None = None, *, in_cdb: bool = True) -> bytes:
    """Sense-key specific FIELD POINTER (SPC-4 r37 4.5.2.4.2): SKSV, C/D, BPV + bit, byte."""
    first = 0x80 | (0x40 if in_cdb else 0)
    if bit is not None:
        first |= 0x08 | (bit & 0x07)
    return bytes([first]) + (byte & 0xFFFF).to_bytes(2, "big")


class ScsiError(Exception):
    """A command ends in CHECK CONDITION with this sense."""

    def __init__(self, key: int, asc: int, ascq: int, message: str, *,
                 information: int | None = None, sense_key_specific: bytes | None = None):
        super().__init__(message)
        self.key = key
        self.asc = asc
        self.ascq = ascq
        self.information = information
        self.sense_key_specific = sense_key_specific

    def sense(self) -> bytes:
        return fixed_sense(self.key, self.asc, self.ascq, information=self.information,
                           sense_key_specific=self.sense_key_specific)

    def result(self) -> ScsiResult:
        return ScsiResult(Status.CHECK_CONDITION, self.sense())


# --- the conditions we report (SPC-4 annex D, asc/ascq assignments) ---------------------

def invalid_opcode(opcode: int) -> ScsiError:
    return ScsiError(SenseKey.ILLEGAL_REQUEST, 0x20, 0x00,
                     f"invalid command operation code {opcode:#04x}")


def invalid_field_in_cdb(byte: int, bit: int | None = None, why: str = "") -> ScsiError:
    return ScsiError(SenseKey.ILLEGAL_REQUEST, 0x24, 0x00,
                     f"invalid field in CDB byte {byte} bit {bit}: {why}",
                     sense_key_specific=field_pointer(byte, bit, in_cdb=True))


def invalid_field_in_parameter_list(byte: int, bit: int | None = None,
                                    why: str = "") -> ScsiError:
    return ScsiError(SenseKey.ILLEGAL_REQUEST, 0x26, 0x00,
                     f"invalid field in parameter list byte {byte} bit {bit}: {why}",
                     sense_key_specific=field_pointer(byte, bit, in_cdb=False))


def parameter_list_length_error(why: str = "") -> ScsiError:
    return ScsiError(SenseKey.ILLEGAL_REQUEST, 0x1A, 0x00, f"parameter list length error: {why}")


def lba_out_of_range(lba: int, nblocks: int, num_blocks: int) -> ScsiError:
    return ScsiError(SenseKey.ILLEGAL_REQUEST, 0x21, 0x00,
                     f"LBA {lba} + {nblocks} blocks beyond {num_blocks} blocks")


def invalid_field_in_command_iu(expected: int, got: int) -> ScsiError:
    """The buffer the initiator sent/expects disagrees with the CDB's transfer length.

    LIO answers this for its own backstores (target_cmd_size_check → INVALID FIELD IN
    COMMAND INFORMATION UNIT, 0E/03); we do the same for TCMU, where the kernel does not.
    """
    return ScsiError(SenseKey.ILLEGAL_REQUEST, 0x0E, 0x03,
                     f"data buffer holds {got} bytes, the CDB needs {expected}")


def saving_parameters_not_supported() -> ScsiError:
    return ScsiError(SenseKey.ILLEGAL_REQUEST, 0x39, 0x00, "saving parameters not supported")


def miscompare(offset: int) -> ScsiError:
    """MISCOMPARE DURING VERIFY OPERATION, INFORMATION = offset of the first differing byte
    from the start of the Data-Out buffer (SBC-3 COMPARE AND WRITE, VERIFY)."""
    return ScsiError(SenseKey.MISCOMPARE, 0x1D, 0x00, f"miscompare at byte {offset}",
                     information=offset)


def unrecovered_read_error() -> ScsiError:
    return ScsiError(SenseKey.MEDIUM_ERROR, 0x11, 0x00, "unrecovered read error")


def write_error() -> ScsiError:
    return ScsiError(SenseKey.MEDIUM_ERROR, 0x0C, 0x00, "write error")


def internal_target_failure(why: str = "") -> ScsiError:
    return ScsiError(SenseKey.HARDWARE_ERROR, 0x44, 0x00, f"internal target failure: {why}")


def capacity_data_has_changed() -> ScsiError:
    return ScsiError(SenseKey.UNIT_ATTENTION, 0x2A, 0x09, "capacity data has changed")


def no_sense() -> bytes:
    return fixed_sense(SenseKey.NO_SENSE, 0x00, 0x00)


# --- the single translation point ----------------------------------------------------------

def result_for_exception(exc: BaseException, cdb: bytes = b"") -> ScsiResult:
    """Status + sense for any failure of a command (tcmu-runner's tcmu_sts_to_scsi role).
    `cdb` only labels the log line; empty for a failed group commit."""
    what = f"CDB {cdb.hex()}" if cdb else "group commit"
    if isinstance(exc, ScsiError):
        err = exc
    elif isinstance(exc, MediumError):
        # SPC-4 annex D: 11/00 for a failed read, 0C/00 for a failed write.
        err = unrecovered_read_error() if exc.kind == "read" else write_error()
        log.warning("medium error in %s: %s", what, exc)
    elif isinstance(exc, SyncAborted):
        # ABORTED COMMAND, I/O PROCESS TERMINATED (SPC-4 annex D: 00/06): retried by the
        # host (Linux scsi_check_sense: NEEDS_RETRY), then by the restarted handler.
        err = ScsiError(SenseKey.ABORTED_COMMAND, 0x00, 0x06, str(exc))
        log.warning("%s released: %s", what, exc)
    elif isinstance(exc, InvalidRequest):
        # We range-check before calling the Volume, so this means the volume shrank under
        # us (a resize racing the command): the LBA is out of range now.
        err = ScsiError(SenseKey.ILLEGAL_REQUEST, 0x21, 0x00, str(exc))
        log.warning("volume refused %s: %s", what, exc)
    else:
        log.error("internal error in %s", what, exc_info=exc)
        err = internal_target_failure(type(exc).__name__)
    return err.result()
