"""SBC disk emulation: SCSI commands from the TCMU ring → Volume calls (docs/scsi.md)."""

from appliance.scsi.command import ScsiCommand, ScsiResult, Status
from appliance.scsi.disk import ScsiDisk
from appliance.scsi.identity import DiskIdentity, DiskLimits

__all__ = ["DiskIdentity", "DiskLimits", "ScsiCommand", "ScsiDisk", "ScsiResult", "Status"]
