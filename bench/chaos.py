"""Chaos run: a recording rig under seeded random faults, refereed by an outside reader.

    python bench/chaos.py [--seconds 3600] [--seed 1] [--channels 256] [--keep DIR]

A rig (synthetic source, 30 kHz, a recorder recording from launch, a simulated
stimulator whose output is recorded too) runs for ``--seconds`` while faults
hit it, one every 2-6 s, chosen by ``--seed``:

- SIGKILL of the source, the recorder or the stimulator;
- SIGSTOP of the recorder past its heartbeat timeout (the supervisor kills it), then SIGCONT;
- ``rigpipe worker restart`` of the source (a clean restart: a new stream, sequence from 0);
- a source restart followed 0.5-2 s later by a SIGKILL of the recorder;
- stopping the stimulator (its recorded stream ``stim/output`` goes away) and starting it again.

The referee is a separate process this project's recorder knows nothing of:
it attaches to ``acq/continuous`` with ``pipeline.attach`` from the moment the
rig runs, follows it through every restart, and writes the timestamp of every
frame it saw. Afterwards every frame it saw must be in the recording or inside
a gap row; every gap row's cause must match a fault that really happened at
that time; and ``rigpipe inspect`` must find every timestamp step explained.

Events are refereed too: through every fault a thread sends annotations and
stimuli at random (every 50-300 ms) and keeps each one the rig acknowledged
(an annotation's event number, a stimulus's command id, when it was sent and
answered). Afterwards each must be in the recording's events table, read with
plain h5py (an annotation by its number and text; a stimulus by its command id,
published between its sending and 2 s after its answer), or inside a gap row
of ``supervisor/events`` with a true cause.

It prints the faults, each worker's restart time (fault to running again),
the unexplained missing frames and events. Exit code 1 if any check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import msgspec
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.control import messages, session  # noqa: E402
from pipeline.control.bus import Client  # noqa: E402
from pipeline.control.stimulator import Stimulator  # noqa: E402
from pipeline.errors import RigpipeError, StimulationRefused  # noqa: E402
from pipeline.recording.format import read_manifest  # noqa: E402
from pipeline.recording.summary import inspect  # noqa: E402

STREAM = "acq/continuous"
HEARTBEAT_TIMEOUT_S = 1.0

CONFIG = """
[session]
name = "{name}"
recordings_dir = "{recordings}"
stop_timeout_s = 5.0

[control]
heartbeat_timeout_s = {heartbeat_timeout_s}

[[workers]]
name = "acq"
kind = "acquisition"
backoff_s = 0.2
max_restarts = 1000
[workers.parameters]
channels = {channels}
sample_rate_hz = 30000.0
chunk_s = 0.001
buffer_s = 10.0

[[workers]]
name = "rec"
kind = "recording"
backoff_s = 0.2
max_restarts = 1000
[workers.parameters]
streams = ["acq/continuous", "acq/spikes", "stim/output"]
flush_s = 1.0

