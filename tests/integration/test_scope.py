"""The scope in a real rig, rendered offscreen (QT_QPA_PLATFORM=offscreen) to PNG."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from tests import wine

wine.import_module("PySide6.QtWidgets", "icuuc.dll")
pytest.importorskip("pyqtgraph")
from PySide6.QtGui import QImage

from pipeline.control import messages
from tests.rig import DEMO_WORKER, SIMULATED_STIMULATOR, toml_string, wait_for


def _scope(snapshot: Path, streams: str = '["pat/out"]', extra: str = "") -> str:
    return f"""
[[workers]]
name = "scope"
kind = "visualization"
[workers.parameters]
streams = {streams}
offscreen = true
snapshot = {toml_string(snapshot)}
snapshot_s = 0.3
window_s = 1.0
width_px = 400
height_px = 400
{extra}
"""


def _trace_lines(path: Path) -> list[float]:
    """Rows (pixels from the top) of the horizontal trace lines in the snapshot."""
    image = QImage(str(path)).convertToFormat(QImage.Format.Format_RGBA8888)
    pixels = np.frombuffer(image.constBits(), np.uint8).reshape(
        image.height(), image.bytesPerLine() // 4, 4
    )[:, : image.width()]
    green = (pixels[..., 1] > 150) & (pixels[..., 0] < 120) & (pixels[..., 2] < 160)
    rows = np.flatnonzero(green.sum(axis=1) > 0.3 * green.sum(axis=1).max())
    if not len(rows):
        return []
    runs = np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1)
    return [float(run.mean()) for run in runs]


def _spacing(lines: list[float]) -> np.ndarray:
    """Gaps between neighbouring lines, in units of the smallest one."""
    gaps = np.diff(lines)
    return gaps / gaps.min()


def _lines_after(path: Path, count: int, timeout_s: float = 20, rig=None) -> list[float]:
    """The rows of ``count`` trace lines, once a snapshot shows that many. On a timeout,
    what the picture held instead, and with ``rig`` the scope's state and logs."""
    found: list[float] = []
    existed = False

    def seen():
        nonlocal found, existed
        existed = path.exists()
        found = _trace_lines(path) if existed else []
        return len(found) == count and found

    try:
        return wait_for(seen, timeout_s, f"{count} trace lines in {path}")
    except AssertionError as exc:  # say what the picture held instead
        held = f"lines at rows {found}" if existed else "no snapshot at all"
        context = ""
        if rig is not None:
            scope_log = rig.log_dir() / "scope.log"
            tail = scope_log.read_text(errors="replace")[-3000:] if scope_log.exists() else ""
            context = (
                f"\nscope: {rig.worker('scope')}\nsupervisor log:\n{rig.log()[-3000:]}"
                f"\nscope log:\n{tail}"
            )
        raise AssertionError(f"{exc}; the last snapshot had {held}{context}") from None


def test_traces_are_drawn_where_the_data_says_and_follow_a_generation_change(rigs) -> None:
    rig = rigs.new()
    snapshot = rig.directory / "scope.png"
    pattern = (
        '[[workers]]\nname = "pat"\nkind = "tests.workers.pattern"\n'
        "[workers.parameters]\nchannels = 4\nthen_channels = 8\nswitch_after_s = 3600.0\n"
    )
    rig.write(pattern + _scope(snapshot))
    rig.start()
    # +100 / -100 is a quarter band above / below each band's centre, so neighbouring
    # lines are 1.5 and 0.5 bands apart: gaps in the ratio 3, 1, 3 ...
    four = _lines_after(snapshot, 4)
    assert np.allclose(_spacing(four), [3, 1, 3], atol=0.25), four
    rig.client().request(messages.SetParameter(worker="pat", name="switch_after_s", value=0.0))
    eight = _lines_after(snapshot, 8)
    assert np.allclose(_spacing(eight), [3, 1, 3, 1, 3, 1, 3], atol=0.25), eight
    assert np.ptp(eight) > 0.9 * np.ptp(four), "8 bands fill the same height as 4 did"
    scope = rig.worker("scope")
    assert scope.counters["frames_drawn"] > 10 and scope.state == "running"


