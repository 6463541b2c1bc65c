"""Consistency groups in the handler (docs/groups.md, "The handler"): member devices served
over their group's one Volume through the simulated TCMU rings. Writes land in each member's
own mirror file at the member's place, the group journal holds them in one seq order at
group LBAs; a member joins a running group (with data: marked for the resync); what is
refused leaves every file as it was; a member leaves only once its device is closed."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from pathlib import Path

import pytest
from group_handler import READ_CAPACITY10, Site, read10, site, write10

from appliance.control.client import ControlError
from appliance.journal import Journal
from appliance.tcmu.daemon import HandlerDaemon
from appliance.volume import group_layout
from appliance.volume.group_layout import GroupLayout

pytestmark = pytest.mark.integration

BS = 512
LOG_BLOCKS, DATA_BLOCKS, EXTRA_BLOCKS, OLD_BLOCKS = 1000, 2048, 512, 256
CHECK_CONDITION = 0x02


def member_cfg(mirror: Path, group: str = "db", extra: str = "") -> str:
    return f"mirror/mirror={mirror};group={group};journal_size=16M{extra}"


def make_group(s: Site, data: Path) -> GroupLayout:
    layout = (GroupLayout("db", uuid.uuid4(), BS, 128, journal_size=16 << 20)
              .with_member("log", str(data / "log.img"), LOG_BLOCKS)
              .with_member("data", str(data / "data.img"), DATA_BLOCKS))
    group_layout.save(s.groups_dir / "db.group.json", layout)
    return layout


def snapshot(*dirs: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for d in dirs for p in sorted(d.iterdir()) if p.is_file()}


def file_at(path: Path, lba: int, nbytes: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(lba * BS)
        return f.read(nbytes)


def test_members_share_one_write_order_and_a_member_joins_and_leaves(tmp_path: Path) -> None:
    s = site(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    layout = make_group(s, data)
    log_dev = s.device(3, "log", member_cfg(data / "log.img"), LOG_BLOCKS * BS)
    data_dev = s.device(4, "data", member_cfg(data / "data.img"), DATA_BLOCKS * BS)
    a, b, c, d = (os.urandom(4096) for _ in range(4))
    extra_written: list[bytes] = []

    async def in_thread(fn, *args):
        return await asyncio.to_thread(fn, *args)

    async def first_life(daemon: HandlerDaemon) -> None:
        assert sorted(daemon.manager.devices) == [3, 4]
        # Each member's LUN is its own size.
        cap = await in_thread(log_dev.run, READ_CAPACITY10, b"", 8)
        assert int.from_bytes(cap.data_in[:4], "big") == LOG_BLOCKS - 1
        cap = await in_thread(data_dev.run, READ_CAPACITY10, b"", 8)
        assert int.from_bytes(cap.data_in[:4], "big") == DATA_BLOCKS - 1
        # One order across members: log, data, log.
        for dev, lba, block in ((log_dev, 10, a), (data_dev, 20, b), (log_dev, 0, c)):
            assert (await in_thread(dev.run, write10(lba, 8), block)).status == 0
        assert (await in_thread(log_dev.run, read10(10, 8), b"", 4096)).data_in == a
        assert (await in_thread(data_dev.run, read10(20, 8), b"", 4096)).data_in == b
        # Past the log member's end: refused, nothing lands in the next member.
        res = await in_thread(log_dev.run, write10(LOG_BLOCKS - 4, 8), d)
        assert res.status == CHECK_CONDITION and res.sense[12] == 0x21, res

        st = await s.ctl("status")
        group = st["groups"]["db"]
        assert group["uuid"] == str(layout.uuid) and group["open"] is True
        assert [(m["name"], m["offset_blocks"], m["served"]) for m in group["members"]] == \
            [("log", 0, True), ("data", 1024, True)]
        assert group["peer_lag_records"] == 3, group
        vol = st["volumes"]["log"]
        assert (vol["group"], vol["member"], vol["uuid"]) == ("db", "log", str(layout.uuid))

        # set-sync by the group's name or uuid, and through a member.
        changed = await s.ctl("set-sync", volume="db", mode="sync-on-flush")
        assert changed["changed"] is True and changed["sync"]["mode"] == "sync-on-flush"
        again = await s.ctl("set-sync", volume=str(layout.uuid), mode="async")
        assert again["changed"] is True and again["sync"]["mode"] == "async"
        assert (await s.ctl("set-sync", volume="data", mode="async"))["changed"] is False

        # A third member joins the running group.
        extra = s.device(5, "extra", member_cfg(data / "extra.img"), EXTRA_BLOCKS * BS)
        assert await in_thread(daemon.manager.add, 5, extra.uio_name) == 0
        grown = group_layout.load(s.groups_dir / "db.group.json")
        assert grown.member("extra").offset_blocks == 3072
        assert grown.num_blocks == 3072 + EXTRA_BLOCKS
        assert (await in_thread(extra.run, write10(5, 8), d)).status == 0
        extra_written.append(d)
        assert (await in_thread(extra.run, read10(5, 8), b"", 4096)).data_in == d
        group = (await s.ctl("status"))["groups"]["db"]
        assert group["size_bytes"] == (3072 + EXTRA_BLOCKS) * BS
        assert group["state"] == "journaling" and group["dirty_chunks"] == 0, group

        # Leave: refused while its device is open, accepted once closed.
        with pytest.raises(ControlError, match=r"member 'extra' of group 'db' is served"):
            await s.ctl("leave-group", group="db", member="extra")
        assert not group_layout.load(s.groups_dir / "db.group.json").member("extra").retired
        assert await in_thread(daemon.manager.remove, 5) == 0
        left = await s.ctl("leave-group", group="db", member="extra")
        assert left == {"group": "db", "member": "extra", "changed": True}
        assert (await s.ctl("leave-group", group="db", member="extra"))["changed"] is False
        with pytest.raises(ControlError, match=r"no member 'nope'"):
            await s.ctl("leave-group", group="db", member="nope")
        after = group_layout.load(s.groups_dir / "db.group.json")
        assert after.member("extra").retired and after.num_blocks == 3072 + EXTRA_BLOCKS
        members = (await s.ctl("status"))["groups"]["db"]["members"]
        assert [(m["name"], m["retired"]) for m in members] == \
            [("log", False), ("data", False), ("extra", True)]
        # The others go on.
        assert (await in_thread(data_dev.run, write10(40, 8), c)).status == 0

        # A member whose mirror holds data joins: its chunks go to the resync.
        old_img = data / "old.img"
        old_img.write_bytes(os.urandom(OLD_BLOCKS * BS))
        old = s.device(6, "old", member_cfg(old_img), OLD_BLOCKS * BS)
        assert await in_thread(daemon.manager.add, 6, old.uio_name) == 0
        group = (await s.ctl("status"))["groups"]["db"]
        assert group["state"] == "logging-to-bitmap", group
        assert group["dirty_chunks"] == OLD_BLOCKS // 128, group
        placed = group_layout.load(s.groups_dir / "db.group.json").member("old")
        assert placed.offset_blocks == 3584 and not placed.needs_copy
        assert (await in_thread(old.run, read10(0, 8), b"", 4096)).data_in == \
            file_at(old_img, 0, 4096)

    try:
        s.run(first_life)
        # Each member's own file, at the member's own blocks.
        assert file_at(data / "log.img", 10, 4096) == a
        assert file_at(data / "log.img", 0, 4096) == c
        assert file_at(data / "data.img", 20, 4096) == b
        assert file_at(data / "data.img", 0, 4096) == bytes(4096)
        assert file_at(data / "extra.img", 5, 4096) == extra_written[0]
        # One journal, one seq order, group LBAs.
        with Journal.open(s.groups_dir / "db.jnl", volume_uuid=layout.uuid) as journal:
            ops = [(r.seq, r.op.lba, r.op.nblocks) for r in journal.records(1)]
        assert ops == [(1, 10, 8), (2, 1024 + 20, 8), (3, 0, 8), (4, 3072 + 5, 8),
                       (5, 1024 + 40, 8)], ops

        # Next life: the retired member's device is gone; the others come back, the data
        # and the marks for the resync with them.
        shutil.rmtree(tmp_path / "class_uio" / "uio5")

        async def second_life(daemon: HandlerDaemon) -> None:
            assert sorted(daemon.manager.devices) == [3, 4, 6]
            assert (await asyncio.to_thread(log_dev.run, read10(10, 8), b"", 4096)).data_in == a
            group = (await s.ctl("status"))["groups"]["db"]
            assert group["dirty_chunks"] == OLD_BLOCKS // 128, group

        s.run(second_life)
    finally:
        s.close()


def test_refused_members_leave_every_file_as_it_was(tmp_path: Path) -> None:
    s = site(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    make_group(s, data)
    other = GroupLayout("other", uuid.uuid4(), BS, 128).with_member(
        "x", str(data / "shared.img"), 256)
    group_layout.save(s.groups_dir / "other.group.json", other)
    (data / "shared.img").write_bytes(bytes(256 * BS))
    log_dev = s.device(3, "log", member_cfg(data / "log.img"), LOG_BLOCKS * BS)
    refused = [
        s.device(10, "lost", member_cfg(data / "lost.img", group="nosuch"), 256 * BS),
        s.device(11, "j", f"mirror/mirror={data}/j.img;journal={data}/j.jnl;group=db", 256 * BS),
        s.device(12, "big", member_cfg(data / "big.img", extra=";block_size=4096"), 256 * BS,
                 block_size=4096),
        s.device(13, "y", member_cfg(data / "shared.img"), 256 * BS),
        s.device(14, "data", member_cfg(data / "data.img"), 4096 * BS, hba=2),
        s.device(15, "log", member_cfg(data / "other.img"), LOG_BLOCKS * BS, hba=2),
    ]
    messages = (r"no consistency group 'nosuch'.*/replication/groups create nosuch",
                r"journal= and group= together",
                r"block_size 4096 differs from group 'db'",
                r"mirror .*shared.img is member 'x' of group 'other'",
                r"member 'data' of group 'db' has 1048576 bytes, the backstore 2097152",
                r"member 'log' of group 'db' has mirror")

    async def life(daemon: HandlerDaemon) -> None:
        # Adoption at start refused them all; only log is served.
        assert sorted(daemon.manager.devices) == [3]
        assert (await asyncio.to_thread(log_dev.run, write10(0, 8), bytes(4096))).status == 0
        before = snapshot(s.groups_dir, data)
        for dev in refused:
            status = await asyncio.to_thread(daemon.manager.add, dev.minor, dev.uio_name)
            assert status == -22, (dev.name, status)
        assert snapshot(s.groups_dir, data) == before
        assert sorted(daemon.manager.devices) == [3]

    text = s.run_logged(life)
    import re
    for message in messages:
        assert re.search(message, text), f"no log line matches {message!r}:\n{text}"
    assert not list(s.groups_dir.glob("nosuch*"))
    assert not (data / "lost.img").exists() and not (data / "big.img").exists()

