#!/usr/bin/env python3
"""rigpipe's ring beside the transports a lab would otherwise use, in one run.

Every transport moves the same int16 chunks (SAMPLES x CHANNELS) from a writer
process to a reader process:

- ``ring``       rigpipe RingWriter -> attach().read() (a blocking reader; data copied out)
- ``ring-view``  the same, reading with read_view() (zero-copy, checked after use)
- ``zmq-ipc``    ZeroMQ PUSH/PULL over ipc://, zero-copy send
- ``mp.Queue``   multiprocessing.Queue
- ``pylsl``      Lab Streaming Layer outlet -> inlet (if pylsl is installed)
- ``ezmsg``      ezmsg pub/sub in separate processes (if ezmsg is installed)
- ``wake-only``  (paced runs) the floor: rigpipe's futex wake-up alone, one int64 stamp in
                 shared memory and no ring logic; no transport woken by the OS can beat it

The writer stamps ``time.perf_counter_ns()`` (CLOCK_MONOTONIC on Linux, shared
by both processes) into each chunk just before sending; the reader computes
one-way latency when the chunk is in its hands. Unpaced runs report delivered
throughput (MB/s, chunks/s) and reader CPU; the ring never blocks its writer,
so it also reports the frames its reader lost (the other transports block or
buffer instead). Paced runs (``--rate-hz``) report latency p50/p99.

    python bench/ring.py                      # the full table (about a minute)
    python bench/ring.py --only ring,zmq-ipc --seconds 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from queue import Empty

import numpy as np

END = -1  # a stamp that tells the reader the run is over


@dataclass(frozen=True)
class Config:
    samples: int
    channels: int
    seconds: float
    rate_hz: float  # 0 = as fast as possible

    @property
    def chunk_bytes(self) -> int:
        return self.samples * self.channels * 2


@dataclass
class Result:
    nbytes: int
    seconds: float
    latencies_us: list[float]
    cpu_s: float
    dropped_frames: int = 0


# -- shared by every transport -------------------------------------------------------------------
def _templates(cfg: Config) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    shape = (cfg.samples, cfg.channels)
    return [rng.integers(-2000, 2000, shape, dtype=np.int16) for _ in range(2)]


def _stamp(chunk: np.ndarray, value: int | None = None) -> np.ndarray:
    """Stamp ``chunk`` with the time now, the last thing before it is handed to the
    transport (the view is made first: its cost is the benchmark's, not the transport's)."""
    view = chunk.reshape(-1)[:4].view(np.int64)
    view[0] = time.perf_counter_ns() if value is None else value
    return chunk


def _stamp_of(frame_block: np.ndarray) -> int:
    return int(np.ascontiguousarray(frame_block.reshape(-1)[:4]).view(np.int64)[0])


def _paced(cfg: Config):
    """Yield chunk numbers for ``cfg.seconds``, sleeping to absolute deadlines when paced."""
    start = time.perf_counter()
    end = start + cfg.seconds
    i = 0
    while time.perf_counter() < end:
        yield i
        i += 1
        if cfg.rate_hz:
            time.sleep(max(0.0, start + i / cfg.rate_hz - time.perf_counter()))


class _Meter:
    """Reader-side tally: bytes, latencies, CPU, from the first chunk to the end mark."""

    def __init__(self) -> None:
        self.nbytes = 0
        self.latencies_us: list[float] = []
        self.t0: float | None = None
        self.cpu0 = 0.0

    def chunk(self, stamp: int, nbytes: int, now: int) -> None:
        """Count a chunk sent at ``stamp`` and in the reader's hands at ``now`` (both ns)."""
        if self.t0 is None:
            self.t0, self.cpu0 = time.perf_counter(), time.process_time()
        self.latencies_us.append((now - stamp) / 1e3)
        self.nbytes += nbytes

    def result(self, dropped_frames: int = 0) -> Result:
        t0 = self.t0 or time.perf_counter()
        return Result(
            self.nbytes,
            time.perf_counter() - t0,
            self.latencies_us,
            time.process_time() - self.cpu0,
            dropped_frames,
        )


