"""The ring's semantics, in one process (cross-process behaviour is in tests/integration)."""

import numpy as np
import pytest

import pipeline
from pipeline.errors import (
    EndOfStream,
    ReaderClosed,
    SegmentCorrupt,
    SegmentNotReady,
    StreamExists,
    StreamNotFound,
    StreamReplaced,
    WriterClosed,
)
from pipeline.ring import layout, naming, shm

SPIKE = np.dtype([("timestamp_ns", "<i8"), ("channel", "<u2"), ("unit", "u1")])


def frames_from(start: int, n: int, channels: int = 4) -> np.ndarray:
    """Frames whose every value is the frame's own sequence number."""
    return np.repeat(np.arange(start, start + n, dtype=np.int32)[:, None], channels, axis=1)


@pytest.fixture
def writer(stream):
    with pipeline.RingWriter(stream, np.int32, (4,), 16, 1000.0, {"units": "uV"}) as w:
        yield w


def test_reader_gets_frames_timestamps_and_metadata(writer, stream):
    with pipeline.attach(stream) as reader:
        assert (reader.dtype, reader.frame_shape, reader.sample_rate) == (np.int32, (4,), 1000.0)
        assert reader.descriptor == {"units": "uV"} and reader.capacity == 16
        assert reader.generation == 1 and reader.writer_alive
        writer.write(frames_from(0, 5), timestamps_ns=np.arange(5) * 1000)
        chunk = reader.read(timeout_s=1)
        np.testing.assert_array_equal(chunk.data, frames_from(0, 5))
        np.testing.assert_array_equal(chunk.timestamps_ns, np.arange(5) * 1000)
        assert (chunk.start_sequence, chunk.dropped, chunk.end_sequence) == (0, 0, 5)
        assert reader.write_cursor == writer.write_cursor == 5 and reader.lag == 0


def test_default_timestamps_are_one_sample_period_apart(writer, stream):
    with pipeline.attach(stream) as reader:
        writer.write(frames_from(0, 4))
        timestamps = reader.read(timeout_s=1).timestamps_ns
    np.testing.assert_array_equal(np.diff(timestamps), [1_000_000] * 3)


def test_data_is_a_copy_that_survives_overwrites(writer, stream):
    with pipeline.attach(stream) as reader:
        writer.write(frames_from(0, 8))
        chunk = reader.read(timeout_s=1)
        writer.write(frames_from(8, 16))
        writer.write(frames_from(24, 16))
    np.testing.assert_array_equal(chunk.data, frames_from(0, 8))


def test_from_now_false_starts_at_the_oldest_frame_held(writer, stream):
    writer.write(frames_from(0, 10))
    writer.write(frames_from(10, 10))  # capacity 16: frames 0-3 are gone
    with pipeline.attach(stream, from_now=False) as old, pipeline.attach(stream) as new:
        assert old.read(timeout_s=0).start_sequence == 4
        assert new.read(timeout_s=0).frames == 0


def test_lapped_reader_learns_exactly_what_it_lost_and_resumes_at_the_oldest_frame(writer, stream):
    with pipeline.attach(stream) as reader:
        writer.write(frames_from(0, 3))
        assert reader.read(timeout_s=0).frames == 3
        for start in range(3, 43, 10):
            writer.write(frames_from(start, 10))
        chunk = reader.read(timeout_s=0)
    assert chunk.dropped == 43 - 16 - 3
    assert chunk.start_sequence == 43 - 16
    np.testing.assert_array_equal(chunk.data, frames_from(27, 16))


def test_wrapping_reads_and_max_frames(writer, stream):
    with pipeline.attach(stream) as reader:
        writer.write(frames_from(0, 12))
        reader.read(timeout_s=0)
        writer.write(frames_from(12, 10))  # wraps the 16-slot ring
        first = reader.read(max_frames=4, timeout_s=0)
        rest = reader.read(timeout_s=0)
    np.testing.assert_array_equal(first.data, frames_from(12, 4))
    np.testing.assert_array_equal(rest.data, frames_from(16, 6))
    assert rest.start_sequence == first.end_sequence


