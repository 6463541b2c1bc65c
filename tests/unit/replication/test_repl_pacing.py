"""Transmitter batch sizing: a batch holds at most a short slice of the acknowledged rate."""

from appliance.replication.primary.pacing import (
    BATCH_LINK_TIME_S,
    MIN_BATCH_BYTES,
    AckRate,
    batch_limit,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_ack_rate_needs_a_span_then_measures_the_window():
    clock = Clock()
    meter = AckRate(window_s=1.0, min_span_s=0.2, clock=clock)
    assert meter.rate() is None
    for _ in range(10):                # 10 MB/s: 100 kB every 10 ms
        meter.add(100_000)
        clock.now += 0.01
    assert meter.rate() is None        # 0.1 s of ACKs: too little to judge
    for _ in range(190):
        meter.add(100_000)
        clock.now += 0.01
    assert abs(meter.rate() - 10e6) / 10e6 < 0.02
    clock.now += 5.0                   # idle: the old ACKs say nothing about the link now
    assert meter.rate() is None


def test_batch_limit_follows_the_link():
    configured = 1 << 20
    assert batch_limit(configured, None) == configured                 # no measurement yet
    assert batch_limit(configured, 12.5e6) == int(12.5e6 * BATCH_LINK_TIME_S)   # 100 Mbit/s
    assert batch_limit(configured, 1e9) == configured                  # loopback, LAN
    assert batch_limit(configured, 1e3) == MIN_BATCH_BYTES             # a trickle
    assert batch_limit(4096, 1e3) == 4096          # never above what is configured