# -- rigpipe ring ---------------------------------------------------------------------------------
def ring_writer(cfg: Config, ready, stream: str) -> None:
    import pipeline

    capacity = max(32768, 8 * cfg.samples)
    templates = _templates(cfg)
    with pipeline.RingWriter(stream, np.int16, (cfg.channels,), capacity, 30000.0) as writer:
        ready.wait(60)
        for i in _paced(cfg):
            writer.write(_stamp(templates[i & 1]))
        time.sleep(0.2)


def _ring_attach(stream: str):
    import pipeline

    deadline = time.monotonic() + 30
    while True:
        try:
            return pipeline.attach(stream)
        except pipeline.StreamNotFound:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def ring_reader(cfg: Config, ready, out, stream: str, zero_copy: bool = False) -> None:
    """Read until the end of the stream; latency from the newest whole writer chunk per read."""
    import pipeline

    meter = _Meter()
    samples = cfg.samples
    with _ring_attach(stream) as reader:
        ready.set()
        try:
            while True:
                got = reader.read_view(timeout_s=5) if zero_copy else reader.read(timeout_s=5)
                now = time.perf_counter_ns()
                last = (got.end_sequence // samples - 1) * samples - got.start_sequence
                stamp = _stamp_of(got.data[last]) if last >= 0 else None
                nbytes = got.data.nbytes
                if zero_copy:
                    got.release()
                    if not got.intact:
                        continue  # overwritten while in use: counted in dropped_total
                if stamp is None:
                    meter.nbytes += nbytes
                else:
                    meter.chunk(stamp, nbytes, now)
        except pipeline.EndOfStream:
            pass
        out.put(meter.result(reader.dropped_total))


def ring_view_reader(cfg: Config, ready, out, stream: str) -> None:
    ring_reader(cfg, ready, out, stream, zero_copy=True)


# -- the wake-up floor ---------------------------------------------------------------------------
def wake_writer(cfg: Config, ready, name: str) -> None:
    from pipeline.ring import shm
    from pipeline.ring.wait import WakeWord

    segment = shm.Segment.create(name, 4096)
    try:
        stamp = segment.buf[64:72].cast("q")
        wake = WakeWord(segment.buf, 128)
        ready.wait(60)
        for _ in _paced(cfg):
            stamp[0] = time.perf_counter_ns()
            wake.notify()
        time.sleep(0.05)
        stamp[0] = END
        wake.notify()
        stamp.release()
        wake.release()
    finally:
        segment.unlink()
        segment.close()


def wake_reader(cfg: Config, ready, out, name: str) -> None:
    from pipeline.ring import shm
    from pipeline.ring.wait import WakeWord

    deadline = time.monotonic() + 30
    while True:
        try:
            segment = shm.Segment.attach(name)
            break
        except FileNotFoundError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    stamp = segment.buf[64:72].cast("q")
    wake = WakeWord(segment.buf, 128)
    ready.set()
    meter = _Meter()
    seen = wake.load()
    while True:
        wake.wait(seen, 5)
        now = time.perf_counter_ns()
        seen = wake.load()
        value = stamp[0]
        if value == END:
            break
        meter.chunk(value, 0, now)
    stamp.release()
    wake.release()
    segment.close()
    out.put(meter.result())


# -- ZeroMQ ipc, zero-copy ------------------------------------------------------------------------
def zmq_writer(cfg: Config, ready, endpoint: str) -> None:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 1000)
    sock.bind(endpoint)
    templates = _templates(cfg)
    ready.wait(60)
    for i in _paced(cfg):
        # zero-copy send hands the buffer to ZeroMQ's I/O thread: it must be a fresh one
        sock.send(_stamp(templates[i & 1].copy()), copy=False)
    sock.send(_stamp(templates[0].copy(), END), copy=False)
    sock.close(linger=5000)
    ctx.term()


def zmq_reader(cfg: Config, ready, out, endpoint: str) -> None:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.connect(endpoint)
    ready.set()
    meter = _Meter()
    while True:
        frame = sock.recv(copy=False)
        now = time.perf_counter_ns()
        chunk = np.frombuffer(frame.buffer, dtype=np.int16)
        stamp = _stamp_of(chunk)
        if stamp == END:
            break
        meter.chunk(stamp, chunk.nbytes, now)
    sock.close(linger=0)
    ctx.term()
    out.put(meter.result())


