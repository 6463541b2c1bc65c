"""The transmitter's window of unacknowledged batches against ACKs that cross a resend (real
journal and reader, a scripted peer in place of the link).

Seen in the VM tier under load: a batch went out, a resend rewound the send cursor, the peer's
ACK of the first copy arrived while the second copy went out, and the second copy was then
put in flight although the peer already held it. The receiver does not acknowledge a batch of
nothing but duplicates, so that entry was never acknowledged: the next resync's drain waited
for an empty window forever (record shipping paused, so not even the overdue-ACK resend ran).
And the overdue-ACK resend counted from the last ACK, however long nothing had been in flight:
the first batch after an idle spell longer than that was resent at once."""

from __future__ import annotations

import asyncio
import time
import uuid

from appliance.journal import JournalReader, OpKind, WriteOp
from appliance.replication import wire
from appliance.replication.config import TransmitterConfig
from appliance.replication.handshake import Welcome
from appliance.replication.primary import session as session_module
from appliance.replication.primary.session import TxSession
from appliance.replication.primary.shared import TxShared
from appliance.volume import Volume, VolumeConfig

VOL = uuid.UUID("0b5e6a4c-0000-4000-8000-0000000000dd")
BLOCKS = 2048
FT = wire.FrameType


class ScriptedPeer:
    """The link as the session sees it: BATCH frames are recorded (their seqs), frames to the
    session are queued by the test. ``on_batch`` runs while a BATCH "goes out"."""

    def __init__(self) -> None:
        self.bytes_sent = 0
        self.batches: list[list[int]] = []
        self.inbox: asyncio.Queue[wire.Frame] = asyncio.Queue()
        self.on_batch = None

    async def send_parts(self, ftype: wire.FrameType, parts: list, *,
                         head_crc: bool = False) -> None:
        if ftype is FT.BATCH:
            batch = wire.decode_batch(b"".join(bytes(p) for p in parts))
            self.batches.append([r.seq for r in batch.records])
            if self.on_batch is not None:
                await self.on_batch(self.batches[-1])

    async def send(self, ftype: wire.FrameType, payload: bytes = b"") -> None:
        pass

    async def send_json(self, ftype: wire.FrameType, obj: dict) -> None:
        pass

    async def recv(self, timeout: float | None) -> wire.Frame:
        return await self.inbox.get()       # the peer is alive throughout

    def ack(self, seq: int) -> None:
        self.inbox.put_nowait(wire.Frame(FT.ACK, wire.encode_ack(seq, seq)))


def volume(tmp_path) -> Volume:
    return Volume.open(VolumeConfig(uuid=VOL, num_blocks=BLOCKS, journal_size=2 << 20,
                                    max_transfer_bytes=64 * 1024, service_interval=None,
                                    mirror_path=tmp_path / "mirror",
                                    journal_path=tmp_path / "journal",
                                    bitmap_path=tmp_path / "bitmap"))


def write(vol: Volume, i: int) -> None:
    vol.submit([WriteOp(OpKind.WRITE, (i * 8) % BLOCKS, 8, bytes([i % 251 + 1]) * 4096)],
               fua=True)


def session(tmp_path, peer: ScriptedPeer, *, dead_after_s: float) -> TxSession:
    cfg = TransmitterConfig(identity="site-a", peer=("127.0.0.1", 1), peer_identity="dr-site",
                            journal=tmp_path / "journal", volume_uuid=VOL,
                            size_bytes=BLOCKS * 512, control_socket=tmp_path / "tx.sock",
                            tls=None, heartbeat_s=dead_after_s / 4, dead_after_s=dead_after_s)
    reader = JournalReader(tmp_path / "journal", volume_uuid=VOL)
    welcome = Welcome("dr-site", 0, 0, None, dead_after_s / 4)
    return TxSession(cfg, TxShared(BLOCKS * 512), peer, reader, welcome, dict)


async def until(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def run_with_session(tx: TxSession, vol: Volume, scenario) -> None:
    """Run ``scenario(run)`` (``run``: the session's task) while the session runs; then stop
    the session and close what the test opened, whatever the scenario did."""
    async def go() -> None:
        run = asyncio.create_task(tx.run())
        try:
            await scenario(run)
        finally:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)

    try:
        asyncio.run(go())
    finally:
        tx.reader.close()
        vol.close()


