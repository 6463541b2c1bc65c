"""ScsiDisk: decode a batch of commands off the ring, run them in order against the Volume,
coalescing consecutive writes into one group commit. Never raises: every failure becomes
CHECK CONDITION with sense (sense.result_for_exception is the one place that decides)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from appliance.scsi import admin, caw, provisioning, rw, sense
from appliance.scsi.command import ScsiCommand, ScsiResult
from appliance.scsi.context import Context, Handler, Queued, WriteBatch
from appliance.scsi.fastpath import FAST_HANDLERS
from appliance.scsi.identity import DiskIdentity, DiskLimits

if TYPE_CHECKING:
    from appliance.volume import Volume


def _handlers() -> dict[int, Handler]:
    table: dict[int, Handler] = {
        0x00: admin.do_test_unit_ready,
        0x03: admin.do_request_sense,
        0x12: admin.do_inquiry,
        0x15: admin.do_mode_select,
        0x55: admin.do_mode_select,
        0x1A: admin.do_mode_sense,
        0x5A: admin.do_mode_sense,
        0x1B: admin.do_start_stop_unit,
        0x25: admin.do_read_capacity_10,
        0x9E: admin.do_service_action_in_16,
        0x35: admin.do_synchronize_cache,
        0x91: admin.do_synchronize_cache,
        0x41: provisioning.write_same,
        0x93: provisioning.write_same,
        0x42: provisioning.unmap,
        0x89: caw.compare_and_write,
    }
    table.update(dict.fromkeys(rw.READ_OPCODES, rw.read))
    table.update(dict.fromkeys(rw.WRITE_OPCODES, rw.write))
    table.update(dict.fromkeys(rw.VERIFY_OPCODES, rw.verify))
    table.update(dict.fromkeys(rw.WRITE_AND_VERIFY_OPCODES, rw.write_and_verify))
    return table


HANDLERS: Final[dict[int, Handler]] = _handlers()

# SAM-5 / SPC-4 unit attention condition rules: these neither report nor clear a pending unit
# attention; REQUEST SENSE returns it as its sense data and clears it. REPORT LUNS (0xA0)
# never reaches us: the kernel answers it (target_core_device.c `passthrough_parse_cdb`).
UA_EXEMPT: Final = frozenset({0x12, 0x03, 0xA0})

# Commands whose completion a synchronous mode may make wait for the DR: every command that
# writes the volume, and SYNCHRONIZE CACHE (docs/volume.md, "Synchronous modes").
SYNC_GATED: Final = frozenset({0x35, 0x91, 0x41, 0x93, 0x42, 0x89, *rw.WRITE_OPCODES,
                               *rw.WRITE_AND_VERIFY_OPCODES})


class ScsiDisk:
    """The SBC disk a host sees, backed by a Volume. One instance per TCMU device."""

    def __init__(self, volume: Volume, identity: DiskIdentity,
                 limits: DiskLimits | None = None):
        self.volume = volume
        self.identity = identity
        self.limits = limits or DiskLimits()
        # Read by every READ/WRITE; limits and block size are fixed for the disk's life.
        self._max_transfer_blocks = self.limits.max_transfer_blocks(volume.block_size)
        # The configured cache setting is what MODE SENSE reports as the default value.
        self.wce_default = bool(volume.write_cache_enabled)
        self._ua_lock = threading.Lock()
        self._capacity_changed = False
        self.group_commits = 0          # Volume.submit calls made for batched writes

    def resized(self) -> None:
        """Called by the TCMU layer after the volume's size changed: the next command sees
        UNIT ATTENTION, CAPACITY DATA HAS CHANGED (SBC-3 / SPC-4 annex D 2A/09).

        TCMU does not tell us the I_T nexus, so the condition is reported once, to the first
        initiator that sends a command, rather than once per nexus as SAM-5 intends.
        """
        with self._ua_lock:
            self._capacity_changed = True

    def _pop_unit_attention(self) -> sense.ScsiError | None:
        if not self._capacity_changed:      # fast path: a plain read, no lock per command
            return None
        with self._ua_lock:
            if not self._capacity_changed:
                return None
            self._capacity_changed = False
        return sense.capacity_data_has_changed()

    def execute(self, cmds: Sequence[ScsiCommand]) -> list[ScsiResult]:
        """Run a batch in order; consecutive writes are coalesced into one Volume.submit
        (one group commit). A read overlapping a queued write commits the group first.
        In a synchronous mode the batch waits for the DR once, at its end, for all its
        writes and flushes (SyncGate.defer)."""
        results: list[ScsiResult | None] = [None] * len(cmds)
        batch = WriteBatch(self.volume, results)
        ctx = Context(self.volume, self.identity, self.limits, self.wce_default, batch,
                      max_transfer_blocks=self._max_transfer_blocks,
                      pop_unit_attention=self._pop_unit_attention)
        gate = self.volume.sync
        gate.defer()
        for index, cmd in enumerate(cmds):
            ctx.index = index
            outcome = self._run_one(ctx, cmd)
            if not isinstance(outcome, Queued):     # QUEUED: the group commit answers
                results[index] = outcome
        batch.commit()
        self.group_commits += batch.commits
        try:
            gate.settle()
        except Exception as exc:    # the DR's wait failed: no write or flush may say GOOD
            failed = sense.result_for_exception(exc)
            for index, cmd in enumerate(cmds):
                done = results[index]
                if (done is not None and done.status == 0 and cmd.cdb[:1]
                        and cmd.cdb[0] in SYNC_GATED):
                    results[index] = failed
        missing = sense.internal_target_failure
        return [result if result is not None else missing("no result").result()
                for result in results]

    def _run_one(self, ctx: Context, cmd: ScsiCommand) -> ScsiResult | Queued:
        cdb = cmd.cdb
        # The fast route for plain READ/WRITE (10)/(16) (fastpath.py); it declines (None)
        # anything unusual, and a pending unit attention, to the generic route below.
        if type(cdb) is bytes and cdb and not self._capacity_changed:
            fast = FAST_HANDLERS.get(cdb[0])
            if fast is not None:
                handler, cdb_format = fast
                try:
                    outcome = handler(ctx, cmd, cdb_format)
                except Exception as exc:     # a failed read: the same exit as below
                    return sense.result_for_exception(exc, cdb)
                if outcome is not None:
                    return outcome
        return self._run_generic(ctx, cmd)

    def _run_generic(self, ctx: Context, cmd: ScsiCommand) -> ScsiResult | Queued:
        """Decode and dispatch through HANDLERS; every failure becomes status + sense."""
        cdb = bytes(cmd.cdb)
        try:
            if not cdb:
                raise sense.invalid_field_in_cdb(0, None, "empty CDB")
            opcode = cdb[0]
            if opcode not in UA_EXEMPT:
                pending = self._pop_unit_attention()
                if pending is not None:
                    raise pending
            handler = HANDLERS.get(opcode)
            if handler is None:
                raise sense.invalid_opcode(opcode)
            if cdb is not cmd.cdb:
                cmd = ScsiCommand(cdb, cmd.data, cmd.bidi_in)
            return handler(ctx, cmd)
        except Exception as exc:     # the single exit for failures: status + sense
            return sense.result_for_exception(exc, cdb)