# -- multiprocessing.Queue ------------------------------------------------------------------------
def queue_writer(cfg: Config, ready, queue) -> None:
    templates = _templates(cfg)
    ready.wait(60)
    for i in _paced(cfg):
        queue.put(_stamp(templates[i & 1]))
    queue.put(None)


def queue_reader(cfg: Config, ready, out, queue) -> None:
    ready.set()
    meter = _Meter()
    while (chunk := queue.get()) is not None:
        now = time.perf_counter_ns()
        meter.chunk(_stamp_of(chunk), chunk.nbytes, now)
    out.put(meter.result())


# -- Lab Streaming Layer --------------------------------------------------------------------------
def lsl_writer(cfg: Config, ready, source_id: str) -> None:
    import pylsl

    info = pylsl.StreamInfo("bench", "bench", cfg.channels, 0, "int16", source_id)
    outlet = pylsl.StreamOutlet(info, chunk_size=cfg.samples, max_buffered=60)
    templates = _templates(cfg)
    ready.wait(60)
    time.sleep(1.0)  # the inlet connects after resolving
    for i in _paced(cfg):
        outlet.push_chunk(_stamp(templates[i & 1]))
    outlet.push_chunk(_stamp(templates[0].copy(), END))
    time.sleep(5)  # keep the outlet up until the inlet has pulled the end mark


def lsl_reader(cfg: Config, ready, out, source_id: str) -> None:
    import pylsl

    ready.set()
    info = pylsl.resolve_byprop("source_id", source_id, timeout=20)[0]
    inlet = pylsl.StreamInlet(info, max_buflen=60, max_chunklen=cfg.samples, recover=False)
    inlet.open_stream(timeout=20)
    buf = np.empty((cfg.samples * 64, cfg.channels), np.int16)
    meter = _Meter()
    # The inlet may join mid-chunk, so stamps are found by value: the first four
    # int16 of a row read as an int64 that is a recent perf_counter_ns().
    while True:
        try:
            _, timestamps = inlet.pull_chunk(timeout=5.0, dest_obj=buf, max_samples=len(buf))
            now = time.perf_counter_ns()
        except pylsl.util.LostError:
            break
        k = len(timestamps)
        if k == 0:
            continue
        values = np.ascontiguousarray(buf[:k, :4]).view(np.int64)[:, 0]
        if (values == END).any():
            break
        stamps = values[(values > now - 10_000_000_000) & (values <= now)]
        if len(stamps):
            meter.chunk(int(stamps[-1]), k * cfg.channels * 2, now)
        else:
            meter.nbytes += k * cfg.channels * 2
    out.put(meter.result())


# -- running a pair ------------------------------------------------------------------------------
def _at_priority(priority: int, reader, *args) -> None:
    """Run ``reader(*args)`` under real-time scheduling, as a real-time decoder would."""
    from pipeline import make_realtime

    why = make_realtime(priority)
    if why:
        raise RuntimeError(why)
    reader(*args)


def run_pair(name: str, cfg: Config, reader_priority: int = 0) -> Result:
    """Run ``name``'s writer and reader processes for ``cfg``; the reader under
    SCHED_FIFO ``reader_priority`` if given (``pipeline.make_realtime``)."""
    ctx = mp.get_context("spawn")
    ready, out = ctx.Event(), ctx.Queue()
    tag = uuid.uuid4().hex[:8]
    if name in ("ring", "ring-view"):
        writer, reader = ring_writer, ring_reader if name == "ring" else ring_view_reader
        extra: tuple = (f"bench{tag}/acq/continuous",)
    elif name == "zmq-ipc":
        writer, reader = zmq_writer, zmq_reader
        extra = ("ipc://" + os.path.join(tempfile.gettempdir(), f"rigpipe-bench-{tag}.sock"),)
    elif name == "mp.Queue":
        writer, reader = queue_writer, queue_reader
        extra = (ctx.Queue(maxsize=1000),)
    elif name == "wake-only":
        writer, reader = wake_writer, wake_reader
        extra = (f"rp_benchwake{tag}",)
    elif name == "pylsl":
        writer, reader = lsl_writer, lsl_reader
        extra = (f"rigpipe-bench-{tag}",)
    else:
        raise ValueError(name)
    args = (cfg, ready, out, *extra)
    if reader_priority:
        r = ctx.Process(target=_at_priority, args=(reader_priority, reader, *args))
    else:
        r = ctx.Process(target=reader, args=args)
    w = ctx.Process(target=writer, args=(cfg, ready, *extra))
    r.start()
    w.start()
    try:
        deadline = time.monotonic() + cfg.seconds + 90
        while True:
            try:
                return out.get(timeout=1.0)
            except Empty:
                if not r.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the {name} reader ended without a result (exit code {r.exitcode})"
                    ) from None
    finally:
        for proc in (w, r):
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()


