"""Alerts from the daemons' status: rules with hysteresis, raised once and cleared once.

Every evaluation turns the daemons' answers into *signals*, one per alert and subject
(volume, peer; a daemon for StatusUnavailable), each saying whether the alert's condition
holds (True), its clear condition holds (False), or neither is known (None: nothing changes,
e.g. a figure the daemon reports as unknown, or a journal between the clear level and the
high water). An alert is raised when its condition has held for its hold time (LinkDown:
``link_down_s``; StatusUnavailable: ``STATUS_HOLD_S``; the others at once) and cleared when
its clear condition holds; each change is one Transition (the journal and the webhook get
it). The active set and the pending hold timers are saved in ``alerts.json`` after each
change, so a restarted exporter neither raises an alert again nor restarts a hold.

An active alert whose subject no longer appears is cleared when the daemon that reported it
answered (the volume is gone) or no longer runs here (its socket is gone); it is kept while
that daemon's socket exists but does not answer (StatusUnavailable says so).

Catalogue (names, severities, message ids): docs/monitoring.md, "Alerts".
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from appliance.control.site_status import Answer
from appliance.exporter import handler_view
from appliance.exporter.config import AlertThresholds
from appliance.exporter.metrics import (
    LOGGING_TO_BITMAP,
    RESYNC_BEGUN,
    rx_link_up,
    rx_volume_label,
    sync_degraded,
    tx_link_up,
    tx_peer,
)
from appliance.statefile import write_json_atomic

log = logging.getLogger(__name__)

STATUS_HOLD_S = 10.0        # a daemon silent this long raises StatusUnavailable
STATE_VERSION = 1


@dataclass(frozen=True)
class AlertKind:
    name: str
    severity: str           # "warning" | "critical"
    raised_id: str          # journal MESSAGE_ID of the raise (fixed, 128 bits)
    cleared_id: str         # ... and of the clear


KINDS = {k.name: k for k in (
    AlertKind("JournalHighWater", "warning",
              "d5a44aa4ff61451e857bcf74c2c87bc4", "1f9de23510f44a7a84861f1b1104240e"),
    AlertKind("RecoveryPointAge", "critical",
              "5cf67311f3f44d2eacbb354df254860f", "383b7be5d6c14beea1c1c5fa74d065d9"),
    AlertKind("LinkDown", "critical",
              "b9154f0560f64ad2b26717b5475541db", "f0283e674afc4195a3cb03b2e782935a"),
    AlertKind("LoggingToBitmap", "warning",
              "a77dd9ef739b4c2ea6f616310b305d0b", "c04a3ce9c1434b2da8f23cc5631de33d"),
    AlertKind("DrInconsistent", "warning",
              "18e6de24cf424459b30f45302396cbc5", "4c66ac560fb049d48831d81c0dedb5fa"),
    AlertKind("PeerRefused", "critical",
              "00c064d1184140e8b983135aa05cae0a", "dfb527d1c0eb474aa05f049893768300"),
    AlertKind("VerifyDiffers", "critical",
              "181e4320597543dd86a265081b82e02a", "87d5990832284b5481fb0cf3af991ec2"),
    AlertKind("StatusUnavailable", "warning",
              "56b192f0b6484affbe979548f368b5da", "e80f0e5b02374108a9ea88b89c214202"),
    AlertKind("SyncDegraded", "warning",
              "91d047ad5a454f519d41204a3ce7c1dd", "7fe92faf1aff4f618fb69dc00ecc1dcc"),
)}

Key = tuple[str, str | None, str | None, str | None]   # alert, volume, peer, daemon subject


@dataclass(frozen=True)
class Signal:
    alert: str
    volume: str | None
    peer: str | None
    daemon: str                 # the daemon whose status says it ("transmitter vol1")
    holds: bool | None          # True: raise condition; False: clear condition; None: neither
    message: str                # what is the case now, in words
    hold_s: float = 0.0
    subject: str | None = None  # StatusUnavailable: the daemon it is about

    @property
    def key(self) -> Key:
        return (self.alert, self.volume, self.peer, self.subject)


@dataclass
class Alert:
    alert: str
    volume: str | None
    peer: str | None
    daemon: str
    since: float
    message: str
    subject: str | None = None

    @property
    def key(self) -> Key:
        return (self.alert, self.volume, self.peer, self.subject)

    @property
    def kind(self) -> AlertKind:
        return KINDS[self.alert]

    def as_dict(self) -> dict:
        """As status shows it (docs/monitoring.md)."""
        return {"alert": self.alert, "volume": self.volume, "peer": self.peer,
                "daemon": self.daemon, "severity": self.kind.severity, "since": self.since,
                "message": self.message, "message_id": self.kind.raised_id}

    @classmethod
    def from_dict(cls, d: dict) -> Alert:
        return cls(alert=d["alert"], volume=d.get("volume"), peer=d.get("peer"),
                   daemon=d.get("daemon") or "", since=float(d["since"]),
                   message=d.get("message") or "",
                   subject=d.get("subject"))


@dataclass(frozen=True)
class Transition:
    """One raise or clear: what the journal and the webhook get."""

    alert: Alert
    state: str                  # "raised" | "cleared"
    message: str
    at: float

    @property
    def message_id(self) -> str:
        kind = self.alert.kind
        return kind.raised_id if self.state == "raised" else kind.cleared_id

    def payload(self, appliance: str) -> dict:
        """The webhook's JSON body (docs/monitoring.md, "Webhook")."""
        return {"alert": self.alert.alert, "state": self.state, "volume": self.alert.volume,
                "peer": self.alert.peer, "appliance": appliance,
                "severity": self.alert.kind.severity, "message": self.message,
                "message_id": self.message_id, "at": self.at, "daemon": self.alert.daemon}


