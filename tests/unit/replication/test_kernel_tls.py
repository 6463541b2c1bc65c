"""Kernel TLS (appliance/replication/kernel_tls.py): the contexts it configures, the handshake
that hands a session to the kernel, and the clean fall-back where the kernel cannot take it.

Where this kernel has no ``tls`` module (this host), the handshake still completes, names
which directions the kernel took (none), and the side goes on in user space, saying why.
Where it has one (the appliance VMs; tests/vm/test_kernel_tls.py runs the daemons there),
the same test sees plain bytes cross a socket the kernel encrypts."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import ssl

import pytest

from appliance.replication import kernel_tls
from appliance.replication.config import ConfigError, transmitter_config
from appliance.replication.tls import TlsConfig, TlsSide
from targetcli_ext.identity import ensure_certificate

DEADLINE = 10.0

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None,
                                reason="the openssl CLI makes the test certificates")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ktls")
    return ensure_certificate(root / "a", "site-a"), ensure_certificate(root / "d", "dr-site")


def sides(certs, kernel: bool) -> tuple[TlsSide, TlsSide]:
    a, d = certs
    return (TlsSide(TlsConfig(a.cert, a.key, peers=(d.cert,), kernel=kernel), server=False),
            TlsSide(TlsConfig(d.cert, d.key, peers=(a.cert,), kernel=kernel), server=True))


def test_a_kernel_context_caps_the_link_at_tls12_with_aes_gcm():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    kernel_tls.configure(ctx)
    assert ctx.options & kernel_tls.SSL_OP_ENABLE_KTLS
    assert ctx.maximum_version == ssl.TLSVersion.TLSv1_2
    tls12 = [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all("ECDHE" in n and "GCM" in n for n in tls12), tls12


def test_a_side_says_where_its_connections_are_encrypted(certs, caplog):
    tx, rx = sides(certs, kernel=True)
    missing = kernel_tls.kernel_module_missing()
    assert tx.in_kernel is (missing is None) and rx.in_kernel is (missing is None)
    if missing is None:
        assert rx.describe().endswith(", in the kernel (TLS 1.2)")
    else:
        assert missing == "this kernel has no tls module (modprobe tls)"
        assert rx.describe() == (f"TLS, 1 pinned peer certificate(s), in user space (kernel "
                                 f"TLS: {missing})")
    plain_tx, _ = sides(certs, kernel=False)
    assert not plain_tx.in_kernel and plain_tx.describe().endswith("certificate(s)")
    # A connection the kernel took only in part: the side goes back to user space.
    with caplog.at_level(logging.WARNING, logger="appliance.replication.tls"):
        tx.kernel_incomplete(kernel_tls.KernelTlsIncomplete("the kernel took tx of TLSv1.2 X"),
                             "volume V")
    assert "volume V: kernel TLS: the kernel took tx of TLSv1.2 X" in caplog.text
    assert not tx.in_kernel
    assert tx.kernel_unused == "the kernel took tx of TLSv1.2 X; user space from then on"


async def _pair(certs) -> tuple[object, object]:
    """Both ends' handshakes with kernel contexts over loopback: each a KernelSession or the
    KernelTlsIncomplete it raised."""
    tx, rx = sides(certs, kernel=True)
    client_hs, server_hs = tx.handshake(), rx.handshake()
    for hs in (client_hs, server_hs):               # (whatever the module probe said)
        kernel_tls.configure(hs.context)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    async def server():
        accepted, _ = await asyncio.to_thread(listener.accept)
        return await kernel_tls.server_session(accepted, server_hs.context, DEADLINE)
    try:
        return tuple(await asyncio.wait_for(asyncio.gather(
            kernel_tls.client_session("127.0.0.1", port, client_hs.context, "dr-site",
                                      DEADLINE), server(), return_exceptions=True), DEADLINE))
    finally:
        listener.close()


def test_the_handshake_hands_the_session_to_the_kernel_or_says_what_it_took(certs):
    client, server = asyncio.run(_pair(certs))
    if kernel_tls.kernel_module_missing() is not None:
        for end in (client, server):
            assert isinstance(end, kernel_tls.KernelTlsIncomplete), end
            assert str(end).startswith("the kernel took no direction of TLSv1.2 ECDHE-"), end
        return
    assert "kernel (tx+rx), TLSv1.2 ECDHE-" in client.description
    assert server.peer.getpeercert(binary_form=True)        # the primary's certificate
    with client.sock, server.sock:
        client.sock.setblocking(True)
        server.sock.setblocking(True)
        client.sock.sendall(b"x" * 100_000)
        got = bytearray()
        while len(got) < 100_000:
            got += server.sock.recv(65536)
        assert got == b"x" * 100_000


def test_the_kernel_key_is_a_boolean_in_tls():
    base = {"identity": "a", "peer": "h:1", "peer_identity": "d", "journal": "/j",
            "volume_uuid": "6d9b2f0e-53c5-4b7f-9a37-0f1d2c3b4a59", "size_bytes": 1 << 20,
            "control_socket": "/s"}
    tls = {"cert": "/c", "key": "/k", "peers": ["/p"]}
    assert transmitter_config(base | {"tls": tls | {"kernel": True}}, "tx.toml").tls.kernel
    assert not transmitter_config(base | {"tls": tls}, "tx.toml").tls.kernel
    with pytest.raises(ConfigError, match=r"kernel"):
        transmitter_config(base | {"tls": tls | {"kernel": "yes"}}, "tx.toml")


def test_connections_that_never_handshake_do_not_hold_the_disk_threads(certs):
    """Anyone can connect: as many connections as the default executor has threads, sending
    nothing, keep their handshakes waiting for the timeout in the handshake threads only; the
    default executor (the journal and mirror work) answers at once meanwhile."""
    _, rx = sides(certs, kernel=True)

    async def run() -> float:
        listener = socket.create_server(("127.0.0.1", 0))
        idle = min(32, (os.cpu_count() or 1) + 4)  # ThreadPoolExecutor's default size
        clients = [socket.create_connection(listener.getsockname()) for _ in range(idle)]
        accepted = [listener.accept()[0] for _ in clients]
        contexts = [rx.handshake().context for _ in accepted]
        for ctx in contexts:
            kernel_tls.configure(ctx)
        waiting = [asyncio.ensure_future(kernel_tls.server_session(sock, ctx, 0.5))
                   for sock, ctx in zip(accepted, contexts, strict=True)]
        await asyncio.sleep(0.1)                    # (the handshakes are blocked in recv)
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await asyncio.to_thread(lambda: "disk work") == "disk work"
        took = loop.time() - start
        results = await asyncio.gather(*waiting, return_exceptions=True)
        assert all(isinstance(r, TimeoutError) for r in results), results
        for sock in clients:
            sock.close()
        listener.close()
        return took
    assert asyncio.run(run()) < 0.25
