"""Run inside an appliance VM (its kernel has ``tls.ko``) by test_ktls_faults.py: the host
tier's corrupting, cutting proxy (tests/integration/replication/repl_proxy.py) between a
transmitter and a receiver that both have ``[tls] kernel = true``.

The image's daemons ship a journal of 64 KiB writes through the proxy, which flips a bit in
some forwarded chunks (primary to DR) and closes every connection every few seconds. On the
kTLS path a flipped bit fails the kernel's AEAD check (the read returns an error) and the link
connects again. Prints one JSON line: what the proxy did, the links' encryption and counts,
and whether the DR's mirror equals the image the writes make, byte for byte.
Usage: python ktls_faults_guest.py TREE WORKDIR MIB
"""

import hashlib
import importlib.machinery
import importlib.util
import json
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

TREE, WORK, MIB = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
sys.path.insert(0, str(TREE / "tests" / "integration" / "replication"))
loader = importlib.machinery.SourceFileLoader("bench_replication", str(TREE / "bench" /
                                                                        "replication"))
bench = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
sys.modules[loader.name] = bench
loader.exec_module(bench)
from repl_harness import free_port, make_pki, wait_for  # noqa: E402

from appliance.control.client import call  # noqa: E402

total, blocks = MIB << 20, 256 * 1024 * 1024 // bench.BLOCK
vol = uuid.uuid4()
(WORK / "primary").mkdir(parents=True)
pki = make_pki(WORK / "pki")
last = bench.fill_primary(WORK / "primary", vol, total, blocks, compressible=False)
bench.write_configs(WORK, pki, vol, blocks, tls=True, compression=False, net=bench.LOOPBACK,
                    kernel=True, tuning={"backoff_max_s": 2})   # (reconnect briskly)
rx_port = int(next(ln for ln in (WORK / "rx.toml").read_text().splitlines()
                   if ln.startswith("listen")).split(":")[-1].rstrip('"'))
proxy_port = free_port()
tx_toml = WORK / "tx.toml"
tx_toml.write_text(tx_toml.read_text().replace(f"127.0.0.1:{rx_port}",
                                               f"127.0.0.1:{proxy_port}"))

# The image the writes make (fill_primary's: the same seed, sizes and offsets).
rng, per_op = random.Random(2), bench.OP_BYTES // bench.BLOCK
image = bytearray(blocks * bench.BLOCK)
for i in range(total // bench.OP_BYTES):
    at = ((i * per_op) % (blocks - per_op)) * bench.BLOCK
    image[at:at + bench.OP_BYTES] = bench.op_data(rng, False)


def ship(logs) -> tuple[float, dict, dict, str, set[str]]:
    """The proxy and both daemons until the receiver applied the last record: (seconds,
    receiver's volume status, transmitter's status, the proxy's output, the encryptions the
    receiver reported on the way)."""
    seen = set()
    proxy = subprocess.Popen([sys.executable, str(TREE / "tests" / "integration" /
                                                  "replication" / "repl_proxy.py"),
                              "--listen-port", str(proxy_port), "--target-port", str(rx_port),
                              "--corrupt", "0.02", "--cut-every", "5", "--seed", "3"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rx = bench.start_daemon("appliance.replication.dr.receiver", WORK / "rx.toml", logs, TREE)
    tx = None
    try:
        wait_for(lambda: call(WORK / "rx.sock", "status"), 120, "the receiver to start")
        tx = bench.start_daemon("appliance.replication.primary.transmitter", tx_toml, logs,
                                TREE)

        def volume() -> dict:
            v = call(WORK / "rx.sock", "status")["volumes"][str(vol)]
            if v["link"].get("tls"):
                seen.add(v["link"]["tls"].split(",")[0])
            return v
        started = time.monotonic()
        wait_for(lambda: volume()["applied_seq"] >= last, 900,
                 f"the receiver to apply seq {last} through the proxy", interval=0.2)
        seconds = time.monotonic() - started
        rx_status, tx_status = volume(), call(WORK / "tx.sock", "status")
    finally:
        for p in (tx, rx):
            if p is not None:
                p.terminate()
                p.wait(timeout=60)
        proxy.terminate()
        proxy_out = proxy.communicate(timeout=30)[0]
    return seconds, rx_status, tx_status, proxy_out, seen


with open(WORK / "procs.log", "wb") as daemon_logs:
    seconds, rx_status, tx_status, proxy_out, seen_tls = ship(daemon_logs)
mirror = (WORK / "dr" / str(vol) / "mirror").read_bytes()
mirror += bytes(len(image) - len(mirror))          # (a sparse tail never written)
counts = [ln for ln in proxy_out.splitlines() if ln.startswith("proxy: connections")][-1]
print(json.dumps({
    "seconds": round(seconds, 1), "records": last,
    "proxy": {k: int(v) for k, v in (f.split("=") for f in counts.split()[1:])},
    "rx_tls_seen": sorted(seen_tls), "tx_tls": tx_status["link"].get("tls"),
    "rx_connects": rx_status["link"]["connects"],
    "rx_rejected": rx_status.get("rejected_batches"),
    "tx_errors": tx_status["link"].get("last_error"),
    "mirror_equal": hashlib.sha256(mirror).hexdigest() == hashlib.sha256(image).hexdigest(),
}))