[[workers]]
name = "stim"
kind = "stimulation"
backoff_s = 0.2
max_restarts = 1000
[workers.parameters]
channels = 2
backend = "simulated"
[workers.parameters.limits.default]
max_amplitude_ua = 100.0
max_charge_per_phase_nc = 30.0
"""

# What a gap's cause says happened, and the faults that make it true.
_SOURCE_FAULTS = {"kill acq", "restart acq"}
_RECORDER_FAULTS = {"kill rec", "stop rec"}


@dataclass
class Fault:
    at_ns: int  # host monotonic, when it was dealt
    kind: str  # "kill acq", "stop rec", "restart acq", ...
    worker: str
    restart_s: float | None = None  # until the worker ran again with a new pid


@dataclass
class Verdict:
    seen: int = 0  # frames the referee saw
    referee_dropped: int = 0
    recorded: int = 0
    unexplained: int = 0  # seen, not recorded, and in no gap row
    gaps: list[dict] = field(default_factory=list)
    false_causes: list[str] = field(default_factory=list)
    inspect_problems: list[str] = field(default_factory=list)
    events_sent: dict[str, int] = field(default_factory=dict)  # kind -> acknowledged
    events_recorded: int = 0
    events_in_gaps: int = 0
    events_unexplained: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.unexplained
            or self.false_causes
            or self.inspect_problems
            or self.events_unexplained
        )


# -- the referee: an outside lossless reader ---------------------------------------------------
def referee(stream: str, out_path: str) -> int:
    """Write the timestamp of every frame of ``stream`` until SIGTERM; print drops at exit."""
    from pipeline import attach
    from pipeline.errors import EndOfStream, StreamNotFound, StreamReplaced

    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    dropped = 0
    stream_id: int | None = None
    with open(out_path, "wb") as out:
        while not stopping:
            try:
                if stream_id is None:
                    reader = attach(stream, from_now=True)
                else:  # the stream ended: read the next one from its first frame
                    reader = attach(stream, cursor=0)
                    if reader.stream_id == stream_id:
                        reader.close()
                        raise StreamNotFound(stream, [])
            except (StreamNotFound, StreamReplaced):
                time.sleep(0.005)
                continue
            stream_id = reader.stream_id
            print("attached", flush=True)
            with reader:
                while not stopping:
                    try:
                        chunk = reader.read(timeout_s=0.1)
                    except EndOfStream:
                        break
                    dropped += chunk.dropped
                    chunk.timestamps_ns.tofile(out)
            out.flush()
    print(f"dropped {dropped}", flush=True)
    return 0


# -- events sent through the faults ------------------------------------------------------------
@dataclass
class Sent:
    """An annotation or a stimulus the rig acknowledged."""

    kind: str  # "annotation" or "stimulus"
    sent_ns: int  # host monotonic, when it was sent
    acked_ns: int  # when its answer came
    sequence: int = -1  # an annotation's number in the session's event log
    text: str = ""
    command_id: int = 0  # a stimulus's, as its worker answered


class Sender(threading.Thread):
    """Sends annotations and stimuli at random until stopped; keeps what was acknowledged.

    A stimulus refused because its worker restarted disarmed re-arms it; one whose worker
    is down is tried again later. Neither counts: only acknowledged ones are checked.
    """

    def __init__(self, session_name: str, endpoints, seed: int) -> None:
        super().__init__(daemon=True)
        self.session_name = session_name
        self.endpoints = endpoints
        self.rng = random.Random(seed)
        self.sent: list[Sent] = []
        self.halt = threading.Event()

    def run(self) -> None:
        client = Client(self.endpoints, timeout_s=10)
        stim: Stimulator | None = None
        try:
            while not self.halt.wait(self.rng.uniform(0.05, 0.3)):
                if self.rng.random() < 0.5:
                    with contextlib.suppress(RigpipeError):  # no answer: not acknowledged
                        self._annotate(client)
                    continue
                try:
                    stim = stim or Stimulator("stim", self.session_name)
                    self._stimulate(stim)
                except RigpipeError:  # its worker is down or restarting: later
                    if stim is not None:
                        stim.close()
                    stim = None
        finally:
            client.close()
            if stim is not None:
                stim.close()

    def _annotate(self, client: Client) -> None:
        text = f"chaos note {len(self.sent)}"
        sent_ns = time.monotonic_ns()
        reply = client.request(messages.Annotate(text=text))
        assert isinstance(reply, messages.Logged)
        self.sent.append(
            Sent("annotation", sent_ns, time.monotonic_ns(), reply.sequence, text=text)
        )

    def _stimulate(self, stim: Stimulator) -> None:
        channel = self.rng.randrange(2)
        sent_ns = time.monotonic_ns()
        try:
            reply = stim.pulse_train(channel=channel, phases=[(-20.0, 100.0), (20.0, 100.0)])
        except StimulationRefused:  # a restarted stimulator starts disarmed
            stim.arm()
            return
        self.sent.append(
            Sent("stimulus", sent_ns, time.monotonic_ns(), command_id=reply.command_id)
        )


# -- the rig ---------------------------------------------------------------------------------------
class ChaosRig:
    """A supervisor subprocess with the chaos config, in a private directory."""

    def __init__(self, channels: int, keep: Path | None = None) -> None:
        self.name = f"chaos{uuid.uuid4().hex[:6]}"
        self.dir = keep or Path(tempfile.mkdtemp(prefix="rpc", dir="/tmp"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.recordings = self.dir / "recordings"
        self.env = dict(os.environ, RIGPIPE_RUNTIME_DIR=str(self.dir / "run"))
        config = self.dir / "chaos.toml"
        config.write_text(
            CONFIG.format(
                name=self.name,
                recordings=self.recordings,
                channels=channels,
                heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S,
            )
        )
        self.log = open(self.dir / "supervisor.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "run", str(config)],
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        self.client: Client | None = None
        self.referee: subprocess.Popen[str] | None = None
        self._wait(lambda: self._all_running(), 60, "the rig to start")

    def _discovery(self) -> session.Discovery | None:
        saved = os.environ.get("RIGPIPE_RUNTIME_DIR")
        os.environ["RIGPIPE_RUNTIME_DIR"] = self.env["RIGPIPE_RUNTIME_DIR"]
        try:
            found = session.read(self.name)
        finally:
            if saved is None:
                os.environ.pop("RIGPIPE_RUNTIME_DIR")
            else:
                os.environ["RIGPIPE_RUNTIME_DIR"] = saved
        return found if found is not None and found.alive else None

    def status(self) -> messages.StatusReply:
        if self.client is None:
            discovery = self._discovery()
            if discovery is None:
                raise RuntimeError("the rig's discovery file is missing")
            self.client = Client(discovery.endpoints, timeout_s=10)
        reply = self.client.request(messages.Status())
        assert isinstance(reply, messages.StatusReply)
        return reply

    def _all_running(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the supervisor exited; see {self.dir / 'supervisor.log'}")
        if self._discovery() is None:
            return False
        return all(w.state == "running" for w in self.status().workers)

    def worker(self, name: str) -> messages.WorkerStatus:
        return next(w for w in self.status().workers if w.name == name)

    def request(self, message: messages.Message) -> None:
        self.status()
        assert self.client is not None
        self.client.request(message)

    @staticmethod
    def _wait(predicate, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout_s} s waiting for {what}")
            time.sleep(0.02)

    def start_referee(self) -> Path:
        out = self.dir / "referee.i64"
        self.referee = subprocess.Popen(
            [sys.executable, str(Path(__file__)), "--referee", f"{self.name}/{STREAM}", str(out)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        assert self.referee.stdout is not None
        if self.referee.stdout.readline().strip() != "attached":
            raise RuntimeError("the referee could not attach")
        return out

    def stop(self) -> int:
        """Stop the rig in order, then the referee; the referee's dropped frames."""
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        dropped = 0
        if self.referee is not None:
            self.referee.send_signal(signal.SIGTERM)
            out, _ = self.referee.communicate(timeout=30)
            dropped = int(out.strip().rsplit(" ", 1)[-1]) if "dropped" in out else -1
            self.referee = None
        return dropped

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


