"""The site's status as Prometheus metric families (docs/monitoring.md, "Metrics").

A custom collector (prometheus_client's "custom collectors"): every scrape asks the daemons'
control sockets once (``ask``, bounded timeouts) and turns the answers into families; the I/O
daemons run nothing for it. Names follow the Prometheus naming rules: one prefix
``appliance_``, base units (bytes, seconds), ``_total`` for counters, labels ``volume`` and
``peer`` only (the build info has ``version``, a state set its state). A figure a daemon
reports as unknown (null) is left out, never published as 0.

Keeps to prometheus_client 0.16's API (Debian 12's).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    StateSetMetricFamily,
)
from prometheus_client.utils import floatToGoString

import appliance
from appliance.control.site_status import Answer
from appliance.exporter import handler_view

log = logging.getLogger(__name__)

PREFIX = "appliance_"
VP = ("volume", "peer")
V = ("volume",)

# The replication state set's states (docs/monitoring.md says when each is on).
STATES = ("replicating", "paused", "logging-to-bitmap", "resync", "inconsistent", "refused")
LOGGING_TO_BITMAP = "logging-to-bitmap"
# A transmitter's resync states after RESYNC_BEGIN: the DR image is inconsistent until the
# resync ends (docs/protocol.md, "Resync and initial synchronisation"); "draining" comes before.
RESYNC_BEGUN = frozenset({"resyncing", "waiting-for-writer", "repairing", "interrupted"})


@dataclass(frozen=True)
class Spec:
    name: str                   # without the prefix; a counter's with its _total
    kind: str                   # "gauge" | "counter"
    help: str
    get: Callable[[dict], float | int | bool | None]


def _path(*keys: str) -> Callable[[dict], object]:
    def get(d: dict):
        for key in keys:
            if not isinstance(d, dict):
                return None
            d = d.get(key)
        return d
    return get


# --- the transmitter's volume (labels volume, peer) ----------------------------------------

def tx_peer(s: dict) -> str:
    """The DR as its admin named it (/replication/peers), else its address (a transmitter
    configured by hand)."""
    return str(s.get("peer_name") or s.get("peer") or "")


def tx_link_up(s: dict) -> bool:
    """Connected: replicating, or held by a pause with the link up (a link that is down says
    connecting/reconnecting also while paused: docs/protocol.md, "Steering")."""
    state = _path("link", "state")(s) or ""
    return state == "replicating" or state.startswith("paused:")


def link_tls_in_kernel(s: dict) -> bool:
    """The link's TLS in the kernel, both directions (``[tls] kernel``, the daemon's
    ``link.tls``): what an admin who set kernel_tls alerts on when it is 0."""
    return str(_path("link", "tls")(s) or "").startswith("kernel (tx+rx)")


def tx_states(s: dict) -> dict[str, bool]:
    link = _path("link", "state")(s) or ""
    resync = _path("resync", "state")(s) or "idle"
    return {"replicating": link == "replicating",
            "paused": link.startswith("paused:") or s.get("paused") is True,
            LOGGING_TO_BITMAP: s.get("volume_state") == LOGGING_TO_BITMAP,
            "resync": resync != "idle" or s.get("needs_resync") is True,
            "inconsistent": resync in RESYNC_BEGUN,
            "refused": link.startswith("refused:")}


def tx_resync_remaining(s: dict) -> int | None:
    r = s.get("resync")
    if not isinstance(r, dict):
        return None
    return max(0, r.get("total_bytes", 0) - r.get("done_bytes", 0) - r.get("skipped_bytes", 0))


def verify_differing(s: dict) -> int | None:
    v = s.get("verify")
    if not isinstance(v, dict) or v.get("state") == "never-run":
        return None
    return len(v.get("differing") or [])


TRANSMITTER = [
    Spec("head_sequence", "gauge", "Newest durable journal seq at the primary.",
         _path("head_seq")),
    Spec("sent_sequence", "gauge", "Newest seq sent on the current link.", _path("sent_seq")),
    Spec("acknowledged_sequence", "gauge", "Newest seq the DR holds durably (acknowledged).",
         _path("acked_seq")),
    Spec("applied_sequence", "gauge", "Newest seq the DR applied to its mirror, as it reported.",
         _path("applied_seq")),
    Spec("lag_records", "gauge", "Journal records the DR has not acknowledged.",
         _path("lag_records")),
    Spec("lag_bytes", "gauge", "Bytes the DR lacks: unacknowledged journal bytes (or in "
         "flight) plus dirty regions.", _path("lag_bytes")),
    Spec("lag_seconds", "gauge", "Age of the oldest write the DR lacks (as lag).",
         _path("lag_seconds")),
    Spec("recovery_point_age_seconds", "gauge", "Age of the oldest write the DR has not made "
         "durable; 0 when it lacks none.", _path("recovery_point_age_s")),
    Spec("dirty_bytes", "gauge", "Bytes of dirty-bitmap regions not at the DR yet.",
         _path("dirty_bytes")),
    Spec("in_sync", "gauge", "1 when the DR holds every write the primary holds.",
         _path("in_sync")),
    Spec("link_up", "gauge", "1 while the replication link is connected.", tx_link_up),
    Spec("link_tls_in_kernel", "gauge", "1 while the link's TLS runs in the kernel (kTLS, "
         "both directions); 0 in user space or without TLS.", link_tls_in_kernel),
    Spec("resync_total_bytes", "gauge", "Bytes the current (or last) resync set out to ship.",
         _path("resync", "total_bytes")),
    Spec("resync_remaining_bytes", "gauge", "Bytes the current resync has still to ship.",
         tx_resync_remaining),
    Spec("verify_differing_regions", "gauge", "Regions the last online verify found "
         "different at the DR.", verify_differing),
    Spec("records_sent_total", "counter", "Journal records shipped.", _path("records_sent")),
    Spec("payload_bytes_sent_total", "counter", "Record payload bytes shipped (before "
         "compression).", _path("bytes_sent")),
    Spec("wire_bytes_sent_total", "counter", "Bytes sent on the wire (compressed, framed).",
         _path("wire_bytes_sent")),
    Spec("batches_sent_total", "counter", "Batches shipped.", _path("batches_sent")),
    Spec("resends_total", "counter", "Resend requests of the DR honoured.", _path("resends")),
    Spec("link_connects_total", "counter", "Times the link came up.",
         _path("link", "connects")),
    Spec("link_disconnects_total", "counter", "Times the link went down.",
         _path("link", "disconnects")),
]


# --- a replica of the receiver (labels volume, peer) ---------------------------------------

def rx_link_up(v: dict) -> bool:
    return _path("link", "state")(v) == "connected"


def rx_states(v: dict) -> dict[str, bool]:
    state = v.get("state")
    link = _path("link", "state")(v)
    last_error = _path("link", "last_error")(v) or ""
    return {"replicating": link == "connected",
            "paused": False,           # the DR does not know the primary's pause
            LOGGING_TO_BITMAP: _path("primary_report", "volume_state")(v) == LOGGING_TO_BITMAP,
            "resync": state == "inconsistent" or v.get("full_copy_pending") is True,
            "inconsistent": state == "inconsistent",
            "refused": state == "promoted" or (link != "connected"
                                               and last_error.startswith("refused"))}


def rx_consistent_seq(v: dict) -> int | None:
    """The seq of the newest crash-consistent image: what is applied while consistent, the
    last consistent seq (the undo log's) while a resync runs."""
    state = v.get("state")
    if state == "consistent":
        return v.get("applied_seq")
    if state == "inconsistent":
        return v.get("last_consistent_seq")
    return None                         # promoted: the image is a primary's now


RECEIVER = [
    Spec("dr_durable_sequence", "gauge", "Newest seq the DR holds durably.",
         _path("durable_seq")),
    Spec("dr_applied_sequence", "gauge", "Newest seq applied to the DR mirror.",
         _path("applied_seq")),
    Spec("dr_consistent_sequence", "gauge", "Seq of the DR's newest crash-consistent image.",
         rx_consistent_seq),
    Spec("dr_generation", "gauge", "Generation of the DR replica (raised by a promotion).",
         _path("generation")),
    Spec("dr_lag_records", "gauge", "Records durable at the DR and not yet applied.",
         _path("lag_records")),
    Spec("dr_lag_seconds", "gauge", "Age of the newest applied write while records wait to "
         "be applied.", _path("lag_seconds")),
    Spec("in_sync", "gauge", "1 when the DR holds every write the primary holds.",
         _path("in_sync")),
    Spec("link_up", "gauge", "1 while the replication link is connected.", rx_link_up),
    Spec("link_tls_in_kernel", "gauge", "1 while the link's TLS runs in the kernel (kTLS, "
         "both directions); 0 in user space or without TLS.", link_tls_in_kernel),
    Spec("dr_records_received_total", "counter", "Journal records received.",
         _path("records_received")),
    Spec("dr_payload_bytes_received_total", "counter", "Record payload bytes received.",
         _path("bytes_received")),
    Spec("dr_rejected_batches_total", "counter", "Batches rejected (CRC, volume, generation).",
         _path("rejected_batches")),
    Spec("dr_duplicate_records_total", "counter", "Records received again and dropped.",
         _path("duplicates")),
    Spec("dr_resend_requests_total", "counter", "Resend requests sent for a gap.",
         _path("gaps")),
    Spec("link_connects_total", "counter", "Times the link came up.",
         _path("link", "connects")),
    Spec("link_disconnects_total", "counter", "Times the link went down.",
         _path("link", "disconnects")),
]


# --- the handler (label volume) -----------------------------------------------------------
# A Volume's figures (a group's once, under the group's name) and a device's I/O (a group
# member's under its own name): appliance/exporter/handler_view.py.

VOLUME = [
    Spec("journal_capacity_bytes", "gauge", "Bytes of the journal's record area.",
         _path("journal", "capacity_bytes")),
    Spec("journal_used_bytes", "gauge", "Journal bytes held (not reclaimable yet).",
         _path("journal", "bytes_held")),
    Spec("journal_records", "gauge", "Journal records held.", _path("journal", "records_held")),
    Spec("journal_overflows_total", "counter", "Times the journal filled and the volume "
         "switched to the dirty bitmap.", _path("overflows")),
]
IO = [
    Spec("read_ops_total", "counter", "READ commands served.", _path("io", "read_ops")),
    Spec("read_bytes_total", "counter", "Bytes read by READ commands.",
         _path("io", "read_bytes")),
    Spec("write_ops_total", "counter", "Write commands served (WRITE, WRITE AND VERIFY, WRITE "
         "SAME, UNMAP, COMPARE AND WRITE).", _path("io", "write_ops")),
    Spec("write_bytes_total", "counter", "Bytes transferred by write commands.",
         _path("io", "write_bytes")),
    Spec("other_ops_total", "counter", "Other SCSI commands served.", _path("io", "other_ops")),
    Spec("ring_wakeups_total", "counter", "Times the device loop woke from its wait for "
         "commands.", _path("ring", "wakeups")),
    Spec("ring_spins_total", "counter", "Times the device loop looked for the next command "
         "before sleeping (ring_spin_us).", _path("ring", "spins")),
    Spec("ring_spin_hits_total", "counter", "Spins that found a command.",
         _path("ring", "spin_hits")),
]
LATENCY = "command_latency_seconds"

# The replication mode (the handler's ``sync`` entry; docs/volume.md, "Synchronous modes").
SYNC_MODES = ("async", "sync", "sync-on-flush")
SYNC_DEGRADED = "sync-degraded"


def sync_degraded(sync: dict) -> bool | None:
    """Fallen back to async (a synchronous mode the DR did not keep up with)."""
    effective = sync.get("effective")
    if effective == SYNC_DEGRADED:
        return True
    return False if effective in SYNC_MODES else None


def sync_holding(sync: dict) -> bool | None:
    """Host writes held for the DR (hold set, the DR silent past the fall-back time)."""
    if "holding_since" not in sync:
        return None
    return isinstance(sync.get("holding_since"), int | float)


SYNC = [
    Spec("sync_degraded", "gauge", "1 while a volume in a synchronous mode has fallen back to "
         "async (sync-degraded) because the DR did not acknowledge in time.", sync_degraded),
    Spec("sync_holding", "gauge", "1 while host writes wait for the DR past the fall-back "
         "time (hold is set: no fall-back).", sync_holding),
    Spec("sync_fallback_seconds", "gauge", "The longest a write waits for the DR before the "
         "volume falls back to async.", _path("fallback_s")),
    Spec("sync_waits_total", "counter", "Writes and flushes that waited for the DR's "
         "acknowledgement.", _path("waits")),
    Spec("sync_wait_seconds_total", "counter", "Time writes and flushes spent waiting for the "
         "DR's acknowledgement.", _path("wait_seconds")),
    Spec("sync_fallbacks_total", "counter", "Times the volume fell back to async.",
         _path("fallbacks")),
]


def _number(value) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


class Families:
    """The families of one scrape, created on first use, in a stable order."""

    def __init__(self) -> None:
        self._by_name: dict[str, object] = {}
        self._seen: set[tuple] = set()

    def _family(self, name: str, make: Callable[[], object]):
        if name not in self._by_name:
            self._by_name[name] = make()
        return self._by_name[name]

    def _first(self, name: str, labels: Sequence[str]) -> bool:
        """A label set appears once per family (two daemons naming one volume alike)."""
        key = (name, *labels)
        if key in self._seen:
            return False
        self._seen.add(key)
        return True

    def add(self, spec: Spec, names: Sequence[str], labels: Sequence[str], d: dict) -> None:
        value = _number(spec.get(d))
        if value is None or not self._first(spec.name, labels):
            return
        full = PREFIX + spec.name
        cls = CounterMetricFamily if spec.kind == "counter" else GaugeMetricFamily
        self._family(spec.name, lambda: cls(full, spec.help, labels=names)).add_metric(
            list(labels), value)

    def gauge(self, name: str, help_text: str, names: Sequence[str], labels: Sequence[str],
              value: float) -> None:
        self.add(Spec(name, "gauge", help_text, lambda _d: value), names, labels, {})

    def counter(self, name: str, help_text: str, value: float) -> None:
        self.add(Spec(name, "counter", help_text, lambda _d: value), (), (), {})

    def states(self, labels: Sequence[str], states: dict[str, bool]) -> None:
        if not self._first("replication_state", labels):
            return
        self._family("replication_state", lambda: StateSetMetricFamily(
            PREFIX + "replication_state", "Replication state of a volume (one state set per "
            "volume and peer; several states may be on).", labels=VP)).add_metric(
            list(labels), states)

    def sync_mode(self, labels: Sequence[str], mode: object) -> None:
        if mode not in SYNC_MODES or not self._first("sync_mode", labels):
            return
        self._family("sync_mode", lambda: StateSetMetricFamily(
            PREFIX + "sync_mode", "Replication mode the admin set for a volume (one state "
            "on); appliance_sync_degraded says whether it is in effect.", labels=V)).add_metric(
            list(labels), {m: m == mode for m in SYNC_MODES})

    def histogram(self, labels: Sequence[str], io: dict) -> None:
        buckets = latency_buckets(io)
        if buckets is None or not self._first(LATENCY, labels):
            return
        self._family(LATENCY, lambda: HistogramMetricFamily(
            PREFIX + LATENCY, "Service time of a SCSI command, from its ring entry fetched to "
            "its completion posted.", labels=V)).add_metric(
            list(labels), buckets, float(io.get("latency_sum_s") or 0.0))

    def info(self) -> None:
        self._family("build", lambda: InfoMetricFamily(
            PREFIX + "build", "The appliance software's version.",
            value={"version": appliance.__version__}))

    def __iter__(self) -> Iterator:
        return iter(self._by_name.values())


def latency_buckets(io: dict) -> list[tuple[str, float]] | None:
    """Cumulative ``le`` buckets from the handler's non-cumulative counts (spec: one count per
    bound plus one above the last); None when the entry is not of that form."""
    bounds, counts = io.get("latency_bounds_s"), io.get("latency_counts")
    if (not isinstance(bounds, list) or not isinstance(counts, list)
            or len(counts) != len(bounds) + 1):
        return None
    totals = list(itertools.accumulate(counts))
    return ([(floatToGoString(b), float(n)) for b, n in zip(bounds, totals, strict=False)]
            + [("+Inf", float(totals[-1]))])


def rx_volume_label(uuid: str, v: dict) -> str:
    return v.get("name") or uuid


def families(answers: Iterable[Answer], exporter: dict | None = None) -> Families:
    """Every family of one scrape from the daemons' answers; ``exporter``: the exporter's own
    figures (``alerts_active``, and ``webhook`` as its status shows it)."""
    out = Families()
    out.info()
    for a in answers:
        up = 1.0 if a.status is not None else 0.0
        if a.daemon == "transmitter":
            out.gauge("transmitter_up", "1 when the transmitter's control socket answered "
                      "(0: it exists but did not).", V, [a.name], up)
        elif a.daemon in ("handler", "receiver"):
            out.gauge(f"{a.daemon}_up", f"1 when the {a.daemon}'s control socket answered "
                      f"(0: it exists but did not).", (), (), up)
        if a.status is None:
            continue
        if a.daemon == "handler":
            _handler(out, a.status)
        elif a.daemon == "transmitter":
            _transmitter(out, a.name, a.status)
        elif a.daemon == "receiver":
            _receiver(out, a.status)
    if exporter is not None:
        _exporter(out, exporter)
    return out


def _handler(out: Families, status: dict) -> None:
    """A group's volume state once under its name; every device's I/O under its own."""
    for name, vol in handler_view.volume_states(status).items():
        for spec in VOLUME:
            out.add(spec, V, [name], vol)
        sync = vol.get("sync")
        if isinstance(sync, dict):
            out.sync_mode([name], sync.get("mode"))
            for spec in SYNC:
                out.add(spec, V, [name], sync)
    for name, dev in handler_view.devices(status).items():
        for spec in IO:
            out.add(spec, V, [name], dev)
        if isinstance(dev.get("io"), dict):
            out.histogram([name], dev["io"])


def _transmitter(out: Families, name: str, status: dict) -> None:
    labels = [name, tx_peer(status)]
    for spec in TRANSMITTER:
        out.add(spec, VP, labels, status)
    out.states(labels, tx_states(status))


def _receiver(out: Families, status: dict) -> None:
    refusals = _number(status.get("refusals"))
    if refusals is not None:
        out.counter("dr_refusals_total", "Connections the receiver refused.", refusals)
    for uuid, vol in sorted((status.get("volumes") or {}).items()):
        if not isinstance(vol, dict):
            continue
        labels = [rx_volume_label(uuid, vol), str(vol.get("primary") or "")]
        for spec in RECEIVER:
            out.add(spec, VP, labels, vol)
        out.states(labels, rx_states(vol))


def _exporter(out: Families, exporter: dict) -> None:
    out.gauge("exporter_alerts_active", "Alerts the exporter holds raised.", (), (),
              float(len(exporter.get("alerts") or [])))
    hook = exporter.get("webhook")
    if not isinstance(hook, dict):
        return
    out.gauge("exporter_webhook_queued", "Alert events waiting for the webhook.", (), (),
              float(hook.get("queued", 0)))
    out.counter("exporter_webhook_delivered_total", "Alert events the webhook accepted.",
                float(hook.get("delivered", 0)))
    out.counter("exporter_webhook_failed_attempts_total", "Webhook deliveries that failed "
                "(each retried).", float(hook.get("failed_attempts", 0)))
    out.counter("exporter_webhook_dropped_total", "Alert events dropped undelivered (the "
                "queue was full, or the webhook refused them).", float(hook.get("dropped", 0)))


class SiteCollector:
    """The registry's collector: ``ask()`` the daemons at each scrape; ``exporter()`` the
    exporter's own status (alerts, webhook)."""

    def __init__(self, ask: Callable[[], list[Answer]],
                 exporter: Callable[[], dict] | None = None) -> None:
        self._ask = ask
        self._exporter = exporter

    def describe(self) -> list:
        return []               # names vary with the site: nothing to check at registration

    def collect(self) -> Iterator:
        try:
            answers = self._ask()
        except Exception:       # a scrape must answer: the _up gauges then say what is off
            log.exception("asking the daemons for their status failed")
            answers = []
        yield from families(answers, self._exporter() if self._exporter else None)