def test_killing_the_scope_costs_nothing_else(rigs) -> None:
    rig = rigs.new()
    recordings = rig.directory / "recordings"
    rig.write(
        DEMO_WORKER + '[[workers]]\nname = "rec"\nkind = "recording"\n'
        '[workers.parameters]\nstreams = ["acq/continuous"]\n'
        + _scope(rig.directory / "scope.png", '["acq/continuous"]', 'spikes = "acq/spikes"'),
        session_extra=f"recordings_dir = {toml_string(recordings)}",
    )
    rig.start()
    time.sleep(1.0)
    before = {w.name: (w.pid, w.restarts) for w in rig.status().workers}
    psutil.Process(rig.worker("scope").pid).kill()
    frames = rig.worker("rec").counters["frames"]
    time.sleep(1.5)
    after = {w.name: (w.pid, w.restarts, w.state) for w in rig.status().workers}
    for name in ("acq", "rec"):
        assert after[name] == (*before[name], "running"), f"{name} was disturbed"
    assert rig.worker("rec").counters["frames"] > frames + 5000
    assert rig.interrupt() == 0


def test_without_a_display_the_scope_says_so_and_exits_cleanly(rigs, monkeypatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    rig = rigs.new()
    rig.write(
        DEMO_WORKER
        + '[[workers]]\nname = "scope"\nkind = "visualization"\nrestart = "on-failure"\n'
    )
    rig.start(wait=False)
    wait_for(lambda: rig.discovery() and rig.worker("scope").state == "exited", 20, "exit")
    assert rig.worker("scope").exit_code == 0
    assert rig.log().count("no display") == 1
    assert rig.worker("acq").state == "running"


def test_markers_from_a_continuous_stream_keep_the_scope_running(rigs) -> None:
    """``markers = "stim/output"`` (the configs/README.md example): the stimulator's output is
    a continuous stream that is mostly empty reads; the scope must not crash on one."""
    rig = rigs.new()
    stimulator = (
        '[[workers]]\nname = "stim"\nkind = "stimulation"\n[workers.parameters]\n'
        "channels = 2\narmed = true\n[workers.parameters.limits.default]\n"
        "max_amplitude_ua = 100.0\nmax_charge_per_phase_nc = 30.0\n"
    )
    snapshot = rig.directory / "scope.png"
    rig.write(
        DEMO_WORKER + stimulator + _scope(snapshot, '["acq/continuous"]', 'markers = "stim/output"')
    )
    rig.start()
    pulse = [messages.Phase(-20.0, 100.0), messages.Phase(20.0, 100.0)]
    for _ in range(3):
        rig.client().request(messages.PulseTrain(worker="stim", channel=0, phases=pulse))
        time.sleep(0.4)
    wait_for(lambda: rig.worker("scope").counters.get("frames_drawn", 0) > 10, 10, "drawing")
    scope = rig.worker("scope")
    assert scope.state == "running" and scope.restarts == 0, rig.log()
    assert rig.interrupt() == 0


def _spike_pixels(path: Path) -> int:
    image = QImage(str(path)).convertToFormat(QImage.Format.Format_RGBA8888)
    pixels = np.frombuffer(image.constBits(), np.uint8).reshape(
        image.height(), image.bytesPerLine() // 4, 4
    )[:, : image.width()]
    return int(
        (
            (pixels[..., 0] > 230)
            & (abs(pixels[..., 1].astype(int) - 200) < 30)
            & (pixels[..., 2] < 90)
        ).sum()
    )


def test_spike_ticks_are_drawn_only_on_the_tabs_of_their_source(rigs) -> None:
    rig = rigs.new()
    snapshot = rig.directory / "scope.png"
    pattern = (  # 4 channels throughout: a switch to 8 could beat the first snapshot
        '[[workers]]\nname = "pat"\nkind = "tests.workers.pattern"\n'
        "[workers.parameters]\nswitch_after_s = 3600.0\n"
    )
    # the tab shown is pat/out; the spikes are acq's (about 5 per channel and second)
    rig.write(
        DEMO_WORKER
        + pattern
        + _scope(snapshot, '["pat/out", "acq/continuous"]', 'spikes = "acq/spikes"')
    )
    rig.start()
    _lines_after(snapshot, 4)
    time.sleep(1.5)  # more than a window of spikes
    wait_for(lambda: rig.worker("acq").counters.get("spikes", 0) > 20, 10, "spikes")
    time.sleep(0.5)
    assert _spike_pixels(snapshot) == 0, "acq's spikes drawn on the pat/out tab"


def test_missing_x11_libraries_are_named_with_their_packages(rigs) -> None:
    from workers.visualization.display import missing_xcb

    assert missing_xcb({"libxcb-nosuch.so.9": "libxcb-nosuch9", "libc.so.6": "libc6"}) == [
        "libxcb-nosuch9"
    ]
    missing = missing_xcb()
    if not missing:
        pytest.skip("every X11 library Qt needs is installed here")
    rig = rigs.new()
    rig.write(
        DEMO_WORKER + '[[workers]]\nname = "scope"\nkind = "visualization"\nrestart = "never"\n'
    )
    rig.start(env={"DISPLAY": ":99"}, wait=False)  # a window is asked for; Qt is never reached
    wait_for(lambda: rig.discovery() and rig.worker("scope").state == "failed", 20, "failure")
    log = rig.log()
    assert f"apt-get install {' '.join(missing)}" in log and "Traceback" not in log
    assert rig.worker("acq").state == "running"


@pytest.fixture
def xvfb(tmp_path):
    """A real X server (Xvfb) on a free display, stopped after the test."""
    import shutil
    import subprocess

    from workers.visualization.display import missing_xcb

    if shutil.which("Xvfb") is None or missing_xcb():
        pytest.skip("Xvfb and Qt's X11 libraries are installed by tests/setup.sh")
    for number in range(90 + os.getpid() % 100, 300):
        if (
            not Path(f"/tmp/.X11-unix/X{number}").exists()
            and not Path(f"/tmp/.X{number}-lock").exists()
        ):
            break
    server = subprocess.Popen(
        ["Xvfb", f":{number}", "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: Path(f"/tmp/.X11-unix/X{number}").exists(), 10, "Xvfb to listen")
        yield f":{number}"
    finally:
        server.terminate()
        server.wait(10)


def test_a_real_window_on_an_x_server_shows_labels_and_traces_where_the_data_says(
    rigs, xvfb
) -> None:
    """The xcb platform plugin, not offscreen: the window Qt opens on a real X server
    (Xvfb) draws each trace in its band and the channel labels beside them."""
    rig = rigs.new()
    snapshot = rig.directory / "window.png"
    pattern = (
        '[[workers]]\nname = "pat"\nkind = "tests.workers.pattern"\n'
        "[workers.parameters]\nchannels = 4\nswitch_after_s = 3600.0\n"
    )
    scope = _scope(snapshot).replace("offscreen = true", "offscreen = false")
    rig.write(pattern + scope)
    rig.start(env={"DISPLAY": xvfb, "QT_QPA_PLATFORM": "xcb"})
    four = _lines_after(snapshot, 4, rig=rig)
    assert np.allclose(_spacing(four), [3, 1, 3], atol=0.25), four
    image = QImage(str(snapshot)).convertToFormat(QImage.Format.Format_RGBA8888)
    # the window fits the 1280x1024 screen (1300 wide by its settings; a 1080p screen cut
    # off the raster of a 1110-high one)
    assert image.width() <= 1280 and image.height() <= 1024, (image.width(), image.height())
    pixels = np.frombuffer(image.constBits(), np.uint8).reshape(
        image.height(), image.bytesPerLine() // 4, 4
    )[:, : image.width()]
    green = (pixels[..., 1] > 150) & (pixels[..., 0] < 120) & (pixels[..., 2] < 160)
    traces = np.flatnonzero(green.sum(axis=0))
    # left of the traces, inside the tab's frame and short of the axis line and its ticks
    plot_rows = slice(int(min(four)) - 20, int(max(four)) + 20)
    left = pixels[plot_rows, 5 : traces.min() - 8]
    ink = (left[..., :3].min(axis=2) > 100).sum(axis=1)  # light grey text on black
    rows_with_text = np.flatnonzero(ink) + plot_rows.start
    assert 0 < len(rows_with_text) < 0.6 * len(ink), "no channel labels left of the traces"
    # a label's text stands beside each trace line (within half a band)
    half_band = np.diff(sorted(four)).min() / 2
    for line in four:
        assert np.any(np.abs(rows_with_text - line) < half_band), f"no label near row {line}"
    assert rig.worker("scope").state == "running"
    assert "Traceback" not in rig.log()


def test_the_spike_raster_shows_the_sources_spikes_under_the_traces(rigs) -> None:
    rig = rigs.new()
    snapshot = rig.directory / "raster.png"
    acquisition = DEMO_WORKER.replace("chunk_s = 0.002", "chunk_s = 0.002\nspike_rate_hz = 40.0")
    scope = _scope(snapshot, '["acq/continuous"]', 'spikes = "acq/spikes"\nraster = true')
    rig.write(acquisition + scope)
    rig.start()

    def raster_ticks() -> int:
        if not snapshot.exists():
            return 0
        image = QImage(str(snapshot)).convertToFormat(QImage.Format.Format_RGBA8888)
        pixels = np.frombuffer(image.constBits(), np.uint8).reshape(
            image.height(), image.bytesPerLine() // 4, 4
        )[:, : image.width()]
        ticks = (pixels[..., 0] > 230) & (abs(pixels[..., 1].astype(int) - 200) < 30)
        ticks &= pixels[..., 2] < 90  # the SPIKE colour, (255, 200, 40)
        lowest_trace = max(_trace_lines(snapshot) or [0])
        return int(ticks[int(lowest_trace) + 30 :].sum())  # below the traces: the raster

    wait_for(lambda: raster_ticks() > 50, 20, "spike ticks in the raster under the traces")
    assert rig.worker("scope").state == "running"


def test_the_average_under_the_stimulators_tab_is_its_pulse(rigs) -> None:
    """The simulated stimulator's output averaged against its own onsets, end to end: the
    pulses it was asked for, through its ring, the scope's trigger reader and the picture."""
    rig = rigs.new()
    snapshot = rig.directory / "average.png"
    average = (
        "[workers.parameters.average]\n"
        'trigger = "stim/output"\nchannel = 1\nbefore_ms = 1.0\nafter_ms = 2.0\nheight_px = 100\n'
    )
    stimulator = SIMULATED_STIMULATOR.replace(
        "[workers.parameters]", "[workers.parameters]\narmed = true"
    )
    rig.write(stimulator + _scope(snapshot, '["stim/output"]') + average)
    rig.start()
    wait_for(lambda: rig.worker("scope").counters.get("frames_drawn", 0) > 5, 20, "drawing")
    pulse = [messages.Phase(-40.0, 200.0), messages.Phase(40.0, 200.0)]
    for _ in range(4):
        rig.client().request(messages.PulseTrain(worker="stim", channel=1, phases=pulse))
        time.sleep(0.3)
    wait_for(lambda: rig.worker("scope").counters.get("averaged", 0) >= 4, 10, "4 averaged")
    time.sleep(0.8)  # a snapshot after the last
    image = QImage(str(snapshot)).convertToFormat(QImage.Format.Format_RGBA8888)
    pixels = np.frombuffer(image.constBits(), np.uint8).reshape(
        image.height(), image.bytesPerLine() // 4, 4
    )[:, : image.width()]
    cyan = (pixels[..., 0] < 110) & (abs(pixels[..., 1].astype(int) - 200) < 30)
    cyan &= pixels[..., 2] > 220  # the AVERAGE colour, (80, 200, 255)
    rows = np.flatnonzero(cyan.any(axis=1))
    columns = np.flatnonzero(cyan.any(axis=0))
    assert len(rows), "no average drawn"
    # -40 then +40 uA: the line spans the plot's 100 rows, from the zero line before it
    assert 90 <= rows.max() - rows.min() <= 101, rows
    assert columns.max() - columns.min() > 0.9 * 400  # across the whole window
    scope = rig.worker("scope")
    assert scope.counters["averaged"] == 4 and scope.counters["average_skipped"] == 0
    assert rig.interrupt() == 0
