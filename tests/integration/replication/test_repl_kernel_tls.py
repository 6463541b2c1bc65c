"""``[tls] kernel = true`` between live daemons: the link's TLS goes to the kernel where it
has the ``tls`` module, and stays in user space, replicating as before, where it has not (this
host's kernel); either way each end's status and the receiver's log say which, and why.
(The kernel path itself runs in the appliance VMs: tests/vm/test_shell_chain.py.)"""

from __future__ import annotations

import pytest
from repl_harness import converge, pinned_tls_toml, status, use_tls_table, wait_for

from appliance.replication.kernel_tls import kernel_module_missing

pytestmark = pytest.mark.integration


def test_kernel_tls_on_both_ends_replicates_and_says_where_it_runs(pair, site_certs):
    site = pair.site("site-a")
    kernel = "kernel = true\n"
    use_tls_table(site.tx_config,
                  pinned_tls_toml(site_certs["site-a"], site_certs["dr-site"]) + kernel)
    pair.volumes = [(site.uuid, site.blocks)]
    pair.write_rx_config()
    use_tls_table(pair.rx_config,
                  pinned_tls_toml(site_certs["dr-site"], site_certs["site-a"]) + kernel)
    rx = pair.receiver().start()
    pair.wait_rx_up(rx)
    w = pair.writer(site, 300).start()
    tx = pair.transmitter(site).start()
    wait_for(lambda: w.popen.poll() is not None, 30, "the writer")
    assert w.popen.returncode == 0, w.output()[-3000:]
    converge(pair, site, timeout=60)

    missing = kernel_module_missing()
    tx_link = status(site.control)["link"]
    rx_link = pair.rx_status()["volumes"][str(site.uuid)]["link"]
    if missing is None:
        for link in (tx_link, rx_link):
            assert link["tls"].startswith("kernel (tx+rx), TLSv1.2 ECDHE-"), link
        assert "in the kernel (TLS 1.2)" in rx.output()
        return
    # No tls module: OpenSSL's TLS as without the setting (1.3: nothing caps it), and why.
    why = f"(kernel TLS: {missing})"
    for link in (tx_link, rx_link):
        assert link["state"] in ("replicating", "connected"), link
        assert link["tls"].startswith("user space, TLSv1.3 TLS_"), link
        assert link["tls"].endswith(why), link
    wait_for(lambda: f"in user space {why}" in rx.output(), 10, "the receiver's start line")
    assert tx.running() and pair.rx_status()["refusals"] == 0
