"""Outcome rules, on Job and Pod objects shaped like those a Kubernetes 1.35 to 1.37 API server
returns."""

from __future__ import annotations

from typing import Any

import pytest

from dispatcher.kube.outcome import (
    Outcome,
    Stuck,
    Verdict,
    deciding_pod,
    job_failure_reason,
    job_finished,
    judge_finished,
    judge_not_created,
    judge_stuck,
    pod_stuck,
)
from tests.unit.fakes import (
    POLICY_MESSAGE,
    T0,
    T1,
    UNSCHEDULABLE_MESSAGE,
    terminated,
    waiting,
)

# --- canned objects ---------------------------------------------------------------------------

T2 = "2025-01-10T10:09:30Z"


def condition(kind: str, status: str = "True", reason: str = "", message: str = "") -> Any:
    return {
        "type": kind,
        "status": status,
        "lastProbeTime": T2,
        "lastTransitionTime": T2,
        "reason": reason,
        "message": message,
    }


def make_job(*conditions: Any, active: int = 0) -> Any:
    status: dict[str, Any] = {
        "startTime": T0,
        "terminating": 0,
        "ready": 0,
        "uncountedTerminatedPods": {},
    }
    if active:
        status["active"] = active
    if conditions:
        status["conditions"] = list(conditions)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "t-1",
            "namespace": "dispatcher",
            "uid": "0b6f1b0e-5d1a-4c7e-9d8b-1f2e3d4c5b6a",
            "resourceVersion": "48213",
            "creationTimestamp": T0,
            "labels": {
                "app.kubernetes.io/managed-by": "k8s-job-dispatcher",
                "job-dispatcher.io/instance": "dispatcher",
                "job-dispatcher.io/task-id": "t-1",
            },
        },
        "spec": {"backoffLimit": 0, "activeDeadlineSeconds": 3900, "completions": 1},
        "status": status,
    }


RUNNING_JOB = make_job(active=1)
COMPLETE_JOB = make_job(
    condition("SuccessCriteriaMet", reason="CompletionsReached"),
    condition("Complete", reason="CompletionsReached", message="Reached expected number of pods"),
)
POLICY_FAILED_JOB = make_job(
    condition("FailureTarget", reason="PodFailurePolicy", message=POLICY_MESSAGE),
    condition("Failed", reason="PodFailurePolicy", message=POLICY_MESSAGE),
)
DEADLINE_JOB = make_job(
    condition(
        "FailureTarget",
        reason="DeadlineExceeded",
        message="Job was active longer than specified deadline",
    ),
    condition(
        "Failed", reason="DeadlineExceeded", message="Job was active longer than specified deadline"
    ),
)
BACKOFF_JOB = make_job(
    condition(
        "Failed",
        reason="BackoffLimitExceeded",
        message="Job has reached the specified backoff limit",
    ),
)


SCHEDULED = condition("PodScheduled")
UNSCHEDULABLE = condition("PodScheduled", "False", "Unschedulable", UNSCHEDULABLE_MESSAGE)


def make_pod(
    name: str = "t-1-x7k2p",
    *,
    created: str = T0,
    phase: str = "Pending",
    state: Any = None,
    conditions: tuple[Any, ...] = (),
    scheduled: Any = SCHEDULED,
    reason: str | None = None,
    image: str = "localhost/testbox:1.0",
) -> Any:
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [scheduled, *conditions],
        "qosClass": "Burstable",
    }
    if reason:
        status["reason"] = reason
        status["message"] = "Pod was active on the node longer than the specified deadline"
    if state is not None:
        status["containerStatuses"] = [
            {
                "name": "task",
                "state": state,
                "lastState": {},
                "ready": False,
                "restartCount": 0,
                "image": image,
                "imageID": "",
                "started": False,
            }
        ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "dispatcher",
            "creationTimestamp": created,
            "labels": {"batch.kubernetes.io/job-name": "t-1", "job-name": "t-1"},
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "t-1"}],
        },
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "task", "image": image}],
        },
        "status": status,
    }


DISRUPTED = condition(
    "DisruptionTarget", reason="EvictionByEvictionAPI", message="Eviction API: evicting"
)
SUCCEEDED_POD = make_pod(phase="Succeeded", state=terminated(0))
FAILED_POD = make_pod(phase="Failed", state=terminated(3, "Error"))
OOM_POD = make_pod(phase="Failed", state=terminated(137, "OOMKilled"))
DEADLINE_POD = make_pod(phase="Failed", state=terminated(137, "Error"), reason="DeadlineExceeded")
EVICTED_POD = make_pod(
    "t-1-old", phase="Failed", state=terminated(137, "Error"), conditions=(DISRUPTED,), created=T1
)

