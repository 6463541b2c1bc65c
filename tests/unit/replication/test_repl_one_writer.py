"""One writer per mirror at the DR (appliance/volume/mirror_lock.py): a replica is refused
while a handler serves its mirror and a handler while the receiver replicates into it; a
promoted replica, which never writes again, leaves the mirror to the handler; a demote is
refused while the mirror is still a LUN."""

import uuid

import pytest

from appliance.replication.config import ReplicaConfig, replica_paths
from appliance.replication.dr.promotion import check_demote, demote, promote
from appliance.replication.dr.replica import Replica
from appliance.replication.dr.replica_state import ReplicaState
from appliance.replication.handshake import Hello, VolumeSpec
from appliance.replication.wire import WireRecord
from appliance.volume import Volume, VolumeConfig
from appliance.volume.mirror_lock import MirrorInUse

VOL = uuid.UUID("0b5e6a4c-0000-4000-8000-0000000000cc")
BLOCKS = 256
SIZE = BLOCKS * 512
HELLO = Hello("site-a", VOL, SIZE, 512, 1, 1)


def cfg(tmp_path) -> ReplicaConfig:
    return ReplicaConfig(VolumeSpec(VOL, SIZE, 512), replica_paths(tmp_path, VOL),
                         journal_size=1 << 20, mirror_sync_interval_s=3600)


def lun_over(c: ReplicaConfig, tmp_path) -> Volume:
    """The handler's volume over the replica's mirror, with a journal of its own."""
    return Volume.open(VolumeConfig(uuid=uuid.uuid4(), num_blocks=BLOCKS, journal_size=1 << 20,
                                    chunk_size=16384, max_transfer_bytes=64 * 1024,
                                    mirror_path=c.paths.mirror,
                                    journal_path=tmp_path / "lun.journal",
                                    bitmap_path=tmp_path / "lun.bitmap",
                                    service_interval=None))


def replicated(c: ReplicaConfig) -> Replica:
    r = Replica(c)
    r.bind(HELLO, 0)
    r.commit([WireRecord(1, 10, 1, 0, 2, b"\x01" * 1024)])
    r.apply_pending()
    return r


def test_a_lun_over_a_live_replicas_mirror_is_refused_and_writes_nothing(tmp_path):
    c = cfg(tmp_path)
    r = replicated(c)
    before = c.paths.mirror.read_bytes()
    with pytest.raises(MirrorInUse, match=r"replica\.img|mirror .* is written by another "
                                          r"process.*so the handler may not write it"):
        lun_over(c, tmp_path)
    assert c.paths.mirror.read_bytes() == before
    assert not (tmp_path / "lun.journal").exists()
    r.close()
    lun_over(c, tmp_path).close()      # the receiver gone, the admin's choice is theirs


def test_a_replica_is_refused_while_a_lun_serves_its_mirror(tmp_path):
    c = cfg(tmp_path)
    replicated(c).close()
    lun = lun_over(c, tmp_path)
    with pytest.raises(MirrorInUse, match="so the DR receiver may not write it"):
        Replica(c)
    lun.close()
    Replica(c).close()


def test_a_promoted_replica_opens_beside_the_lun_and_demote_waits_for_the_lun_to_go(tmp_path):
    c = cfg(tmp_path)
    replicated(c).close()
    promote(c)
    lun = lun_over(c, tmp_path)        # the admin serves the promoted image
    held = Replica(c)                  # the receiver keeps its promoted slot: no writer
    assert held.status()["state"] == "promoted"
    with pytest.raises(MirrorInUse, match="so the DR receiver may not write it"):
        check_demote(c)
    with pytest.raises(MirrorInUse):
        demote(c)
    assert ReplicaState.load(c.paths.state).promoted is not None    # nothing changed
    lun.close()
    held.close()
    assert demote(c) == 2
