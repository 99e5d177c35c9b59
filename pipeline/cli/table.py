"""The status table that ``rigpipe run`` redraws and ``rigpipe status`` prints."""

from __future__ import annotations

from pipeline.control.messages import StatusReply


def duration(seconds: float) -> str:
    """``1:02:03`` for hours, ``2:03`` below an hour."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def render(status: StatusReply) -> list[str]:
    """The lines of the table: session, workers, streams, worker counters."""
    lines = [
        f"session {status.session}  {status.state}  up {duration(status.uptime_s)}"
        f"  bad messages {status.bad_messages}",
        "",
        f"{'worker':14} {'kind':12} {'state':9} {'pid':>7} {'restarts':>8} {'uptime':>8} "
        f"{'cpu %':>6} {'mem MB':>7} {'beat s':>6}",
    ]
    for w in status.workers:
        beat = "-" if w.heartbeat_age_s is None else f"{w.heartbeat_age_s:.1f}"
        pid = str(w.pid) if w.pid else "-"
        lines.append(
            f"{w.name:14} {w.kind[-12:]:12} {w.state:9} {pid:>7} {w.restarts:>8} "
            f"{duration(w.uptime_s):>8} {w.cpu_percent:6.1f} {w.rss_bytes / 1e6:7.1f} {beat:>6}"
        )
    lines += [
        "",
        f"{'stream':32} {'writer':10} {'gen':>4} {'rate Hz':>10} {'frames':>13}"
        "  readers (lag, dropped)",
    ]
    for s in status.streams:
        readers = ", ".join(f"{r.worker} ({r.lag}, {r.dropped})" for r in s.readers) or "-"
        writer = s.writer if s.writer_alive else f"{s.writer}!"
        lines.append(
            f"{s.stream:32} {writer:10} {s.generation:>4} {s.rate_hz:10.0f} "
            f"{s.write_cursor:>13}  {readers}"
        )
    noted = [w for w in status.workers if w.counters or w.note]
    if noted:
        lines.append("")
    for w in noted:
        shown = "  ".join(f"{k} {v:g}" for k, v in sorted(w.counters.items()))
        lines.append(f"{w.name}: {w.note + '  ' if w.note else ''}{shown}")
    return lines