def test_latest_returns_the_newest_frames_without_moving_the_cursor(writer, stream):
    with pipeline.attach(stream) as reader:
        writer.write(frames_from(0, 15))
        writer.write(frames_from(15, 15))
        np.testing.assert_array_equal(reader.latest(5).data, frames_from(25, 5))
        assert reader.latest(100).frames == 16  # never more than the ring holds
        assert reader.cursor == 0


def test_read_view_is_zero_copy_and_never_spans_the_wrap(writer, stream):
    with pipeline.attach(stream) as reader:
        writer.write(frames_from(0, 12))
        reader.read(timeout_s=0)
        writer.write(frames_from(12, 10))  # slots 12-15, then 0-5
        with reader.read_view(timeout_s=0) as view:
            np.testing.assert_array_equal(view.data, frames_from(12, 4))
            assert not view.data.flags.writeable and not view.data.flags.owndata
            assert (view.start_sequence, view.dropped, view.generation) == (12, 0, 1)
        assert view.intact
        with reader.read_view(timeout_s=0) as rest:
            np.testing.assert_array_equal(rest.data, frames_from(16, 6))
        assert reader.dropped_total == 0


def test_read_view_overwritten_while_in_use_is_reported_and_counted(writer, stream):
    with pipeline.attach(stream) as reader:
        writer.write(frames_from(0, 8))
        with reader.read_view(timeout_s=0) as view:
            assert view.intact
            writer.write(frames_from(8, 10))  # overwrites slots 0 and 1
            assert not view.intact
        assert not view.intact and view.data.size == 0  # released: no dangling view
        assert reader.dropped_total == 2
        assert reader.read(timeout_s=0).start_sequence == 8


def test_read_times_out_with_an_empty_chunk(writer, stream):
    with pipeline.attach(stream) as reader:
        chunk = reader.read(timeout_s=0.05)
    assert chunk.frames == 0 and chunk.data.shape == (0, 4) and chunk.data.dtype == np.int32


def test_reformat_readers_finish_the_old_generation_then_switch(writer, stream):
    with pipeline.attach(stream) as reader:
        writer.write(frames_from(0, 3))
        assert writer.reformat(frame_shape=(2,), descriptor={"units": "mV"}) == 2
        writer.write(np.zeros((4, 2), np.int32))
        old = reader.read(timeout_s=1)
        new = reader.read(timeout_s=1)
        assert reader.frame_shape == (2,) and reader.descriptor == {"units": "mV"}
    assert (old.generation, old.frames, old.format_changed) == (1, 3, False)
    assert (new.generation, new.data.shape, new.format_changed) == (2, (4, 2), True)
    assert new.start_sequence == 3 and new.dropped == 0


def test_reader_that_missed_a_whole_generation_counts_it_as_dropped(writer, stream):
    with pipeline.attach(stream) as reader:
        writer.reformat(sample_rate=500.0)
        writer.write(frames_from(0, 5))
        writer.reformat(sample_rate=250.0)
        writer.write(frames_from(5, 2))
        chunk = reader.read(timeout_s=1)
    assert (chunk.generation, chunk.start_sequence, chunk.dropped) == (3, 5, 5)


@pytest.mark.posix
def test_after_close_readers_drain_then_get_end_of_stream(stream):
    writer = pipeline.RingWriter(stream, np.int32, (4,), 16, 1000.0)
    reader = pipeline.attach(stream)
    writer.write(frames_from(0, 2))
    writer.write(frames_from(2, 3))
    writer.close()
    writer.close()  # idempotent
    assert shm.list_names() is None or naming.shm_name(stream) not in shm.list_names()
    chunks = list(reader)  # iteration stops at the end of the stream
    assert sum(c.frames for c in chunks) == 5
    with pytest.raises(EndOfStream, match="closed by its writer"):
        reader.read(timeout_s=0)
    assert not reader.writer_alive
    reader.close()
    with pytest.raises(ReaderClosed):
        reader.read()
    with pytest.raises(WriterClosed):
        writer.write(frames_from(0, 1))


