"""The targetcli shell without a kernel (imported by name as ``shell_fakes``, never through
``conftest``, which pytest resolves to whichever conftest it imported last): a fake rtslib tree, the stock shell classes, a shell
whose output the test reads.

Two gaps between this host's venv and the appliance's Debian packages are bridged here, and
only here:

- targetcli-fb imports ``gi.repository.Gio`` (PyGObject, for tcmu-runner's D-Bus service)
  at import time; PyGObject has no wheel, so a stub stands in when it is missing: no
  ``user:`` backstore handlers are found, as on a machine without the D-Bus service.
- configshell-fb 1.1.28 from PyPI calls ``inspect.getargspec``, which Python 3.11 removed;
  Debian's 1.1.28 is patched to ``getfullargspec``. The shim gives the old name the old
  result (args, varargs, keywords, defaults), which is what Debian's patch computes.
"""

from __future__ import annotations

import collections
import importlib.util
import inspect
import io
import json
import ssl
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest

if importlib.util.find_spec("gi") is None:
    class _NoBus(Exception):
        pass

    def _no_bus(*args, **kwargs):
        raise _NoBus("no D-Bus in the unit tests")

    gio = types.SimpleNamespace(bus_get_sync=lambda *a, **k: None, BusType=types.SimpleNamespace(
        SYSTEM=1), DBusProxy=types.SimpleNamespace(new_sync=_no_bus),
        DBusProxyFlags=types.SimpleNamespace(NONE=0))
    gi = types.ModuleType("gi")
    gi_repository = types.ModuleType("gi.repository")
    gi_repository.Gio = gio
    gi.repository = gi_repository
    sys.modules.setdefault("gi", gi)
    sys.modules.setdefault("gi.repository", gi_repository)

if not hasattr(inspect, "getargspec"):
    _ArgSpec = collections.namedtuple("ArgSpec", "args varargs keywords defaults")

    def _getargspec(func):
        spec = inspect.getfullargspec(func)
        return _ArgSpec(spec.args, spec.varargs, spec.varkw, spec.defaults)

    inspect.getargspec = _getargspec

import targetcli.ui_backstore
import targetcli.ui_root
from configshell_fb import ExecutionError
from recorded_states import recorded
from rtslib_fb import RTSLibError

from appliance.control.client import ControlError
from appliance.replication.pairing import CertificateFetchError
from targetcli_ext.config import ShellConfig
from targetcli_ext.context import ReplicationContext
from targetcli_ext.daemons import DaemonSockets
from targetcli_ext.main import ApplianceShell
from targetcli_ext.root import ApplianceRoot
from targetcli_ext.units import EXPORTER_UNIT, UnitError, Units

# --- the fake rtslib tree ----------------------------------------------------------------


@dataclass
class FakeStorageObject:
    """What targetcli's fileio storage-object node reads of an rtslib storage object."""

    name: str
    plugin: str = "fileio"
    udev_path: str = "/var/lib/images/disk.img"
    size: int = 1 << 30
    write_back: bool = True
    status: str = "deactivated"
    alua_tpgs: list = field(default_factory=list)
    config: str | None = None           # a user: backstore's config string ("mirror/...")

    def list_parameters(self, writable=None):
        return []

    def list_attributes(self, writable=None):
        return []

    def dump(self) -> dict:
        return {"name": self.name, "plugin": self.plugin, "dev": self.udev_path,
                "size": self.size, "config": self.config}


class FakeLIO:
    """The kernel's LIO configuration as the shell sees it through rtslib."""

    def __init__(self) -> None:
        self.storage_objects: list[FakeStorageObject] = []
        self.fabric_modules: list = []
        self.sessions: list = []


class FakeRTSRoot:
    """rtslib's RTSRoot over a FakeLIO (class attribute: targetcli makes new RTSRoots)."""

    lio = FakeLIO()

    def invalidate_caches(self):
        pass

    @property
    def storage_objects(self):
        return iter(list(self.lio.storage_objects))

    @property
    def fabric_modules(self):
        return iter(self.lio.fabric_modules)

    @property
    def sessions(self):
        return iter(self.lio.sessions)

    def clear_existing(self, target=None, storage_object=None, confirm=False):
        if not confirm:
            raise RTSLibError("As a precaution, confirm=True needs to be set")
        self.lio.storage_objects.clear()

    def save_to_file(self, save_file=None, so_path=None):
        Path(save_file).write_text(json.dumps(
            {"storage_objects": [so.dump() for so in self.lio.storage_objects]}))

    def restore_from_file(self, restore_file=None, clear_existing=True, target=None,
                          storage_object=None, abort_on_error=False):
        saved = json.loads(Path(restore_file).read_text())
        if clear_existing:
            self.lio.storage_objects.clear()
        for so in saved["storage_objects"]:
            self.lio.storage_objects.append(FakeStorageObject(
                so["name"], so["plugin"], so["dev"], so["size"], config=so.get("config")))
        return []