def test_an_ack_crossing_a_resent_batch_leaves_nothing_in_flight(tmp_path):
    """The peer's ACK of a batch arrives while the batch goes out again after a resend: the
    peer holds it (and will not acknowledge the duplicate), so it is not in flight. A resync
    waiting for an empty window (record shipping paused, as its drain does) goes on."""
    vol = volume(tmp_path)
    for i in range(1, 4):
        write(vol, i)
    peer = ScriptedPeer()
    tx = session(tmp_path, peer, dead_after_s=0.2)      # resend after 0.6 s without an ACK

    async def crossing_ack(seqs: list[int]) -> None:
        if len(peer.batches) == 2:          # the resent copy: the first copy's ACK arrives now
            peer.ack(seqs[-1])
            await until(lambda: tx.peer_durable == seqs[-1], 5, "the ACK to be taken")

    async def scenario(run: asyncio.Task) -> None:
        peer.on_batch = crossing_ack
        await until(lambda: len(peer.batches) == 2, 10, "the overdue-ACK resend")
        assert peer.batches == [[1, 2, 3], [1, 2, 3]]
        assert tx.shared.counters.resends == 1
        await asyncio.sleep(0.05)       # the send loop goes on after the second copy
        # What the resync's _begin does after its drain: pause records, wait for the window.
        tx.records_paused = True
        try:
            await asyncio.wait_for(tx.window_empty(), 3)
        except TimeoutError:
            raise AssertionError(
                f"the window never empties: {list(tx.shared.inflight._batches)} in flight "
                f"although the peer acknowledged seq {tx.peer_durable}") from None
        assert run.done() is False

    run_with_session(tx, vol, scenario)


def test_the_first_batch_after_an_idle_spell_is_not_resent_at_once(tmp_path):
    """Nothing in flight for longer than the overdue-ACK delay, then a write: its batch gets
    the whole delay for its ACK, not an immediate resend."""
    vol = volume(tmp_path)
    peer = ScriptedPeer()
    tx = session(tmp_path, peer, dead_after_s=0.3)      # resend after 0.9 s without an ACK

    async def scenario(_run: asyncio.Task) -> None:
        await asyncio.sleep(1.2)            # idle: no record, no ACK
        write(vol, 1)
        await until(lambda: peer.batches, 5, "the batch of the new write")
        await asyncio.sleep(0.3)            # well within the delay; no ACK yet
        assert peer.batches == [[1]], (
            f"resent {tx.shared.counters.resends} time(s) without waiting for its ACK: "
            f"{peer.batches}")
        assert tx.shared.counters.resends == 0
        peer.ack(1)
        await until(lambda: not tx.shared.inflight, 5, "the ACK to empty the window")

    run_with_session(tx, vol, scenario)


def test_a_stream_of_acks_is_persisted_a_few_times_ending_with_the_last(tmp_path):
    """Every ACK opens the window at once, but the journal's acknowledged seq (a slot write
    and an fdatasync in a worker thread) is persisted at most every ACK_PERSIST_INTERVAL_S,
    each time up to the latest ACK: the last one of a burst is never left unpersisted."""
    vol = volume(tmp_path)
    for i in range(1, 41):
        write(vol, i)
    peer = ScriptedPeer()
    tx = session(tmp_path, peer, dead_after_s=2.0)
    persisted: list[int] = []
    acknowledge = tx.reader.acknowledge

    def counted(seq: int) -> None:
        acknowledge(seq)
        persisted.append(seq)
    tx.reader.acknowledge = counted

    async def scenario(_run: asyncio.Task) -> None:
        await until(lambda: peer.batches, 5, "the batch of the 40 writes")
        assert peer.batches == [list(range(1, 41))]
        start = time.monotonic()
        for seq in range(1, 41):            # the peer's ACKs, one per record, 40 in ~80 ms
            peer.ack(seq)
            await until(lambda s=seq: tx.peer_durable == s, 5, f"the ACK of seq {seq}")
            await asyncio.sleep(0.002)
        assert not tx.shared.inflight, "the window did not open on the ACKs themselves"
        await until(lambda: tx.reader.acked_seq == 40, 5, "the last ACK to be persisted")
        elapsed = time.monotonic() - start
        assert persisted[-1] == 40 and persisted == sorted(persisted)
        most = elapsed / session_module.ACK_PERSIST_INTERVAL_S + 2
        assert len(persisted) <= most, (
            f"{len(persisted)} persists in {elapsed:.3f} s (at most {most:.0f}): {persisted}")

    run_with_session(tx, vol, scenario)
