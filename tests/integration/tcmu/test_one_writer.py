"""One writer per mirror in the handler (appliance/volume/mirror_lock.py): a backstore whose
mirror another writer holds (the DR receiver replicating into it, or another LUN) is refused
with EBUSY, the reason logged, the file untouched; so is a group member joining over such a
file; the LUNs already served go on."""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import re
import uuid
from pathlib import Path

import pytest
from group_handler import read10, site, write10

from appliance.tcmu.daemon import HandlerDaemon, check_backstore
from appliance.volume import group_layout
from appliance.volume.group_layout import GroupLayout
from appliance.volume.mirror_lock import MirrorLock

pytestmark = pytest.mark.integration

BS = 512
BLOCKS = 256


def test_a_backstore_over_a_mirror_another_writer_holds_is_refused_busy(tmp_path: Path) -> None:
    s = site(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    served = s.device(3, "a", f"mirror/mirror={data}/a.img;journal={data}/a.jnl;"
                              f"journal_size=16M", BLOCKS * BS)
    replica_img = data / "replica.img"
    replica_img.write_bytes(os.urandom(BLOCKS * BS))
    member_img = data / "member.img"
    member_img.write_bytes(os.urandom(BLOCKS * BS))
    group_layout.save(s.groups_dir / "db.group.json",
                      GroupLayout("db", uuid.uuid4(), BS, 128, journal_size=16 << 20))
    receiver = MirrorLock.take(replica_img, "DR receiver")      # as the receiver holds it
    other = MirrorLock.take(member_img, "DR receiver")
    before = {p.name: p.read_bytes() for p in (replica_img, member_img)}
    block = os.urandom(4096)

    async def life(daemon: HandlerDaemon) -> None:
        assert sorted(daemon.manager.devices) == [3]
        refused = [
            s.device(4, "over-replica", f"mirror/mirror={replica_img};journal={data}/r.jnl;"
                                        f"journal_size=16M", BLOCKS * BS),
            s.device(5, "same-as-a", f"mirror/mirror={data}/a.img;journal={data}/b.jnl;"
                                     f"journal_size=16M", BLOCKS * BS),
            s.device(6, "member", f"mirror/mirror={member_img};group=db;journal_size=16M",
                     BLOCKS * BS),
        ]
        for dev in refused:
            status = await asyncio.to_thread(daemon.manager.add, dev.minor, dev.uio_name)
            assert status == -errno.EBUSY, (dev.name, status)
        assert sorted(daemon.manager.devices) == [3]
        # The LUN already served goes on.
        assert (await asyncio.to_thread(served.run, write10(8, 8), block)).status == 0
        assert (await asyncio.to_thread(served.run, read10(8, 8), b"", 4096)).data_in == block
        assert replica_img.read_bytes() == before["replica.img"]
        # Once the receiver lets go, the admin's backstore is served.
        receiver.close()
        assert await asyncio.to_thread(daemon.manager.add, 4, refused[0].uio_name) == 0

    try:
        text = s.run_logged(life)
    finally:
        other.close()
    for name, path in (("over-replica", replica_img), ("same-as-a", data / "a.img"),
                       ("member", member_img)):
        pattern = rf"device {name} refused: mirror {re.escape(str(path))} is written by another"
        assert re.search(pattern, text), f"no log line matches {pattern!r}:\n{text}"
    assert member_img.read_bytes() == before["member.img"]
    assert not (data / "b.jnl").exists()
    assert not group_layout.load(s.groups_dir / "db.group.json").members


def test_targetclis_check_before_create_names_the_writer_holding_the_mirror(tmp_path: Path):
    """targetcli asks CheckConfig before it creates a backstore and prints a refusal as
    'cfgstring invalid: <answer>': the admin reads why, not only that the creation failed."""
    mirror = tmp_path / "replica.img"
    mirror.write_bytes(bytes(BS))
    config = f"mirror/mirror={mirror};journal={tmp_path}/j.jnl"
    assert check_backstore(config) == (True, "success")
    receiver = MirrorLock.take(mirror, "DR receiver")
    try:
        ok, message = check_backstore(config)
    finally:
        receiver.close()
    assert not ok and message.startswith(f"mirror {mirror} is written by another process"), \
        message
    assert check_backstore(config) == (True, "success")
    assert check_backstore("mirror/mirror=relative.img")[0] is False     # parsing first
    assert check_backstore(f"mirror/mirror={tmp_path}/none/x.img;journal={tmp_path}/none/j") \
        == (True, "success")


def test_a_member_of_a_group_the_handler_has_open_passes_the_check(tmp_path: Path) -> None:
    """The group's first member device opens the whole group, which locks every member's
    file: the next member's backstore is this handler's own writer, not another one."""
    s = site(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    group_layout.save(s.groups_dir / "db.group.json",
                      GroupLayout("db", uuid.uuid4(), BS, 128, journal_size=16 << 20)
                      .with_member("log", str(data / "log.img"), BLOCKS)
                      .with_member("data", str(data / "data.img"), BLOCKS))
    s.device(3, "log", f"mirror/mirror={data}/log.img;group=db;journal_size=16M", BLOCKS * BS)
    member = f"mirror/mirror={data}/data.img;group=db;journal_size=16M"

    async def life(daemon: HandlerDaemon) -> None:
        assert sorted(daemon.manager.devices) == [3]
        check = functools.partial(check_backstore, ours=daemon.groups.holds)
        assert check(member) == (True, "success")
        dev = s.device(4, "data", member, BLOCKS * BS)
        assert await asyncio.to_thread(daemon.manager.add, dev.minor, dev.uio_name) == 0
        # The same file as a plain LUN, or as a member of another group, is another writer.
        for other in (f"mirror/mirror={data}/data.img;journal={data}/x.jnl",
                      f"mirror/mirror={data}/data.img;group=other;journal_size=16M"):
            ok, message = check(other)
            assert not ok and "is written by another process" in message, (other, message)

    s.run_logged(life)