def test_generation_closed_before_a_reader_reached_it_counts_as_dropped(stream):
    writer = pipeline.RingWriter(stream, np.int32, (4,), 16, 1000.0)
    with pipeline.attach(stream) as reader:
        writer.write(frames_from(0, 3))
        writer.reformat(frame_shape=(2,))
        writer.write(np.zeros((5, 2), np.int32))
        writer.close()  # generation 2 is unlinked before the reader ever mapped it
        assert reader.read(timeout_s=0).frames == 3
        with pytest.raises(EndOfStream, match="closed before this reader reached it"):
            reader.read(timeout_s=0)
        assert reader.dropped_total == 5 and reader.cursor == 8


def test_event_stream_of_structured_records(stream):
    with pipeline.RingWriter(stream, SPIKE, (), 64, 0.0) as writer, pipeline.attach(stream) as r:
        spikes = np.array([(10, 3, 1), (20, 7, 0)], dtype=SPIKE)
        writer.write(spikes, timestamps_ns=spikes["timestamp_ns"])
        chunk = r.read(timeout_s=1)
    assert chunk.data.dtype == SPIKE and chunk.data.tolist() == spikes.tolist()


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        (
            np.zeros((3, 5), np.int32),
            r"expects frames of shape \(n, 4\) dtype int32; given shape \(3, 5\)",
        ),
        (np.zeros((3, 4), np.int16), r"given shape \(3, 4\) dtype int16"),
        (np.zeros(4, np.int32), r"given shape \(4,\)"),
        (np.zeros((17, 4), np.int32), "does not fit .* which holds 16"),
    ],
)
def test_write_refuses_frames_of_the_wrong_shape_or_size(writer, stream, frames, message):
    with pipeline.attach(stream) as reader:
        with pytest.raises(ValueError, match=message):
            writer.write(frames)
        assert writer.write_cursor == 0 and reader.read(timeout_s=0).frames == 0


def test_write_refuses_timestamps_of_the_wrong_length(writer):
    with pytest.raises(ValueError, match=r"timestamps_ns has shape \(2,\); expected \(3,\)"):
        writer.write(frames_from(0, 3), timestamps_ns=[1, 2])


def test_write_bytes_publishes_the_same_frames_as_write_across_the_wrap(writer, stream):
    with pipeline.attach(stream) as reader:
        writer.write(frames_from(0, 10))
        writer.write_bytes(frames_from(10, 3).tobytes())  # bytes
        writer.write_bytes(bytearray(frames_from(13, 5).tobytes()))  # over the wrap (16)
        raw = memoryview(frames_from(18, 2))  # a typed view of int32 (2, 4): cast to bytes
        assert writer.write_bytes(raw) == 20
        chunk = reader.read(timeout_s=1)
    assert chunk.start_sequence == 4 and chunk.dropped == 4  # 16 held of 20 written
    np.testing.assert_array_equal(chunk.data, frames_from(4, 16))
    assert (np.diff(chunk.timestamps_ns) > 0).all()
    event_bytes = np.array([(10, 3, 1), (20, 7, 0)], dtype=SPIKE).tobytes()
    events = pipeline.RingWriter(f"{stream}-ev", SPIKE, (), 64, 0.0)
    with events, pipeline.attach(f"{stream}-ev") as reader:
        events.write_bytes(event_bytes)
        assert reader.read(timeout_s=1).data.tolist() == [(10, 3, 1), (20, 7, 0)]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\0" * 20, r"20 bytes are not a whole number of frames .* \(16 bytes each: shape \(4,\)"),
        (b"\0" * 16 * 17, "does not fit .* which holds 16"),
        (memoryview(np.zeros((4, 8), np.int32)[:, ::2]), "C-contiguous"),
    ],
)
def test_write_bytes_refuses_what_is_not_whole_frames(writer, stream, data, message):
    with pipeline.attach(stream) as reader:
        with pytest.raises(ValueError, match=message):
            writer.write_bytes(data)
        assert writer.write_bytes(b"") == 0
        assert writer.write_cursor == 0 and reader.read(timeout_s=0).frames == 0
    writer.close()
    with pytest.raises(WriterClosed):
        writer.write_bytes(frames_from(0, 1).tobytes())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"capacity": 0}, "capacity must be a positive number"),
        ({"sample_rate": -1.0}, "sample_rate must be a finite rate"),
        ({"frame_shape": (0,)}, "frame_shape must be positive"),
        ({"dtype": object}, "holds Python objects"),
        ({"descriptor": {"scale": object()}}, "msgpack-able"),
    ],
)
def test_writer_refuses_bad_arguments_and_leaves_nothing_behind(stream, kwargs, message):
    args = {"dtype": np.int16, "frame_shape": (4,), "capacity": 8, "sample_rate": 1e3} | kwargs
    with pytest.raises(ValueError, match=message):
        pipeline.RingWriter(stream, **args)
    with pytest.raises(StreamNotFound):
        pipeline.attach(stream)


