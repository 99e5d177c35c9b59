#!/usr/bin/env python3
"""The control plane and the synthetic source, measured on a real running rig.

Three tables, one run:

1. Request/reply round trip (p50/p99) and requests per second against a real
   supervisor (``rigpipe run``), beside the same exchange over bare ZeroMQ
   REQ/REP with msgspec (the transport's floor) and over a
   ``multiprocessing.connection`` pipe (what a hand-rolled control channel would use).
2. CPU of the supervisor and of an idle worker (one that only heartbeats).
3. The synthetic acquisition worker at 256, 1024 and 4096 channels at 30 kHz:
   its CPU % (psutil, after a 5 s warm-up) and its timing after ``--seconds``:
   how far publication trails the sample clock (``drift``: now minus the time
   of the newest published frame, from the frame count alone) and the spread of
   publish delays a reader sees. Target: 1024 channels under 25 % of one core.

    python bench/control.py                 # about 4 minutes (60 s per source run)
    python bench/control.py --seconds 15 --channels 1024 --chunks 0.001,0.005
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from multiprocessing.connection import Client as PipeClient
from multiprocessing.connection import Listener
from pathlib import Path

import msgspec
import numpy as np
import psutil
import zmq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import attach  # noqa: E402
from pipeline.control import messages, session  # noqa: E402
from pipeline.control.bus import Client  # noqa: E402

IDLE_WORKER = """
[[workers]]
name = "idle"
kind = "bench.idle_worker"
"""


def acquisition(channels: int, chunk_s: float) -> str:
    return f"""
