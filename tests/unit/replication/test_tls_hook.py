"""The TLS message hook (tls.Handshake) watches the handshake only: once a connection is
checked, no more Python calls per TLS record (docs/protocol.md, "Data path")."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from appliance.replication.tls import TlsConfig, TlsSide
from targetcli_ext.identity import ensure_certificate

DEADLINE = 10.0

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None,
                                reason="the openssl CLI makes the test certificates")


@pytest.fixture(scope="module")
def sides(tmp_path_factory) -> tuple[TlsSide, TlsSide]:
    root = tmp_path_factory.mktemp("hook")
    a = ensure_certificate(root / "a", "site-a")
    d = ensure_certificate(root / "d", "dr-site")
    return (TlsSide(TlsConfig(a.cert, a.key, peers=(d.cert,)), server=False),
            TlsSide(TlsConfig(d.cert, d.key, peers=(a.cert,)), server=True))


class Counting:
    """Counts the hook's calls on one Handshake (its bound method, wrapped)."""

    def __init__(self, hs) -> None:
        self.calls = 0
        inner = hs._message

        def hook(*args) -> None:
            self.calls += 1
            inner(*args)
        hs._message = hook
        hs.context._msg_callback = hook


async def _exchange(tx: TlsSide, rx: TlsSide, nbytes: int) -> tuple[int, int, int, int]:
    """Connect as the daemons do, check both ends, then move ``nbytes`` each way. Returns the
    hook calls of (tx, rx) at the check and at the end."""
    counts: dict[str, Counting] = {}
    at_check: dict[str, int] = {}
    done = asyncio.Event()

    async def accept(reader, writer):
        hs = rx.handshake()
        counts["rx"] = Counting(hs)
        await writer.start_tls(hs.context, ssl_handshake_timeout=DEADLINE)
        hs.check(writer.get_extra_info("ssl_object"))
        at_check["rx"] = counts["rx"].calls
        data = await reader.readexactly(nbytes)
        writer.write(data)
        await writer.drain()
        await done.wait()
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    hs = tx.handshake()
    counts["tx"] = Counting(hs)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=hs.context,
                                                   server_hostname="dr-site")
    hs.check(writer.get_extra_info("ssl_object"))
    at_check["tx"] = counts["tx"].calls
    writer.write(bytes(nbytes))
    await writer.drain()
    assert await reader.readexactly(nbytes) == bytes(nbytes)
    done.set()
    writer.close()
    server.close()
    await server.wait_closed()
    return at_check["tx"], counts["tx"].calls, at_check["rx"], counts["rx"].calls


def test_the_hook_sees_the_handshake_and_nothing_after_the_check(sides):
    tx_check, tx_end, rx_check, rx_end = asyncio.run(asyncio.wait_for(
        _exchange(*sides, 4 << 20), 3 * DEADLINE))
    # It saw the handshake (both certificates crossed) ...
    assert tx_check > 0 and rx_check > 0
    # ... and none of the 512 records of 4 MiB each way (3 calls each while it was set).
    assert tx_end - tx_check < 16 and rx_end - rx_check < 16, (tx_check, tx_end, rx_check,
                                                                rx_end)