# --- job_finished / job_failure_reason ---------------------------------------------------------


@pytest.mark.parametrize(
    ("job", "finished", "reason"),
    [
        pytest.param(RUNNING_JOB, False, None, id="running"),
        pytest.param(
            make_job(condition("SuccessCriteriaMet")),
            False,
            None,
            id="success-criteria-met-but-pods-not-done",
        ),
        pytest.param(
            make_job(condition("FailureTarget", reason="PodFailurePolicy")),
            False,
            None,
            id="failure-target-but-pods-not-done",
        ),
        pytest.param(
            make_job(condition("Failed", status="False")), False, None, id="failed-condition-false"
        ),
        pytest.param(COMPLETE_JOB, True, None, id="complete"),
        pytest.param(POLICY_FAILED_JOB, True, "PodFailurePolicy", id="pod-failure-policy"),
        pytest.param(DEADLINE_JOB, True, "DeadlineExceeded", id="deadline"),
        pytest.param(BACKOFF_JOB, True, "BackoffLimitExceeded", id="backoff"),
        pytest.param({"metadata": {"name": "t-1"}}, False, None, id="no-status-yet"),
    ],
)
def test_job_is_finished_only_with_a_true_terminal_condition(
    job: Any, finished: bool, reason: str | None
) -> None:
    assert job_finished(job) is finished
    assert job_failure_reason(job) == reason


# --- pod_stuck ----------------------------------------------------------------------------------

PULL_MESSAGE = (
    'failed to pull and unpack image "docker.io/library/nope:1": failed to resolve reference '
    '"docker.io/library/nope:1": pull access denied, repository does not exist or may require '
    "authorization"
)


@pytest.mark.parametrize(
    ("pod", "stuck"),
    [
        pytest.param(
            make_pod(state=waiting("ErrImagePull", PULL_MESSAGE), image="nope:1"),
            Stuck(Outcome.IMAGE_PULL_FAILED, f"image 'nope:1' could not be pulled: {PULL_MESSAGE}"),
            id="err-image-pull",
        ),
        pytest.param(
            make_pod(
                state=waiting("ImagePullBackOff", 'Back-off pulling image "nope:1"'), image="nope:1"
            ),
            Stuck(
                Outcome.IMAGE_PULL_FAILED,
                "image 'nope:1' could not be pulled: Back-off pulling image \"nope:1\"",
            ),
            id="image-pull-back-off",
        ),
        pytest.param(
            make_pod(state=waiting("ErrImageNeverPull"), image="localhost/x:1"),
            Stuck(
                Outcome.IMAGE_PULL_FAILED,
                "image 'localhost/x:1' could not be pulled: ErrImageNeverPull",
            ),
            id="never-pull-without-message-uses-reason",
        ),
        pytest.param(
            make_pod(state=waiting("InvalidImageName", "Failed to apply default image tag")),
            Stuck(
                Outcome.IMAGE_PULL_FAILED,
                "image 'localhost/testbox:1.0' could not be pulled: "
                "Failed to apply default image tag",
            ),
            id="invalid-image-name",
        ),
        pytest.param(
            make_pod(state=waiting("CreateContainerConfigError", 'secret "db"\n  not found')),
            Stuck(
                Outcome.CONTAINER_CONFIG_ERROR,
                'the container could not be started: secret "db" not found',
            ),
            id="config-error-message-on-one-line",
        ),
        pytest.param(
            make_pod(state=waiting("RunContainerError")),
            Stuck(
                Outcome.CONTAINER_CONFIG_ERROR,
                "the container could not be started: RunContainerError",
            ),
            id="run-container-error",
        ),
        pytest.param(
            make_pod(scheduled=UNSCHEDULABLE),
            Stuck(Outcome.UNSCHEDULABLE, f"the pod cannot be scheduled: {UNSCHEDULABLE_MESSAGE}"),
            id="unschedulable",
        ),
    ],
)
def test_stuck_pod_is_recognised_with_a_message_for_users(pod: Any, stuck: Stuck) -> None:
    assert pod_stuck(pod) == stuck


def test_image_is_taken_from_the_spec_when_the_status_lacks_it() -> None:
    pod = make_pod(state=waiting("ErrImagePull", "not found"), image="nope:1")
    del pod["status"]["containerStatuses"][0]["image"]

    stuck = pod_stuck(pod)

    assert stuck is not None
    assert stuck.message == "image 'nope:1' could not be pulled: not found"


