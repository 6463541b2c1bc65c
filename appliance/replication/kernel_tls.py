"""Kernel TLS (kTLS) on the replication link: the kernel encrypts and decrypts, the daemons see
plaintext on the socket (docs/protocol.md, "Kernel TLS").

With ``[tls] kernel = true`` a connection's handshake runs on an ``ssl.SSLSocket`` over the
real socket (a socket BIO: asyncio's TLS uses memory BIOs, which never reach the kernel) with
``SSL_OP_ENABLE_KTLS``. After the handshake OpenSSL attaches the kernel's ``tls`` upper-layer
protocol to the socket and gives it the session keys of each direction it can; the socket is
then detached from OpenSSL and the link runs on asyncio's plain socket transport, as over TCP:
every byte written is encrypted by the kernel, every byte read was decrypted by it straight into
the frame buffer (``FrameLink``, ``Inbound``).

OpenSSL 3.0 (Debian 12) gives the kernel the receiving direction with TLS 1.2 only (TLS 1.3
receiving came in 3.2), so ``kernel = true`` caps the link at TLS 1.2 with ECDHE and AES-GCM,
ciphers the kernel has (linux/tls.h). A peer that caps it too, or not, agrees on TLS 1.2: the
cap of either end decides.

Where the kernel cannot take both directions the link stays in user space, and the status
says why: a kernel without the ``tls`` module (found once per daemon by attaching it to a
loopback connection) keeps asyncio's TLS for every connection; a connection that came out of
the handshake with one direction or none in the kernel (an OpenSSL built without kTLS, a
cipher the kernel lacks) is closed and the daemon goes back to asyncio's TLS for the next ones.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import socket
import ssl
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

# openssl/ssl.h (3.0): Python 3.11's ssl has no name for it, but SSLContext.options passes
# any bit to SSL_CTX_set_options.
SSL_OP_ENABLE_KTLS = 1 << 3
SOL_TLS = 282                   # linux/socket.h
TLS_TX, TLS_RX = 1, 2           # linux/tls.h
TCP_ULP = 31                    # linux/tcp.h: attach an upper-layer protocol ("tls")
CIPHERS = "ECDHE+AESGCM"        # TLS 1.2 suites the kernel implements (AES-GCM-128/256)


class KernelTlsIncomplete(ConnectionError):
    """The handshake succeeded but the kernel did not take both directions."""


@functools.cache
def kernel_module_missing() -> str | None:
    """None when this kernel attaches its ``tls`` upper-layer protocol to a TCP socket (the
    module is built in or loads on demand), else why not, in words."""
    try:
        with socket.create_server(("127.0.0.1", 0)) as listener, \
                socket.create_connection(listener.getsockname(), timeout=5) as client:
            server, _ = listener.accept()
            with server:
                client.setsockopt(socket.IPPROTO_TCP, TCP_ULP, b"tls")
    except OSError as err:
        if err.errno == errno.ENOENT:
            return "this kernel has no tls module (modprobe tls)"
        return f"the kernel refused its tls protocol on a test connection: {err}"
    return None


def configure(context: ssl.SSLContext) -> None:
    """Let OpenSSL hand the session to the kernel, at the one version where OpenSSL 3.0 hands
    it both directions."""
    context.options |= SSL_OP_ENABLE_KTLS
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)


def kernel_directions(sock: socket.socket) -> tuple[bool, bool]:
    """(sending, receiving) in the kernel: ``getsockopt(SOL_TLS, TLS_TX / TLS_RX)`` answers
    with the crypto info only for a direction that has keys (EBUSY before, ENOPROTOOPT without
    the upper-layer protocol)."""
    def has(option: int) -> bool:
        try:
            sock.getsockopt(SOL_TLS, option, 4)     # version and cipher: 2 bytes each
        except OSError:
            return False
        return True
    return has(TLS_TX), has(TLS_RX)


@dataclass(frozen=True)
class PeerCertificate:
    """What the link keeps of the handshake once OpenSSL lets go of the socket: the verified
    peer certificate, answering as ``SSLSocket.getpeercert`` does (``Handshake.check``)."""

    der: bytes | None
    decoded: dict | None

    def getpeercert(self, binary_form: bool = False):
        return self.der if binary_form else self.decoded


@dataclass(frozen=True)
class KernelSession:
    """A connection whose TLS the kernel does: plain reads and writes on ``sock``."""

    sock: socket.socket
    peer: PeerCertificate
    description: str            # "kernel (tx+rx), TLSv1.2 ECDHE-RSA-AES256-GCM-SHA384"


def _handshake(sock: socket.socket, context: ssl.SSLContext, server_side: bool,
               server_hostname: str | None, timeout: float) -> KernelSession:
    """Blocking (in a worker thread): the handshake, then the socket without OpenSSL."""
    sock.setblocking(True)
    sock.settimeout(timeout)
    tls = context.wrap_socket(sock, server_side=server_side, server_hostname=server_hostname,
                              do_handshake_on_connect=False)
    try:
        tls.do_handshake()
        peer = PeerCertificate(tls.getpeercert(binary_form=True), tls.getpeercert())
        cipher = tls.cipher()
        what = f"{tls.version()} {cipher[0] if cipher else '?'}"
        tx, rx = kernel_directions(tls)
        if not (tx and rx):
            taken = "+".join(n for n, on in (("tx", tx), ("rx", rx)) if on) or "no direction"
            raise KernelTlsIncomplete(f"the kernel took {taken} of {what}")
    except BaseException:
        tls.close()
        raise
    # OpenSSL never sends on the socket again: its SSL object only frees its socket BIO,
    # which does not close the descriptor (BIO_NOCLOSE).
    plain = socket.socket(fileno=tls.detach())
    plain.setblocking(False)
    return KernelSession(plain, peer, f"kernel (tx+rx), {what}")


@functools.cache
def _handshakes() -> ThreadPoolExecutor:
    """The threads that run blocking handshakes: their own, so that connections which never
    finish theirs (anyone can connect) hold at most these for ``timeout`` each, never the
    default executor's threads, which do the journal and mirror work."""
    return ThreadPoolExecutor(max_workers=4, thread_name_prefix="tls-handshake")


async def _in_handshake_thread(fn, *args) -> KernelSession:
    return await asyncio.get_running_loop().run_in_executor(_handshakes(), fn, *args)


async def client_session(host: str, port: int, context: ssl.SSLContext, server_hostname: str,
                         timeout: float) -> KernelSession:
    """Connect and hand the session to the kernel (``configure``d context)."""
    def connect_and_handshake() -> KernelSession:
        sock = socket.create_connection((host, port), timeout=timeout)
        try:
            return _handshake(sock, context, False, server_hostname, timeout)
        except BaseException:
            sock.close()
            raise
    return await _in_handshake_thread(connect_and_handshake)


async def server_session(sock: socket.socket, context: ssl.SSLContext,
                         timeout: float) -> KernelSession:
    """Accept a client's handshake on an accepted socket and hand the session to the kernel."""
    return await _in_handshake_thread(_handshake, sock, context, True, None, timeout)


async def open_streams(session: KernelSession, limit: int
                       ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """asyncio's plain streams over the kernel's TLS (what ``FrameLink`` takes)."""
    return await asyncio.open_connection(sock=session.sock, limit=limit)
