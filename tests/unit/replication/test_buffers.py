"""The receive buffer pool: page-aligned buffers, refilled only once nothing refers to them,
bounded, and given back when idle."""

from __future__ import annotations

from appliance import direct_io
from appliance.replication.buffers import STEP, BufferPool


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def address(buf) -> int:
    return direct_io.address_of(memoryview(buf))


def test_buffers_are_page_aligned_and_sized_in_steps():
    pool = BufferPool(64 << 20)
    for need in (1, STEP, STEP + 1, 3 << 20):
        buf = pool.take(need)
        assert len(buf) >= need and len(buf) % STEP == 0
        assert address(buf) % direct_io.ALIGN == 0


def test_a_buffer_is_reused_only_once_no_view_of_it_remains():
    pool = BufferPool(64 << 20)
    first = pool.take(STEP)
    record = memoryview(first)[100:200]     # a record still waiting for the mirror
    del first
    second = pool.take(STEP)
    assert pool.made == 2, "a buffer a record still refers to was handed out again"
    del second
    third = pool.take(STEP)                 # the second one is free again
    assert pool.made == 2
    assert third is not record.obj
    del record
    fourth = pool.take(STEP)                # and now the first one too
    assert pool.made == 2 and fourth is not third


def test_a_much_larger_free_buffer_is_not_spent_on_a_small_frame():
    pool = BufferPool(64 << 20)
    big = pool.take(8 << 20)
    del big
    small = pool.take(STEP)
    assert len(small) == STEP and pool.made == 2


def test_at_most_max_bytes_are_kept_and_idle_ones_are_dropped():
    clock = Clock()
    pool = BufferPool(4 * STEP, idle_s=10.0, clock=clock)
    held = [pool.take(STEP) for _ in range(6)]        # the pipeline holds six at once
    assert pool.made == 6 and pool.kept_bytes == 4 * STEP
    del held
    again = [pool.take(STEP) for _ in range(4)]       # the four kept are refilled
    assert pool.made == 6
    kept = again.pop()                                # one stays in use
    del again
    clock.now += 11.0
    pool.trim()
    assert pool.kept_bytes == STEP, "idle free buffers were kept, or a used one dropped"
    assert pool.take(STEP) is not kept and pool.made == 7
    pool.clear()
    assert pool.kept_bytes == 0


def test_a_take_after_an_idle_spell_drops_the_buffers_left_idle():
    """The transmitter's read pool has no timer of its own: its takes do the trimming."""
    clock = Clock()
    pool = BufferPool(64 << 20, idle_s=10.0, clock=clock)
    big = pool.take(8 << 20)                # a burst's large read
    del big
    clock.now += 11.0
    pool.take(STEP)                         # an idle link's small poll
    assert pool.kept_bytes == STEP, "a buffer idle past idle_s stayed mapped"