@pytest.mark.parametrize(
    "pod",
    [
        pytest.param(make_pod(), id="pending-scheduled-no-status-yet"),
        pytest.param(make_pod(state=waiting("ContainerCreating")), id="container-creating"),
        pytest.param(make_pod(phase="Running", state={"running": {"startedAt": T1}}), id="running"),
        pytest.param(SUCCEEDED_POD, id="succeeded"),
        pytest.param(
            make_pod(phase="Failed", state=waiting("ErrImagePull", "x")), id="already-terminal"
        ),
        pytest.param({"metadata": {"name": "p"}}, id="no-status"),
    ],
)
def test_pod_that_is_starting_running_or_done_is_not_stuck(pod: Any) -> None:
    assert pod_stuck(pod) is None


# --- deciding_pod -------------------------------------------------------------------------------


def test_newest_undisrupted_terminal_pod_decides() -> None:
    older = make_pod("t-1-a", phase="Failed", state=terminated(1, "Error"), created=T0)
    newer = make_pod("t-1-b", phase="Succeeded", state=terminated(0), created=T1)
    evicted_newest = make_pod(
        "t-1-c", phase="Failed", state=terminated(137), conditions=(DISRUPTED,), created=T2
    )
    running = make_pod("t-1-d", phase="Running", created=T2)

    assert deciding_pod([older, evicted_newest, newer, running]) is newer


def test_creation_times_are_compared_as_times_not_text() -> None:
    early = make_pod(
        "t-1-b", phase="Succeeded", state=terminated(0), created="2025-01-10T10:00:00Z"
    )
    later = make_pod(
        "t-1-a", phase="Failed", state=terminated(1), created="2025-01-10T11:00:00+01:00"
    )
    latest = make_pod("t-1-c", phase="Failed", state=terminated(2), created="2025-01-10T10:00:01Z")

    assert deciding_pod([latest, early, later]) is latest


@pytest.mark.parametrize(
    "pods",
    [
        pytest.param([], id="no-pods"),
        pytest.param([EVICTED_POD], id="only-disrupted"),
        pytest.param([make_pod(phase="Running")], id="only-running"),
    ],
)
def test_no_pod_decides_without_an_undisrupted_terminal_one(pods: list[Any]) -> None:
    assert deciding_pod(pods) is None


# --- judge_finished -----------------------------------------------------------------------------

DEADLINE_ERROR = "deadline exceeded: the task ran longer than 600 s"


@pytest.mark.parametrize(
    ("job", "pods", "verdict"),
    [
        pytest.param(
            COMPLETE_JOB,
            [SUCCEEDED_POD],
            Verdict(Outcome.SUCCEEDED, "t-1-x7k2p", 0, None),
            id="succeeded",
        ),
        pytest.param(
            POLICY_FAILED_JOB,
            [FAILED_POD],
            Verdict(Outcome.FAILED, "t-1-x7k2p", 3, None),
            id="workload-failed-no-error",
        ),
        pytest.param(
            POLICY_FAILED_JOB,
            [OOM_POD],
            Verdict(
                Outcome.FAILED,
                "t-1-x7k2p",
                137,
                "the container was killed: out of memory (OOMKilled)",
            ),
            id="oom-killed",
        ),
        pytest.param(
            POLICY_FAILED_JOB,
            [DEADLINE_POD],
            Verdict(Outcome.DEADLINE_EXCEEDED, "t-1-x7k2p", None, DEADLINE_ERROR),
            id="pod-deadline-keeps-logs",
        ),
        pytest.param(
            DEADLINE_JOB,
            [make_pod(phase="Running", state={"running": {}})],
            Verdict(Outcome.DEADLINE_EXCEEDED, "t-1-x7k2p", None, DEADLINE_ERROR),
            id="job-deadline-uses-the-pod-still-there",
        ),
        pytest.param(
            DEADLINE_JOB,
            [],
            Verdict(Outcome.DEADLINE_EXCEEDED, None, None, DEADLINE_ERROR),
            id="job-deadline-without-pods",
        ),
        pytest.param(
            COMPLETE_JOB,
            [EVICTED_POD, SUCCEEDED_POD],
            Verdict(Outcome.SUCCEEDED, "t-1-x7k2p", 0, None),
            id="evicted-retry-then-success",
        ),
        pytest.param(
            BACKOFF_JOB,
            [EVICTED_POD],
            Verdict(
                Outcome.LOST,
                None,
                None,
                "the job ended without a container result "
                "(BackoffLimitExceeded: Job has reached the specified backoff limit)",
            ),
            id="only-disrupted-pods-is-lost",
        ),
        pytest.param(
            POLICY_FAILED_JOB,
            [],
            Verdict(
                Outcome.LOST,
                None,
                None,
                f"the job ended without a container result (PodFailurePolicy: {POLICY_MESSAGE})",
            ),
            id="pods-gone-is-lost",
        ),
        pytest.param(
            BACKOFF_JOB,
            [make_pod(phase="Failed")],
            Verdict(
                Outcome.LOST,
                None,
                None,
                "the job ended without a container result "
                "(BackoffLimitExceeded: Job has reached the specified backoff limit)",
            ),
            id="no-terminated-state-is-lost",
        ),
        pytest.param(
            COMPLETE_JOB,
            [],
            Verdict(
                Outcome.LOST,
                None,
                None,
                "the job ended without a container result "
                "(CompletionsReached: Reached expected number of pods)",
            ),
            id="complete-without-pods-is-lost",
        ),
        pytest.param(
            make_job(condition("Failed")),
            [],
            Verdict(Outcome.LOST, None, None, "the job ended without a container result"),
            id="no-reason-no-parentheses",
        ),
    ],
)
def test_finished_job_verdict(job: Any, pods: list[Any], verdict: Verdict) -> None:
    assert judge_finished(job, pods, max_run_seconds=600) == verdict


