"""Nothing is lost: worker crashes, a broker restart, quiet watches, long jobs, API rejections."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from harness.proxy import Proxy
from harness.stack import REPO, Broker, Instance, Worker, kubectl, running, stack_env

from tests.e2e.test_dispatch import task, wait_for_jobs

pytestmark = pytest.mark.cluster


def job_states(broker: Broker) -> dict[str, str]:
    selector = f"job-dispatcher.io/instance={broker.instance.name}"
    out = kubectl("-n", "dispatcher", "get", "jobs", "-l", selector, "-o", "json").stdout
    states = {}
    for job in json.loads(out)["items"]:
        conditions = {
            c["type"] for c in job["status"].get("conditions", []) if c["status"] == "True"
        }
        states[job["metadata"]["name"]] = (
            "ended" if conditions & {"Complete", "Failed"} else "running"
        )
    return states


def answers_after_restart(
    instance: Instance, broker: Broker, log_dir: Path, count: int
) -> list[dict[str, Any]]:
    """Start a new worker of `instance`; return the `count` responses it gives, and no more."""
    restarted = Worker(instance, log_dir)
    try:
        restarted.start(broker)
        responses = [json.loads(m.body) for m in broker.responses(count, timeout=120)]
        assert broker.no_more_responses(3) == []
    finally:
        restarted.stop()
    return responses


def test_worker_killed_after_submitting_answers_every_task_after_restart(log_dir: Path) -> None:
    instance = Instance()
    with running(instance, log_dir) as (broker, worker):
        sent = [task(f"sleep 4; echo n{i}") for i in range(6)]
        for document in sent:
            broker.publish(document)
        assert len(wait_for_jobs(broker, len(sent))) == len(sent)
        worker.kill(signal.SIGKILL)

        deadline = time.monotonic() + 90  # let every Job end while no worker runs
        while set(job_states(broker).values()) != {"ended"}:
            assert time.monotonic() < deadline, job_states(broker)
            time.sleep(0.5)

        responses = answers_after_restart(instance, broker, log_dir, len(sent))
    expected = {
        d["id"]: {"id": d["id"], "output": f"n{i}\n", "exit": 0} for i, d in enumerate(sent)
    }
    assert {r["id"]: r for r in responses} == expected


def test_jobs_deleted_by_hand_while_no_worker_runs_are_answered_after_restart(
    log_dir: Path,
) -> None:
    instance = Instance()
    with running(instance, log_dir) as (broker, worker):
        quick = [task(f"echo q{i}") for i in range(6)]
        slow = [task(f"echo s{i}; sleep 120") for i in range(3)]
        for document in quick + slow:
            broker.publish(document)
        assert len(wait_for_jobs(broker, len(quick) + len(slow))) == len(quick) + len(slow)
        worker.kill(signal.SIGKILL)

        deadline = time.monotonic() + 90  # the quick ones end, the slow ones run
        while [job_states(broker).get(d["id"]) for d in quick] != ["ended"] * len(quick):
            assert time.monotonic() < deadline, job_states(broker)
            time.sleep(0.5)
        for pod in [f"batch.kubernetes.io/job-name={d['id']}" for d in slow]:
            kubectl("-n", "dispatcher", "wait", "pod", "-l", pod, "--for=condition=Ready")
        # Deleted as a person (or a Job's TTL) would, with nobody there to see it.
        deleted = quick[:2] + slow
        kubectl("-n", "dispatcher", "delete", "job", "--wait=false", *[d["id"] for d in deleted])

        responses = answers_after_restart(instance, broker, log_dir, len(quick) + len(slow))
        # The deleted ones are gone; the rest are kept, answered, for the idempotency window.
        assert sorted(wait_for_jobs(broker, 4)) == sorted(f"job.batch/{d['id']}" for d in quick[2:])
        assert set(job_states(broker).values()) == {"ended"}
    expected = {
        d["id"]: {"id": d["id"], "output": f"q{i}\n", "exit": 0} for i, d in enumerate(quick)
    }
    expected |= {
        d["id"]: {
            "id": d["id"],
            "error": "the Job was deleted before it finished (its pod had started)",
        }
        for d in slow
    }
    assert {r["id"]: r for r in responses} == expected


def test_worker_killed_while_taking_in_messages_loses_none(log_dir: Path) -> None:
    instance = Instance(extra={"TASK_PREFETCH": "4"})
    with running(instance, log_dir) as (broker, worker):
        worker.kill(signal.SIGKILL)  # messages published now wait in the durable queue
        sent = [task(f"echo m{i}") for i in range(20)]
        for document in sent:
            broker.publish(document)
        restarted = Worker(instance, log_dir)
        restarted.start(broker)
        time.sleep(0.3)  # mid-intake: some messages handed over, some not
        restarted.kill(signal.SIGKILL)
        responses = answers_after_restart(instance, broker, log_dir, len(sent))
    assert sorted(r["id"] for r in responses) == sorted(d["id"] for d in sent)
    assert all(r["exit"] == 0 for r in responses)


@pytest.mark.settings(WATCH_TIMEOUT_SECONDS="10")
def test_a_job_running_longer_than_90_s_with_quiet_watches_is_answered(
    dispatcher: tuple[Broker, Worker],
) -> None:
    broker, worker = dispatcher
    sent = task("echo begin; sleep 95; echo end")
    broker.publish(sent)

    assert broker.response(timeout=180) == {"id": sent["id"], "output": "begin\nend\n", "exit": 0}
    assert "failed" not in worker.log().lower()


def test_a_broker_restart_loses_no_task(dispatcher: tuple[Broker, Worker]) -> None:
    broker, _ = dispatcher
    sent = task("sleep 6; echo survived")
    broker.publish(sent)
    assert wait_for_jobs(broker, 1)
    rabbitmqctl("stop_app")
    rabbitmqctl("start_app")
    rabbitmqctl("await_startup")
    broker.conn.close()  # the test's own connection died with the broker

    assert Broker(broker.instance).response(timeout=120) == {
        "id": sent["id"],
        "output": "survived\n",
        "exit": 0,
    }


def rabbitmqctl(*args: str) -> None:
    script = f"""
    . stack/lib.sh; rabbitmq_env
    "$RABBITMQ_LIB/rabbitmqctl" -q {" ".join(args)}
    """
    subprocess.run(["bash", "-c", script], cwd=REPO, check=True, timeout=120, capture_output=True)


POLICY = """
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: {name}}}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - {{apiGroups: [batch], apiVersions: [v1], operations: [CREATE], resources: [jobs]}}
  validations:
  - expression: "!object.spec.template.spec.containers.exists(c, c.image.contains('not-here'))"
    message: images named not-here are refused by cluster policy
    reason: {reason}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: {name}}}
