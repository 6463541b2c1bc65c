"""Saving the replication configuration with LIO's, and restoring it at boot.

``saveconfig`` writes ``replication.json`` beside LIO's saveconfig.json (0600, atomic): the
content of site.json plus the pinned peer certificates (``certificates``), so the saved file
alone is enough to restore the pairings. At boot ``appliance-replication-restore`` (run by
``appliance-restore.service`` through /usr/lib/appliance/restore-replication, after LIO's
configuration is restored and the handler runs):

1. if the saved file exists, it becomes the running site.json (a pinned certificate is taken
   from it when its file is missing and its fingerprint is the pinned one);
2. the identity and certificate are made if missing (first boot: so every appliance runs a
   receiver that peers can fetch the certificate from);
3. peers whose certificate is not fetched yet are asked for it (``--fetch-timeout`` each);
4. receiver.toml and each volume's transmitter TOML are rendered again from site.json (a
   hand-written file is kept, and said so), stale generated transmitter files removed;
5. the receiver is started (or reloaded), and each volume's transmitter started when its
   backstore is in LIO (otherwise a line says which backstore is missing), each consistency
   group's when its layout file exists. A hand-written transmitter-<name>.toml is started
   too, as before the shell managed them.
6. exporter.toml is rendered (always: the defaults when site.json has no monitoring; kept as
   it is when site.json cannot be read or the file was written by hand) and
   appliance-exporter.service started, or restarted when its file changed.

Idempotent: run again, it changes nothing that is right. Exit 1 only for a saved file that
cannot be read (the message names it and what to do); every other problem is a log line and
the next volume goes on.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from appliance import __version__
from appliance.replication.tls import fingerprint
from appliance.statefile import remove_durably, write_text_atomic
from targetcli_ext import daemon_config as dc
from targetcli_ext.config import SAVED_FILE, ShellConfig
from targetcli_ext.model import ModelError, Site, site_from_json
from targetcli_ext.operations import Notes
from targetcli_ext.units import UnitError, transmitter_unit

CERTIFICATES_KEY = "certificates"


def saved_path_beside(lio_savefile: str | Path) -> Path:
    """replication.json in the directory of LIO's save file."""
    return Path(lio_savefile).expanduser().parent / SAVED_FILE


def save_replication(ctx, path: Path) -> Path:
    """Write site.json's content and the pinned certificates to ``path`` (0600, atomic)."""
    site = ctx.store.load()
    doc = site.to_dict()
    certs = {}
    for name in sorted(site.peers):
        pem = ctx.layout.peer_pem(name)
        if pem.is_file():
            certs[name] = pem.read_text()
    doc[CERTIFICATES_KEY] = certs
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return path


def load_saved(path: Path) -> tuple[Site, dict[str, str]]:
    """The site and pinned certificates saved in ``path``; ModelError names what is wrong."""
    try:
        text = path.read_text()
    except OSError as err:
        raise ModelError(f"cannot read the saved replication configuration {path}: "
                         f"{err}") from err
    site = site_from_json(text, path)
    certs = json.loads(text).get(CERTIFICATES_KEY) or {}
    if not isinstance(certs, dict) or not all(isinstance(v, str) for v in certs.values()):
        raise ModelError(f"{path}: '{CERTIFICATES_KEY}' is not an object of PEM texts; repair "
                         f"or move away {path}")
    return site, certs


def restore(ctx, notes: Notes) -> ModelError | None:
    """Steps 1-5 of the module's docstring; returns the error of a saved file that cannot be
    read (the running site.json is then restored as it is)."""
    layout = ctx.layout
    saved = ctx.config.saved_config
    broken = None
    try:
        site, certs = load_saved(saved) if saved.exists() else (None, {})
    except ModelError as err:
        broken, site = err, None
        notes.warning(f"{err}; starting the running configuration ({ctx.store.path}) instead")
    if site is not None:
        with ctx.store.locked():
            current = None
            try:
                current = ctx.store.load()
            except ModelError as err:
                notes.warning(f"running {ctx.store.path} unreadable ({err}): replaced by "
                              f"{saved}")
            if current != site:
                ctx.store.save(site)
                notes.info(f"Restored the replication configuration from {saved}.")
            _restore_certificates(site, certs, layout, notes)
    elif broken is None:
        notes.info(f"No saved replication configuration ({saved}): keeping "
                   f"{ctx.store.path} as it is.")
    try:
        site = ctx.ensure_identity()
        ctx.fetch_pending(notes)
        site = ctx.store.load()
    except (ModelError, OSError) as err:
        notes.warning(f"Cannot use the site configuration: {err}; only the exporter is "
                      f"started (its alerts say what does not run).")
        _restore_exporter(ctx, None, notes)
        return broken or (err if isinstance(err, ModelError) else ModelError(str(err)))
    try:
        if ctx.write_receiver(notes):
            notes.info(f"Wrote {layout.receiver_toml}.")
    except (ModelError, OSError) as err:
        notes.warning(f"receiver.toml not written: {err}")
    if layout.receiver_toml.exists():
        ctx.reload_receiver(notes)
    _restore_transmitters(ctx, site, notes)
    _restore_exporter(ctx, site, notes)
    return broken