@pytest.fixture
def lio(monkeypatch) -> FakeLIO:
    monkeypatch.setattr(FakeRTSRoot, "lio", FakeLIO())
    monkeypatch.setattr(targetcli.ui_root, "RTSRoot", FakeRTSRoot)
    monkeypatch.setattr(targetcli.ui_backstore, "RTSRoot", FakeRTSRoot)
    FakeRTSRoot.lio.storage_objects.append(FakeStorageObject("disk1"))
    return FakeRTSRoot.lio


def mirror_backstore(lio: FakeLIO, name: str, base: Path, size: int = 64 << 20,
                     block_size: int = 512) -> FakeStorageObject:
    """A user:mirror backstore as targetcli creates it (the files need not exist)."""
    cfg = f"mirror/mirror={base}/{name}.img;journal={base}/{name}.jnl;journal_size=16M"
    if block_size != 512:
        cfg += f";block_size={block_size}"
    so = FakeStorageObject(name, plugin="user", udev_path="", size=size, config=cfg)
    lio.storage_objects.append(so)
    return so


# --- systemd and the daemons' control sockets, as the shell drives them ---------------------


class FakeUnits(Units):
    """systemd's units as the shell starts and stops them: a log of what was asked."""

    def __init__(self) -> None:
        super().__init__(runner=self._refuse)
        self.active: set[str] = set()
        self.log: list[tuple[str, str]] = []
        self.failing: dict[str, str] = {}          # unit -> what systemctl says
        self.journal: dict[str, list[str]] = {}    # unit -> what its process wrote
        self.on_start: dict[str, object] = {}      # unit -> called when it (re)starts

    @staticmethod
    def _refuse(args):
        raise AssertionError(f"the unit tests run no systemctl: {args}")

    def _do(self, verb: str, unit: str) -> None:
        self.log.append((verb, unit))
        if unit in self.failing:
            raise UnitError(f"systemctl {verb} {unit} failed: {self.failing[unit]}")

    def start(self, unit: str) -> None:
        self._do("start", unit)
        self._run(unit)

    def stop(self, unit: str) -> None:
        self._do("stop", unit)
        self.active.discard(unit)

    def restart(self, unit: str) -> None:
        self._do("restart", unit)
        self._run(unit)

    def _run(self, unit: str) -> None:
        self.active.add(unit)
        if unit in self.on_start:
            self.on_start[unit](unit)

    def is_active(self, unit: str) -> bool:
        return unit in self.active

    def log_lines(self, unit: str, since: float, count: int = 20) -> list[str]:
        return self.journal.get(unit, [])[-count:]


class FakeExporter:
    """appliance-exporter as systemd runs it under FakeUnits: each (re)start reads
    exporter.toml with the exporter's own parser; ``refuse(config)`` returning a line makes
    that start fail (the process exits after writing the line to the journal). Its control
    socket answers ``status`` with what it runs with (docs/monitoring.md)."""

    def __init__(self, units: FakeUnits, path: Path) -> None:
        self.units, self.path = units, path
        self.config = None
        self.alerts: list[dict] = []
        self.refuse = lambda config: None
        self.starts = 0
        units.on_start[EXPORTER_UNIT] = self._started

    def _started(self, unit: str) -> None:
        from appliance.exporter.config import load_exporter_config
        self.starts += 1
        config = load_exporter_config(self.path)
        why = self.refuse(config)
        if why:
            self.config = None
            self.units.active.discard(unit)
            self.units.journal.setdefault(unit, []).append(why)
            return
        self.config = config

    def status(self, args=None) -> dict:
        if self.config is None or EXPORTER_UNIT not in self.units.active:
            raise ControlError(f"cannot talk to control socket {self.path.parent}/exporter.sock"
                               f": [Errno 111] Connection refused")
        c = self.config
        hook = None if c.webhook is None else {
            "url": c.webhook.url, "queued": 0, "delivered": 0, "failed_attempts": 0,
            "dropped": 0, "last_error": None, "last_delivered_at": None}
        return {"role": "exporter", "version": "test", "listen": c.listen,
                "evaluated_at": 1700000000.0, "interval": c.interval, "alerts": self.alerts,
                "thresholds": c.alerts.as_dict(), "webhook": hook, "errors": {}}


