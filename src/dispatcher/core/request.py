"""What the reactor hands to finalize, and the one entry point that answers it.

A `FinalizeRequest` names one Job (its name and uid) and carries all the reactor knew when it
asked: why, after how long, the Job's last annotations when it vanished unanswered, and the Job
and its ended pod as the watches showed them (small copies, hints that spare reads). A request
to answer an already answered Job once more (the same task sent again within the idempotency
window) is one too, with the route to answer. The worker's Celery task only carries a request
across the broker (`task_kwargs`, `from_task`) and calls :func:`answer`, which picks the case:
answer again, answer a Job that is gone, or finalize it (ended, stuck, cancelled, deleted under
our finalizer, waited past its queue timeout, or answered and not yet let go of).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dispatcher.core.finalize import (
    Context,
    Finalized,
    Result,
    answer_again,
    answer_deleted,
    finalize,
)
from dispatcher.kube.outcome import DELETED_ERROR, Outcome, Verdict
from dispatcher.messages.route import ReplyRoute


@dataclass(frozen=True)
class FinalizeRequest:
    job_name: str
    job_uid: str
    delay_seconds: float = 0.0  # how long to wait before finalizing (a grace period)
    why: str = ""  # for the log
    deleted_annotations: dict[str, str] | None = None  # set when the Job vanished unanswered
    # Hints, not identity: the Job as the watch showed it, and its pod that ended (small copies)
    job: dict[str, Any] | None = field(default=None, compare=False)
    pod: dict[str, Any] | None = field(default=None, compare=False)
    again_to: ReplyRoute | None = None  # answer the answered Job once more, to this route

    @classmethod
    def again(cls, job_name: str, route: ReplyRoute) -> FinalizeRequest:
        """Answer Job `job_name`, answered before and kept for the idempotency window, once
        more to `route`."""
        return cls(job_name, "", why="the same task sent again", again_to=route)

    def task_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the finalize task besides the Job's name and uid (JSON)."""
        kwargs: dict[str, Any] = {}
        if self.deleted_annotations is not None:
            kwargs["deleted_annotations"] = self.deleted_annotations
        if self.job is not None:
            kwargs["job"] = self.job
        if self.pod is not None:
            kwargs["pod"] = self.pod
        return kwargs

    @classmethod
    def from_task(
        cls,
        job_name: str,
        job_uid: str,
        deleted_annotations: dict[str, str] | None = None,
        *,
        job: dict[str, Any] | None = None,
        pod: dict[str, Any] | None = None,
    ) -> FinalizeRequest:
        """The request a finalize task carries (its arguments as `task_kwargs` wrote them)."""
        return cls(job_name, job_uid, 0.0, "", deleted_annotations, job=job, pod=pod)


def answer(request: FinalizeRequest, ctx: Context, now: datetime | None = None) -> Result:
    """Answer what `request` asks, if it is time; each case is safe to repeat. The hints are
    used by the first execution only (`ctx.attempt` 0): a retry reads the Job as it is."""
    if request.again_to is not None:
        if answer_again(request.job_name, request.again_to, ctx):
            return Result(Finalized.ANSWERED)
        return Result(Finalized.GONE)  # not, or no longer, a Job answered and kept
    if request.deleted_annotations is not None:
        answer_deleted(request.job_name, request.job_uid, request.deleted_annotations, ctx)
        return Result(Finalized.ANSWERED, Verdict(Outcome.DELETED, None, None, DELETED_ERROR))
    first = ctx.attempt == 0
    return finalize(
        request.job_name,
        request.job_uid,
        ctx,
        now,
        seen=request.job if first else None,
        pod=request.pod if first else None,
    )
