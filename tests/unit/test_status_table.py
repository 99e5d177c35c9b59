"""The status table (``rigpipe run``'s live view, ``rigpipe status``) at the width of the
terminal: the columns that matter least go first, and the readers' lag and drops, what a
lab watches most, stay on screen at 80 columns."""

from __future__ import annotations

from pipeline.cli.run import fit, render
from pipeline.control.messages import ReaderLag, StatusReply, StreamStatus, WorkerStatus

STATUS = StatusReply(
    session="demo",
    uptime_s=125.0,
    state="running",
    workers=[
        WorkerStatus(
            name="acq",
            kind="acquisition",
            state="running",
            pid=123456,
            restarts=2,
            uptime_s=120.0,
            cpu_percent=12.5,
            rss_bytes=95_000_000,
            heartbeat_age_s=0.1,
        ),
        WorkerStatus(
            name="scope",
            kind="visualization",
            state="running",
            pid=123457,
            uptime_s=120.0,
        ),
        WorkerStatus(name="decoder", kind="mylab.decoders.spike_sorter", state="starting"),
    ],
    streams=[
        StreamStatus(
            stream="demo/acq/continuous",
            writer="acq",
            generation=3,
            rate_hz=30000.0,
            write_cursor=123_456_789,
            writer_alive=True,
            readers=[
                ReaderLag(worker="rec", cursor=1, lag=1200, dropped=0),
                ReaderLag(worker="scope", cursor=1, lag=30, dropped=4817),
            ],
        ),
    ],
)


def test_at_80_columns_every_line_fits_and_the_drops_stay() -> None:
    lines = render(STATUS, 79)
    assert all(len(line) <= 79 for line in lines), [line for line in lines if len(line) > 79]
    table = "\n".join(lines)
    assert "rec (1200, 0), scope (30, 4817)" in table  # lag and dropped, per reader
    workers, streams = lines[2].split("  "), lines[7].split("  ")
    assert "beat s" in workers[-1] and "restarts" in lines[2]  # kept longest
    assert "uptime" not in lines[2]  # the least useful column went first
    assert "frames" not in lines[7] and "readers (lag, dropped)" in streams[-1]


def test_kinds_show_by_their_last_part_and_never_lose_their_start() -> None:
    kinds = {line.split()[0]: line.split()[1] for line in render(STATUS)[3:6]}
    assert kinds == {"acq": "acquisition", "scope": "visualization", "decoder": "spike_sorter"}
    long = StatusReply(
        session="s",
        uptime_s=0,
        state="running",
        workers=[WorkerStatus(name="w", kind="lab.a_very_long_kind_name", state="running")],
    )
    assert render(long)[3].split()[1] == "a_very_long_~"


def test_with_no_width_every_column_is_there() -> None:
    header = render(STATUS)[2]
    assert header.split() == [
        "worker",
        "kind",
        "state",
        "pid",
        "restarts",
        "uptime",
        "cpu",
        "%",
        "mem",
        "MB",
        "beat",
        "s",
    ]


def test_the_live_view_fits_80x24() -> None:
    lines = fit(STATUS, ["10:00:00 worker acq: restarted"], 80, 24)
    assert len(lines) <= 23 and all(len(line) <= 79 for line in lines)
    assert any("4817" in line for line in lines)


def test_the_live_view_ends_showing_how_the_session_ended_and_prints_nothing_twice() -> None:
    """After ``--duration`` the last frame on screen shows every worker stopped (it
    said running), and no event line is printed again under it."""
    import os
    import threading

    import msgspec

    from pipeline.cli.run import _LiveTable
    from pipeline.host.output import Output

    read_end, write_end = os.pipe()
    received: list[bytes] = []
    reader = threading.Thread(
        target=lambda: received.extend(iter(lambda: os.read(read_end, 65536), b""))
    )
    reader.start()
    with os.fdopen(write_end, "w") as stream:
        screen = Output(stream, name="test")
        table = _LiveTable(screen)
        table.tick(STATUS)
        table.event("worker acq: restarted (restart 2, pid 5): exit code -9")
        stopped = [msgspec.structs.replace(w, state="stopped") for w in STATUS.workers]
        table.close(msgspec.structs.replace(STATUS, state="stopped", workers=stopped))
        screen.close()
    reader.join(5)
    os.close(read_end)
    text = b"".join(received).decode()
    last = text.rsplit("\x1b[J", 2)[-2]  # the last frame drawn, up to its clear-to-end
    assert text.endswith("\x1b[J"), "nothing is written after the last frame"
    assert "session demo  stopped" in last
    rows = [line for line in last.split("\n") if line.startswith(("acq ", "scope ", "decoder "))]
    assert len(rows) == 3 and all(" stopped " in row for row in rows), rows
    assert "restarted (restart 2" in last