# -- faults ------------------------------------------------------------------------------------
def _restarted(rig: ChaosRig, name: str, old_pid: int, t0: float, timeout_s: float = 30) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            w = rig.worker(name)
            if w.state == "running" and w.pid not in (0, old_pid):
                return time.monotonic() - t0
        time.sleep(0.01)
    raise RuntimeError(f"{name} did not come back within {timeout_s} s")


def deal(rig: ChaosRig, kind: str, rng: random.Random) -> list[Fault]:
    """Deal one fault and wait until the rig runs again; what happened, with restart times."""
    verb, name = kind.split(" ", 1)
    if verb == "source-then-recorder":
        faults = deal(rig, "restart acq", rng)
        time.sleep(rng.uniform(0.5, 2.0))
        return faults + deal(rig, "kill rec", rng)
    pid = rig.worker(name).pid
    fault = Fault(time.monotonic_ns(), kind, name)
    t0 = time.monotonic()
    if verb == "kill":
        os.kill(pid, signal.SIGKILL)
    elif verb == "stop":  # frozen past its heartbeat timeout: the supervisor kills it
        os.kill(pid, signal.SIGSTOP)
        time.sleep(HEARTBEAT_TIMEOUT_S + 0.5)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    elif verb == "restart":
        rig.request(messages.RestartWorker(worker=name))
    elif verb == "pause":  # the worker stopped by request, its streams gone, then started
        rig.request(messages.StopWorker(worker=name))
        time.sleep(rng.uniform(1.0, 3.0))
        rig.request(messages.StartWorker(worker=name))
    fault.restart_s = _restarted(rig, name, pid, t0)
    return [fault]


FAULTS = [
    "kill acq",
    "kill rec",
    "kill stim",
    "stop rec",
    "restart acq",
    "source-then-recorder x",
    "pause stim",
]


