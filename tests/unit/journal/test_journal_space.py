"""A journal's file gets all its blocks at creation: no host write can later fail for want
of space another file took, and a file system without room refuses the journal up front."""

import os
import subprocess
import uuid

import pytest

from appliance.journal import InvalidRequest, Journal

SIZE = 8 << 20


def create(path):
    return Journal.create(path, size=SIZE, volume_uuid=uuid.UUID(int=7),
                          volume_block_size=512, volume_blocks=2048)


def test_a_new_journal_file_has_all_its_blocks(tmp_path):
    journal = create(tmp_path / "j")
    used = journal.sb.total_blocks * 4096              # the size, rounded to whole segments
    journal.close()
    st = os.stat(tmp_path / "j")
    assert SIZE // 2 < st.st_size == used <= SIZE
    assert st.st_blocks * 512 >= used, f"only {st.st_blocks * 512} of {used} bytes allocated"


@pytest.fixture
def small_fs(tmp_path):
    """A 2 MiB tmpfs (root only): a file system too small for the journal."""
    where = tmp_path / "small"
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], check=True)
    yield where
    subprocess.run(["umount", "--lazy", str(where)], check=True)   # lazy: a failed test may hold a file


def test_no_room_for_the_journal_is_refused_at_creation_and_leaves_nothing(small_fs):
    with pytest.raises(InvalidRequest, match=r"no room for the journal's \d+ bytes on the file system of .*small/j; "
                                                 "free space there or choose a smaller journal"):
        create(small_fs / "j")
    assert os.stat(small_fs / "j").st_size == 0       # nothing kept: the next try starts fresh
    assert os.statvfs(small_fs).f_bfree == os.statvfs(small_fs).f_blocks   # space given back