class FakeCalls:
    """The daemons' control sockets: each call recorded, answered from ``replies``."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, dict]] = []
        self.replies: dict[str, object] = {"reload": {"added": [], "removed": [],
                                                      "unchanged": 0}}

    def __call__(self, path, cmd, args=None, *, timeout=5.0):
        self.log.append((Path(path).name, cmd, dict(args or {})))
        reply = self.replies.get(cmd, {})
        if isinstance(reply, Exception):
            raise reply
        if callable(reply):                 # a fake daemon answering from its state
            return reply(args)
        return reply


def unreachable(address: str, timeout: float) -> bytes:
    """No network in the unit tests unless a test serves a certificate itself."""
    raise CertificateFetchError(f"cannot connect to {address}: unreachable from the tests")


def refused(sh, cmdline: str) -> str:
    """The shell's refusal of ``cmdline`` (an ExecutionError), as the admin reads it."""
    with pytest.raises(ExecutionError) as info:
        sh.run(cmdline)
    return str(info.value)


# --- the shell ---------------------------------------------------------------------------


class Daemons:
    """The daemons' answers as the shell collects them: a recorded state, or none."""

    def __init__(self) -> None:
        self.snapshot: dict = {"handler": None, "receiver": None, "transmitters": {},
                               "errors": {}}
        self.calls = 0

    def load(self, name: str) -> dict:
        self.snapshot = recorded(name)
        return self.snapshot

    def collect(self) -> dict:
        self.calls += 1
        return self.snapshot


@dataclass
class Shell:
    shell: ApplianceShell
    root: ApplianceRoot
    ctx: ReplicationContext
    daemons: Daemons
    state_dir: Path
    units: FakeUnits
    calls: FakeCalls

    def run(self, cmdline: str) -> str:
        """Run one command line as 'targetcli CMD' does; stdout and log lines, uncoloured."""
        out = io.StringIO()
        self.shell.con._stdout = out
        self.shell.con._stderr = out
        self.shell.run_cmdline(cmdline)
        return out.getvalue()


@pytest.fixture
def daemons() -> Daemons:
    return Daemons()


@pytest.fixture
def make_shell(tmp_path, lio, daemons):
    def make(as_root: bool = True, now: float | None = None, fetch=unreachable,
             units: FakeUnits | None = None, calls: FakeCalls | None = None) -> Shell:
        import datetime as dt
        config = shell_config(tmp_path)
        units = units or FakeUnits()
        calls = calls or FakeCalls()
        shell = ApplianceShell(config.prefs_dir)
        shell.prefs["color_mode"] = False
        shell.prefs["logfile"] = str(tmp_path / "prefs" / "log.txt")
        def clock() -> float:      # the moment the recorded state was taken
            return daemons.snapshot.get("now", now or 1700000000.0)

        ctx = ReplicationContext(config, collect=daemons.collect, clock=clock,
                                 tz=dt.UTC, units=units, caller=calls, fetch=fetch,
                                 storage_objects=lambda: FakeRTSRoot().storage_objects)
        root = ApplianceRoot(shell, ctx, as_root=as_root)
        root.refresh()
        return Shell(shell, root, ctx, daemons, config.state_dir, units, calls)
    return make


def shell_config(tmp_path: Path) -> ShellConfig:
    return ShellConfig(state_dir=tmp_path / "replication", replicas_dir=tmp_path / "replicas",
                       groups_dir=tmp_path / "groups",
                       sockets=DaemonSockets(tmp_path / "handler.sock", tmp_path / "run"),
                       lock_file=tmp_path / "targetcli.lock",
                       prefs_dir=str(tmp_path / "prefs"), fetch_timeout_s=2.0,
                       saved_config=tmp_path / "etc" / "replication.json")


@pytest.fixture
def sh(make_shell) -> Shell:
    return make_shell()


@pytest.fixture(scope="session")
def dr_certificate(tmp_path_factory):
    """The DR's certificate, as its receiver presents it (made once: openssl is slow)."""
    from targetcli_ext.identity import ensure_certificate
    return ensure_certificate(tmp_path_factory.mktemp("dr-site"), "dr-site")


def paired_with_dr(make_shell, certificate) -> Shell:
    """A shell whose site has paired peer dr (192.0.2.2:7700), its certificate fetched."""
    der = ssl.PEM_cert_to_DER_cert(certificate.cert.read_text())
    shell = make_shell(fetch=lambda address, timeout: der)
    shell.run(f"/replication/peers create name=dr address=192.0.2.2:7700 "
              f"fingerprint={certificate.fingerprint}")
    return shell


class FakeDaemons:
    """The daemons' control sockets, as ``ctx.call(socket, cmd, **args)`` reaches them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict]] = []
        self.answers: dict[str, object] = {}

    def __call__(self, socket, cmd: str, **args):
        self.calls.append((Path(socket).name, cmd, args))
        answer = self.answers.get(cmd, {})
        if isinstance(answer, Exception):
            raise answer
        return answer

    def refuse(self, cmd: str, reason: str) -> None:
        self.answers[cmd] = ExecutionError(reason)

    def not_running(self, cmd: str, socket: str) -> None:
        self.answers[cmd] = ExecutionError(f"cannot talk to control socket /run/appliance/"
                                           f"{socket}: [Errno 2] No such file or directory")
