"""Who the disk says it is (INQUIRY data, VPD 0x80/0x83) and the limits it advertises (0xB0).

The identifiers are derived exactly as LIO and tcmu-runner derive them from the backstore's
`wwn/vpd_unit_serial`, so a LUN moved between tcmu-runner, LIO and this handler keeps the
same NAA designator, serial and udev `by-id` names on the hosts.
"""

from __future__ import annotations

from dataclasses import dataclass

# OpenFabrics IEEE company id 00-14-05, the OUI LIO puts in its NAA designators.
LIO_OUI = 0x001405


def _ascii_field(value: str, size: int, what: str) -> bytes:
    raw = value.encode("ascii", errors="strict")
    if len(raw) > size or not all(0x20 <= byte < 0x7F for byte in raw):
        raise ValueError(f"{what} {value!r} must be printable ASCII of at most {size} bytes")
    # SPC-4 4.4.1: ASCII fields are left-aligned and padded with spaces.
    return raw.ljust(size, b" ")


@dataclass(frozen=True)
class DiskIdentity:
    """The unit serial (configfs WWN) and the INQUIRY strings of one volume."""

    serial: str
    vendor: str = "LIO-ORG"
    product: str = "TCMU device"
    revision: str = "0002"

    def __post_init__(self) -> None:
        raw = self.serial.encode("utf-8")
        # The kernel limits vpd_unit_serial to 254 bytes (INQUIRY_VPD_SERIAL_LEN - 1).
        if not raw or len(raw) > 254 or not all(0x20 < byte < 0x7F for byte in raw):
            raise ValueError(f"unit serial {self.serial!r} must be 1..254 printable ASCII "
                             "characters without spaces")
        self.vendor_field()
        self.product_field()
        self.revision_field()

    def vendor_field(self) -> bytes:
        return _ascii_field(self.vendor, 8, "vendor")

    def product_field(self) -> bytes:
        return _ascii_field(self.product, 16, "product")

    def revision_field(self) -> bytes:
        return _ascii_field(self.revision, 4, "revision")

    def naa_designator(self) -> bytes:
        """16-byte NAA IEEE Registered Extended designator (spc4r17 7.7.3.6.5, as the kernel cites it).

        NAA 6, OUI 00-14-05, then the serial's hex digits packed as nibbles (non-hex
        characters such as '-' skipped) into the 36-bit vendor specific identifier and the
        64-bit extension: 25 nibbles, zero-padded. This is the kernel's
        spc_gen_naa_6h_vendor_specific and tcmu-runner's page 0x83 code, nibble for nibble.
        """
        nibbles = [int(char, 16) for char in self.serial if char in "0123456789abcdefABCDEF"][:25]
        nibbles += [0] * (25 - len(nibbles))
        value = 0x6 << 4 | (LIO_OUI >> 20)           # NAA (4 bits) + first OUI nibble
        head = bytes([value, (LIO_OUI >> 12) & 0xFF, (LIO_OUI >> 4) & 0xFF])
        packed = [(LIO_OUI & 0xF) << 4 | nibbles[0]]
        packed += [nibbles[i] << 4 | nibbles[i + 1] for i in range(1, 25, 2)]
        return head + bytes(packed)

    def t10_vendor_designator(self) -> bytes:
        """T10 vendor ID designator body: vendor field + serial + NUL (tcmu-runner's form)."""
        return self.vendor_field() + self.serial.encode("ascii") + b"\0"


@dataclass(frozen=True)
class DiskLimits:
    """Limits advertised in VPD 0xB0 and enforced on the commands (all in volume blocks
    except `max_transfer_bytes`, which the TCMU layer sets so a command fits the ring's data
    area and hw_max_sectors, docs/scsi.md "Decisions")."""

    max_transfer_bytes: int = 1 << 20
    # Per UNMAP command, all descriptors together. 1 Mi blocks: libiscsi's Block Limits test
    # calls an explicit limit above 1024*1024 insane (tcmu-runner's 32 Mi fails it).
    max_unmap_lba_count: int = 1 << 20
    max_unmap_descriptors: int = 64
    max_write_same_blocks: int = 1 << 20
    max_compare_and_write_blocks: int = 32      # one byte in the CDB and in VPD 0xB0
    physical_block_size: int = 4096             # the journal block: hosts should align to it
    non_rotating: bool = False                  # VPD 0xB1 MEDIUM ROTATION RATE = 1 if true

    def __post_init__(self) -> None:
        if not 1 <= self.max_compare_and_write_blocks <= 255:
            raise ValueError("max_compare_and_write_blocks must be 1..255")
        if self.physical_block_size & (self.physical_block_size - 1):
            raise ValueError("physical_block_size must be a power of two")
        for name in ("max_transfer_bytes", "max_unmap_lba_count", "max_unmap_descriptors",
                     "max_write_same_blocks"):
            if not 1 <= getattr(self, name) <= 0xFFFFFFFF:
                raise ValueError(f"{name} must be 1..2**32-1")

    def max_transfer_blocks(self, block_size: int) -> int:
        return max(self.max_transfer_bytes // block_size, 1)

    def blocks_per_physical(self, block_size: int) -> int:
        return max(self.physical_block_size // block_size, 1)
