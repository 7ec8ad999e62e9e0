"""Read, change, write conditionally, and read again on a conflict: one Job at a time.

Every write the dispatcher makes to a Job that others may write too (a claim, a cancel mark,
a route added by a copy that joins, the answered mark) is conditional on the resourceVersion it
read, so that a decision made on a stale copy is never written. When the Job changed meanwhile
the API server answers 409 Conflict; the decision is then made again on the Job as it is now.
This is client-go's ``retry.RetryOnConflict`` around a get: :func:`update_job` holds the loop
once, and callers hold only the decision and the write.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, Final, TypeVar

from dispatcher.core.ports import KubeGateway
from dispatcher.errors import ConflictError, TransientKubeError

T = TypeVar("T")
KubeObject = dict[str, Any]


class _Raise(enum.Enum):
    RAISE = "raise"


RAISE: Final = _Raise.RAISE


def update_job(
    kube: KubeGateway,
    name: str,
    change: Callable[[KubeObject | None], T],
    *,
    attempts: int,
    doing: str,
    job: KubeObject | None = None,
    uid: str | None = None,
    exhausted: T | _Raise = RAISE,
) -> T:
    """Call `change` with Job `name` as read (`job`, when given, is the first try's copy), and
    return what it returns. `change` decides, makes its write conditional on the Job's
    resourceVersion, and raises ConflictError when the Job changed meanwhile: the Job is then
    read again and `change` called again, `attempts` times at most. It gets None when the Job is
    gone (or, with `uid`, when the name is another Job's now). When every attempt conflicted,
    `exhausted` is returned if given; else TransientKubeError says the Job kept changing while
    `doing` (e.g. "it was cancelled")."""
    for attempt in range(attempts):
        if attempt > 0 or job is None:
            job = kube.get_job(name)
        if job is not None and uid is not None and job.get("metadata", {}).get("uid") != uid:
            job = None
        try:
            return change(job)
        except ConflictError:
            job = None
    if not isinstance(exhausted, _Raise):
        return exhausted
    raise TransientKubeError(f"Job {name} kept changing while {doing}")
