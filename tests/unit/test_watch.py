"""Threshold watches (pipeline.ring.watch): the writer wakes a reader only for chunks that
may cross, the reader's slot is claimed, renewed, lost and taken back, and nothing a
reader asks can break the writer."""

from __future__ import annotations

import numpy as np
import pytest

import pipeline
from pipeline import WatchesFull
from pipeline.ring import watch as watch_module

CHANNELS = 4


def quiet(n: int = 30) -> np.ndarray:
    return np.zeros((n, CHANNELS), np.float32)


def with_run(n: int, channel: int, start: int, value: float) -> np.ndarray:
    """``n`` quiet frames, ``channel`` at ``value`` from frame ``start`` on."""
    frames = quiet(n)
    frames[start:, channel] = value
    return frames


def adopt(writer: pipeline.RingWriter, watch: pipeline.ThresholdWatch) -> None:
    """Publish one quiet chunk, at which the writer adopts ``watch`` (its first publish
    reads the watch table) and wakes it once; then clear the watch."""
    writer.write(quiet())
    assert watch.live and watch.pending()
    watch.clear()


@pytest.fixture
def ring(stream):
    writer = pipeline.RingWriter(stream, np.float32, (CHANNELS,), 3000, 30_000.0)
    reader = pipeline.attach(stream)
    yield writer, reader
    reader.close()
    writer.close()


def test_a_rising_watch_wakes_only_for_chunks_that_may_cross(ring):
    writer, reader = ring
    with reader.watch(2, 100.0) as watch:
        assert watch.pending()  # a new watch: read what came before first
        assert not watch.live  # the writer has not looked at the table yet
        adopt(writer, watch)
        for _ in range(20):
            writer.write(quiet())
        writer.write(with_run(30, 1, 0, 500.0))  # another channel crosses: not ours
        assert not watch.pending() and watch.flagged == 0
        writer.write(with_run(30, 2, 10, 200.0))  # crosses at frame 10
        assert watch.pending() and watch.flagged == 1
        watch.clear()
        writer.write(with_run(30, 2, 0, 200.0))  # still above: no new crossing
        assert not watch.pending() and watch.flagged == 1
        writer.write(with_run(30, 2, 20, 200.0))  # fell below, then crossed again
        assert watch.pending() and watch.flagged == 2
        watch.clear()
        writer.write(with_run(30, 2, 0, 100.0))  # at the threshold is beyond, but so was
        assert not watch.pending()  # the last sample before it: no crossing
        writer.write(quiet())
        writer.write(with_run(30, 2, 0, 100.0))  # from below to at the threshold: a crossing
        assert watch.pending() and watch.flagged == 3


def test_frames_written_as_bytes_wake_a_watch_too(ring):
    writer, reader = ring
    with reader.watch(2, 100.0) as watch:
        adopt(writer, watch)
        writer.write_bytes(quiet().tobytes())
        assert not watch.pending()
        writer.write_bytes(with_run(30, 2, 10, 200.0).tobytes())
        assert watch.pending() and watch.flagged == 1


def test_a_falling_watch_and_nan_samples(ring):
    writer, reader = ring
    with reader.watch(0, -50.0, "falling") as watch:
        adopt(writer, watch)
        writer.write(with_run(30, 0, 5, 40.0))
        frames = quiet()
        frames[:, 0] = np.nan  # NaN is neither beyond nor a crossing
        writer.write(frames)
        assert not watch.pending()
        writer.write(with_run(30, 0, 29, -51.0))
        assert watch.pending() and watch.flagged == 1


def test_waiting_on_a_watch_sleeps_through_quiet_chunks(ring):
    writer, reader = ring
    with reader.watch(1, 10.0) as watch:
        adopt(writer, watch)
        writer.write(quiet())
        assert watch.wait(0.02) is False  # quiet: the wait runs to its timeout
        writer.write(with_run(30, 1, 3, 11.0))
        assert watch.wait(0.0) is True
        # the watch is only a wake-up: the frames are read from the ring as usual
        chunk = reader.read(timeout_s=0)
        assert chunk.frames == 90 and chunk.data[63, 1] == 11.0