[[workers]]
name = "acq"
kind = "acquisition"
[workers.parameters]
channels = {channels}
sample_rate_hz = 30000.0
chunk_s = {chunk_s}
"""


class Rig:
    """A supervisor subprocess running a config, in a private runtime directory."""

    def __init__(self, workers: str, session_extra: str = "", python: str = sys.executable) -> None:
        self.name = f"bench{uuid.uuid4().hex[:6]}"
        self.dir = Path(tempfile.mkdtemp(prefix="rpb", dir="/tmp" if os.name == "posix" else None))
        os.environ["RIGPIPE_RUNTIME_DIR"] = str(self.dir / "run")
        config = self.dir / "rig.toml"
        extra = session_extra.replace("{dir}", str(self.dir))  # e.g. recordings_dir = "{dir}"
        config.write_text(f'[session]\nname = "{self.name}"\n{extra}\n{workers}')
        self.proc = subprocess.Popen(
            [python, "-m", "pipeline.cli", "run", str(config)],
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            discovery = session.read(self.name)
            if discovery is not None and discovery.alive:
                self.client = Client(discovery.endpoints, timeout_s=10)
                status = self.status()
                if all(w.state == "running" for w in status.workers):
                    break
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the rig did not start")
            time.sleep(0.05)
        self.discovery = discovery

    def status(self) -> messages.StatusReply:
        reply = self.client.request(messages.Status())
        assert isinstance(reply, messages.StatusReply)
        return reply

    def worker_pid(self, name: str) -> int:
        return next(w.pid for w in self.status().workers if w.name == name)

    def worker_counters(self, name: str) -> dict[str, float]:
        return next(w.counters for w in self.status().workers if w.name == name)

    def stop(self) -> None:
        self.client.close()
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(30)
        shutil.rmtree(self.dir, ignore_errors=True)


def percentiles(samples_s: list[float]) -> str:
    us = np.array(samples_s) * 1e6
    return f"{np.percentile(us, 50):8.0f} {np.percentile(us, 99):8.0f}"


def time_requests(send_and_wait, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        send_and_wait()
        times.append(time.perf_counter() - t0)
    return times


# -- alternatives ---------------------------------------------------------------------------------
def _zmq_rep(endpoint: str, ready) -> None:
    sock = zmq.Context.instance().socket(zmq.REP)
    sock.bind(endpoint)
    ready.set()
    decoder = msgspec.msgpack.Decoder(messages.AnyMessage)
    while True:
        request = decoder.decode(sock.recv())
        if isinstance(request, messages.Shutdown):
            sock.send(messages.encode(messages.Ok()))
            break
        sock.send(messages.encode(messages.Ok(request_id=request.request_id)))
    sock.close(linger=0)


def _pipe_server(address: str, ready) -> None:
    with Listener(address) as listener:
        ready.set()
        with listener.accept() as conn:
            while True:
                request = conn.recv()
                conn.send({"type": "ok", "request_id": request["request_id"]})
                if request["type"] == "shutdown":
                    break


def bench_round_trips(n: int) -> None:
    print(f"\n## request/reply round trip ({n} requests each)\n")
    print(f"{'transport':44} {'p50 us':>8} {'p99 us':>8} {'req/s':>8}")
    rig = Rig(IDLE_WORKER)
    try:
        for label, message in (
            ("rigpipe supervisor: Hello (smallest)", messages.Hello()),
            ("rigpipe supervisor: Status (full table)", messages.Status()),
        ):
            times = time_requests(lambda m=message: rig.client.request(m), n)
            print(f"{label:44} {percentiles(times)} {n / sum(times):8.0f}")
        endpoints = rig.discovery.endpoints
        pipelined = Client(endpoints, timeout_s=10)
        sock = pipelined._sock
        t0 = time.perf_counter()
        for i in range(n):
            sock.send(messages.encode(messages.Hello(request_id=i)))
        for _ in range(n):
            sock.recv()
        rate = n / (time.perf_counter() - t0)
        pipelined.close()
        print(f"{'rigpipe supervisor: Hello, pipelined':44} {'-':>8} {'-':>8} {rate:8.0f}")
    finally:
        rig.stop()

    ctx = mp.get_context("spawn")
    tmp = Path(tempfile.mkdtemp(prefix="rpb"))
    ready = ctx.Event()
    endpoint = f"ipc://{tmp}/rep.sock"
    server = ctx.Process(target=_zmq_rep, args=(endpoint, ready))
    server.start()
    ready.wait(30)
    req = zmq.Context.instance().socket(zmq.REQ)
    req.connect(endpoint)

    def zmq_round_trip() -> None:
        req.send(messages.encode(messages.Hello(request_id=1)))
        messages.decode(req.recv())

    times = time_requests(zmq_round_trip, n)
    label = "bare ZeroMQ REQ/REP ipc + msgspec (floor)"
    print(f"{label:44} {percentiles(times)} {n / sum(times):8.0f}")
    req.send(messages.encode(messages.Shutdown()))
    req.recv()
    req.close(linger=0)
    server.join(10)

    ready = ctx.Event()
    address = str(tmp / "pipe.sock")
    server = ctx.Process(target=_pipe_server, args=(address, ready))
    server.start()
    ready.wait(30)
    with PipeClient(address) as conn:

        def pipe_round_trip() -> None:
            conn.send({"type": "hello", "request_id": 1})
            conn.recv()

        times = time_requests(pipe_round_trip, n)
        conn.send({"type": "shutdown", "request_id": 0})
        conn.recv()
    server.join(10)
    print(f"{'multiprocessing.connection (pickle)':44} {percentiles(times)} {n / sum(times):8.0f}")
    shutil.rmtree(tmp, ignore_errors=True)


def cpu_percent(pid: int, seconds: float) -> float:
    proc = psutil.Process(pid)
    start = proc.cpu_times()
    time.sleep(seconds)
    end = proc.cpu_times()
    return 100 * ((end.user - start.user) + (end.system - start.system)) / seconds


def bench_idle(seconds: float) -> None:
    print(f"\n## idle CPU over {seconds:g} s (heartbeats every 0.25 s)\n")
    rig = Rig(IDLE_WORKER)
    try:
        time.sleep(2)
        worker = rig.worker_pid("idle")
        supervisor = cpu_percent(rig.proc.pid, seconds)
        idle = cpu_percent(worker, seconds)
        print(f"supervisor {supervisor:5.2f} % of one core;  idle worker {idle:5.2f} %")
    finally:
        rig.stop()


def bench_source(channels: int, chunk_s: float, seconds: float) -> None:
    rig = Rig(acquisition(channels, chunk_s))
    try:
        pid = rig.worker_pid("acq")
        time.sleep(min(5.0, seconds / 4))
        cpu = cpu_percent(pid, max(1.0, seconds - 7))
        stream = f"{rig.name}/acq/continuous"
        delays = []
        with attach(stream) as reader:
            end = time.monotonic() + 2
            while time.monotonic() < end:
                chunk = reader.read(timeout_s=1)
                if chunk.frames:
                    delays.append(time.monotonic_ns() - int(chunk.timestamps_ns[-1]))
            # The sample clock: frame k's time is start + k / rate. Drift is how far the
            # newest published frame trails now, computed from the frame count alone.
            period_ns = 1e9 / reader.sample_rate
            newest = reader.latest(1)
            start_ns = int(newest.timestamps_ns[-1]) - (newest.end_sequence - 1) * period_ns
            drift_ms = (time.monotonic_ns() - start_ns - reader.write_cursor * period_ns) / 1e6
        counters = next(w.counters for w in rig.status().workers if w.name == "acq")
        elapsed = counters["frames"] / 30000.0
        delays_ms = np.array(delays) / 1e6
        print(
            f"{channels:>8} {chunk_s * 1000:>8g} {cpu:8.1f} {elapsed:9.0f} {drift_ms:9.2f} "
            f"{np.percentile(delays_ms, 50):8.2f} {np.percentile(delays_ms, 99):8.2f} "
            f"{int(counters['late_chunks']):>11}"
        )
    finally:
        rig.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="each source run (60)")
    parser.add_argument("--requests", type=int, default=2000, help="round trips per transport")
    parser.add_argument("--channels", default="256,1024,4096", help="source channel counts")
    parser.add_argument("--chunks", default="0.001,0.005", help="source chunk durations, s")
    parser.add_argument("--only", default="rtt,idle,source", help="which tables")
    args = parser.parse_args()
    only = args.only.split(",")
    print(
        f"rigpipe control-plane benchmark; {os.cpu_count()} cores; python {sys.version.split()[0]}"
    )
    if "rtt" in only:
        bench_round_trips(args.requests)
    if "idle" in only:
        bench_idle(min(args.seconds, 10.0))
    if "source" in only:
        print(f"\n## synthetic source at 30 kHz, {args.seconds:g} s per run\n")
        print(
            f"{'channels':>8} {'chunk ms':>8} {'cpu %':>8} {'ran s':>9} {'drift ms':>9} "
            f"{'delay p50':>8} {'p99 ms':>8} {'late chunks':>11}"
        )
        for chunk_s in [float(c) for c in args.chunks.split(",")]:
            for channels in [int(c) for c in args.channels.split(",")]:
                bench_source(channels, chunk_s, args.seconds)


if __name__ == "__main__":
    main()
