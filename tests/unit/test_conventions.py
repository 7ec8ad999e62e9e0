"""Names on the wire: pinned, because Jobs created by an older version must still be found."""

from __future__ import annotations

from dispatcher.kube import conventions


def test_wire_names_do_not_change() -> None:
    assert {
        "managed_by": (conventions.MANAGED_BY_LABEL, conventions.MANAGED_BY_VALUE),
        "instance": conventions.INSTANCE_LABEL,
        "task_id": conventions.TASK_ID_LABEL,
        "hash": conventions.TASK_HASH_ANNOTATION,
        "correlation": conventions.CORRELATION_ID_ANNOTATION,
        "reply_to": conventions.REPLY_TO_ANNOTATION,
        "responded": conventions.RESPONDED_ANNOTATION,
        "claim": conventions.CLAIM_ANNOTATION,
        "container": conventions.CONTAINER_NAME,
        "volume": conventions.VOLUME_NAME,
    } == {
        "managed_by": ("app.kubernetes.io/managed-by", "k8s-job-dispatcher"),
        "instance": "job-dispatcher.io/instance",
        "task_id": "job-dispatcher.io/task-id",
        "hash": "job-dispatcher.io/task-hash",
        "correlation": "job-dispatcher.io/correlation-id",
        "reply_to": "job-dispatcher.io/reply-to",
        "responded": "job-dispatcher.io/responded",
        "claim": "job-dispatcher.io/finalizing",
        "container": "task",
        "volume": "work",
    }


def test_label_selector_matches_one_installation() -> None:
    assert conventions.label_selector("blue") == (
        "app.kubernetes.io/managed-by=k8s-job-dispatcher,job-dispatcher.io/instance=blue"
    )


def test_owned_labels_satisfy_the_selector_and_name_the_task() -> None:
    labels = conventions.owned_labels("blue", "t-1")
    selected = dict(term.split("=") for term in conventions.label_selector("blue").split(","))

    assert labels == {**selected, "job-dispatcher.io/task-id": "t-1"}


def test_job_name_is_the_task_id() -> None:
    assert conventions.job_name("t-1") == "t-1"
