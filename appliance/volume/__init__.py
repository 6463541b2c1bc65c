"""The write fork: journal (write-ahead) + local mirror + overflow bitmap. See docs/volume.md."""

from appliance.journal import InvalidRequest, JournalMismatch, OpKind, WriteOp
from appliance.volume.config import FlushPolicy, VolumeConfig
from appliance.volume.errors import (
    BitmapError,
    MediumError,
    NoSpaceError,
    SyncAborted,
    VolumeConfigError,
    VolumeError,
)
from appliance.volume.resizing import ResizeRefused
from appliance.volume.resync import ResyncSnapshot, ResyncSource, region_extent
from appliance.volume.volume import JOURNALING, LOGGING_TO_BITMAP, Volume

__all__ = [
    "JOURNALING",
    "LOGGING_TO_BITMAP",
    "BitmapError",
    "FlushPolicy",
    "InvalidRequest",
    "JournalMismatch",
    "MediumError",
    "OpKind",
    "ResizeRefused",
    "ResyncSnapshot",
    "ResyncSource",
    "Volume",
    "VolumeConfig",
    "NoSpaceError",
    "SyncAborted",
    "VolumeConfigError",
    "VolumeError",
    "WriteOp",
    "region_extent",
]