# --- the rules ---------------------------------------------------------------------------

def _fmt_time(epoch: float | None) -> str:
    if not isinstance(epoch, int | float):
        return "an unknown time"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def handler_signals(states: dict, th: AlertThresholds, daemon: str) -> Iterator[Signal]:
    """``states``: each Volume's state once (handler_view.volume_states): a group's alerts
    are the group's, raised once and naming it, not one per member."""
    for name, vol in sorted(states.items()):
        if not isinstance(vol, dict):
            continue
        shown = f"group {name}" if handler_view.is_group(vol) else name
        journal = vol.get("journal") or {}
        pct = journal.get("percent")
        high, clear = th.journal_high_water_percent, th.journal_clear_percent
        if isinstance(pct, int | float):
            holds = True if pct >= high else False if pct < clear else None
            yield Signal("JournalHighWater", name, None, daemon, holds,
                         f"journal of {shown} is {pct:.0f}% full (high water {high:g}%, "
                         f"clears below {clear:g}%)")
        else:
            yield Signal("JournalHighWater", name, None, daemon, None,
                         f"journal of {shown}: fill unknown")
        yield _bitmap_signal(name, daemon, vol.get("state"), vol.get("logging_since"),
                             vol.get("alert"), shown=shown)
        if isinstance(vol.get("sync"), dict):
            yield _sync_signal(name, daemon, vol["sync"], shown)


def _sync_signal(name: str, daemon: str, sync: dict, shown: str) -> Signal:
    """SyncDegraded: a synchronous mode fell back to async (docs/volume.md, "Synchronous
    modes"); the handler returns to the mode by itself once the DR has caught up."""
    mode = sync.get("mode")
    degraded = sync_degraded(sync)
    if not degraded:
        return Signal("SyncDegraded", name, None, daemon, degraded,
                      f"{shown} is no longer degraded (mode {mode})" if degraded is False else
                      f"{shown}: replication mode {sync.get('effective')!r} unknown")
    return Signal("SyncDegraded", name, None, daemon, True,
                  f"{shown} fell back from {mode} to async at "
                  f"{_fmt_time(sync.get('degraded_since'))}: "
                  f"{sync.get('degraded_reason') or 'no reason given'}; host writes complete "
                  f"without waiting for the DR until it has caught up")


def _bitmap_signal(name: str, daemon: str, state, since, why, *,
                   shown: str | None = None) -> Signal:
    shown = shown or name
    if state not in ("journaling", LOGGING_TO_BITMAP):
        return Signal("LoggingToBitmap", name, None, daemon, None,
                      f"{shown}: volume state {state!r} unknown")
    if state != LOGGING_TO_BITMAP:
        return Signal("LoggingToBitmap", name, None, daemon, False,
                      f"{shown} journals its writes again")
    reason = f" ({why})" if why else ""
    return Signal("LoggingToBitmap", name, None, daemon, True,
                  f"{shown} logs writes to the dirty bitmap since {_fmt_time(since)}{reason}: "
                  f"the DR falls behind until a resync ships the dirty regions")


