"""The session's event log (pipeline/control/eventlog.py) on a real ring: numbered, read
back as sent, bounded in size, and an overwritten event is counted exactly."""

from __future__ import annotations

import uuid

import pytest

from pipeline import attach
from pipeline.control import messages
from pipeline.control.eventlog import MESSAGE_BYTES, EventLog, decode, events_stream


@pytest.fixture
def log():
    event_log = EventLog(f"evlog{uuid.uuid4().hex[:8]}", capacity=16)
    try:
        yield event_log
    finally:
        event_log.close()


def _annotation(text: str, k: int = 0) -> messages.Annotation:
    return messages.Annotation(text=text, time_ns=1_700_000_000_000_000_000 + k, monotonic_ns=k)


def test_events_are_numbered_from_zero_and_read_back_as_published(log) -> None:
    reader = attach(log.writer.stream, cursor=0)
    with reader:
        published = [
            _annotation("first"),
            messages.WorkerRestarted(worker="rec", restarts=2, reason="killed by signal 9"),
            messages.ParameterChanged(worker="acq", name="lfp_hz", value=12.5),
        ]
        assert [log.append(event) for event in published] == [0, 1, 2]
        found = decode(reader.read(timeout_s=1))
    assert [e.sequence for e in found] == [0, 1, 2]
    assert [e.message for e in found] == published
    assert found[1].topic == "worker.rec.worker_restarted"
    assert found[2].payload() == {
        "type": "parameter_changed", "worker": "acq", "name": "lfp_hz", "value": 12.5
    }  # fmt: skip
    assert found[0].monotonic_ns <= found[1].monotonic_ns <= found[2].monotonic_ns
    assert all(e.time_ns > 1_600_000_000 * 10**9 for e in found)  # wall clock, ns since 1970


def test_a_message_too_long_for_a_record_is_logged_with_its_texts_cut(log) -> None:
    reader = attach(log.writer.stream, cursor=0)
    with reader:
        log.append(_annotation("x" * 10_000))
        log.append(messages.ParameterChanged(worker="acq", name="table", value=list(range(5000))))
        cut, replaced = decode(reader.read(timeout_s=1))
    assert isinstance(cut.message, messages.Annotation)
    assert cut.message.text.startswith("xxx") and cut.message.text.endswith("...")
    assert len(messages.encode(cut.message)) <= MESSAGE_BYTES
    # No text to cut: a warning that names what could not be logged, never a broken record.
    assert isinstance(replaced.message, messages.Reported)
    assert "'parameter_changed' event" in replaced.message.text
    assert log.cut == 2


def test_a_reader_the_log_laps_learns_exactly_how_many_events_it_lost(log) -> None:
    reader = attach(log.writer.stream, cursor=0)
    with reader:
        for k in range(40):  # the log keeps 16
            log.append(_annotation(f"note {k}", k))
        chunk = reader.read(timeout_s=1)
        found = decode(chunk)
    assert chunk.dropped == 40 - 16 and chunk.start_sequence == 24
    assert [e.message.text for e in found if e.message] == [f"note {k}" for k in range(24, 40)]


def test_the_log_is_named_for_its_session() -> None:
    assert events_stream("demo") == "demo/supervisor/events"
