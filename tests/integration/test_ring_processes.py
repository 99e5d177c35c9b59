"""The ring between real processes, over real shared memory."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

import pipeline
from pipeline.ring import naming, shm
from tests import procs

READ_TIMEOUT_S = 60


def _get(queue, what: str):
    try:
        return queue.get(timeout=READ_TIMEOUT_S)
    except Exception as exc:  # queue.Empty: say which process went quiet
        raise AssertionError(f"no {what} within {READ_TIMEOUT_S} s") from exc


def test_stress_small_ring_fast_writer_readers_at_three_speeds(processes, stream, wait_strategy):
    """No torn or misplaced frame ever reaches a reader, and every frame is either
    received or counted as dropped, exactly, whatever the reader's speed."""
    ctx = processes.ctx
    out, go = ctx.Queue(), ctx.Event()
    processes.start(procs.stress_writer, stream, 64, 1.5, 48, go, out)
    assert _get(out, "writer ready") == ("ready", None)
    results = ctx.Queue()
    readers = []
    for delay_s in (0.0, 0.0002, 0.002):
        ready = ctx.Event()
        processes.start(procs.checking_reader, stream, delay_s, ready, results)
        assert ready.wait(READ_TIMEOUT_S)
        readers.append(delay_s)
    go.set()
    _, written = _get(out, "writer total")
    reports = [_get(results, "reader report") for _ in readers]
    assert written > 10_000
    for report in reports:
        assert report["problems"] == []
        assert report["received"] + report["dropped_total"] == written, report
        assert report["dropped_in_chunks"] <= report["dropped_total"]
        assert report["received"] > 0
    # The slowest reader (2 ms per read on a 64-frame ring) cannot keep up: drops happen.
    assert max(r["dropped_total"] for r in reports) > 0


def test_lossless_reader_gets_every_frame_in_order(processes, stream, wait_strategy):
    ctx = processes.ctx
    out, go, drained = ctx.Queue(), ctx.Event(), ctx.Event()
    # A ring far larger than what is written: nothing may be dropped.
    processes.start(procs.reformatting_writer, stream, go, drained, out)
    assert _get(out, "writer ready") == "ready"
    with pipeline.attach(stream) as reader:
        go.set()
        chunks = []
        while reader.cursor < 1500:
            chunks.append(reader.read(timeout_s=READ_TIMEOUT_S))
        drained.set()
        with pytest.raises(pipeline.EndOfStream):
            reader.read(timeout_s=READ_TIMEOUT_S)
    assert _get(out, "writer done") == "done"
    before = [c for c in chunks if c.generation == 1]
    after = [c for c in chunks if c.generation == 2]
    assert sum(c.frames for c in before) == 1000 and sum(c.frames for c in after) == 500
    assert all(c.dropped == 0 and procs.frame_problems(c) == [] for c in chunks)
    assert [c.format_changed for c in after] == [True] + [False] * (len(after) - 1)
    assert after[0].start_sequence == 1000 and after[0].data.shape[1] == 4
    assert all(a.end_sequence == b.start_sequence for a, b in itertools.pairwise(chunks))


def _paced_writer_and_reader(processes, stream: str):
    """A ``paced_writer`` process (5000 frames/s) that has published, its ready event
    (cleared before a takeover), and a reader from the oldest frame."""
    ready = processes.ctx.Event()
    first = processes.start(procs.paced_writer, stream, 10, 500.0, -1, ready)
    assert ready.wait(READ_TIMEOUT_S)
    return first, ready, pipeline.attach(stream, from_now=False)


def test_writer_killed_then_restarted_is_followed_as_a_new_generation(processes, stream):
    first, ready, reader = _paced_writer_and_reader(processes, stream)
    try:
        assert reader.writer_alive
        psutil.Process(first.pid).kill()
        first.join(10)
        assert not reader.writer_alive
        # Everything the dead writer published is still readable.
        got = reader.read(timeout_s=0)
        while (more := reader.read(timeout_s=0.2)).frames:
            got = more
        killed_at = reader.cursor
        assert got.end_sequence == killed_at and procs.frame_problems(got) == []

        ready.clear()
        processes.start(procs.paced_writer, stream, 10, 500.0, killed_at, ready)
        chunk = reader.read(timeout_s=READ_TIMEOUT_S)
        assert (chunk.generation, chunk.format_changed) == (2, True)
        assert chunk.start_sequence == killed_at and chunk.dropped == 0
        assert procs.frame_problems(chunk) == []
        assert reader.writer_alive
    finally:
        reader.close()
        processes.stop_all()
        pipeline.sweep(streams=[stream])