# --- judge_stuck --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "outcome",
    [
        pytest.param(Outcome.IMAGE_PULL_FAILED, id="image-pull"),
        pytest.param(Outcome.UNSCHEDULABLE, id="unschedulable"),
        pytest.param(Outcome.CONTAINER_CONFIG_ERROR, id="config"),
    ],
)
def test_stuck_verdict_has_the_message_and_no_output(outcome: Outcome) -> None:
    pod = make_pod(state=waiting("ErrImagePull", "x"))

    verdict = judge_stuck(pod, Stuck(outcome, "what went wrong"))

    assert verdict == Verdict(outcome, None, None, "what went wrong")


# --- judge_not_created ---------------------------------------------------------------------------


def failed_create_event(message: str, at: str) -> dict[str, Any]:
    return {
        "involvedObject": {"kind": "Job", "name": "t-1", "uid": "u-1"},
        "reason": "FailedCreate",
        "message": message,
        "lastTimestamp": at,
    }


def test_the_newest_failed_create_event_decides_the_error_text() -> None:
    events = [
        failed_create_event("first\nattempt", "2025-01-10T10:00:01Z"),
        failed_create_event('pods "t-1-" is forbidden: exceeded quota: q1', "2025-01-10T10:00:09Z"),
        {**failed_create_event("ignored", "2025-01-10T10:00:30Z"), "reason": "SuccessfulCreate"},
    ]

    verdict = judge_not_created(events)

    assert verdict == Verdict(
        Outcome.POD_NOT_CREATED,
        None,
        None,
        "the pod could not be created: it asks for more than a ResourceQuota of the namespace "
        "ever allows",
    )


@pytest.mark.parametrize(
    ("message", "cause"),
    [
        pytest.param(
            'Error creating: pods "t-1-" is forbidden: error looking up service account '
            'dispatcher/job-internal: serviceaccount "job-internal" not found',
            "its service account (INTERNAL_SERVICE_ACCOUNT_NAME) is missing",
            id="service-account",
        ),
        pytest.param(
            'Error creating: pods "t-1-x" is forbidden: violates PodSecurity "restricted:latest": '
            'runAsNonRoot != true (pod or container "task" must set runAsNonRoot=true)',
            "it violates the namespace's Pod Security level",
            id="pod-security",
        ),
        pytest.param(
            'Error creating: admission webhook "audit.example.com" denied the request: team '
            "label missing on 10.3.4.5",
            "an admission webhook of the cluster refused it",
            id="webhook",
        ),
        pytest.param(
            "Error creating: pods \"t-1-x\" is forbidden: ValidatingAdmissionPolicy 'p' with "
            "binding 'b' denied request: no",
            "an admission policy of the cluster refused it",
            id="admission-policy",
        ),
        pytest.param(
            "Error creating: Internal error occurred: etcd cluster 10.0.0.2:2379 unavailable",
            "the cluster refused it (the Job's events say why)",
            id="anything-else",
        ),
    ],
)
def test_a_pod_that_cannot_be_created_is_answered_with_its_cause_not_the_clusters_internals(
    message: str, cause: str
) -> None:
    verdict = judge_not_created([failed_create_event(message, "2025-01-10T10:00:01Z")])

    assert verdict is not None
    assert verdict.error == f"the pod could not be created: {cause}"


def test_no_failed_create_event_means_no_verdict() -> None:
    assert judge_not_created([]) is None
