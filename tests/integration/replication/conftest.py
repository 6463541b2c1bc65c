"""Fixtures of the replication integration tier: a test PKI and a primary/DR pair on loopback."""

from __future__ import annotations

import shutil
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from repl_harness import (
    BLOCK,
    PY,
    Pki,
    Proc,
    free_port,
    make_pki,
    module_proc,
    status,
    wait_for,
)

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.fail("the openssl CLI is needed to make test certificates (apt install openssl)")
    return make_pki(tmp_path_factory.mktemp("pki"))


@dataclass
class Site:
    """A primary volume (written by the writer process) and its transmitter."""

    name: str
    uuid: uuid.UUID
    blocks: int
    dir: Path
    tx_config: Path
    control: Path
    log: Path

    @property
    def journal(self) -> Path:
        return self.dir / "journal"

    @property
    def mirror(self) -> Path:
        return self.dir / "mirror"


@dataclass
class Pair:
    root: Path
    pki: Pki
    port: int
    rx_control: Path
    rx_config: Path
    rx_state: Path
    volumes: list[tuple[uuid.UUID, int]] = field(default_factory=list)
    procs: list[Proc] = field(default_factory=list)
    rx_host: str = "127.0.0.1"                  # where the receiver listens / is reached
    rx_prefix: list[str] = field(default_factory=list)   # e.g. ip netns exec NS
    tx_prefix: list[str] = field(default_factory=list)

    # --- receiver ---------------------------------------------------------------------

    def write_rx_config(self, *, tls: bool = True, compression: bool = True,
                        allowed: dict[uuid.UUID, list[str]] | None = None,
                        dead_after_s: float = 3.0,
                        mirrors: dict[uuid.UUID, Path] | None = None,
                        provision: bool = False) -> None:
        top = ['identity = "dr-site"', f'listen = "{self.rx_host}:{self.port}"',
               f'state_dir = "{self.rx_state}"', f'control_socket = "{self.rx_control}"',
               "heartbeat_s = 0.5", f"dead_after_s = {dead_after_s}",
               f"compression = {'true' if compression else 'false'}"]
        if not tls:
            top.append("insecure = true")
        if provision:
            top.append("provision = true")
        vols: list[str] = []
        for vid, blocks in self.volumes:
            vols += ["[[volume]]", f'uuid = "{vid}"', f"size_bytes = {blocks * BLOCK}",
                     f"block_size = {BLOCK}", f"journal_size = {4 << 20}"]
            if mirrors and vid in mirrors:
                vols.append(f'mirror = "{mirrors[vid]}"')
            if allowed and vid in allowed:
                vols.append("allowed_primaries = [" +
                            ", ".join(f'"{a}"' for a in allowed[vid]) + "]")
        # TOML: top-level keys first, then the [tls] table, then the [[volume]] tables.
        text = ("\n".join(top) + "\n" + (self.pki.tls_toml("dr-site") if tls else "") +
                "\n".join(vols) + "\n")
        self.rx_config.write_text(text)

    def receiver(self) -> Proc:
        p = module_proc("receiver", "appliance.replication.dr.receiver", self.rx_config, self.root,
                        self.rx_prefix)
        self.procs.append(p)
        return p

    def serve(self, *sites: Site, **rx_config) -> Proc:
        """Configure the receiver for these sites' volumes, start it, wait until it answers."""
        self.volumes = [(site.uuid, site.blocks) for site in sites]
        self.write_rx_config(**rx_config)
        proc = self.receiver().start()
        self.wait_rx_up(proc)
        return proc

    def rx_status(self) -> dict:
        return status(self.rx_control)

    def wait_rx_up(self, proc: Proc, timeout: float = 20) -> None:
        def up():
            assert proc.running(), f"receiver exited:\n{proc.output()[-3000:]}"
            return self.rx_status()
        wait_for(up, timeout, "the receiver's control socket")

    # --- primaries --------------------------------------------------------------------

    def site(self, name: str, *, blocks: int = 8192, vol: uuid.UUID | None = None,
             identity: str | None = None, cert: str | None = None, ca: str = "ca",
             port: int | None = None, tls: bool = True, compression: bool = True,
             size_blocks: int | None = None, extra: str = "",
             volume_of: Site | None = None, resync: bool = False) -> Site:
        """A transmitter config; ``volume_of`` reuses another site's volume (its journal)."""
        vid = volume_of.uuid if volume_of else (vol or uuid.uuid4())
        d = volume_of.dir if volume_of else self.root / name
        d.mkdir(parents=True, exist_ok=True)
        control = self.root / f"tx-{name}.sock"
        identity = identity or name
        host = "127.0.0.1" if port else self.rx_host
        lines = [f'identity = "{identity}"', f'peer = "{host}:{port or self.port}"',
                 'peer_identity = "dr-site"', f'journal = "{d / "journal"}"',
                 f'volume_uuid = "{vid}"', f"size_bytes = {(size_blocks or blocks) * BLOCK}",
                 f"block_size = {BLOCK}", "generation = 1", f'control_socket = "{control}"',
                 f"compression = {'true' if compression else 'false'}",
                 "heartbeat_s = 0.5", "dead_after_s = 3.0", "backoff_max_s = 1.0"]
        if not tls:
            lines.append("insecure = true")
        if resync:
            lines += [f'mirror = "{d / "mirror"}"', f'bitmap = "{d / "bitmap"}"']
        text = "\n".join(lines) + "\n" + extra
        if tls:
            text += self.pki.tls_toml(cert or name, ca)
        cfg = self.root / f"tx-{name}.toml"
        cfg.write_text(text)
        return Site(name, vid, blocks, d, cfg, control, self.root / f"writelog-{name}")

    def transmitter(self, site: Site) -> Proc:
        p = module_proc(f"transmitter-{site.name}", "appliance.replication.primary.transmitter",
                        site.tx_config, self.root, self.tx_prefix)
        self.procs.append(p)
        return p

    def writer(self, site: Site, ops: int, *, pause: float = 0.0, seed: int = 1,
               journal_size: int = 8 << 20, linger: bool = False,
               full_resync: bool = False, blocks: int | None = None,
               resize_to: int | None = None, extra: tuple[str, ...] = ()) -> Proc:
        p = Proc(f"writer-{site.name}",
                 [PY, str(HERE / "repl_writer.py"), "--volume-dir", str(site.dir),
                  "--uuid", str(site.uuid), "--blocks", str(blocks or site.blocks), "--log",
                  str(site.log), "--ops", str(ops), "--pause", str(pause), "--seed", str(seed),
                  "--journal-size", str(journal_size)] + (["--linger"] if linger else [])
                 + (["--full-resync"] if full_resync else [])
                 + (["--resize-to", str(resize_to)] if resize_to else []) + list(extra),
                 self.root / f"writer-{site.name}.log")
        self.procs.append(p)
        return p

    def proxy(self, listen_port: int, *args: str) -> Proc:
        p = Proc("proxy", [PY, str(HERE / "repl_proxy.py"), "--listen-port", str(listen_port),
                           "--target-port", str(self.port), *args], self.root / "proxy.log")
        self.procs.append(p)
        return p

    def replica_dir(self, vid: uuid.UUID) -> Path:
        return self.rx_state / str(vid)

    def logs(self) -> str:
        return "\n".join(f"----- {p.name} -----\n{p.output()[-4000:]}" for p in self.procs)


@pytest.fixture
def pair(tmp_path, pki):
    p = Pair(root=tmp_path, pki=pki, port=free_port(), rx_control=tmp_path / "rx.sock",
             rx_config=tmp_path / "rx.toml", rx_state=tmp_path / "replicas")
    try:
        yield p
    finally:
        for proc in reversed(p.procs):
            proc.stop()


# --- pinned certificates ([tls] peers) ----------------------------------------------------


@pytest.fixture(scope="session")
def site_certs(tmp_path_factory) -> dict:
    """Self-signed certificates made as each appliance makes its own
    (targetcli_ext.identity): site-a, dr-site, and an impostor of each (same name, other
    key). name -> SiteCertificate (cert, key, fingerprint)."""
    from targetcli_ext.identity import ensure_certificate

    if shutil.which("openssl") is None:
        pytest.fail("the openssl CLI is needed to make test certificates (apt install openssl)")
    root = tmp_path_factory.mktemp("site-certs")
    return {name: ensure_certificate(root / name, identity) for name, identity in
            (("site-a", "site-a"), ("dr-site", "dr-site"), ("other-site-a", "site-a"),
             ("other-dr-site", "dr-site"))}