# -- the verdict -------------------------------------------------------------------------------
def _recorded(directory: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every recorded timestamp of STREAM (sorted), and its gap rows."""
    stamps, gaps = [], []
    for entry in read_manifest(directory).segments:
        with h5py.File(directory / entry.file) as f:  # plain h5py: every file must open
            group = f.get(f"streams/{STREAM.replace('/', '.')}")
            if group is not None:
                stamps.append(group["timestamps_ns"][:])
            rows = f["gaps"][:]
            gaps.append(rows[rows["stream"] == STREAM.encode()])
    return np.sort(np.concatenate(stamps)), np.concatenate(gaps)


def _true_cause(gap: np.void, faults: list[Fault]) -> bool:
    """Whether a fault of the kind the cause names happened around the gap."""
    cause = gap["cause"].decode()
    start, end = int(gap["start_ns"]), int(gap["end_ns"])

    def near(kinds: set[str], before_s: float, after_s: float) -> bool:
        return any(
            f.kind in kinds and start - before_s * 1e9 <= f.at_ns <= end + after_s * 1e9
            for f in faults
        )

    if cause.startswith("source restarted while the recorder was down"):
        return near(_SOURCE_FAULTS, 15, 1) and near(_RECORDER_FAULTS, 15, 15)
    if cause.startswith("source restarted"):
        return near(_SOURCE_FAULTS, 1, 1)
    if cause.startswith("recorder"):
        return near(_RECORDER_FAULTS, 15, 15)
    return False  # the synthetic source never skips frames of its own


def _recorded_events(directory: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every row of the events tables, and the gap rows of the event log."""
    events, gaps = [], []
    for entry in read_manifest(directory).segments:
        with h5py.File(directory / entry.file) as f:
            events.append(f["events"][:])
            rows = f["gaps"][:]
            gaps.append(rows[rows["stream"] == b"supervisor/events"])
    return np.concatenate(events), np.concatenate(gaps)


def judge_events(verdict: Verdict, directory: Path, sent: list[Sent], faults: list[Fault]) -> None:
    """Each acknowledged annotation and stimulus is recorded, or in an event gap row with a
    true cause."""
    rows, gaps = _recorded_events(directory)
    annotations = {}
    queued: dict[int, list[int]] = {}  # command id -> when each was published
    for row in rows:
        topic = row["topic"].decode()
        if topic == "session.annotated":
            annotations[int(row["sequence"])] = msgspec.json.decode(row["payload"])["text"]
        elif topic.endswith(".stimulation_queued"):
            command = msgspec.json.decode(row["payload"])["command_id"]
            queued.setdefault(command, []).append(int(row["monotonic_ns"]))
    for gap in gaps:
        if not _true_cause(gap, faults):
            verdict.false_causes.append(
                f"events: {gap['cause'].decode()!r} ({int(gap['lost_frames'])} events): "
                "no such fault at that time"
            )
    for one in sent:
        verdict.events_sent[one.kind] = verdict.events_sent.get(one.kind, 0) + 1
        if one.kind == "annotation":
            found = annotations.get(one.sequence) == one.text
            lost = any(g["cursor_start"] <= one.sequence < g["cursor_end"] for g in gaps)
            what = f"annotation {one.text!r} (event {one.sequence})"
        else:
            until = one.acked_ns + 2_000_000_000
            found = any(one.sent_ns <= t <= until for t in queued.get(one.command_id, []))
            lost = any(g["start_ns"] < until and g["end_ns"] > one.sent_ns for g in gaps)
            what = f"stimulus {one.command_id} acknowledged at {one.acked_ns / 1e9:.3f} s"
        if found:
            verdict.events_recorded += 1
        elif lost:
            verdict.events_in_gaps += 1
        else:
            verdict.events_unexplained.append(f"{what}: not in the recording, in no gap row")


def judge(
    directory: Path, referee_file: Path, referee_dropped: int, faults: list[Fault]
) -> Verdict:
    seen = np.fromfile(referee_file, np.int64)
    recorded, gaps = _recorded(directory)
    verdict = Verdict(len(seen), referee_dropped, len(recorded))
    present = np.zeros(len(seen), bool)
    if len(recorded):
        at = np.clip(np.searchsorted(recorded, seen), 0, len(recorded) - 1)
        present = recorded[at] == seen
    covered = np.zeros(len(seen), bool)
    for gap in gaps:
        covered |= (seen > int(gap["start_ns"])) & (seen < int(gap["end_ns"]))
        verdict.gaps.append(
            {"cause": gap["cause"].decode(), "lost_frames": int(gap["lost_frames"])}
        )
        if not _true_cause(gap, faults):
            verdict.false_causes.append(
                f"{gap['cause'].decode()!r} before frame {int(gap['at_frame'])} "
                f"({int(gap['lost_frames'])} frames): no such fault at that time"
            )
    verdict.unexplained = int((~present & ~covered).sum())
    verdict.inspect_problems = inspect(directory).problems
    return verdict


def run(
    seconds: float,
    seed: int,
    channels: int,
    keep: Path | None = None,
    quiet: bool = False,
    first: tuple[str, ...] = (),
    pause_s: tuple[float, float] = (2.0, 6.0),
) -> tuple[list[Fault], Verdict]:
    """Run the chaos rig; (faults, verdict). The rig's files are removed unless ``keep``.

    ``first`` are faults dealt in that order before the random ones.
    """
    rng = random.Random(seed)
    rig = ChaosRig(channels, keep)
    faults: list[Fault] = []
    planned = list(first)
    discovery = rig._discovery()
    assert discovery is not None
    saved = os.environ.get("RIGPIPE_RUNTIME_DIR")  # where the sender's Stimulator finds the rig
    os.environ["RIGPIPE_RUNTIME_DIR"] = rig.env["RIGPIPE_RUNTIME_DIR"]
    sender = Sender(rig.name, discovery.endpoints, seed)
    try:
        referee_file = rig.start_referee()
        sender.start()
        end = time.monotonic() + seconds
        while time.monotonic() < end - 3:
            time.sleep(rng.uniform(*pause_s))
            if time.monotonic() >= end - 3:
                break
            kind = planned.pop(0) if planned else rng.choice(FAULTS)
            dealt = deal(rig, kind, rng)
            faults += dealt
            if not quiet:
                for f in dealt:
                    print(f"  {f.kind:<12} back in {f.restart_s:.2f} s", flush=True)
        time.sleep(max(0.0, end - time.monotonic()))
        sender.halt.set()
        sender.join(30)
        dropped = rig.stop()
        (directory,) = [p for p in rig.recordings.iterdir() if p.is_dir()]
        verdict = judge(directory, referee_file, dropped, faults)
        judge_events(verdict, directory, sender.sent, faults)
        return faults, verdict
    finally:
        sender.halt.set()
        if saved is None:
            os.environ.pop("RIGPIPE_RUNTIME_DIR", None)
        else:
            os.environ["RIGPIPE_RUNTIME_DIR"] = saved
        rig.stop()
        if keep is None:
            rig.remove()


def report(faults: list[Fault], verdict: Verdict, seconds: float) -> list[str]:
    lines = [f"{len(faults)} faults in {seconds:g} s; time from the fault to running again:"]
    by_kind: dict[str, list[float]] = {}
    for f in faults:
        by_kind.setdefault(f.kind, []).append(f.restart_s or 0.0)
    lines.append(f"{'fault':12} {'count':>6} {'p50 s':>8} {'max s':>8}")
    for kind, times in sorted(by_kind.items()):
        lines.append(f"{kind:12} {len(times):6} {np.median(times):8.2f} {max(times):8.2f}")
    lines.append(
        "(stop: frozen until the heartbeat timeout, 1 s, then killed; pause: stopped by "
        "request for 1-3 s, then started)"
    )
    lines += [
        f"referee saw {verdict.seen} frames (dropped {verdict.referee_dropped}); "
        f"recorded {verdict.recorded}",
        f"gap rows: {len(verdict.gaps)}, "
        f"{sum(g['lost_frames'] for g in verdict.gaps)} frames in them",
    ]
    lines += [f"  {g['lost_frames']:>8}  {g['cause']}" for g in verdict.gaps]
    lines.append(f"unexplained missing frames: {verdict.unexplained}")
    plural = {"annotation": "annotations", "stimulus": "stimuli"}
    sent = ", ".join(f"{n} {plural[kind]}" for kind, n in sorted(verdict.events_sent.items()))
    lines.append(
        f"events acknowledged: {sent or 'none'}; recorded {verdict.events_recorded}, "
        f"in event gap rows {verdict.events_in_gaps}"
    )
    lines.append(f"unexplained missing events: {len(verdict.events_unexplained)}")
    lines += [f"  {u}" for u in verdict.events_unexplained[:10]]
    lines.append(f"gap rows with a false cause: {len(verdict.false_causes)}")
    lines += [f"  {c}" for c in verdict.false_causes]
    lines.append(f"inspect problems: {len(verdict.inspect_problems)}")
    lines += [f"  {p}" for p in verdict.inspect_problems[:10]]
    return lines


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--referee":
        return referee(sys.argv[2], sys.argv[3])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3600.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--keep", type=Path, help="keep the rig's files (recording, logs) here")
    args = parser.parse_args()
    print(f"chaos: {args.channels} ch x 30 kHz for {args.seconds:g} s, seed {args.seed}")
    faults, verdict = run(args.seconds, args.seed, args.channels, args.keep)
    print("\n".join(report(faults, verdict, args.seconds)))
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