spec:
  policyName: {name}
  validationActions: [Deny]
  matchResources:
    objectSelector: {{matchLabels: {{job-dispatcher.io/instance: {instance}}}}}
"""


@pytest.mark.parametrize(("reason", "status"), [("Invalid", 422), ("Forbidden", 403)])
def test_an_api_rejection_is_answered_at_once_with_the_servers_reason(
    dispatcher: tuple[Broker, Worker], reason: str, status: int
) -> None:
    broker, worker = dispatcher
    name = f"{broker.instance.name}-{status}"
    kubectl(
        "apply",
        "-f",
        "-",
        input=POLICY.format(name=name, reason=reason, instance=broker.instance.name),
    )
    try:
        wait_until_policy_applies(broker.instance.name)
        sent = task("echo never", image="localhost/not-here:1.0")
        broker.publish(sent)

        response = broker.response(timeout=30)
        assert response["id"] == sent["id"]
        assert "images named not-here are refused by cluster policy" in response["error"]
        assert f"HTTP {status}" in response["error"]
        assert wait_for_jobs(broker, 0, timeout=1) == []
        assert "retrying" not in worker.log()  # answered at once: a final error is not retried
    finally:
        kubectl(
            "delete",
            "validatingadmissionpolicybinding,validatingadmissionpolicy",
            name,
            check=False,
        )


def wait_until_policy_applies(instance: str) -> None:
    probe = json.dumps(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": "probe",
                "namespace": "dispatcher",
                "labels": {"job-dispatcher.io/instance": instance},
            },
            "spec": {
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "c", "image": "localhost/not-here:1.0"}],
                    }
                }
            },
        }
    )
    deadline = time.monotonic() + 30
    while (
        kubectl("create", "--dry-run=server", "-f", "-", input=probe, check=False).returncode == 0
    ):
        assert time.monotonic() < deadline, "the admission policy never took effect"
        time.sleep(0.5)


def test_two_replicas_answer_every_task_exactly_once(log_dir: Path) -> None:
    instance = Instance()
    with running(instance, log_dir) as (broker, _):
        second = Worker(instance, log_dir)
        second.start(broker)
        try:
            sent = [task(f"echo r{i}") for i in range(10)]
            for document in sent:
                broker.publish(document)
            responses = [json.loads(m.body) for m in broker.responses(len(sent), timeout=120)]
            assert broker.no_more_responses(5) == []
        finally:
            second.stop()
    assert sorted(r["id"] for r in responses) == sorted(d["id"] for d in sent)


@pytest.mark.parametrize(
    ("max_active_jobs", "meanwhile"),
    [
        # Without a limit the task is handed over and its Job creation is retried.
        pytest.param("0", "creating Job {id} failed", id="submit-retried"),
        # With one, the worker cannot count the active Jobs, so the task waits in the queue.
        pytest.param("100", "the active Jobs are not known", id="task-waits-in-queue"),
    ],
)
def test_an_unreachable_api_server_is_retried_and_no_task_is_lost(
    log_dir: Path, tmp_path: Path, max_active_jobs: str, meanwhile: str
) -> None:
    proxy = Proxy(("127.0.0.1", 6443))
    kubeconfig = tmp_path / "kubeconfig"
    original = Path(stack_env()["KUBECONFIG"]).read_text()
    kubeconfig.write_text(
        original.replace("https://127.0.0.1:6443", f"https://127.0.0.1:{proxy.port}")
    )
    instance = Instance(extra={"KUBECONFIG": str(kubeconfig), "MAX_ACTIVE_JOBS": max_active_jobs})
    try:
        with running(instance, log_dir) as (broker, worker):
            proxy.cut()
            deadline = time.monotonic() + 30
            # The watch first resumes from where it was (a blip), then gives up and lists again.
            while "watch of jobs failed" not in worker.log():
                assert time.monotonic() < deadline, worker.log_tail()
                time.sleep(0.5)
            assert "watch of jobs broke" in worker.log()
            sent = task("echo after-outage")
            broker.publish(sent)
            while meanwhile.format(id=sent["id"]) not in worker.log():
                assert time.monotonic() < deadline, worker.log_tail()
                time.sleep(0.5)
            proxy.restore()

            assert broker.response(timeout=120) == {
                "id": sent["id"],
                "output": "after-outage\n",
                "exit": 0,
            }
            # ... and the watch reconnected by itself.
    finally:
        proxy.close()


def test_sigterm_stops_the_worker_in_time_and_loses_nothing(log_dir: Path) -> None:
    instance = Instance()
    with running(instance, log_dir) as (broker, worker):
        sent = [task(f"sleep 2; echo s{i}") for i in range(12)]
        for document in sent:
            broker.publish(document)
        assert worker.proc is not None
        time.sleep(1)
        worker.proc.send_signal(signal.SIGTERM)
        worker.proc.wait(timeout=30)  # within the Deployment's terminationGracePeriodSeconds
        responses = answers_after_restart(instance, broker, log_dir, len(sent))
    assert sorted(r["id"] for r in responses) == sorted(d["id"] for d in sent)


@pytest.mark.settings(JOB_NAMESPACE="no-such-namespace")
def test_a_missing_namespace_is_answered_at_once(dispatcher: tuple[Broker, Worker]) -> None:
    broker, worker = dispatcher
    sent = task("echo never")
    broker.publish(sent)

    response = broker.response(timeout=30)
    assert response == {
        "id": sent["id"],
        "error": f'create Job {sent["id"]}: namespaces "no-such-namespace" not found (HTTP 404)',
    }
    assert "retrying in" not in "\n".join(
        line for line in worker.log().splitlines() if "creating Job" in line
    )