def test_until_the_writer_adopts_a_watch_its_wait_wakes_for_every_chunk(ring):
    """The writer reads the watch table every SCAN_NS: a crossing in the chunks between a
    claim and the next scan wakes nobody through the watch, so the watch waits on its ring
    (the first trigger after arming once waited for the reader's 0.1 s timeout)."""
    writer, reader = ring
    writer.write(quiet())  # the writer's first publish reads the (empty) table
    with reader.watch(2, 100.0) as watch:
        assert watch.held and not watch.live
        watch.clear()
        reader.read(timeout_s=0)
        assert watch.wait(0.02) is False  # nothing published: nothing wakes it
        writer.write(with_run(30, 2, 10, 200.0))  # a crossing the writer does not check
        assert not watch.pending() and watch.flagged == 0
        assert watch.wait(0.0) is True  # but the ring's word woke it
        assert reader.read(timeout_s=0).data[10, 2] == 200.0
        writer._watches.next_scan_ns = 0  # the writer's next scan is due
        writer.write(quiet())  # adopted at this publish, and woken once for it
        assert watch.live and watch.pending()
        watch.clear()
        reader.read(timeout_s=0)
        writer.write(quiet())
        assert watch.wait(0.02) is False  # adopted: quiet chunks no longer wake it


def test_a_reformat_and_the_end_of_the_stream_wake_a_watch(ring):
    writer, reader = ring
    with reader.watch(3, 1.0) as watch:
        watch.clear()
        writer.write(quiet())
        writer.reformat(frame_shape=(2,))  # channel 3 is gone: the writer must not look
        assert watch.pending()
        watch.clear()
        writer.write(np.full((30, 2), 5.0, np.float32))
        assert not watch.pending()
        writer.close()
        assert watch.pending()


def test_a_dead_readers_lease_runs_out_and_its_slot_is_taken(ring, monkeypatch):
    writer, reader = ring
    first = reader.watch(0, 1.0)
    watch_module._WatchSlots(reader._meta).set(first._slot, watch_module._LEASE, 1)  # ran out
    writer._watches.next_scan_ns = 0
    writer.write(with_run(30, 0, 10, 5.0))
    first.clear()
    writer.write(with_run(30, 0, 10, 5.0))
    assert not first.pending() and first.flagged == 0  # the writer ignores a lapsed lease
    second = reader.watch(1, 1.0)
    assert second._slot == first._slot  # the lapsed slot is the first one free
    assert not first.held
    first.keep()  # the first reader was alive after all: it claims another slot
    assert first.held and first.claims == 2 and first._slot != second._slot
    writer._watches.next_scan_ns = 0
    first.clear()
    writer.write(with_run(30, 0, 10, 5.0))
    assert first.pending()
    second.close()
    first.close()


def test_every_slot_taken_is_a_clear_error_and_a_closed_watch_frees_one(ring):
    _, reader = ring
    watches = [reader.watch(0, float(i)) for i in range(watch_module.WATCH_SLOTS)]
    with pytest.raises(WatchesFull, match="no free threshold-watch slot"):
        reader.watch(0, 99.0)
    watches[3].close()
    watches[3].close()  # idempotent
    again = reader.watch(0, 99.0)
    assert again.held
    for w in [*watches, again]:
        w.close()


def test_bad_watch_requests_are_refused_with_what_is_wrong(ring, stream):
    _, reader = ring
    with pytest.raises(ValueError, match=r"channel 4 is not in stream .* \(0 to 3\)"):
        reader.watch(4, 1.0)
    with pytest.raises(ValueError, match="direction must be 'rising' or 'falling'"):
        reader.watch(0, 1.0, "up")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        reader.watch(0, float("nan"))
    events = stream.replace("continuous", "events")
    dtype = np.dtype([("code", np.int32), ("value", np.float64)])
    with (
        pipeline.RingWriter(events, dtype, (), 64, 0.0),
        pipeline.attach(events) as records,
        pytest.raises(ValueError, match="not numbers"),
    ):
        records.watch(0, 1.0)


def test_a_slot_forged_onto_a_record_stream_never_breaks_its_writer(stream):
    """A watch that slipped past the reader's checks (another version, a forged slot) is
    ignored by a writer whose frames cannot be compared with a number."""
    dtype = np.dtype([("code", np.int32), ("value", np.float64)])
    with pipeline.RingWriter(stream, dtype, (), 64, 0.0) as writer:
        table = watch_module._WatchSlots(writer._meta)
        table.set(0, watch_module._TOKEN, 7)
        table.set(0, watch_module._LEASE, 1 << 62)
        writer._watches.next_scan_ns = 0
        writer.write(np.zeros(3, dtype))
        assert writer._watches.active == []
        table.release()


def test_the_poll_fallback_wakes_a_watch_too(ring, monkeypatch):
    monkeypatch.setenv("RIGPIPE_WAIT", "poll")
    writer, reader = ring
    with reader.watch(0, 1.0) as watch:
        assert watch._word.strategy == "poll"
        watch.clear()
        writer.write(with_run(30, 0, 1, 2.0))
        assert watch.wait(1.0)
