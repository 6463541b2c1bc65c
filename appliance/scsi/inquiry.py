"""INQUIRY: standard data and the VPD pages 0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2 (SPC-4 INQUIRY
command and VPD pages; SBC-3 VPD pages). Pure builders: each returns the full page; the caller truncates to the
allocation length without touching the length fields (SPC-4 r37 4.3.5.6)."""

from __future__ import annotations

from appliance.scsi import sense
from appliance.scsi.cdb import be, require_length
from appliance.scsi.identity import DiskIdentity, DiskLimits

SUPPORTED_VPD_PAGES = (0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2)


# VERSION DESCRIPTORs (SPC-4 table "Version descriptor values"): what we claim to implement.
VERSION_DESCRIPTORS = (
    0x00A0,    # SAM-5
    0x0460,    # SPC-4
    0x04C0,    # SBC-3
)


def standard_inquiry(identity: DiskIdentity) -> bytes:
    """Standard INQUIRY data (SPC-4), 96 bytes as LIO's own emulation sends: the version
    descriptors at bytes 58.. tell initiators (and libiscsi's SBC-3 tests) what we speak."""
    buf = bytearray(96)
    buf[0] = 0x00          # PERIPHERAL QUALIFIER 0, DEVICE TYPE 0: direct access block device
    buf[2] = 0x06          # VERSION: SPC-4 (as LIO's own backstores report)
    buf[3] = 0x02          # RESPONSE DATA FORMAT 2; NORMACA=0, HISUP=0 (as LIO and tcmu-runner)
    buf[4] = len(buf) - 5  # ADDITIONAL LENGTH
    # byte 5: TPGS=0 (we do not answer REPORT TARGET PORT GROUPS) and 3PC=0 (no EXTENDED
    # COPY): SPC-4 ties each bit to its command, so neither is advertised.
    buf[7] = 0x02          # CMDQUE: the ring queues commands
    buf[8:16] = identity.vendor_field()
    buf[16:32] = identity.product_field()
    buf[32:36] = identity.revision_field()
    for i, descriptor in enumerate(VERSION_DESCRIPTORS):
        buf[58 + 2 * i:60 + 2 * i] = descriptor.to_bytes(2, "big")
    return bytes(buf)


def _vpd(page: int, body: bytes) -> bytes:
    return bytes([0x00, page]) + len(body).to_bytes(2, "big") + body


def supported_pages() -> bytes:
    """VPD 0x00: the pages we implement, ascending (spc4r22 7.7.13)."""
    return _vpd(0x00, bytes(SUPPORTED_VPD_PAGES))


def unit_serial(identity: DiskIdentity) -> bytes:
    """VPD 0x80: the configfs WWN, NUL-terminated exactly as LIO and tcmu-runner send it
    (so udev's ID_SCSI_SERIAL of a migrated LUN does not change)."""
    return _vpd(0x80, identity.serial.encode("ascii") + b"\0")


def _designator(code_set: int, assoc_type: int, body: bytes) -> bytes:
    return bytes([code_set, assoc_type, 0, len(body)]) + body


def device_identification(identity: DiskIdentity) -> bytes:
    """VPD 0x83 (SPC-4 Device Identification VPD page): T10 vendor ID and NAA IEEE Registered Extended designators,
    both associated with the logical unit.

    tcmu-runner also sends its cfgstring as a vendor-specific designator; we do not, since
    ours names appliance-internal file paths that initiators have no business seeing. The
    port designators (relative port, target port group) need ALUA knowledge we lack.
    """
    t10 = _designator(0x02, 0x01, identity.t10_vendor_designator())   # ASCII, T10 vendor ID
    naa = _designator(0x01, 0x03, identity.naa_designator())          # binary, NAA
    return _vpd(0x83, t10 + naa)


def block_limits(limits: DiskLimits, block_size: int) -> bytes:
    """VPD 0xB0 (SBC-3 Block Limits VPD page), page length 0x3C."""
    body = bytearray(0x3C)
    # Offsets below are page offsets minus the 4-byte header.
    body[0] = 0x01                                   # WSNZ: WRITE SAME of 0 blocks refused
    body[1] = limits.max_compare_and_write_blocks    # MAXIMUM COMPARE AND WRITE LENGTH
    per_physical = limits.blocks_per_physical(block_size)
    body[2:4] = per_physical.to_bytes(2, "big")      # OPTIMAL TRANSFER LENGTH GRANULARITY
    body[4:8] = limits.max_transfer_blocks(block_size).to_bytes(4, "big")
    # OPTIMAL TRANSFER LENGTH (page bytes 12-15) stays 0: not reported, so hosts do not
    # derive a RAID-like stripe width from it.
    body[16:20] = limits.max_unmap_lba_count.to_bytes(4, "big")
    body[20:24] = limits.max_unmap_descriptors.to_bytes(4, "big")
    body[24:28] = per_physical.to_bytes(4, "big")    # OPTIMAL UNMAP GRANULARITY
    body[28:32] = (0x80000000).to_bytes(4, "big")    # UGAVALID=1, alignment 0
    body[32:40] = limits.max_write_same_blocks.to_bytes(8, "big")
    return _vpd(0xB0, bytes(body))


def block_device_characteristics(limits: DiskLimits) -> bytes:
    """VPD 0xB1 (SBC-3 Block Device Characteristics VPD page): MEDIUM ROTATION RATE 1 = non-rotating, 0 = not reported."""
    body = bytearray(0x3C)
    if limits.non_rotating:
        body[0:2] = (1).to_bytes(2, "big")
    return _vpd(0xB1, bytes(body))


def logical_block_provisioning() -> bytes:
    """VPD 0xB2 (SBC-3 Logical Block Provisioning VPD page): LBPU, LBPWS, LBPWS10 (UNMAP and both WRITE SAMEs may
    deallocate), LBPRZ=001b (deallocated blocks read as zeros: the Volume's UNMAP contract),
    PROVISIONING TYPE 010b thin (READ CAPACITY(16) LBPME=1 requires 001b or 010b)."""
    return _vpd(0xB2, bytes([0x00, 0x80 | 0x40 | 0x20 | 0x04, 0x02, 0x00]))


def inquiry(cdb: bytes, identity: DiskIdentity, limits: DiskLimits,
            block_size: int) -> tuple[bytes, int]:
    """Decode INQUIRY (SPC-4 INQUIRY command) → (full response, allocation length)."""
    require_length(cdb, 6)
    alloc_len = be(cdb, 3, 2)
    evpd = cdb[1] & 0x01
    if cdb[1] & 0x02:
        # CMDDT is obsolete (SPC-3): a device that does not support it answers 24/00.
        raise sense.invalid_field_in_cdb(1, 1, "CMDDT not supported")
    page = cdb[2]
    if not evpd:
        if page:
            raise sense.invalid_field_in_cdb(2, None, "PAGE CODE set without EVPD")
        return standard_inquiry(identity), alloc_len
    builders = {
        0x00: supported_pages,
        0x80: lambda: unit_serial(identity),
        0x83: lambda: device_identification(identity),
        0xB0: lambda: block_limits(limits, block_size),
        0xB1: lambda: block_device_characteristics(limits),
        0xB2: logical_block_provisioning,
    }
    if page not in builders:
        raise sense.invalid_field_in_cdb(2, None, f"VPD page {page:#04x} not supported")
    return builders[page](), alloc_len
