"""The Job manifest: what the task may choose, and everything it may not."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dispatcher.config import Settings
from dispatcher.kube.jobspec import build_job
from dispatcher.messages.route import ReplyRoute
from dispatcher.messages.task import parse_task

SETTINGS = Settings.from_env(
    {
        "JOB_NAMESPACE": "jobs",
        "DISPATCHER_NAME": "blue",
        "INTERNAL_SERVICE_ACCOUNT_NAME": "job-runner",
        "PVC_NAME": "shared-claim",
        "JOB_MAX_RUN_SECONDS": "600",
        "QUEUE_TIMEOUT_SECONDS": "1200",
        "JOB_TTL_SECONDS": "3600",
        "JOB_IMAGE_PULL_POLICY": "Never",
        "JOB_CPU_LIMIT": "1",
        "JOB_MEMORY_LIMIT": "256Mi",
    }
)
TASK_BODY = {
    "id": "t-1",
    "image": "localhost/testbox:1.0",
    "volume_mount_path": "/work",
    "working_dir": "/work/run",
    "cmd": ["/bin/sh", "-c"],
    "args": ["echo hello > out.txt"],
}
LABELS = {
    "app.kubernetes.io/managed-by": "k8s-job-dispatcher",
    "job-dispatcher.io/instance": "blue",
    "job-dispatcher.io/task-id": "t-1",
}


def job_for(
    document: dict[str, Any], route: ReplyRoute | None = None, settings: Settings = SETTINGS
) -> Any:
    return build_job(parse_task(json.dumps(document)), route or ReplyRoute(), settings)


def test_full_task_becomes_this_job() -> None:
    task = parse_task(json.dumps(TASK_BODY))
    route = ReplyRoute(correlation_id="c-42", reply_to="amq.rabbitmq.reply-to.g2dkAA")

    assert build_job(task, route, SETTINGS) == {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "t-1",
            "namespace": "jobs",
            "labels": LABELS,
            "annotations": {
                "job-dispatcher.io/task-hash": task.digest(),
                "job-dispatcher.io/correlation-id": "c-42",
                "job-dispatcher.io/reply-to": "amq.rabbitmq.reply-to.g2dkAA",
            },
            "finalizers": ["job-dispatcher.io/answer"],
        },
        "spec": {
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": 3600,
            "activeDeadlineSeconds": 2100,  # queue timeout + run time + margin
            "podFailurePolicy": {
                "rules": [
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": "task",
                            "operator": "NotIn",
                            "values": [0],
                        },
                    },
                ]
            },
            "template": {
                "metadata": {
                    "labels": LABELS,
                    "annotations": {"job-dispatcher.io/correlation-id": "c-42"},
                },
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": "job-runner",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "activeDeadlineSeconds": 600,
                    "terminationGracePeriodSeconds": 10,
                    "securityContext": {
                        "seccompProfile": {"type": "RuntimeDefault"},
                        "runAsNonRoot": True,
                        "runAsUser": 65532,
                        "runAsGroup": 65532,
                        "fsGroup": 65532,
                    },
                    "containers": [
                        {
                            "name": "task",
                            "image": "localhost/testbox:1.0",
                            "imagePullPolicy": "Never",
                            "command": ["/bin/sh", "-c"],
                            "args": ["echo hello > out.txt"],
                            "workingDir": "/work/run",
                            "env": [{"name": "TASK_ID", "value": "t-1"}],
                            "volumeMounts": [{"name": "work", "mountPath": "/work"}],
                            "stdin": False,
                            "stdinOnce": False,
                            "tty": False,
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "privileged": False,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "resources": {
                                "requests": {"cpu": "100m", "memory": "64Mi"},
                                "limits": {"cpu": "1", "memory": "256Mi"},
                            },
                        }
                    ],
                    "volumes": [
                        {"name": "work", "persistentVolumeClaim": {"claimName": "shared-claim"}}
                    ],
                },
            },
        },
    }


def test_manifest_is_plain_json() -> None:
    job = job_for(TASK_BODY)

    assert json.loads(json.dumps(job)) == job


def test_unset_task_fields_leave_the_image_defaults() -> None:
    minimal = {key: TASK_BODY[key] for key in ("id", "image", "volume_mount_path")}

    container = job_for(minimal)["spec"]["template"]["spec"]["containers"][0]

    assert not {"command", "args", "workingDir"} & container.keys()


def test_reply_route_annotations_appear_only_when_set() -> None:
    job = job_for(TASK_BODY, ReplyRoute(correlation_id="c-1"))

    assert set(job["metadata"]["annotations"]) == {
        "job-dispatcher.io/task-hash",
        "job-dispatcher.io/correlation-id",
    }
    assert set(job_for(TASK_BODY)["metadata"]["annotations"]) == {"job-dispatcher.io/task-hash"}


@pytest.mark.parametrize(
    ("env", "resources"),
    [
        pytest.param({}, {"requests": {"cpu": "100m", "memory": "64Mi"}}, id="defaults"),
        pytest.param(
            {"JOB_CPU_REQUEST": "", "JOB_MEMORY_LIMIT": "1Gi"},
            {"requests": {"memory": "64Mi"}, "limits": {"memory": "1Gi"}},
            id="only-set-quantities",
        ),
        pytest.param({"JOB_CPU_REQUEST": "", "JOB_MEMORY_REQUEST": ""}, {}, id="none"),
    ],
)
def test_resources_come_from_settings(env: dict[str, str], resources: dict[str, Any]) -> None:
    container = job_for(TASK_BODY, settings=Settings.from_env(env))["spec"]["template"]["spec"][
        "containers"
    ][0]

    assert container["resources"] == resources


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"namespace": "kube-system"}, id="namespace"),
        pytest.param({"serviceAccountName": "cluster-admin"}, id="service-account"),
        pytest.param({"service_account_name": "cluster-admin"}, id="service-account-snake"),
        pytest.param(
            {"privileged": True, "securityContext": {"privileged": True}}, id="privileged"
        ),
        pytest.param({"hostPath": "/", "volumes": [{"hostPath": {"path": "/"}}]}, id="host-path"),
        pytest.param({"hostNetwork": True, "hostPID": True}, id="host-network"),
        pytest.param({"labels": {"job-dispatcher.io/instance": "other"}}, id="labels"),
        pytest.param({"activeDeadlineSeconds": 999999}, id="deadline"),
        pytest.param({"Resources": {"limits": {"cpu": "64"}}}, id="resources-not-the-field"),
        pytest.param({"envFrom": [{"secretRef": {"name": "db"}}]}, id="env-from"),
    ],
)
def test_task_fields_outside_the_contract_change_nothing(extra: dict[str, Any]) -> None:
    assert job_for({**TASK_BODY, **extra}) == job_for(TASK_BODY)


def test_equal_tasks_get_equal_hash_annotations() -> None:
    reordered = dict(reversed(TASK_BODY.items()))

    def task_hash(document: dict[str, Any]) -> str:
        return str(job_for(document)["metadata"]["annotations"]["job-dispatcher.io/task-hash"])

    assert task_hash(reordered) == task_hash(TASK_BODY)
    assert task_hash({**TASK_BODY, "args": ["other"]}) != task_hash(TASK_BODY)


def test_unbounded_queueing_sets_no_job_deadline_but_keeps_the_pods() -> None:
    env = {"QUEUE_TIMEOUT_SECONDS": "0", "JOB_MAX_RUN_SECONDS": "600"}
    job = job_for(TASK_BODY, settings=Settings.from_env(env))

    assert "activeDeadlineSeconds" not in job["spec"]  # waiting for room is never a failure
    assert job["spec"]["template"]["spec"]["activeDeadlineSeconds"] == 600


def test_a_tasks_env_follows_task_id_and_cannot_replace_it() -> None:
    job = job_for({**TASK_BODY, "env": {"B": "2", "A": "1"}})

    assert job["spec"]["template"]["spec"]["containers"][0]["env"] == [
        {"name": "TASK_ID", "value": "t-1"},
        {"name": "A", "value": "1"},
        {"name": "B", "value": "2"},
    ]


def test_a_tasks_timeout_is_its_pods_deadline_and_moves_the_jobs_backstop() -> None:
    job = job_for({**TASK_BODY, "timeout_seconds": 30})

    assert job["spec"]["template"]["spec"]["activeDeadlineSeconds"] == 30
    assert job["spec"]["activeDeadlineSeconds"] == 1200 + 30 + 300


@pytest.mark.parametrize(
    ("asked", "resources"),
    [
        pytest.param(
            {"cpu": "250m"},
            {
                "requests": {"cpu": "250m", "memory": "64Mi"},
                "limits": {"cpu": "1", "memory": "256Mi"},
            },
            id="cpu-within-the-limit",
        ),
        pytest.param(
            {"memory": "1Gi", "cpu": "2"},
            {"requests": {"cpu": "2", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "1Gi"}},
            id="limits-raised-to-the-request",
        ),
    ],
)
def test_a_tasks_resources_are_its_requests(
    asked: dict[str, str], resources: dict[str, Any]
) -> None:
    job = job_for({**TASK_BODY, "resources": asked})

    assert job["spec"]["template"]["spec"]["containers"][0]["resources"] == resources


def test_the_pod_carries_the_correlation_id_for_its_progress_events() -> None:
    job = job_for(TASK_BODY, ReplyRoute(correlation_id="c-9"))

    metadata = job["spec"]["template"]["metadata"]
    assert metadata["annotations"] == {"job-dispatcher.io/correlation-id": "c-9"}
    assert "annotations" not in job_for(TASK_BODY)["spec"]["template"]["metadata"]


def test_placement_comes_from_settings_only() -> None:
    settings = Settings.from_env(
        {"JOB_NODE_SELECTOR": "type=kwok", "JOB_TOLERATIONS": "kwok.x-k8s.io/node=fake:NoSchedule"}
    )
    spec = job_for({**TASK_BODY, "nodeSelector": {"x": "y"}}, settings=settings)["spec"]

    assert spec["template"]["spec"]["nodeSelector"] == {"type": "kwok"}
    assert spec["template"]["spec"]["tolerations"] == [
        {"key": "kwok.x-k8s.io/node", "operator": "Equal", "value": "fake", "effect": "NoSchedule"}
    ]
    assert "nodeSelector" not in job_for(TASK_BODY)["spec"]["template"]["spec"]


def test_the_task_runs_as_the_operators_user_or_as_its_images_when_root_is_allowed() -> None:
    chosen = Settings.from_env({"JOB_RUN_AS_USER": "1234", "JOB_RUN_AS_GROUP": "5678"})
    allowed = Settings.from_env({"JOB_ALLOW_ROOT": "true"})

    pod = job_for(TASK_BODY, settings=chosen)["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "seccompProfile": {"type": "RuntimeDefault"},
        "runAsNonRoot": True,
        "runAsUser": 1234,
        "runAsGroup": 5678,
        "fsGroup": 5678,
    }
    pod = job_for(TASK_BODY, settings=allowed)["spec"]["template"]["spec"]
    assert pod["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