def transmitter_signals(name: str, s: dict, th: AlertThresholds, daemon: str,
                        *, bitmap: bool) -> Iterator[Signal]:
    """``bitmap``: also LoggingToBitmap (when the handler does not report the volume)."""
    peer = tx_peer(s) or None
    link = s.get("link") or {}
    state = link.get("state") or ""
    if bitmap:
        yield _bitmap_signal(name, daemon, s.get("volume_state"), s.get("logging_since"), None)
    age = s.get("recovery_point_age_s")
    limit = th.recovery_point_age_s
    if isinstance(age, int | float):
        yield Signal("RecoveryPointAge", name, peer, daemon, age > limit,
                     f"recovery point of {name} at {peer} is {age:.1f} s old (threshold "
                     f"{limit:g} s): {s.get('behind_reason') or 'the DR is behind'}"
                     if age > limit else
                     f"recovery point of {name} at {peer} is {age:.1f} s old, within "
                     f"{limit:g} s")
    else:
        yield Signal("RecoveryPointAge", name, peer, daemon, None,
                     f"recovery point of {name} at {peer}: age unknown")
    up = tx_link_up(s)
    last = f"; last error: {link['last_error']}" if link.get("last_error") else ""
    yield Signal("LinkDown", name, peer, daemon, not up,
                 f"link of {name} to {peer} is up ({state})" if up else
                 f"link of {name} to {peer} is down (state {state}) for more than "
                 f"{th.link_down_s:g} s{last}", hold_s=th.link_down_s)
    refused = state.startswith("refused:")
    yield Signal("PeerRefused", name, peer, daemon, True if refused else False if up else None,
                 f"{peer} refuses {name} ({state}): {link.get('last_error') or 'no reason'}"
                 if refused else f"{peer} accepts {name} again")
    resync = (s.get("resync") or {}).get("state")
    begun = resync in RESYNC_BEGUN
    yield Signal("DrInconsistent", name, peer, daemon,
                 begun if isinstance(resync, str) else None,
                 f"the DR image of {name} at {peer} is inconsistent while a resync runs "
                 f"(resync {resync}; a failover now needs a rollback)" if begun else
                 f"the DR image of {name} at {peer} is consistent again")
    # Only a finished verify says anything; one running (or failed) leaves the alert as is.
    verify = s.get("verify") or {}
    differing = list(verify.get("differing") or [])
    differs = bool(differing) and not verify.get("repaired")
    yield Signal("VerifyDiffers", name, peer, daemon,
                 differs if verify.get("state") == "done" else None,
                 f"online verify of {name} found {len(differing)} regions that differ "
                 f"at {peer} (run verify with repair)" if differs else
                 f"online verify of {name} finds no difference at {peer}")


def receiver_signals(status: dict, th: AlertThresholds, daemon: str) -> Iterator[Signal]:
    for uuid, v in sorted((status.get("volumes") or {}).items()):
        if not isinstance(v, dict):
            continue
        name = rx_volume_label(uuid, v)
        peer = v.get("primary") or None
        state = v.get("state")
        bad = state == "inconsistent"
        yield Signal("DrInconsistent", name, peer, daemon,
                     bad if state in ("consistent", "inconsistent", "promoted") else None,
                     f"replica {name} is inconsistent since "
                     f"{_fmt_time(v.get('inconsistent_since'))} (a resync is under way; "
                     f"rollback gives the last consistent image)" if bad else
                     f"replica {name} is {state}")
        if state == "promoted":
            yield Signal("LinkDown", name, peer, daemon, False, f"replica {name} is promoted")
            yield Signal("PeerRefused", name, peer, daemon, False,
                         f"replica {name} is promoted")
            continue
        link = v.get("link") or {}
        up = rx_link_up(v)
        error = link.get("last_error") or ""
        yield Signal("LinkDown", name, peer, daemon, not up,
                     f"primary {peer} of replica {name} is connected" if up else
                     f"no primary connected to replica {name} for more than "
                     f"{th.link_down_s:g} s" + (f"; last error: {error}" if error else ""),
                     hold_s=th.link_down_s)
        refused = not up and error.startswith("refused")
        yield Signal("PeerRefused", name, peer, daemon,
                     True if refused else False if up else None,
                     f"replica {name}: {error}" if refused else
                     f"replica {name} accepts its primary again")


