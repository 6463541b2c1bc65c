"""The volume-uuid rule: one function, pinned (journals, bitmaps and DR peers hold the uuid it
gave), used by the handler's backend and by the DR tool without loading the TCMU stack."""

import subprocess
import sys
import uuid
from pathlib import Path

from appliance.replication.dr.dr_tool import promote_next_steps
from appliance.replication.dr.promotion import Promotion
from appliance.tcmu.backend import VolumeBackend
from appliance.tcmu.cfgstring import parse_config
from appliance.volume.identity import mirror_volume_uuid

MIRROR = "/var/lib/appliance/volumes/vol1.img"
# What every release so far gave this mirror: changing it orphans every journal and replica.
PINNED = uuid.UUID("133f53ec-a024-5568-9167-86faf23c16a0")


def test_the_uuid_of_a_mirror_path_never_changes():
    assert mirror_volume_uuid(MIRROR) == PINNED
    assert mirror_volume_uuid(Path(MIRROR)) == PINNED
    assert mirror_volume_uuid("/var/lib/appliance/volumes/vol2.img") != PINNED


def test_the_handler_and_the_dr_tool_give_a_mirror_the_same_uuid(tmp_path):
    mirror = tmp_path / "vol.img"
    config = parse_config(f"mirror/mirror={mirror};journal={tmp_path / 'vol.jnl'};"
                          "journal_size=8M")
    backend = VolumeBackend.open(config, 1 << 20, "serial")
    try:
        served = backend.volume.uuid
    finally:
        backend.volume.close()
    assert served == mirror_volume_uuid(mirror)
    hint = promote_next_steps(Promotion(uuid.uuid4(), 4, 2, "site-a", mirror, 0.0), 1 << 20)
    assert f"volume_uuid = {served} " in hint


def test_the_dr_tool_does_not_load_the_tcmu_stack():
    """Its promote hint names the uuid the LUN will get, without pyudev on the DR site."""
    probe = ("import sys, uuid, pathlib\n"
             "from appliance.replication.dr import dr_tool, promotion\n"
             "p = promotion.Promotion(uuid.uuid4(), 4, 2, 'a', pathlib.Path('/m'), 0.0)\n"
             "assert str(dr_tool.mirror_volume_uuid('/m')) in dr_tool.promote_next_steps(p, 1)\n"
             "print(sorted(m for m in sys.modules if m.startswith(('appliance.tcmu', 'pyudev'))))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[3])
    assert out.stdout.strip() == "[]"
