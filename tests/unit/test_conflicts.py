"""Read, change, write conditionally, read again on a conflict: `update_job`, as client-go's
RetryOnConflict, against the fake API server (a stale resourceVersion is a 409 there too)."""

from __future__ import annotations

from typing import Any

import pytest

from dispatcher.core.conflicts import update_job
from dispatcher.errors import TransientKubeError
from dispatcher.kube.conventions import annotation_patch

from .fakes import FakeKube, KubeObject, create_job_for


def mark(kube: FakeKube, value: str) -> Any:
    """A change that sets annotation `a` to `value`, conditionally; None when the Job is gone."""

    def change(job: KubeObject | None) -> str | None:
        if job is None:
            return None
        version = job["metadata"]["resourceVersion"]
        kube.annotate_job(job["metadata"]["name"], {"a": value}, resource_version=version)
        return value

    return change


def someone_else_writes(kube: FakeKube) -> None:
    kube.patch_job("t-1", {"metadata": {"labels": {"team": "b"}}})


def test_a_copy_in_hand_is_written_without_a_read() -> None:
    kube = FakeKube()
    job = create_job_for(kube)
    kube.calls.clear()

    assert update_job(kube, "t-1", mark(kube, "x"), attempts=3, doing="-", job=job) == "x"
    assert kube.calls == ["patch_job"]
    assert kube.annotations("t-1")["a"] == "x"


def test_a_conflict_reads_the_job_again_and_decides_anew() -> None:
    kube = FakeKube()
    job = create_job_for(kube)
    kube.before_next("patch_job", lambda: someone_else_writes(kube))
    kube.calls.clear()

    assert update_job(kube, "t-1", mark(kube, "x"), attempts=3, doing="-", job=job) == "x"
    assert kube.calls == ["patch_job", "patch_job", "get_job", "patch_job"]
    assert kube.jobs["t-1"]["metadata"]["labels"]["team"] == "b"  # the other write stays


def test_without_a_copy_the_job_is_read_first() -> None:
    kube = FakeKube()
    create_job_for(kube)
    kube.calls.clear()

    update_job(kube, "t-1", mark(kube, "x"), attempts=3, doing="-")
    assert kube.calls == ["get_job", "patch_job"]


@pytest.mark.parametrize("uid", [None, "another-uid"], ids=["gone", "another-job"])
def test_a_job_gone_or_replaced_is_handed_on_as_none(uid: str | None) -> None:
    kube = FakeKube()
    if uid is not None:
        create_job_for(kube)

    result = update_job(kube, "t-1", mark(kube, "x"), attempts=3, doing="-", uid=uid or "u")
    assert result is None


def test_a_job_that_keeps_changing_is_a_transient_error_naming_what_was_done() -> None:
    kube = FakeKube()
    create_job_for(kube)

    def always_stale(job: KubeObject | None) -> None:
        assert job is not None
        someone_else_writes(kube)
        kube.annotate_job("t-1", {"a": "x"}, resource_version=job["metadata"]["resourceVersion"])

    changing = "^Job t-1 kept changing while it was cancelled$"
    with pytest.raises(TransientKubeError, match=changing):
        update_job(kube, "t-1", always_stale, attempts=3, doing="it was cancelled")
    assert kube.calls.count("get_job") == 3


def test_a_job_that_keeps_changing_can_give_a_default_instead() -> None:
    kube = FakeKube()
    create_job_for(kube)

    def always_stale(job: KubeObject | None) -> str:
        assert job is not None
        someone_else_writes(kube)
        kube.annotate_job("t-1", {"a": "x"}, resource_version=job["metadata"]["resourceVersion"])
        return "written"

    assert update_job(kube, "t-1", always_stale, attempts=2, doing="-", exhausted="gave up") == (
        "gave up"
    )


def test_the_annotation_patch_is_conditional_and_removes_with_none() -> None:
    assert annotation_patch({"a": "x", "b": None}, "42") == {
        "metadata": {"resourceVersion": "42", "annotations": {"a": "x", "b": None}}
    }
