"""The receiver's admin commands on its control socket, done while it runs.

- ``reload`` {}: read the configuration file again (the path the receiver started with):
  ``[[volume]]`` tables added, removed or changed, ``[tls]`` (for new connections),
  ``provision`` settings, timing and compression (for new sessions). The sessions of the
  volumes it does not touch stay up. A change that needs a restart (identity, listen,
  state_dir, control_socket, insecure) is refused naming the key; so is a file that does not
  load; either way nothing changes.
- ``promote``, ``demote``, ``rollback``, ``invalidate`` {"volume": uuid or name}: the
  operation's rules are asked first (``operations.check``: an unsafe operation is refused
  with the reason, and the link is left alone); then the volume's session is closed and new
  ones are held off (REFUSE ``busy``) while the operation runs on the closed replica exactly
  as ``appliance-dr`` runs it offline (``operations.perform``); then the replica is reopened
  in its new state (a promoted one refuses its old primary with ``promoted``; a rolled-back or
  invalidated one waits for its primary's next contact, a full copy). Returns what
  ``appliance-dr`` prints (and ``next_steps`` after a promotion).
- ``forget`` {"volume", "remove_data": bool}: stop replicating into a provisioned replica:
  its session is closed, its slot dropped, its ``provisioned.json`` removed (and with
  ``remove_data`` every file of it). Returns ``{"volume", "name", "removed": [paths],
  "kept": [paths]}``. A ``[[volume]]`` replica is refused: remove it from the configuration.

- ``set-retention`` {"volume", "retain_s", "retain_bytes"}: the replica's retention window
  (docs/failover.md, "Point in time"), by age (seconds, or a duration such as "24h") and/or
  size (bytes, or "200G"); 0 or "none" for no limit, both 0 for off. A key not given keeps
  its value. Applied live (the link stays up) and saved in state.json. Returns the settings
  and the recoverable range, as ``status`` shows them under ``retention``.
- ``recover`` {"volume", "at"}: the primary's image at a point of the window (``at``:
  "seq:<n>" or an ISO 8601 UTC time) written to ``recovered-<seq>.img`` beside the replica,
  while it goes on replicating (``recover.py``). Returns the path, the seq and primary time
  it represents, and ``next_steps`` (how to look at it through LIO, and remove it). While it
  runs, the operations above are refused on that volume (they close the replica).

- ``resolve`` {"volume", "keep"}: after a split brain in a failback (this site written after
  the promotion; ``dr/failback_admission.py``), which side wins: "new-primary" (the primary's
  next contact copies over this site's writes, which the lost-write report keeps with their
  data) or "this-site" (this mirror never takes the failback). Saved in state.json.

Refusals raise ``CommandError`` with the reason and "nothing changed".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.control.server import CommandError
from appliance.journal import JournalError
from appliance.replication.config import (
    ConfigError,
    ReceiverConfig,
    ReplicaConfig,
    load_toml,
    receiver_config,
)
from appliance.replication.dr import operations, provisioned
from appliance.replication.dr.failback_admission import KEEP_CHOICES
from appliance.replication.dr.provisioned import ProvisionedSpec
from appliance.replication.dr.replica import Replica
from appliance.replication.dr.replica_errors import ReplicaError
from appliance.replication.dr.replica_state import ReplicaStateError
from appliance.replication.dr.retention_settings import (
    RetentionSettings,
    RetentionSettingsError,
)
from appliance.replication.handshake import Refused
from appliance.replication.status import LinkStatus
from appliance.replication.tls import NO_PEER_PAIRED, TlsConfigError, TlsSide

if TYPE_CHECKING:
    from appliance.replication.dr.sync_state import PrimaryReport

log = logging.getLogger("appliance.receiver")

# Settings the running receiver cannot take over: they name what it has bound or opened.
RESTART_KEYS = ("identity", "listen", "state_dir", "control_socket")
_REFUSED = (ReplicaError, ReplicaStateError, JournalError, OSError)


class VolumeSlot:
    """A volume of the receiver: its replica, its lock and its live session."""

    def __init__(self, replica: Replica, spec: ProvisionedSpec | None = None) -> None:
        self.replica = replica
        self.provisioned = spec             # None: a [[volume]] table of the configuration
        self.lock = asyncio.Lock()
        self.session: asyncio.Task | None = None
        self.link = LinkStatus(state="idle")
        self.primary_report: PrimaryReport | None = None   # the primary's latest report
        self.busy: str | None = None        # the admin operation running (replica closed)
        self.snapshot: dict | None = None   # its status from before that operation
        self.recovering: str | None = None  # the point a recover is copying (replica open)

    @property
    def cfg(self) -> ReplicaConfig:
        return self.replica.cfg

    @property
    def name(self) -> str:
        """The volume's name: from its primary's HELLO, else what it was provisioned as."""
        return self.replica.name or (self.provisioned.name if self.provisioned else "")

    def note_report(self, report: PrimaryReport) -> None:
        self.primary_report = report

    def busy_refusal(self) -> Refused:
        return Refused("busy", f"volume {self.cfg.spec.uuid}: the DR site's admin is running "
                               f"{self.busy} on this replica; the primary is admitted again "
                               f"once it ends")


def _args(args: dict, allowed: set[str]) -> None:
    extra = sorted(set(args) - allowed)
    if extra:
        raise CommandError(f"unknown argument(s) {', '.join(extra)} (this command takes: "
                           f"{', '.join(sorted(allowed)) or 'none'}); nothing changed")


class ReceiverAdmin:
    """Part of ``Receiver``: its admin commands. Uses the receiver's slots and settings."""

    cfg: ReceiverConfig
    config_path: Path | None
    slots: dict[uuid.UUID, VolumeSlot]
    offers: dict[uuid.UUID, dict]
    _tls: TlsSide | None

    def volume_status(self, slot: VolumeSlot) -> dict: ...     # the receiver's

    def admin_commands(self) -> dict:
        def operation(action: str):
            return lambda args: self._operation(action, args)
        return {"reload": self.reload, "forget": self.forget,
                "set-retention": self.set_retention, "recover": self.recover,
                "resolve": self.resolve,
                **{action: operation(action) for action in operations.ACTIONS}}

    # --- volumes and holding them ------------------------------------------------------

    def find_slot(self, args: dict) -> VolumeSlot:
        text = args.get("volume")
        if not isinstance(text, str) or not text:
            raise CommandError('name the volume: {"volume": "<uuid or name>"}; nothing changed')
        try:
            cfg = operations.find({u: (s.cfg, s.name) for u, s in self.slots.items()}, text)
        except operations.VolumeNotFound as err:
            raise CommandError(f"{err}; nothing changed") from err
        return self.slots[cfg.spec.uuid]

    @contextlib.asynccontextmanager
    async def holding(self, slot: VolumeSlot, why: str,
                      reopen_with: ReplicaConfig | None = None) -> AsyncIterator[None]:
        """The volume's session closed, new ones refused (``busy``), its replica closed, for
        the body; then the replica reopened (with ``reopen_with`` if given), unless the body
        dropped the slot."""
        vol = slot.cfg.spec.uuid
        _refuse_if_occupied(slot, "is copying its mirror; try again once it ends")
        slot.snapshot = self.volume_status(slot)
        slot.busy = why
        try:
            while (task := slot.session) is not None and not task.done():
                log.info("volume %s: closing its link for %s", vol, why)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            async with slot.lock:
                await asyncio.to_thread(slot.replica.close)
                try:
                    yield
                finally:
                    if self.slots.get(vol) is slot:
                        await self._reopen(slot, reopen_with or slot.cfg)
        finally:
            slot.busy = None
            slot.snapshot = None

    async def _reopen(self, slot: VolumeSlot, cfg: ReplicaConfig) -> None:
        try:
            slot.replica = await asyncio.to_thread(Replica, cfg)
        except _REFUSED as err:
            self.slots.pop(cfg.spec.uuid, None)
            log.error("volume %s: its replica cannot be opened again, so the receiver no longer "
                      "serves it: %s", cfg.spec.uuid, err)
            raise CommandError(f"volume {cfg.spec.uuid}: its replica cannot be opened again "
                               f"({err}); the receiver no longer serves it: fix that, then "
                               f"restart the receiver") from err

    # --- promote, demote, rollback, invalidate ------------------------------------------

    async def _operation(self, action: str, args: dict) -> dict:
        _args(args, {"volume"})
        slot = self.find_slot(args)
        try:
            # The rules first, from the state file: a refusal leaves the link alone.
            await asyncio.to_thread(operations.check, action, slot.cfg)
            async with self.holding(slot, action):
                outcome = await asyncio.to_thread(operations.perform, action, slot.cfg)
        except _REFUSED as err:
            raise CommandError(f"{action} refused: {err}; nothing changed") from err
        log.warning("volume %s: %s done by the admin with the receiver running: %s",
                    slot.cfg.spec.uuid, action, outcome.result)
        if outcome.next_steps:
            return {**outcome.result, "next_steps": outcome.next_steps}
        return outcome.result

    # --- retention: set-retention, recover ---------------------------------------------

    async def set_retention(self, args: dict) -> dict:
        _args(args, {"volume", "retain_s", "retain_bytes"})
        slot = self.find_slot(args)
        vol = slot.cfg.spec.uuid
        if "retain_s" not in args and "retain_bytes" not in args:
            raise CommandError('give retain_s and/or retain_bytes, e.g. {"volume": ..., '
                               '"retain_s": "24h", "retain_bytes": "200G"} (0 or "none": no '
                               'limit; both 0: retention off); nothing changed')
        if slot.busy is not None:
            raise CommandError(f"volume {vol}: {slot.busy} is running on it; try again once it "
                               f"ends; nothing changed")
        try:
            settings = RetentionSettings.from_args(args, slot.replica.retention_settings)
            out = await asyncio.to_thread(slot.replica.set_retention, settings)
        except RetentionSettingsError as err:
            raise CommandError(f"set-retention refused: {err}; nothing changed") from err
        except _REFUSED as err:
            raise CommandError(f"set-retention refused: {err}; nothing changed") from err
        log.warning("volume %s: retention set by the admin: %s", vol, settings.describe())
        return {"volume": str(vol), "name": slot.name, "retention": out}

    async def recover(self, args: dict) -> dict:
        _args(args, {"volume", "at"})
        slot = self.find_slot(args)
        vol = slot.cfg.spec.uuid
        at = args.get("at")
        if not isinstance(at, str) or not at:
            raise CommandError('say which point: {"volume": ..., "at": "seq:<n>" or '
                               '"2026-12-07T05:10:00Z"}; nothing changed')
        _refuse_if_occupied(slot, "is running; one at a time per volume")
        slot.recovering = at
        try:
            out = await asyncio.to_thread(slot.replica.recover, at)
        except _REFUSED as err:
            raise CommandError(f"recover refused: {err}; nothing changed") from err
        finally:
            slot.recovering = None
        log.warning("volume %s: recovered the image after seq %d to %s (replication went on)",
                    vol, out["seq"], out["path"])
        return out

    # --- resolve a split brain -------------------------------------------------------------

    async def resolve(self, args: dict) -> dict:
        _args(args, {"volume", "keep"})
        slot = self.find_slot(args)
        keep = args.get("keep")
        if keep not in KEEP_CHOICES:
            raise CommandError(f"keep must be one of {', '.join(KEEP_CHOICES)}, not {keep!r}; "
                               f"nothing changed")
        found = slot.replica.failback_status or {}
        if found.get("state") != "split-brain":
            raise CommandError(f"volume {slot.name}: no split brain was found at its primary's "
                               f"last contact (state {found.get('state', 'unknown')}); nothing "
                               f"changed")
        async with slot.lock:
            await asyncio.to_thread(slot.replica.keep_after_split_brain, keep)
            slot.replica.failback_status = {**found, "keep": keep}
        log.warning("volume %s: split brain resolved by the admin: %s wins", slot.cfg.spec.uuid,
                    keep)
        return {"volume": str(slot.cfg.spec.uuid), "name": slot.name, "keep": keep,
                "report": found.get("report")}

    # --- forget ---------------------------------------------------------------------------

    async def forget(self, args: dict) -> dict:
        _args(args, {"volume", "remove_data"})
        slot = self.find_slot(args)
        remove_data = args.get("remove_data", False)
        if not isinstance(remove_data, bool):
            raise CommandError(f"remove_data must be true or false, not {remove_data!r}; "
                               f"nothing changed")
        vol = slot.cfg.spec.uuid
        if slot.provisioned is None:
            raise CommandError(f"volume {vol} is configured by a [[volume]] table of "
                               f"{self.config_path or 'the configuration'}: remove it from the "
                               f"configuration (then reload); nothing changed")
        name = slot.name
        async with self.holding(slot, "forget"):
            try:
                removed, kept = await asyncio.to_thread(
                    provisioned.forget, self.cfg.state_dir, slot.cfg, remove_data=remove_data)
            except OSError as err:
                raise CommandError(f"forget of volume {vol} failed: {err}; the replica is "
                                   f"served again") from err
            del self.slots[vol]
        log.warning("volume %s: forgotten by the admin (removed %s; kept %s)", vol,
                    ", ".join(removed) or "nothing", ", ".join(kept) or "nothing")
        return {"volume": str(vol), "name": name, "removed": removed, "kept": kept}

    # --- reload ---------------------------------------------------------------------------

    async def reload(self, args: dict) -> dict:
        _args(args, set())
        if self.config_path is None:
            raise CommandError("this receiver was started without a configuration file: "
                               "nothing to reload")
        path = self.config_path
        try:
            new = receiver_config(load_toml(path), str(path))
        except ConfigError as err:
            raise CommandError(f"{err}; nothing changed (the receiver keeps running with its "
                               f"previous configuration)") from err
        for key in RESTART_KEYS:
            old_value, new_value = getattr(self.cfg, key), getattr(new, key)
            if old_value != new_value:
                raise CommandError(f"{path}: {key} changed ({old_value} -> {new_value}): that "
                                   f"takes a restart of the receiver (systemctl restart "
                                   f"appliance-receiver); nothing changed")
        if (new.tls is None) != (self.cfg.tls is None):
            raise CommandError(f"{path}: insecure changed: that takes a restart of the receiver "
                               f"(systemctl restart appliance-receiver); nothing changed")
        try:
            tls = TlsSide(new.tls, server=True) if new.tls is not None else None
            found = await asyncio.to_thread(provisioned.replica_configs, new.state_dir,
                                            new.volumes)
        except (TlsConfigError, ReplicaError) as err:
            raise CommandError(f"{path}: {err}; nothing changed") from err
        desired = {cfg.spec.uuid: (cfg, spec) for cfg, spec in found}
        added = [u for u in desired if u not in self.slots]
        removed = [u for u in self.slots if u not in desired]
        changed = [u for u in self.slots if u in desired and desired[u][0] != self.slots[u].cfg]
        opened: dict[uuid.UUID, Replica] = {}
        try:
            for u in added:
                opened[u] = await asyncio.to_thread(Replica, desired[u][0])
        except _REFUSED as err:
            for replica in opened.values():
                await asyncio.to_thread(replica.close)
            raise CommandError(f"{path}: volume {u} cannot be opened: {err}; nothing "
                               f"changed") from err
        self.cfg, self._tls = new, tls
        if tls is not None and tls.pins == ():
            log.warning("receiver %s: %s", new.identity, NO_PEER_PAIRED)
        for u in removed:
            slot = self.slots[u]
            async with self.holding(slot, "reload"):
                del self.slots[u]
        for u in changed:
            slot = self.slots[u]
            async with self.holding(slot, "reload", reopen_with=desired[u][0]):
                slot.provisioned = desired[u][1]
        for u, replica in opened.items():
            self.slots[u] = VolumeSlot(replica, desired[u][1])
            self.offers.pop(u, None)         # no longer an offer without a slot
        out = {"added": [str(u) for u in added], "removed": [str(u) for u in removed],
               "changed": [str(u) for u in changed],
               "unchanged": len(self.slots) - len(added) - len(changed)}
        log.warning("configuration %s reloaded: %s", path, out)
        return out


def _refuse_if_occupied(slot: VolumeSlot, recovering: str) -> None:
    """CommandError when an operation (``busy``) or a recover holds the volume; ``recovering``
    says what the running recover means for this command."""
    vol = slot.cfg.spec.uuid
    if slot.busy is not None:
        raise CommandError(f"volume {vol}: {slot.busy} is running on it; try again once it "
                           f"ends; nothing changed")
    if slot.recovering is not None:
        raise CommandError(f"volume {vol}: a recover at {slot.recovering} {recovering}; "
                           f"nothing changed")