def signals(answers: Iterable[Answer], th: AlertThresholds) -> list[Signal]:
    answers = list(answers)
    out: list[Signal] = []
    handler_vols: set[str] = set()
    for a in answers:
        out.append(Signal("StatusUnavailable", a.name, None, a.label, a.status is None,
                          f"{a.label} does not answer on {a.path}: {a.error}"
                          if a.status is None else f"{a.label} answers again",
                          hold_s=STATUS_HOLD_S, subject=a.label))
        if a.daemon == "handler" and a.status is not None:
            states = handler_view.volume_states(a.status)
            handler_vols = set(states)
            out += handler_signals(states, th, a.label)
        elif a.daemon == "receiver" and a.status is not None:
            out += receiver_signals(a.status, th, a.label)
    for a in answers:
        if a.daemon == "transmitter" and a.status is not None:
            out += transmitter_signals(a.name, a.status, th, a.label,
                                       bitmap=a.name not in handler_vols)
    return out


# --- the engine --------------------------------------------------------------------------

@dataclass
class AlertEngine:
    """The active alerts and hold timers; ``evaluate`` returns what changed."""

    thresholds: AlertThresholds
    state_file: Path | None = None
    active: dict[Key, Alert] = field(default_factory=dict)
    pending: dict[Key, float] = field(default_factory=dict)     # condition holding since

    def load(self) -> None:
        """The state a previous run saved; a missing file is a first start, an unreadable
        one is logged and ignored (alerts still true are raised again)."""
        if self.state_file is None:
            return
        try:
            d = json.loads(self.state_file.read_text())
            if d.get("version") != STATE_VERSION:
                raise ValueError(f"version {d.get('version')!r}, expected {STATE_VERSION}")
            active = [Alert.from_dict(a) for a in d.get("active", [])
                      if a.get("alert") in KINDS]
            pending = {(p["alert"], p.get("volume"), p.get("peer"), p.get("subject")):
                       float(p["since"]) for p in d.get("pending", [])}
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            log.warning("ignoring the saved alerts in %s (%s): alerts still true are raised "
                        "again", self.state_file, err)
            return
        self.active = {a.key: a for a in active}
        self.pending = pending

    def save(self) -> None:
        if self.state_file is None:
            return
        doc = {"version": STATE_VERSION,
               "active": [{**a.as_dict(), "subject": a.subject} for a in self.active.values()],
               "pending": [{"alert": k[0], "volume": k[1], "peer": k[2], "subject": k[3],
                            "since": since} for k, since in self.pending.items()]}
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.state_file, doc)

    def evaluate(self, answers: list[Answer], now: float) -> list[Transition]:
        """Apply one evaluation; saves the state when anything changed."""
        before = (set(self.active), dict(self.pending))
        seen: dict[Key, Signal] = {}
        for sig in signals(answers, self.thresholds):
            seen.setdefault(sig.key, sig)
        out = [t for sig in seen.values() if (t := self._apply(sig, now)) is not None]
        out += self._vanished(answers, seen, now)
        for key in [k for k in self.pending if k not in seen]:
            del self.pending[key]
        if (set(self.active), self.pending) != before:
            self.save()
        return out

    def _apply(self, sig: Signal, now: float) -> Transition | None:
        current = self.active.get(sig.key)
        if sig.holds is None:
            return None
        if not sig.holds:
            self.pending.pop(sig.key, None)
            if current is None:
                return None
            del self.active[sig.key]
            return Transition(current, "cleared", sig.message, now)
        if current is not None:
            current.message = sig.message         # status shows what is the case now
            return None
        since = self.pending.setdefault(sig.key, now) if sig.hold_s > 0 else now
        if now - since < sig.hold_s:
            return None
        self.pending.pop(sig.key, None)
        alert = Alert(sig.alert, sig.volume, sig.peer, sig.daemon, since, sig.message,
                      sig.subject)
        self.active[sig.key] = alert
        return Transition(alert, "raised", sig.message, now)

    def _vanished(self, answers: list[Answer], seen: dict[Key, Signal],
                  now: float) -> list[Transition]:
        silent = {a.label for a in answers if a.status is None}
        out = []
        for key, alert in list(self.active.items()):
            if key in seen or alert.daemon in silent:
                continue
            running = any(a.label == alert.daemon for a in answers)
            why = "no longer reports it" if running else "no longer runs here"
            del self.active[key]
            out.append(Transition(alert, "cleared", f"{alert.daemon} {why}", now))
        return out

    def alerts(self) -> list[dict]:
        return [a.as_dict() for a in sorted(self.active.values(), key=lambda a: a.since)]
