"""The local stack really runs pods: logs and exit codes through the API, the PVC, RBAC."""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

import pytest
from harness.stack import kubectl, pinned_versions, stack_env

from dispatcher.config import Settings
from dispatcher.core.preflight import preflight
from dispatcher.kube.client import KubeClient

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def kube() -> KubeClient:
    env = stack_env()
    settings = Settings.from_env({**env, "JOB_NAMESPACE": "dispatcher"})
    return KubeClient.from_settings(settings)


RESTRICTED_POD = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def run_job(
    kube: KubeClient, command: str, **container: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Create a one-pod Job with the test image; wait until it ends; return (job, pod)."""
    name = "stack-" + uuid.uuid4().hex[:8]
    env = stack_env()
    manifest = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": "dispatcher", "labels": {"test": "stack"}},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    # the namespace is Pod Security `restricted`, as the manifests make it
                    "securityContext": RESTRICTED_POD,
                    "containers": [
                        {
                            "name": "task",
                            "image": env["TEST_IMAGE"],
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["/bin/sh", "-c", command],
                            "securityContext": RESTRICTED_CONTAINER,
                            **container,
                        }
                    ],
                    "volumes": [
                        {"name": "work", "persistentVolumeClaim": {"claimName": "worker-pv-claim"}}
                    ],
                }
            },
        },
    }
    created = kube.create_job(manifest)
    deadline = time.monotonic() + 120
    job = created
    while time.monotonic() < deadline:
        job = kube.get_job(name) or job
        conditions = {c["type"]: c["status"] for c in job.get("status", {}).get("conditions", [])}
        if conditions.get("Complete") == "True" or conditions.get("Failed") == "True":
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"Job {name} did not end: {json.dumps(job.get('status'))}")
    pods = kube.list_pods(f"batch.kubernetes.io/controller-uid={created['metadata']['uid']}")
    assert len(pods) == 1
    return job, pods[0]


def test_failing_job_reports_logs_and_exit_code_through_the_api(kube: KubeClient) -> None:
    job, pod = run_job(kube, "echo hello; echo oops >&2; exit 3")
    try:
        conditions = {c["type"]: c["status"] for c in job["status"]["conditions"]}
        assert conditions["Failed"] == "True"
        logs = kube.read_log(pod["metadata"]["name"], "task", 1 << 20)
        assert set(logs.splitlines()) == {"hello", "oops"}
        terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
        assert terminated["exitCode"] == 3
    finally:
        kube.delete_job(job["metadata"]["name"])


def test_job_reads_the_seeded_file_on_the_claim_from_its_working_directory(
    kube: KubeClient,
) -> None:
    job, pod = run_job(
        kube,
        "pwd; cat seed.txt",
        workingDir="/data/work",
        volumeMounts=[{"name": "work", "mountPath": "/data/work"}],
    )
    try:
        logs = kube.read_log(pod["metadata"]["name"], "task", 1 << 20)
        assert logs == "/data/work\nseeded by the local stack\n"
        assert pod["status"]["phase"] == "Succeeded"
    finally:
        kube.delete_job(job["metadata"]["name"])


def test_rbac_is_enforced_for_a_service_account_that_was_granted_nothing() -> None:
    as_sa = "--as=system:serviceaccount:dispatcher:job-internal"
    denied = kubectl("auth", "can-i", "list", "secrets", "-n", "dispatcher", as_sa, check=False)
    assert (denied.returncode, denied.stdout.strip()) == (1, "no")
    denied = kubectl("auth", "can-i", "create", "jobs", "-n", "dispatcher", as_sa, check=False)
    assert denied.stdout.strip() == "no"
    allowed = kubectl("auth", "can-i", "create", "jobs", "-n", "dispatcher")
    assert allowed.stdout.strip() == "yes"  # the admin can, so the "no" above is RBAC's answer


def test_releasing_a_deleted_job_drops_only_our_finalizer_and_then_it_is_gone(
    kube: KubeClient,
) -> None:
    name = "stack-" + uuid.uuid4().hex[:8]
    ours, other = "job-dispatcher.io/answer", "example.com/audit"
    manifest = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": "dispatcher", "finalizers": [ours, other]},
        "spec": {
            "suspend": True,  # no pod is needed to test the Job object's life
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "task", "image": stack_env()["TEST_IMAGE"]}],
                }
            },
        },
    }
    kube.create_job(manifest)
    try:
        kube.delete_job(name)
        terminating = kube.get_job(name)
        assert terminating is not None
        assert terminating["metadata"]["deletionTimestamp"]

        released = kube.release_job(name, ours, {"job-dispatcher.io/responded": "now"})

        assert released is not None
        assert released["metadata"]["finalizers"] == [other]
        assert released["metadata"]["annotations"]["job-dispatcher.io/responded"] == "now"
        kube.release_job(name, other, {})  # its last finalizer: the Job goes
        assert kube.get_job(name) is None
        assert kube.release_job(name, ours, {}) is None  # gone: nothing to release
    finally:
        kube.release_job(name, ours, {})
        kube.release_job(name, other, {})


def test_a_list_larger_than_one_page_is_read_whole(kube: KubeClient) -> None:
    label = "page-" + uuid.uuid4().hex[:8]
    names = [f"{label}-{i}" for i in range(5)]
    for name in names:
        kube.create_job(
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {"name": name, "labels": {"test": label}},
                "spec": {
                    "suspend": True,
                    "template": {
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [{"name": "task", "image": stack_env()["TEST_IMAGE"]}],
                        }
                    },
                },
            }
        )
    try:
        items, version = kube.list_objects("jobs", f"test={label}", page_size=2)

        assert sorted(job["metadata"]["name"] for job in items) == names
        assert int(version) > 0
    finally:
        for name in names:
            kube.delete_job(name)


def test_the_start_up_check_reads_the_stacks_claim_bound_to_pv_name(kube: KubeClient) -> None:
    settings = Settings.from_env({**stack_env(), "JOB_NAMESPACE": "dispatcher"})

    assert preflight(kube, settings) is None
    missing = Settings.from_env({**stack_env(), "JOB_NAMESPACE": "dispatcher", "PVC_NAME": "nope"})
    assert preflight(kube, missing) == (
        "PVC_NAME: PersistentVolumeClaim 'nope' does not exist in namespace 'dispatcher'; every "
        "Job mounts it, so no task can start until it does"
    )


def test_every_component_runs_the_kubernetes_the_stack_recorded() -> None:
    """`make up` starts the pinned version (make compat: the one asked for) and records it; the
    API server, the kubelet and the kubectl the tests use are all of it."""
    recorded = stack_env()["STACK_K8S_VERSION"]
    versions = json.loads(kubectl("version", "-o", "json").stdout)
    node = json.loads(kubectl("get", "nodes", "-o", "json").stdout)["items"][0]

    assert versions["serverVersion"]["gitVersion"] == recorded
    assert versions["clientVersion"]["gitVersion"] == recorded
    assert node["status"]["nodeInfo"]["kubeletVersion"] == recorded
    if "K8S_VERSION" not in os.environ:
        assert recorded == pinned_versions()["K8S_VERSION"]