def test_second_live_writer_is_refused(writer, stream):
    with pytest.raises(StreamExists, match=r"already written by live process \d+"):
        pipeline.RingWriter(stream, np.int32, (4,), 16, 1000.0)
    writer.write(frames_from(0, 1))  # the first writer is untouched


def test_attach_to_unknown_stream_names_it_and_lists_the_existing_ones(writer, stream):
    with pytest.raises(StreamNotFound) as err:
        pipeline.attach("nobody/acq/continuous")
    assert "'nobody/acq/continuous' does not exist" in str(err.value)
    if err.value.existing is not None:
        assert stream in err.value.existing and stream in str(err.value)


def _poke(stream: str, offset: int, value: bytes, generation: int | None = None) -> None:
    key = stream if generation is None else naming.data_key(stream, generation)
    segment = shm.Segment.attach(naming.shm_name(key))
    segment.buf[offset : offset + len(value)] = value
    segment.close()


@pytest.mark.parametrize(
    ("offset", "value", "generation", "message"),
    [
        (0, b"NOTOURS!", None, "has magic b'NOTOURS!'"),
        (8, (99).to_bytes(8, "little"), None, "layout version 99, this rigpipe reads version 3"),
        (8, (99).to_bytes(8, "little"), 1, "layout version 99"),
        (1024, b"\xc1\xc1\xc1", 1, "unreadable format"),
        (200, (1 << 40).to_bytes(8, "little"), 1, "bytes in all"),
    ],
)
def test_corrupt_segments_raise_segment_corrupt(writer, stream, offset, value, generation, message):
    _poke(stream, offset, value, generation)
    with pytest.raises(SegmentCorrupt, match=message):
        pipeline.attach(stream)


def test_new_generation_name_collision_is_detected(writer, stream):
    segment = shm.Segment.attach(naming.shm_name(stream))
    header = layout.Header(segment)
    other = b"other/acq/continuous"
    header.fields[7] = len(other)
    segment.buf[layout.NAME_AT : layout.NAME_AT + len(other)] = other
    header.release()
    segment.close()
    with pytest.raises(SegmentCorrupt, match="belongs to stream 'other/acq/continuous'"):
        pipeline.attach(stream)


def test_blank_segment_is_waited_for_then_reported_as_not_ready(stream):
    segment = shm.Segment.create(naming.shm_name(stream), layout.STREAM_SEGMENT_BYTES)
    try:
        with pytest.raises(SegmentNotReady, match="still being created"):
            pipeline.attach(stream)
    finally:
        segment.unlink()
        segment.close()


def test_invalid_wait_strategy_is_refused(monkeypatch):
    from pipeline.ring.wait import strategy_from_env

    monkeypatch.setenv("RIGPIPE_WAIT", "spin")
    with pytest.raises(ValueError, match="RIGPIPE_WAIT='spin' is not one of auto, futex, poll"):
        strategy_from_env()


