"""The appliances' exporters from the lab: bound to the management address (the VM's NIC on
qemu's user network, ``MGMT_ADDR``), reached from this machine through a forwarded port, and
their alerts as the systemd journal recorded them (docs/monitoring.md)."""

from __future__ import annotations

import json
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from vmlab.machine import Machine

EXPORTER_PORT = 9477
# qemu's user network gives every VM this address on its first NIC (the management network
# the lab reaches through port forwards; the replication link is the private eth1).
MGMT_ADDR = "10.0.2.15"


def set_management_address_line() -> str:
    return f"/replication/monitoring set exporter address={MGMT_ADDR} port={EXPORTER_PORT}"


def metrics_url(machine: Machine) -> str:
    return f"http://127.0.0.1:{machine.ports[EXPORTER_PORT]}/metrics"


def scrape(machine: Machine, timeout: float = 20.0) -> str:
    """One scrape of the machine's exporter, as Prometheus would do it from the management
    network (here: through the forwarded port)."""
    with urllib.request.urlopen(metrics_url(machine), timeout=timeout) as reply:
        return reply.read().decode()


def families(text: str) -> dict[str, object]:
    """The scrape parsed by prometheus_client's own parser, by family name."""
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(fams: dict[str, object], family: str, sample_name: str | None = None,
           **labels: str) -> float | None:
    """The value of the first sample of ``family`` whose labels include ``labels``."""
    fam = fams.get(family)
    if fam is None:
        return None
    for s in fam.samples:
        if (sample_name is None or s.name == sample_name) and all(
                s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


def journal_entries(machine: Machine, message_id: str) -> list[dict]:
    """The journal's entries with this MESSAGE_ID (``journalctl -o json``)."""
    text = machine.run(["journalctl", "--no-pager", "-o", "json", f"MESSAGE_ID={message_id}"],
                       timeout=60, check=False).text
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]