def test_a_threshold_watch_outlives_its_writer_and_wakes_once_for_the_crossing(
    processes, stream, wait_strategy
):
    """Channel 0 of ``sequence_frames`` is the sequence itself, so a rising threshold H is
    crossed exactly once, at frame H. The watch is made while one writer process runs;
    that writer is killed and another takes the stream over: the watch lives in the
    stream segment, so the new writer adopts it (one wake) and wakes it once more, when
    frame H is published."""
    first, ready, reader = _paced_writer_and_reader(processes, stream)
    try:
        threshold = reader.write_cursor + 3000  # 0.6 s of the writers' 5000 frames/s
        with reader.watch(0, float(threshold)) as watch:
            deadline = time.monotonic() + READ_TIMEOUT_S
            while not watch.live:  # the first writer adopts it at its next table scan
                assert time.monotonic() < deadline
                time.sleep(0.01)
            psutil.Process(first.pid).kill()
            first.join(10)
            values = []
            while (chunk := reader.read(timeout_s=0.2)).frames:
                values.append(chunk.data[:, 0])
            killed_at = reader.cursor
            assert killed_at < threshold
            watch.clear()
            ready.clear()
            processes.start(procs.paced_writer, stream, 10, 500.0, killed_at, ready)
            wakes = []  # the write cursor at each wake
            while not wakes or wakes[-1] <= threshold:
                assert watch.wait(READ_TIMEOUT_S)
                watch.clear()
                wakes.append(reader.write_cursor)
            # the new writer's adoption, at its first chunk; then frame H, and not before
            assert len(wakes) == 2 and wakes[0] < threshold < wakes[1], (wakes, threshold)
            # the ring (4096 frames) still holds everything since the kill
            while (chunk := reader.read(timeout_s=0)).frames:
                assert chunk.dropped == 0 and procs.frame_problems(chunk) == []
                values.append(chunk.data[:, 0])
            time.sleep(0.3)  # frames past the crossing, all beyond it: no further wake
            assert watch.flagged == 1 and watch.claims == 1
            column = np.concatenate(values)
            crossings = np.flatnonzero((column[1:] >= threshold) & (column[:-1] < threshold))
            assert len(crossings) == 1 and column[crossings[0] + 1] == threshold
    finally:
        reader.close()
        processes.stop_all()
        pipeline.sweep(streams=[stream])


@pytest.mark.posix  # a named segment outlives its writer only on POSIX; Windows frees it
def test_sweep_removes_exactly_the_segments_of_dead_writers(processes, stream):
    ctx = processes.ctx
    live_ready, dead_ready = ctx.Event(), ctx.Event()
    live_stream = stream.replace("continuous", "live")
    processes.start(procs.paced_writer, live_stream, 10, 200.0, -1, live_ready)
    dead = processes.start(procs.paced_writer, stream, 10, 200.0, -1, dead_ready)
    assert live_ready.wait(READ_TIMEOUT_S) and dead_ready.wait(READ_TIMEOUT_S)
    reader = pipeline.attach(stream)
    psutil.Process(dead.pid).kill()
    dead.join(10)
    removed = pipeline.sweep()
    assert sorted(removed) == sorted(
        [naming.shm_name(stream), naming.shm_name(naming.data_key(stream, 1))]
    )
    with pytest.raises(pipeline.StreamNotFound):
        pipeline.attach(stream)
    with pytest.raises(pipeline.EndOfStream):  # a reader of a swept stream sees it end
        reader.read(timeout_s=READ_TIMEOUT_S)
    reader.close()
    with pipeline.attach(live_stream) as live:  # the live writer's stream is untouched
        assert live.read(timeout_s=READ_TIMEOUT_S).frames > 0
    processes.stop_all()
    assert len(pipeline.sweep()) == 2


def test_blocked_reader_wakes_on_a_write_from_another_process(processes, stream, wait_strategy):
    ctx = processes.ctx
    ready, out = ctx.Event(), ctx.Queue()
    with pipeline.RingWriter(stream, np.int64, (procs.CHANNELS,), 64, 1000.0) as writer:
        processes.start(procs.blocked_reader, stream, None, ready, out)
        assert ready.wait(READ_TIMEOUT_S)
        time.sleep(0.3)
        writer.write(procs.sequence_frames(0, 5))
        report = _get(out, "reader report")
    assert report["frames"] == 5 and report["first"] == 0


def test_idle_blocked_reader_does_not_spin(processes, stream, wait_strategy):
    """A reader blocked for 2 s on a silent stream uses well under 1% of a core."""
    ctx = processes.ctx
    ready, out = ctx.Event(), ctx.Queue()
    with pipeline.RingWriter(stream, np.int64, (procs.CHANNELS,), 64, 1000.0):
        processes.start(procs.blocked_reader, stream, 2.0, ready, out)
        report = _get(out, "reader report")
    assert report["frames"] == 0 and report["wall_s"] >= 1.9
    assert report["cpu_s"] < 0.02 * report["wall_s"], report


def test_reader_process_exit_leaves_the_stream_alone_and_prints_no_tracker_warning(stream):
    """Python's resource tracker must not unlink (or warn about) a stream a reader used."""
    code = (
        "import pipeline, sys; r = pipeline.attach(sys.argv[1], from_now=False); "
        "assert r.read(timeout_s=5).frames == 3; r.close()"
    )
    with pipeline.RingWriter(stream, np.int64, (procs.CHANNELS,), 64, 1000.0) as writer:
        writer.write(procs.sequence_frames(0, 3))
        result = subprocess.run(
            [sys.executable, "-W", "error", "-c", code, stream],
            capture_output=True,
            text=True,
            timeout=READ_TIMEOUT_S,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        with pipeline.attach(stream, from_now=False) as reader:
            assert reader.read(timeout_s=0).frames == 3


@pytest.mark.posix
def test_writer_process_that_exits_without_close_leaves_its_stream_for_sweep(stream):
    code = (
        "import numpy as np, pipeline, sys; "
        "w = pipeline.RingWriter(sys.argv[1], np.int16, (2,), 8, 100.0); "
        "w.write(np.ones((3, 2), np.int16))"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code, stream],
        capture_output=True,
        text=True,
        timeout=READ_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0 and result.stderr == ""
    with pipeline.attach(stream, from_now=False) as reader:
        assert not reader.writer_alive
        assert reader.read(timeout_s=0).frames == 3
    removed = pipeline.sweep()
    assert naming.shm_name(stream) in removed
    names = shm.list_names()
    assert names is None or naming.shm_name(stream) not in names