def _restore_exporter(ctx, site: Site | None, notes: Notes) -> None:
    try:
        changed = ctx.write_exporter(site, notes)
    except (ModelError, OSError) as err:
        notes.warning(f"exporter.toml not written: {err}")
        changed = False
    if ctx.layout.exporter_toml.exists():
        ctx.start_exporter(changed, notes)


def _restore_certificates(site: Site, certs: dict[str, str], layout, notes: Notes) -> None:
    for name, peer in site.peers.items():
        pem = certs.get(name)
        path = layout.peer_pem(name)
        if not pem or path.is_file():
            continue
        try:
            presented = fingerprint(ssl.PEM_cert_to_DER_cert(pem))
        except ValueError:
            presented = None
        if presented != peer.fingerprint:
            notes.warning(f"The saved certificate of peer {name} is not the pinned one "
                          f"({peer.fingerprint}): not restored; it is fetched again.")
            continue
        layout.peers_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_text_atomic(path, pem)
        remove_durably(layout.peer_pending(name))


def _restore_transmitters(ctx, site: Site, notes: Notes) -> None:
    layout = ctx.layout
    for stale, path in layout.generated_transmitters().items():
        if stale not in site.volumes and stale not in site.groups:
            remove_durably(path)
            notes.info(f"Removed {path.name}: volume {stale} is not configured.")
    for name, vol in sorted(site.volumes.items()):
        path = layout.transmitter_toml(name)
        try:
            backstore = ctx.backstore(vol.backstore)
        except ModelError as err:
            notes.warning(f"Volume {name}: {err}; its transmitter is not started (restore "
                          f"LIO's configuration with the backstore, then run this again).")
            continue
        except Exception as err:        # rtslib without configfs: no LIO at all
            notes.warning(f"Volume {name}: cannot read LIO's backstores ({err}); its "
                          f"transmitter is not started.")
            continue
        try:
            if dc.is_generated(path) or not path.exists():
                doc = dc.transmitter_document(site, vol, backstore, layout)
                dc.check_transmitter(doc, path)
                dc.write_generated(path, doc)
            else:
                notes.warning(f"{path} was written by hand: kept as it is.")
        except (ModelError, OSError) as err:
            notes.warning(f"Volume {name}: {err}; its transmitter is not started.")
            continue
        _start(ctx, name, notes)
    _restore_groups(ctx, site, notes)
    for path in sorted(layout.state_dir.glob("transmitter-*.toml")):
        name = path.name[len("transmitter-"):-len(".toml")]
        if name not in site.volumes and name not in site.groups and not dc.is_generated(path):
            notes.info(f"{path.name} was written by hand: starting its transmitter as well.")
            _start(ctx, name, notes)


def _restore_groups(ctx, site: Site, notes: Notes) -> None:
    """Each consistency group's transmitter, rendered again and started: it needs no
    backstore (it waits for the group's journal, docs/groups.md), only its layout."""
    for name in sorted(site.groups):
        path = ctx.layout.transmitter_toml(name)
        if not ctx.layout.group_layout(name).exists():
            notes.warning(f"Group {name}: its layout {ctx.layout.group_layout(name)} is "
                          f"missing; its transmitter is not started (restore the groups "
                          f"directory, then run this again).")
            continue
        try:
            if dc.is_generated(path) or not path.exists():
                ctx.apply_group(name)
            else:
                notes.warning(f"{path} was written by hand: kept as it is.")
        except (ModelError, OSError) as err:
            notes.warning(f"Group {name}: {err}; its transmitter is not started.")
            continue
        _start(ctx, name, notes)


def _start(ctx, name: str, notes: Notes) -> None:
    try:
        ctx.units.start(transmitter_unit(name))
        notes.info(f"Started {transmitter_unit(name)}.")
    except UnitError as err:
        notes.warning(f"Volume {name}: {err}")


def main(argv: Sequence[str] | None = None, config: ShellConfig | None = None,
         ctx=None) -> int:
    parser = argparse.ArgumentParser(
        prog="appliance-replication-restore",
        description="Restore the replication configuration saved by targetcli's saveconfig "
                    "(replication.json) and start the receiver, the volumes' transmitters "
                    "and the exporter. Run at boot after LIO's restore and the handler.")
    parser.add_argument("--saved", type=Path, help="the saved file (default: "
                        "APPLIANCE_SAVED_CONFIG or /etc/rtslib-fb-target/replication.json)")
    parser.add_argument("--fetch-timeout", type=float, default=5.0,
                        help="seconds to wait for each peer whose certificate is not fetched")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    args = parser.parse_args(argv)
    config = config or ShellConfig.from_env()
    config = replace(config, fetch_timeout_s=args.fetch_timeout,
                     saved_config=args.saved or config.saved_config)
    if ctx is None:
        from targetcli_ext.context import ReplicationContext
        ctx = ReplicationContext(config)
    notes = Notes()
    broken = restore(ctx, notes)
    _print(notes)
    if broken is not None:
        print(f"replication restore: {broken}", file=sys.stderr)
        return 1
    return 0


def _print(notes: Notes) -> None:
    for level, text in notes.lines:
        print(f"replication: {'warning: ' if level == 'warning' else ''}{text}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
