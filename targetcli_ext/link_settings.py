"""The site's replication-link settings (``/replication set link``): where the link's TLS runs.

``kernel_tls``: the kernel encrypts and decrypts the link (kTLS, appliance/replication/
kernel_tls.py), which caps it at TLS 1.2 with ECDHE and AES-GCM; a kernel without the ``tls``
module keeps it in user space and the status says so. One setting for the whole site: the
receiver's TLS version is chosen before it knows which primary connects. It goes into the
``[tls]`` of receiver.toml and of every transmitter file; the daemons take it when they
connect again, so the running ones are restarted (the receiver reloads).
"""

from __future__ import annotations

from dataclasses import replace

from targetcli_ext.model import ModelError, Site, parse_bool
from targetcli_ext.units import UnitError, transmitter_unit

LINK_PARAMETERS = ("kernel_tls",)


class LinkOperations:
    """Mixed into ``ReplicationContext`` (its store, layout, units and the transmitter and
    receiver operations)."""

    def set_link(self, changes: dict[str, object], notes) -> Site:
        unknown = sorted(set(changes) - set(LINK_PARAMETERS))
        if unknown:
            raise ModelError(f"no parameter {', '.join(unknown)} in group 'link' "
                             f"(parameters: {', '.join(LINK_PARAMETERS)})")
        kernel = parse_bool(changes["kernel_tls"], "kernel_tls")
        with self.store.locked():
            site = self.store.load()
            new = replace(site, kernel_tls=kernel)
            if new == site:
                return site
            self.store.save(new)
            receiver_changed = self.receiver_follows(new)
        for name in new.volumes:
            self.apply_volume(name)
        for name in new.groups:
            self.apply_group(name)
        self.reload_running_receiver(receiver_changed, notes)
        self._restart_transmitters(sorted([*new.volumes, *new.groups]), notes)
        where = ("in the kernel (kTLS, TLS 1.2 with ECDHE and AES-GCM) where this kernel "
                 "can; 'status' shows each link's encryption" if kernel else
                 "in user space (OpenSSL, TLS 1.2 or 1.3)")
        notes.info(f"The replication link is now encrypted {where}.")
        return new

    def _restart_transmitters(self, names: list[str], notes) -> None:
        """The running transmitters connect again with the new ``[tls]``."""
        restarted = []
        for name in names:
            unit = transmitter_unit(name)
            try:
                if self.units.is_active(unit):
                    self.units.restart(unit)
                    restarted.append(name)
            except UnitError as err:
                notes.warning(f"{err}; its file is saved: run 'systemctl restart {unit}'")
        if restarted:
            notes.info(f"Restarted the transmitters of {', '.join(restarted)}.")


def link_document(site: Site) -> dict[str, object]:
    """The link group's saved values (``get link``)."""
    return {"kernel_tls": site.kernel_tls}
