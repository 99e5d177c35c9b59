"""The recorder's hold-back of repeated messages (workers/recording/repeats.py), in virtual time."""

from __future__ import annotations

from workers.recording.repeats import Event, Repeats

S = 1_000_000_000


def _report(text: str, t_ns: int, worker: str = "rec") -> Event:
    payload = {"type": "reported", "worker": worker, "level": "warning", "text": text}
    return Event("session.reported", payload, 1_700_000_000 * S + t_ns, t_ns)


def test_a_message_repeated_for_seconds_is_one_row_a_second_with_its_count() -> None:
    repeats = Repeats(quiet_s=1.0)
    written = []
    for k in range(30):  # 10 a second for 3 s, each with another frame number
        t = k * S // 10
        written += repeats.offer(_report(f"reader fell behind at frame {1000 + k}", t))
        written += repeats.due(t)
    written += repeats.release(3 * S)
    assert written[0].payload["text"] == "reader fell behind at frame 1000"  # the first at once
    assert "repeats" not in written[0].payload
    held = written[1:]
    assert [e.payload["repeats"] for e in held] == [9, 10, 10]  # 1 + 29 messages in all
    assert held[0].payload["text"] == "reader fell behind at frame 1009"  # the last it stands for
    assert held[0].payload["first_repeat_ns"] == S // 10 and held[0].monotonic_ns == 9 * S // 10
    assert [e.monotonic_ns for e in written] == sorted(e.monotonic_ns for e in written)


def test_other_messages_pass_at_once_and_a_quiet_kind_starts_again() -> None:
    repeats = Repeats(quiet_s=1.0)
    assert repeats.offer(_report("disk slow", 0)) != []
    assert repeats.offer(_report("disk slow", S // 2)) == []  # held
    other = _report("disk full", S // 2 + 1)  # another message: its own kind
    assert repeats.offer(other) == [other]
    state = Event("session.worker_state_changed", {"type": "worker_state_changed"}, 0, S // 2 + 2)
    assert repeats.offer(state) == [state]  # never held back
    (released,) = repeats.due(S)
    assert released.payload["repeats"] == 1 and released.payload["text"] == "disk slow"
    assert repeats.due(2 * S) == []  # a quiet second: the kind is forgotten
    fresh = _report("disk slow", 3 * S)
    assert repeats.offer(fresh) == [fresh]  # so the next one is recorded at once
    assert repeats.release(3 * S) == []


def test_a_release_writes_every_held_run_and_keeps_the_kind_held() -> None:
    """At each flush the recorder releases what is held, so its file holds every event it
    read; the kind stays held, so a storm still makes one row a second, not two."""
    repeats = Repeats(quiet_s=1.0)
    repeats.offer(_report("lag 1", 0))
    assert repeats.offer(_report("lag 2", S // 4)) == []
    (released,) = repeats.release(S // 2)
    assert released.payload["repeats"] == 1 and released.payload["text"] == "lag 2"
    assert repeats.offer(_report("lag 3", S // 2 + 1)) == []  # still held: quiet since S // 2
    assert repeats.release(S // 2 + 2)[0].payload["text"] == "lag 3"
    assert repeats.release(S) == []
