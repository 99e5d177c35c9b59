"""The text that tells a person what happened: one line per event, one per reply.

The supervisor and the workers publish messages (:mod:`pipeline.control.messages`);
what a person reads of them (``rigpipe run``'s event pane, ``rigpipe stim``'s answer)
is written here, beside the commands that print it.
"""

from __future__ import annotations

from pipeline.control import messages


def event_line(event: messages.Message) -> str:
    """One human-readable line for an event."""
    match event:
        case messages.WorkerStateChanged(worker=w, state=s, pid=pid, detail=detail):
            extra = f" (pid {pid})" if pid else ""
            return f"worker {w}: {s}{extra}" + (f": {detail}" if detail else "")
        case messages.WorkerRestarted(worker=w, restarts=n, reason=reason, pid=pid):
            return f"worker {w}: restarted (restart {n}, pid {pid}): {reason}"
        case messages.ParameterChanged(worker=w, name=name, value=value):
            return f"worker {w}: {name} = {value!r}"
        case messages.Annotation(text=text):
            return f"annotation: {text}"
        case messages.Reported(worker=w, level=level, text=text):
            return f"worker {w} {level}: {text}"
        case messages.SessionStateChanged(session=s, state=state):
            return f"session {s}: {state}"
        case messages.StimulationQueued(worker=w, command_id=cid, channel=ch, source=src):
            return f"worker {w}: stimulus {cid} queued on channel {ch} ({src})"
        case messages.StimulationRefused(worker=w, text=text, source=src):
            return f"worker {w}: stimulus refused ({src}): {text}"
        case messages.StimulationStopped(worker=w, channel=ch, reason=reason):
            where = "every channel" if ch is None else f"channel {ch}"
            return f"worker {w}: {where} silenced" + (f" ({reason})" if reason else "")
        case messages.StimulatorArmed(worker=w, armed=armed, reason=reason, rules=rules):
            live = f"; rules live: {', '.join(rules)}" if rules else ""
            return f"worker {w}: {'armed' if armed else 'disarmed'}{live}" + (
                f" ({reason})" if reason else ""
            )
        case messages.Triggered(
            worker=w, rule=rule, sequence=seq, fired=fired, reason=r, repeats=n
        ):
            outcome = "fired" if fired else f"did not fire: {r}"
            again = f" ({n} crossings since the last line)" if n > 1 else ""
            return f"worker {w}: trigger {rule} at frame {seq} {outcome}{again}"
    return repr(event)


def reply_line(reply: messages.Message) -> str:
    """One line for the answer to a request (a stimulation command's)."""
    if isinstance(reply, messages.Accepted):
        return f"accepted: command {reply.command_id}, {reply.detail}"
    return getattr(reply, "detail", repr(reply))
