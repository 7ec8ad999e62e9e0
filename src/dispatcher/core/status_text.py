"""The overview and a task's view as plain text, for `dispatcher status` on a terminal."""

from __future__ import annotations

from datetime import datetime

from dispatcher.core.overview import STATE_WORDS, Overview
from dispatcher.core.taskview import TaskView
from dispatcher.messages.response import Attempt


def overview_text(overview: Overview) -> str:
    lines = [f"dispatcher status at {_clock(overview.at)}", "", "queues (ready messages)"]
    for queue in overview.queues:
        if queue.ready is None:
            lines.append(f"  {queue.role:<10} {queue.name}: unknown ({queue.problem})")
        else:
            lines.append(
                f"  {queue.role:<10} {queue.ready:>6} ready  {queue.consumers:>3} consumers"
                f"  {queue.name}"
            )
    lines += ["", f"tasks in flight: {overview.in_flight}"]
    for state in overview.states:
        oldest = ""
        if state.oldest is not None:
            age = "" if state.oldest_seconds is None else f", {_age(state.oldest_seconds)}"
            oldest = f"  oldest {state.oldest}{age}"
        lines.append(f"  {STATE_WORDS[state.state]:<18} {state.count:>6}{oldest}")
    if overview.nodes:
        lines += ["", "running per node"]
        lines += [f"  {node:<24} {count:>6}" for node, count in overview.nodes]
    lines += ["", "last answers with an error (answered Jobs still kept)"]
    if not overview.errors:
        lines.append("  none")
    for error in overview.errors:
        lines.append(f"  {_clock(error.answered)}  {error.task_id}: {error.error}")
    return "\n".join(lines)


def task_text(view: TaskView) -> str:
    lines = [f"task {view.task_id}: {view.state}"]
    if view.error is not None:
        lines.append(f"answered with error: {view.error}")
    lines += ["", "timeline"]
    for step in view.steps:
        detail = f"  {step.detail}" if step.detail else ""
        lines.append(f"  {_clock(step.at)}  {step.what:<9}{detail}".rstrip())
    if view.attempts:
        lines += ["", "attempts"]
        for number, attempt in enumerate(view.attempts, 1):
            lines.append(f"  {number:>2}  {_attempt(attempt)}")
    lines += ["", "events"]
    if not view.events:
        lines.append("  none")
    for event in view.events:
        times = f" (x{event.count})" if event.count > 1 else ""
        lines.append(
            f"  {_clock(event.at)}  {event.type:<7} {event.reason:<18} "
            f"{event.kind}/{event.name}: {event.message}{times}"
        )
    lines += ["", "log (last lines)"]
    if view.log_tail is None:
        lines.append(f"  ({view.log_note})")
    else:
        lines += [f"  {line}" for line in view.log_tail.splitlines()] or ["  (empty)"]
    return "\n".join(lines)


def _attempt(attempt: Attempt) -> str:
    """One run: how it ended, where, from when to when."""
    ended = f"exit {attempt.exit}" if attempt.exit is not None else "no exit code"
    error = f" ({attempt.error})" if attempt.error else ""
    where = f" on {attempt.node}" if attempt.node else ""
    span = f"  {attempt.start or '?'} .. {attempt.end or '?'}"
    return f"{ended}{error}{where}{span}"


def _clock(when: datetime | None) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%SZ") if when is not None else "-" * 20


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"