def run_ezmsg(cfg: Config) -> Result:
    script = Path(__file__).with_name("ezmsg_pubsub.py")
    args = [str(cfg.samples), str(cfg.rate_hz), str(cfg.channels), str(cfg.seconds)]
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=cfg.seconds + 120,
        check=True,
    )
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
    report = json.loads(line)
    return Result(report["nbytes"], report["seconds"], report["latencies_us"], report["cpu_s"])


def available(name: str) -> bool:
    module = {"pylsl": "pylsl", "ezmsg": "ezmsg.core"}.get(name)
    if module is None:
        return True
    try:
        __import__(module)
    except Exception:
        return False
    return True


TRANSPORTS = ("ring", "ring-view", "zmq-ipc", "mp.Queue", "pylsl", "ezmsg", "wake-only")


def measure(name: str, cfg: Config) -> Result:
    return run_ezmsg(cfg) if name == "ezmsg" else run_pair(name, cfg)


def _row(name: str, cfg: Config, res: Result) -> str:
    mbps = res.nbytes / res.seconds / 1e6 if res.seconds else 0.0
    chunks = res.nbytes / cfg.chunk_bytes / res.seconds if res.seconds else 0.0
    lat = np.array(res.latencies_us or [np.nan])
    frames = res.nbytes // (cfg.channels * 2)
    lost = f"{100 * res.dropped_frames / max(1, frames + res.dropped_frames):5.1f}%"
    cpu = f"{100 * res.cpu_s / res.seconds:5.0f}%" if res.seconds else "    -"
    return (
        f"| {name:9} | {mbps:9.0f} | {chunks:9.0f} | {np.percentile(lat, 50):8.1f} | "
        f"{np.percentile(lat, 99):8.1f} | {cpu} | {lost} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--only", default=",".join(TRANSPORTS), help="comma-separated transports")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(TRANSPORTS)
    if unknown:
        parser.error(f"unknown transport(s) {sorted(unknown)}; choose from {', '.join(TRANSPORTS)}")
    base = Config(30, args.channels, args.seconds, 0.0)
    runs = [
        (f"30 x {args.channels}, unpaced", base),
        (f"3000 x {args.channels}, unpaced", replace(base, samples=3000)),
        (f"30 x {args.channels}, paced at 1 kHz", replace(base, rate_hz=1000.0)),
    ]
    print(f"# {os.cpu_count()} cores, Python {sys.version.split()[0]}, numpy {np.__version__}")
    for title, cfg in runs:
        print(f"\n{title}: chunk {cfg.chunk_bytes / 1024:.1f} KiB int16, {cfg.seconds:g} s")
        print("| transport |      MB/s |  chunks/s | p50 µs   | p99 µs   | rd CPU | lost  |")
        print("| --------- | --------: | --------: | -------: | -------: | -----: | ----: |")
        for name in names:
            if name == "wake-only" and not cfg.rate_hz:
                continue  # a floor for latency only: it carries no data
            if not available(name):
                print(f"| {name:9} | not installed (pip install -e '.[bench]') |")
                continue
            try:
                print(_row(name, cfg, measure(name, cfg)), flush=True)
            except Exception as exc:  # one broken transport must not hide the others' figures
                print(f"| {name:9} | failed: {type(exc).__name__}: {str(exc)[:80]} |", flush=True)


if __name__ == "__main__":
    main()
