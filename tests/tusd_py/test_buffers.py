"""The write-buffer budget shared by a process's body transfers (tusd_py/buffers.py)."""

from __future__ import annotations

from tusd_py.service.buffers import MIN_BUFFER_BYTES, WriteBuffers

MiB = 1 << 20


def test_one_transfer_gets_the_full_buffer() -> None:
    buffers = WriteBuffers(MiB, 8 * MiB)
    assert buffers.size == MiB
    with buffers.transfer():
        assert buffers.size == MiB


def test_buffers_shrink_as_transfers_join_and_grow_back_when_they_end() -> None:
    buffers = WriteBuffers(MiB, 8 * MiB)
    with buffers.transfer(), buffers.transfer(), buffers.transfer(), buffers.transfer():
        assert buffers.active == 4
        assert buffers.size == 8 * MiB // 8  # two buffers per transfer share the budget
        assert 4 * 2 * buffers.size <= 8 * MiB
    assert buffers.active == 0
    assert buffers.size == MiB


def test_a_crowd_never_goes_below_the_minimum_batch() -> None:
    buffers = WriteBuffers(MiB, 8 * MiB)
    entered = [buffers.transfer() for _ in range(1000)]
    for cm in entered:
        cm.__enter__()
    assert buffers.size == MIN_BUFFER_BYTES
    for cm in entered:
        cm.__exit__(None, None, None)
    assert buffers.active == 0


def test_a_failing_transfer_gives_its_share_back() -> None:
    buffers = WriteBuffers(MiB, 8 * MiB)
    try:
        with buffers.transfer():
            raise OSError("disk full")
    except OSError:
        pass
    assert buffers.active == 0
