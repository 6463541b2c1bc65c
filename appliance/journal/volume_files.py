"""The volume-files slot: where the writer says which mirror and bitmap files go with this
journal, so that the transmitter (another process) finds them from the journal itself and can
always resync after an overflow (docs/journal-format.md, "Volume-files slot").

Blocks 6 and 7 hold two copies; the writer writes the copy that does not hold the newest
generation, so a torn write leaves the previous copy intact. Journals written before this
slot existed have zeros there: no copy decodes, and readers get ``None`` (unknown).

    offset  size  field
    0       8     magic "DRJFILES"
    8       4     format version (1)
    12      16    journal uuid
    28      8     generation
    36      4     length of the JSON body
    40      n     JSON body, UTF-8: {"mirror": "/abs/path", "bitmap": "/abs/path"}
    40+n    4     CRC32C of bytes 0 .. 40+n
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

from appliance.journal.errors import InvalidRequest
from appliance.journal.format import JBLOCK, Superblock, crc
from appliance.storage import BlockIO

VOLUME_FILES_BLOCKS = (6, 7)
VOLUME_FILES_MAGIC = b"DRJFILES"
_VERSION = 1
_HEAD = struct.Struct("<8sI16sQI")
_U32 = struct.Struct("<I")
MAX_BODY = JBLOCK - _HEAD.size - _U32.size


@dataclass(frozen=True, slots=True)
class VolumeFiles:
    """Absolute paths of the local mirror and the dirty-region bitmap of the volume."""

    mirror: str
    bitmap: str


def encode(sb: Superblock, generation: int, files: VolumeFiles) -> bytes:
    body = json.dumps({"mirror": files.mirror, "bitmap": files.bitmap}).encode()
    if len(body) > MAX_BODY:
        raise InvalidRequest(f"mirror and bitmap paths take {len(body)} bytes; at most "
                             f"{MAX_BODY} fit the journal's volume-files slot")
    head = _HEAD.pack(VOLUME_FILES_MAGIC, _VERSION, sb.journal_uuid.bytes, generation, len(body))
    out = bytearray(JBLOCK)
    out[: _HEAD.size + len(body)] = head + body
    _U32.pack_into(out, _HEAD.size + len(body), crc(out[: _HEAD.size + len(body)]))
    return bytes(out)


def decode(block: bytes | memoryview, sb: Superblock) -> tuple[int, VolumeFiles] | None:
    """(generation, files) of an intact copy of this journal's slot, else None."""
    magic, version, juuid, gen, length = _HEAD.unpack_from(block, 0)
    if (magic != VOLUME_FILES_MAGIC or version != _VERSION or juuid != sb.journal_uuid.bytes
            or length > MAX_BODY):
        return None
    end = _HEAD.size + length
    if _U32.unpack_from(block, end)[0] != crc(block[:end]):
        return None
    try:
        doc = json.loads(bytes(block[_HEAD.size:end]))
        return gen, VolumeFiles(str(doc["mirror"]), str(doc["bitmap"]))
    except (ValueError, KeyError, TypeError):
        return None


def read_slot(io: BlockIO, sb: Superblock) -> tuple[int, VolumeFiles | None]:
    """The newest intact copy: (its generation, files), or (0, None) when none is written."""
    buf = bytearray(2 * JBLOCK)
    io.pread_into(VOLUME_FILES_BLOCKS[0] * JBLOCK, memoryview(buf))
    copies = [decode(memoryview(buf)[i * JBLOCK:(i + 1) * JBLOCK], sb) for i in range(2)]
    valid = [copy for copy in copies if copy is not None]
    if not valid:
        return 0, None
    return max(valid, key=lambda copy: copy[0])


def publish(io: BlockIO, sb: Superblock, files: VolumeFiles) -> None:
    """Record ``files`` durably unless the newest copy already says exactly that."""
    generation, current = read_slot(io, sb)
    if current == files:
        return
    generation += 1
    io.pwritev(VOLUME_FILES_BLOCKS[generation % 2] * JBLOCK, [encode(sb, generation, files)])
    io.sync()