# -- stream identity: a cursor means something only in the stream it came from --------------------
def test_stream_id_is_new_for_a_stream_created_afresh(stream):
    with pipeline.RingWriter(stream, np.int32, (4,), 16, 1000.0) as first:
        first.write(frames_from(0, 5))
        with pipeline.attach(stream) as reader:
            old_id = reader.stream_id
        assert old_id == first.stream_id != 0
    with pipeline.RingWriter(stream, np.int32, (4,), 16, 1000.0) as second:
        second.write(frames_from(0, 3))
        assert second.stream_id != old_id and second.write_cursor == 3
        with pytest.raises(StreamReplaced, match="created again") as replaced:
            pipeline.attach(stream, cursor=5, stream_id=old_id)
        assert replaced.value.found_id == second.stream_id
        with pytest.raises(ValueError, match="ahead of stream"):
            pipeline.attach(stream, cursor=5)  # would have skipped silently before
        with pipeline.attach(stream, cursor=0, stream_id=second.stream_id) as reader:
            np.testing.assert_array_equal(reader.read(timeout_s=1).data, frames_from(0, 3))


def test_resuming_at_a_cursor_the_ring_no_longer_holds_reports_it_dropped(writer, stream):
    writer.write(frames_from(0, 16))
    writer.write(frames_from(16, 10))
    with pipeline.attach(stream, cursor=4, stream_id=writer.stream_id) as reader:
        chunk = reader.read(timeout_s=1)
    assert (chunk.start_sequence, chunk.dropped) == (10, 6)


@pytest.mark.posix  # Windows has no unlink: a named mapping lives while a handle is open
def test_segments_unlinked_under_a_writer_are_recreated_and_readers_follow(stream, monkeypatch):
    monkeypatch.setattr("pipeline.ring.writer._LINK_CHECK_NS", 0)  # check on every write
    with pipeline.RingWriter(stream, np.int32, (4,), 16, 1000.0) as writer:
        stream_id = writer.stream_id
        with pipeline.attach(stream) as reader:
            writer.write(frames_from(0, 4))
            got = [reader.read(timeout_s=1)]
            shm.unlink(naming.shm_name(stream))  # another program removes the stream segment
            writer.write(frames_from(4, 4))
            assert writer.relinks == 1 and "stream segment" in writer.relink_reason
            got.append(reader.read(timeout_s=1))
            shm.unlink(naming.shm_name(naming.data_key(stream, writer.generation)))
            writer.write(frames_from(8, 4))
            assert writer.relinks == 2 and "generation" in writer.relink_reason
            got.append(reader.read(timeout_s=1))
            assert [c.start_sequence for c in got] == [0, 4, 8] and not any(c.dropped for c in got)
            np.testing.assert_array_equal(got[2].data, frames_from(8, 4))
            assert reader.stream_id == stream_id
        # A reader attaching now finds the stream by name, in the same sequence space.
        with pipeline.attach(stream, from_now=False, stream_id=stream_id) as late:
            writer.write(frames_from(12, 2))
            assert late.read(timeout_s=1).end_sequence == 14


@pytest.mark.posix  # Windows has no unlink: a named mapping lives while a handle is open
def test_a_foreign_segment_under_an_unlinked_name_stops_the_writer(stream, monkeypatch):
    monkeypatch.setattr("pipeline.ring.writer._LINK_CHECK_NS", 0)
    writer = pipeline.RingWriter(stream, np.int32, (4,), 16, 1000.0)
    name = naming.shm_name(stream)
    shm.unlink(name)
    squatter = shm.Segment.create(name, 4096)
    try:
        with pytest.raises(StreamExists, match="belongs to another segment"):
            writer.write(frames_from(0, 1))
        writer.close()
        assert shm.Segment.attach(name).size == 4096  # the foreign segment was not touched
    finally:
        squatter.close()
        shm.unlink(name)
