"""The journal names its volume's mirror and bitmap (so a transmitter can always resync), and
a reader sees how much of the journal the peer still lacks."""

import uuid

from appliance.journal import JBLOCK, Journal, JournalReader, OpKind, VolumeFiles, WriteOp
from appliance.journal.errors import JournalError
from appliance.journal.volume_files import VOLUME_FILES_BLOCKS, read_slot
from appliance.storage import open_file
from appliance.volume import Volume, VolumeConfig

VOL = uuid.UUID(int=0x5EED)


def open_volume(tmp_path, bitmap_name="bitmap"):
    return Volume.open(VolumeConfig(uuid=VOL, num_blocks=2048, journal_size=2 << 20,
                                    max_transfer_bytes=64 * 1024, service_interval=None,
                                    mirror_path=tmp_path / "mirror",
                                    journal_path=tmp_path / "journal",
                                    bitmap_path=tmp_path / bitmap_name))


def test_a_volume_names_its_absolute_mirror_and_bitmap_in_its_journal(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    vol = Volume.open(VolumeConfig(uuid=VOL, num_blocks=2048, journal_size=2 << 20,
                                   max_transfer_bytes=64 * 1024, service_interval=None,
                                   mirror_path="mirror", journal_path="journal",
                                   bitmap_path="bitmap"))
    vol.close()
    with JournalReader(tmp_path / "journal") as reader:
        assert reader.volume_files() == VolumeFiles(str(tmp_path / "mirror"),
                                                    str(tmp_path / "bitmap"))


def test_a_new_bitmap_path_is_published_and_an_unchanged_one_writes_nothing(tmp_path):
    open_volume(tmp_path).close()
    with JournalReader(tmp_path / "journal") as reader:
        gen, _ = read_slot(reader._open_io(), reader.sb)
    open_volume(tmp_path).close()
    with JournalReader(tmp_path / "journal") as reader:
        assert read_slot(reader._open_io(), reader.sb)[0] == gen     # nothing rewritten
    open_volume(tmp_path, bitmap_name="bitmap2").close()
    with JournalReader(tmp_path / "journal") as reader:
        got_gen, files = read_slot(reader._open_io(), reader.sb)
        assert (got_gen, files.bitmap) == (gen + 1, str(tmp_path / "bitmap2"))


def test_a_torn_newest_copy_falls_back_to_the_previous_one(tmp_path):
    open_volume(tmp_path).close()
    open_volume(tmp_path, bitmap_name="bitmap2").close()
    with JournalReader(tmp_path / "journal") as reader:
        newest_gen, _ = read_slot(reader._open_io(), reader.sb)
    block = VOLUME_FILES_BLOCKS[newest_gen % 2]
    with open(tmp_path / "journal", "r+b") as f:
        f.seek(block * JBLOCK + 50)
        f.write(b"\xff" * 8)                   # the torn write of the newest copy
    with JournalReader(tmp_path / "journal") as reader:
        assert reader.volume_files().bitmap == str(tmp_path / "bitmap")


def test_a_journal_from_before_the_slot_names_nothing(tmp_path):
    journal = Journal.create(tmp_path / "journal", size=2 << 20, volume_uuid=VOL,
                             volume_block_size=512, volume_blocks=2048)
    journal.close()
    with JournalReader(tmp_path / "journal") as reader:
        assert reader.volume_files() is None


def test_backlog_bytes_counts_what_the_peer_lacks_from_its_segment_to_the_head(tmp_path):
    journal = Journal.create(tmp_path / "journal", size=4 << 20, volume_uuid=VOL,
                             volume_block_size=512, volume_blocks=2048, segment_size=256 << 10)
    with JournalReader(tmp_path / "journal") as reader:
        assert reader.backlog_bytes(1) == 0
        for i in range(40):     # 40 x 16 KiB: several segments
            journal.append([WriteOp(OpKind.WRITE, i * 32, 32, bytes([i]) * 16384)])
            journal.sync()
        journal.set_mirror_durable(journal.durable_seq - 1)    # publishes the head
        journal.sync()
        everything = reader.backlog_bytes(1)
        # (each record: a metadata block and its data; segment ends padded)
        assert 40 * 16384 <= everything <= 40 * (16384 + JBLOCK) + (256 << 10)
        late = reader.backlog_bytes(35)
        assert 5 * 16384 <= late <= 5 * (16384 + JBLOCK) + (256 << 10)
        assert late < everything
        assert reader.backlog_bytes(41) == 0
    journal.close()


def test_a_journal_is_never_seen_without_the_files_it_was_created_with(tmp_path):
    """A transmitter polling for a new journal (another process) reads it between any two of
    its creation's writes: either it is no journal yet, or it names its mirror and bitmap
    (a group's transmitter would otherwise tell its peer it is a plain volume)."""
    size = 2 << 20
    files = VolumeFiles(str(tmp_path / "db.group.json"), str(tmp_path / "db.bitmap"))
    writes: list[tuple[int, bytes]] = []

    class Recording:
        def __init__(self, io):
            self.io = io

        def pwritev(self, offset, bufs):
            writes.append((offset, b"".join(bytes(b) for b in bufs)))
            self.io.pwritev(offset, bufs)

        def __getattr__(self, name):
            return getattr(self.io, name)

    target = open_file(tmp_path / "journal", create_size=size)
    Journal.create(Recording(target), size=size, volume_uuid=VOL, volume_block_size=512,
                   volume_blocks=2048, volume_files=files).close()
    seen = []
    for k in range(len(writes) + 1):
        image = bytearray(size)
        for offset, data in writes[:k]:
            image[offset:offset + len(data)] = data
        (tmp_path / "seen").write_bytes(image)
        try:
            with JournalReader(tmp_path / "seen") as reader:
                seen.append(reader.volume_files())
        except JournalError:
            seen.append("no journal")
    assert seen[0] == "no journal" and seen[-1] == files
    assert set(seen) == {"no journal", files}, seen
